//! Column lineage by name: which names each output column, each written value and each
//! filter of a statement is computed from — so masking can tell `lower(email)` (derived from
//! a masked column) from `count(*)` (not), however aliases, CTEs, subqueries and set
//! operations rename things in between.
//!
//! Read from PostgreSQL's own parse tree (the one the gate already has), not from a second
//! SQL parser: every statement the server accepts has a lineage, so there is no "could not
//! parse, so guess" hole. Names are compared, not catalog objects, which over-approximates:
//! two unrelated columns both called `email` are both treated as derived from a masked
//! `email`. Over-masking is the safe direction; a name never makes something *less* masked.
//!
//! Every name is lower-cased: a quoted `"Email"` and an unquoted `email` count as the same.

use super::tree::Tree;

/// What one output column is computed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// An expression: every name it references (column names, and table aliases used as
    /// whole rows), subqueries included.
    Expr(Vec<String>),
    /// `*` or `alias.*`: expands to columns this tree cannot count.
    Star,
}

/// The lineage of one statement.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lineage {
    /// The columns the statement returns (select list, RETURNING), in order.
    pub outputs: Vec<Output>,
    /// Names introduced inside the statement (select-list aliases, CTE and subquery names,
    /// their column aliases) and the names each is computed from.
    pub derived: Vec<(String, Vec<String>)>,
    /// `FROM customers AS c`: (`c`, `customers`).
    pub aliases: Vec<(String, String)>,
    /// Names the values written by INSERT / UPDATE / MERGE / CREATE TABLE AS / SELECT INTO,
    /// shown by CREATE VIEW, or sent by `pg_notify`, are computed from.
    pub written: Vec<String>,
    /// Names used in WHERE, JOIN … ON, GROUP BY, HAVING and ORDER BY.
    pub filtered: Vec<String>,
    /// For `COPY … TO`: the shape of its output.
    pub copy: Option<CopyShape>,
    /// Names fed to functions in FROM (`jsonb_each_text(to_jsonb(c))`, `unnest(…)`,
    /// XMLTABLE): their output columns have names the tree cannot know (`value`, `key`),
    /// so when any of these is sensitive, every output and every write is.
    pub opaque: Vec<String>,
    /// The rows named in FROM and WITH (by alias, else by name) and what their columns
    /// are, to tell `c.column` from `c.function` (column notation: `to_jsonb(c)`).
    pub rows: Vec<(String, RowColumns)>,
}

/// The columns of a row named in FROM or WITH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowColumns {
    /// A table or view (lower-cased name as written, unqualified); `AS c(a, b)` renames
    /// its first columns. The catalog knows the rest.
    Relation {
        relation: String,
        renamed: Vec<String>,
    },
    /// A subquery or CTE: its output names (column aliases first), and the rows whose
    /// columns a `*` in its select list brings in.
    Query {
        names: Vec<String>,
        stars: Vec<String>,
    },
    /// A function, XMLTABLE or `(x).*` output: columns the tree cannot know.
    Unknown,
}

/// Column-notation references resolved deeper than this count as functions of the row.
const MAX_ROW_DEPTH: usize = 8;

/// The output of a `COPY … TO`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyShape {
    /// `COPY t (a, b)`: the columns, lower-cased; empty for every column.
    pub columns: Vec<String>,
    pub csv: bool,
    pub binary: bool,
    /// `HEADER`: the first line names the columns.
    pub header: bool,
    /// Only FORMAT and HEADER were given: the default delimiter, quote, escape and NULL.
    pub plain: bool,
    /// `COPY (SELECT …) TO` over one plain table (one relation in FROM; no WITH, set
    /// operation or VALUES): per output, the column a bare column reference names (`email`,
    /// `c.email`), `None` for anything computed. Empty for any other query, and for
    /// `COPY table`.
    pub query_columns: Vec<Option<String>>,
}

/// Which parts of a statement are derived from sensitive names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Taint {
    /// Per output column: derived from a sensitive name (a `*` counts as derived).
    pub outputs: Vec<bool>,
    /// Some output is a `*`: output positions do not map to result columns.
    pub star: bool,
    /// A written value is derived from a sensitive name.
    pub written: bool,
    /// Sensitive names used to filter, sort or group.
    pub filtered: Vec<String>,
}

/// The result columns of `stmt`, with what each is derived from.
fn outputs_of(stmt: &Tree) -> Vec<Output> {
    match stmt.name() {
        Some("SelectStmt") if !has(stmt, "into_clause") => select_outputs(stmt)
            .into_iter()
            .map(|(_, output)| output)
            .collect(),
        Some("InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt") => targets(returning(stmt))
            .into_iter()
            .map(|(_, output)| output)
            .collect(),
        // The statement inside returns the rows: `COPY (DELETE … RETURNING email) TO
        // STDOUT` as much as `COPY (SELECT …)`.
        Some("CopyStmt" | "DeclareCursorStmt" | "PrepareStmt" | "ExplainStmt") => {
            stmt.field("query").map(outputs_of).unwrap_or_default()
        }
        _ => Vec::new(),
    }
}

impl Lineage {
    /// Compute the lineage of one top-level statement.
    pub fn of(stmt: &Tree) -> Self {
        let outputs = outputs_of(stmt);
        let mut lineage = Lineage {
            outputs,
            ..Lineage::default()
        };
        if stmt.name() == Some("CopyStmt") && !stmt.field("is_from").is_some_and(Tree::as_bool) {
            lineage.copy = Some(copy_shape(stmt));
        }
        lineage.visit(stmt);
        for list in [&mut lineage.written, &mut lineage.filtered] {
            list.sort();
            list.dedup();
        }
        lineage
    }

    /// Which parts are derived from a name `sensitive` says is sensitive (a masked column, a
    /// sensitive table or view). Aliases of sensitive relations and names derived from
    /// sensitive ones are sensitive too.
    ///
    /// `is_column(relation, name)` says whether a table or view has a column `name` (`None`:
    /// not known). `c.name` is the whole row `c` passed to the function `name` unless every
    /// row the statement calls `c` surely has that column; so unknown rows (functions, join
    /// aliases, tables the catalog does not know) over-approximate toward masking.
    pub fn taint(
        &self,
        sensitive: impl Fn(&str) -> bool,
        is_column: impl Fn(&str, &str) -> Option<bool>,
    ) -> Taint {
        let mut tainted: Vec<&str> = Vec::new();
        let is_tainted = |tainted: &[&str], name: &str| match split_row_call(name) {
            Some((row, column)) => {
                (sensitive(row) || tainted.contains(&row))
                    && !self.row_has_column(row, column, &is_column, 0)
            }
            None => sensitive(name) || tainted.contains(&name),
        };
        for (alias, relation) in &self.aliases {
            if sensitive(relation) {
                tainted.push(alias);
            }
        }
        // Derived names feed each other (a CTE over a CTE): repeat until nothing changes.
        loop {
            let before = tainted.len();
            for (name, from) in &self.derived {
                if !is_tainted(&tainted, name) && from.iter().any(|f| is_tainted(&tainted, f)) {
                    tainted.push(name);
                }
            }
            if tainted.len() == before {
                break;
            }
        }
        let any = |names: &[String]| names.iter().any(|n| is_tainted(&tainted, n));
        let opaque = any(&self.opaque);
        Taint {
            outputs: self
                .outputs
                .iter()
                .map(|o| match o {
                    Output::Star => true,
                    Output::Expr(names) => opaque || any(names),
                })
                .collect(),
            star: self.outputs.contains(&Output::Star),
            written: any(&self.written) || (opaque && !self.written.is_empty()),
            filtered: self
                .filtered
                .iter()
                .filter(|n| is_tainted(&tainted, n))
                .map(|n| match split_row_call(n) {
                    Some((row, name)) => format!("{row}.{name}"),
                    None => n.clone(),
                })
                .collect(),
        }
    }

    /// Whether every row this statement calls `row` surely has a column `column`.
    fn row_has_column(
        &self,
        row: &str,
        column: &str,
        is_column: &impl Fn(&str, &str) -> Option<bool>,
        depth: usize,
    ) -> bool {
        if depth > MAX_ROW_DEPTH {
            return false;
        }
        let mut sources = self.rows.iter().filter(|(name, _)| name == row).peekable();
        sources.peek().is_some()
            && sources.all(|(_, columns)| match columns {
                RowColumns::Relation { relation, renamed } => {
                    renamed.iter().any(|r| r == column)
                        || is_column(relation, column).unwrap_or_else(|| {
                            // Not a table the catalog knows: a CTE of that name, if any.
                            let mut ctes = self
                                .rows
                                .iter()
                                .filter(|(name, c)| {
                                    name == relation && matches!(c, RowColumns::Query { .. })
                                })
                                .peekable();
                            ctes.peek().is_some()
                                && ctes.all(|(_, c)| self.query_has(c, column, is_column, depth))
                        })
                }
                query @ RowColumns::Query { .. } => self.query_has(query, column, is_column, depth),
                RowColumns::Unknown => false,
            })
    }

    /// Whether a subquery's or CTE's output has a column `column`.
    fn query_has(
        &self,
        query: &RowColumns,
        column: &str,
        is_column: &impl Fn(&str, &str) -> Option<bool>,
        depth: usize,
    ) -> bool {
        match query {
            RowColumns::Query { names, stars } => {
                names.iter().any(|n| n == column)
                    || stars
                        .iter()
                        .any(|s| self.row_has_column(s, column, is_column, depth + 1))
            }
            _ => false,
        }
    }

    fn visit(&mut self, node: &Tree) {
        match node.name() {
            Some("SelectStmt") => {
                for (name, output) in select_outputs(node) {
                    if let (Some(name), Output::Expr(from)) = (name, output) {
                        self.derived.push((name, from));
                    }
                }
                // `(row).*`: columns named after the row type's fields, whatever values the
                // row was built from (`(ROW(…, ssn)::customers).*` puts ssn under `note`).
                for (_, target) in node
                    .field("target_list")
                    .map(Tree::children)
                    .into_iter()
                    .flatten()
                {
                    if let Some(value) = target.field("val").filter(|v| expands(v)) {
                        self.opaque.extend(references(value));
                    }
                }
                if has(node, "into_clause") {
                    self.written.extend(all_outputs(node));
                }
                // Every clause whose values shape which rows come back, and how many:
                // `LIMIT (SELECT ascii(email) …)` counts out a value as surely as a WHERE.
                for clause in [
                    "where_clause",
                    "group_clause",
                    "having_clause",
                    "sort_clause",
                    "distinct_clause",
                    "window_clause",
                    "limit_count",
                    "limit_offset",
                ] {
                    if let Some(c) = node.field(clause) {
                        self.filtered.extend(references(c));
                    }
                }
            }
            Some("InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt")
                if has(node, "returning_clause") =>
            {
                // `RETURNING ssn AS q` read back through a CTE: q is derived from ssn.
                for (name, output) in targets(returning(node)) {
                    if let (Some(name), Output::Expr(from)) = (name, output) {
                        self.derived.push((name, from));
                    }
                }
                self.visit_dml(node);
            }
            Some("InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt") => self.visit_dml(node),
            // A view (or table) built from masked columns would show them under another
            // name.
            Some("CreateTableAsStmt" | "ViewStmt") => {
                if let Some(query) = node.field("query") {
                    self.written.extend(all_outputs(query));
                }
            }
            Some("FuncCall") => {
                let name = last_name(node.field("funcname"));
                if name.as_deref().is_some_and(keeps_arguments) {
                    if let Some(args) = node.field("args") {
                        self.written.extend(references(args));
                    }
                }
            }
            // Column notation: `(x).setval`, `(x).pg_advisory_lock` call them with x.
            Some("AIndirection")
                if names(node.field("indirection"))
                    .iter()
                    .any(|n| keeps_arguments(n)) =>
            {
                if let Some(arg) = node.field("arg") {
                    self.written.extend(references(arg));
                }
            }
            Some("JoinExpr") => {
                if let Some(quals) = node.field("quals") {
                    self.filtered.extend(references(quals));
                }
                // `(a JOIN b …) AS j`: j is the whole row of both sides, its columns any of
                // theirs.
                if let Some(alias) = alias_name(node) {
                    let mut from = Vec::new();
                    for side in ["larg", "rarg"] {
                        if let Some(side) = node.field(side) {
                            collect_relations(side, &mut from);
                        }
                    }
                    let renamed = names(node.field("alias").and_then(|a| a.field("colnames")));
                    for column in &renamed {
                        self.derived.push((column.clone(), from.clone()));
                    }
                    self.derived.push((alias.clone(), from));
                    // Its columns: the renamed ones, then both sides'.
                    let mut stars = Vec::new();
                    for side in ["larg", "rarg"] {
                        if let Some(side) = node.field(side) {
                            from_item_names(side, &mut stars);
                        }
                    }
                    let columns = if renamed.is_empty() {
                        RowColumns::Query {
                            names: Vec::new(),
                            stars,
                        }
                    } else {
                        RowColumns::Unknown
                    };
                    self.rows.push((alias, columns));
                }
            }
            // DDL that computes stored values from other columns: a generated column, ALTER
            // COLUMN … TYPE … USING.
            Some("ColumnDef") => {
                if let Some(expr) = node.field("raw_default") {
                    self.written.extend(references(expr));
                }
            }
            Some("Constraint") => {
                if let Some(expr) = node.field("raw_expr") {
                    let generated = node.field("contype").and_then(Tree::as_int)
                        == Some(pg_query::protobuf::ConstrType::ConstrGenerated as i64);
                    if generated {
                        self.written.extend(references(expr));
                    }
                }
            }
            Some("RangeVar") => {
                if let Some(relation) = node.field("relname").and_then(Tree::as_str) {
                    let relation = relation.to_lowercase();
                    // `FROM customers AS c(i, n, e)`: the columns under new names; which
                    // is which needs the catalog, so each counts as the whole table.
                    let renamed = names(node.field("alias").and_then(|a| a.field("colnames")));
                    for column in &renamed {
                        self.derived.push((column.clone(), vec![relation.clone()]));
                    }
                    let name = alias_name(node).unwrap_or_else(|| relation.clone());
                    self.rows.push((
                        name.clone(),
                        RowColumns::Relation {
                            relation: relation.clone(),
                            renamed,
                        },
                    ));
                    if name != relation {
                        self.aliases.push((name, relation));
                    }
                }
            }
            Some("CommonTableExpr") => {
                if let Some(query) = node.field("ctequery") {
                    let name = node.field("ctename").and_then(Tree::as_str);
                    let columns = node.field("aliascolnames");
                    self.derive_relation(name, columns, query);
                }
            }
            Some("RangeSubselect") => {
                if let Some(query) = node.field("subquery") {
                    let alias = node.field("alias");
                    let name = alias
                        .and_then(|a| a.field("aliasname"))
                        .and_then(Tree::as_str);
                    let columns = alias.and_then(|a| a.field("colnames"));
                    self.derive_relation(name, columns, query);
                }
            }
            Some("RangeFunction") => {
                let alias = node.field("alias");
                let from = references(node);
                if let Some(name) = alias
                    .and_then(|a| a.field("aliasname"))
                    .and_then(Tree::as_str)
                {
                    self.derived.push((name.to_lowercase(), from.clone()));
                    for column in names(alias.and_then(|a| a.field("colnames"))) {
                        self.derived.push((column, from.clone()));
                    }
                    self.rows.push((name.to_lowercase(), RowColumns::Unknown));
                }
                self.opaque.extend(from);
            }
            // XMLTABLE / JSON_TABLE: columns computed from the document passed in.
            Some("RangeTableFunc" | "JsonTable") => {
                if let Some(alias) = alias_name(node) {
                    self.rows.push((alias, RowColumns::Unknown));
                }
                self.opaque.extend(references(node));
            }
            _ => {}
        }
        for (_, child) in node.children() {
            self.visit(child);
        }
    }

    /// What INSERT, UPDATE, DELETE and MERGE write and filter on.
    fn visit_dml(&mut self, node: &Tree) {
        match node.name() {
            Some("InsertStmt") => {
                if let Some(select) = node.field("select_stmt") {
                    self.written.extend(all_outputs(select));
                }
                // INSERT … ON CONFLICT DO UPDATE SET col = …
                let conflict_set = node
                    .field("on_conflict_clause")
                    .and_then(|c| c.field("target_list"));
                for (_, output) in targets(conflict_set) {
                    if let Output::Expr(from) = output {
                        self.written.extend(from);
                    }
                }
            }
            Some("UpdateStmt") => {
                for (_, output) in targets(node.field("target_list")) {
                    if let Output::Expr(from) = output {
                        self.written.extend(from);
                    }
                }
                if let Some(c) = node.field("where_clause") {
                    self.filtered.extend(references(c));
                }
            }
            Some("DeleteStmt") => {
                if let Some(c) = node.field("where_clause") {
                    self.filtered.extend(references(c));
                }
            }
            Some("MergeStmt") => {
                if let Some(clauses) = node.field("merge_when_clauses") {
                    self.written.extend(references(clauses));
                }
                if let Some(c) = node.field("join_condition") {
                    self.filtered.extend(references(c));
                }
            }
            _ => {}
        }
    }

    /// A CTE or subquery `name(columns) AS (query)`: the name is derived from everything the
    /// query outputs, each column alias from the output at its position.
    fn derive_relation(&mut self, name: Option<&str>, columns: Option<&Tree>, query: &Tree) {
        let outputs = match query.name() {
            Some("SelectStmt") => select_outputs(query),
            _ => targets(returning(query)),
        };
        let everything: Vec<String> = outputs
            .iter()
            .flat_map(|(_, o)| match o {
                Output::Expr(from) => from.clone(),
                // `SELECT *` from a subquery: derived from every relation it reads.
                Output::Star => references(query),
            })
            .collect();
        if let Some(name) = name {
            self.derived.push((name.to_lowercase(), everything.clone()));
            self.rows
                .push((name.to_lowercase(), query_columns(query, names(columns))));
        }
        for (i, column) in names(columns).into_iter().enumerate() {
            let from = match outputs.get(i) {
                Some((_, Output::Expr(from))) => from.clone(),
                _ => everything.clone(),
            };
            self.derived.push((column, from));
        }
    }
}

/// The columns of a subquery or CTE `query`, renamed by `renamed` (`AS s(a, b)`).
fn query_columns(query: &Tree, renamed: Vec<String>) -> RowColumns {
    // A set operation is named after its first branch.
    if let Some(left) = query.field("larg").filter(|l| l.is_present()) {
        return query_columns(left, renamed);
    }
    let (list, from) = match query.name() {
        Some("SelectStmt") => {
            if let Some(Tree::Seq(rows)) = query.field("values_lists") {
                if let Some(first) = rows.first() {
                    let count = first.field("items").map_or(0, |i| i.children().count());
                    let mut names: Vec<String> =
                        (1..=count).map(|i| format!("column{i}")).collect();
                    rename(&mut names, renamed);
                    return RowColumns::Query {
                        names,
                        stars: Vec::new(),
                    };
                }
            }
            (query.field("target_list"), query.field("from_clause"))
        }
        // INSERT / UPDATE / DELETE / MERGE … RETURNING in a CTE.
        Some("InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt") => {
            (returning(query), query.field("relation"))
        }
        _ => return RowColumns::Unknown,
    };
    let mut outputs = Vec::new();
    let mut stars = Vec::new();
    for (_, target) in list.map(Tree::children).into_iter().flatten() {
        let value = target.field("val").unwrap_or(&Tree::Null);
        if expands(value) {
            return RowColumns::Unknown;
        }
        if is_star(value) {
            let mut qualifier = names(value.field("fields"));
            match qualifier.pop() {
                Some(row) => stars.push(row),
                None => {
                    if let Some(from) = from {
                        from_item_names(from, &mut stars);
                    }
                }
            }
            continue;
        }
        let name = target
            .field("name")
            .and_then(Tree::as_str)
            .filter(|n| !n.is_empty())
            .map(str::to_lowercase)
            .or_else(|| implicit_name(value));
        outputs.extend(name);
    }
    // With a `*`, positions (and so which names the aliases replace) are not known.
    if !stars.is_empty() && !renamed.is_empty() {
        return RowColumns::Unknown;
    }
    rename(&mut outputs, renamed);
    RowColumns::Query {
        names: outputs,
        stars,
    }
}

/// `AS s(a, b)`: the first columns take the new names.
fn rename(names: &mut Vec<String>, renamed: Vec<String>) {
    for (i, new) in renamed.into_iter().enumerate() {
        match names.get_mut(i) {
            Some(old) => *old = new,
            None => names.push(new),
        }
    }
}

/// The names the items of a FROM clause are referred to by (alias, else table name); a join
/// without an alias by its sides'.
fn from_item_names(node: &Tree, found: &mut Vec<String>) {
    match node.name() {
        Some("RangeVar") => found.extend(alias_name(node).or_else(|| {
            node.field("relname")
                .and_then(Tree::as_str)
                .map(str::to_lowercase)
        })),
        Some("RangeSubselect" | "RangeFunction" | "RangeTableFunc" | "JsonTable") => {
            found.extend(alias_name(node))
        }
        Some("JoinExpr") => match alias_name(node) {
            Some(alias) => found.push(alias),
            None => {
                for side in ["larg", "rarg"] {
                    if let Some(side) = node.field(side) {
                        from_item_names(side, found);
                    }
                }
            }
        },
        _ => {
            for (_, child) in node.children() {
                from_item_names(child, found);
            }
        }
    }
}

fn copy_shape(stmt: &Tree) -> CopyShape {
    let mut shape = CopyShape {
        columns: names(stmt.field("attlist")),
        plain: true,
        query_columns: stmt
            .field("query")
            .map(bare_columns_of_one_table)
            .unwrap_or_default(),
        ..CopyShape::default()
    };
    for (_, option) in stmt
        .field("options")
        .map(Tree::children)
        .into_iter()
        .flatten()
    {
        let name = option.field("defname").and_then(Tree::as_str).unwrap_or("");
        let value = option
            .field("arg")
            .and_then(|a| {
                a.field("sval")
                    .or_else(|| a.field("val").and_then(|v| v.field("sval")))
            })
            .and_then(Tree::as_str)
            .map(str::to_lowercase);
        match name {
            "format" => match value.as_deref() {
                Some("csv") => shape.csv = true,
                Some("binary") => shape.binary = true,
                Some("text") => {}
                _ => shape.plain = false,
            },
            // `HEADER`, `HEADER true`, `HEADER MATCH`: a first line of names; `HEADER
            // false`: none (that first line is data and must be masked).
            "header" => match option.field("arg").filter(|arg| arg.is_present()) {
                None => shape.header = true,
                Some(arg) => match super::facts::constant_bool(arg) {
                    Some(header) => shape.header = header,
                    None if value.as_deref() == Some("match") => shape.header = true,
                    None => shape.plain = false,
                },
            },
            _ => shape.plain = false,
        }
    }
    shape
}

/// See [`CopyShape::query_columns`]. With one relation in FROM, a bare column reference can
/// only name one of its columns (or, when no column has that name, the whole row — which
/// then matches no column and stays computed).
fn bare_columns_of_one_table(query: &Tree) -> Vec<Option<String>> {
    // One table, under its own column names (`AS c(a, b)` renames them).
    let one_relation = match query.field("from_clause") {
        Some(Tree::Seq(items)) => {
            items.len() == 1
                && items[0].name() == Some("RangeVar")
                && !items[0]
                    .field("alias")
                    .and_then(|a| a.field("colnames"))
                    .is_some_and(Tree::is_present)
        }
        _ => false,
    };
    let values = matches!(query.field("values_lists"), Some(Tree::Seq(rows)) if !rows.is_empty());
    if query.name() != Some("SelectStmt")
        || !one_relation
        || values
        || has(query, "with_clause")
        || has(query, "larg")
        || has(query, "rarg")
    {
        return Vec::new();
    }
    let Some(Tree::Seq(targets)) = query.field("target_list") else {
        return Vec::new();
    };
    // A `*` or `(row).*` expands to a number of columns the tree does not know: positions
    // would not line up with the output's.
    if targets
        .iter()
        .any(|t| t.field("val").is_none_or(|v| is_star(v) || expands(v)))
    {
        return Vec::new();
    }
    targets
        .iter()
        .map(|target| {
            let value = target.field("val")?;
            if value.name() != Some("ColumnRef") {
                return None;
            }
            let fields = match value.field("fields") {
                Some(Tree::Seq(fields)) => fields,
                _ => return None,
            };
            // Every part a name (`c.*` has an A_Star).
            if fields.iter().any(|f| f.name() != Some("String")) {
                return None;
            }
            last_name(value.field("fields"))
        })
        .collect()
}

/// A `SelectStmt`'s output columns with their names. Set operations combine their branches
/// position by position (the names come from the left one, as in PostgreSQL); `VALUES` lists
/// give one column per position.
fn select_outputs(select: &Tree) -> Vec<(Option<String>, Output)> {
    if let (Some(left), Some(right)) = (select.field("larg"), select.field("rarg")) {
        if left.is_present() && right.is_present() {
            let mut outputs = select_outputs(left);
            for (i, (_, output)) in select_outputs(right).into_iter().enumerate() {
                match outputs.get_mut(i) {
                    Some((_, Output::Expr(from))) => match output {
                        Output::Expr(more) => from.extend(more),
                        Output::Star => outputs[i].1 = Output::Star,
                    },
                    Some((_, Output::Star)) => {}
                    None => outputs.push((None, output)),
                }
            }
            return outputs;
        }
    }
    if let Some(Tree::Seq(rows)) = select.field("values_lists") {
        if !rows.is_empty() {
            let mut outputs: Vec<(Option<String>, Output)> = Vec::new();
            for row in rows {
                let items = match row.field("items") {
                    Some(Tree::Seq(items)) => items.as_slice(),
                    _ => &[],
                };
                for (i, item) in items.iter().enumerate() {
                    let from = references(item);
                    match outputs.get_mut(i) {
                        Some((_, Output::Expr(all))) => all.extend(from),
                        _ => outputs.push((Some(format!("column{}", i + 1)), Output::Expr(from))),
                    }
                }
            }
            return outputs;
        }
    }
    targets(select.field("target_list"))
}

/// Every name any output of a query is computed from.
fn all_outputs(query: &Tree) -> Vec<String> {
    match query.name() {
        Some("SelectStmt") => select_outputs(query)
            .into_iter()
            .flat_map(|(_, o)| match o {
                Output::Expr(from) => from,
                Output::Star => references(query),
            })
            .collect(),
        _ => references(query),
    }
}

/// A target list (select list, RETURNING): each item's name and what it is computed from.
fn targets(list: Option<&Tree>) -> Vec<(Option<String>, Output)> {
    let Some(Tree::Seq(items)) = list else {
        return Vec::new();
    };
    items
        .iter()
        .map(|target| {
            let value = target.field("val").unwrap_or(&Tree::Null);
            if is_star(value) || expands(value) {
                return (None, Output::Star);
            }
            let name = target
                .field("name")
                .and_then(Tree::as_str)
                .filter(|n| !n.is_empty())
                .map(str::to_lowercase)
                .or_else(|| implicit_name(value));
            (name, Output::Expr(references(value)))
        })
        .collect()
}

/// `(row).*` (an indirection ending in `*`): as many columns as the row has, which may be
/// none or several.
fn expands(value: &Tree) -> bool {
    value.name() == Some("AIndirection")
        && value
            .field("indirection")
            .is_some_and(|i| i.children().any(|(_, part)| part.name() == Some("AStar")))
}

/// `*` or `alias.*`.
fn is_star(value: &Tree) -> bool {
    value.name() == Some("ColumnRef")
        && value
            .field("fields")
            .is_some_and(|f| f.children().any(|(_, part)| part.name() == Some("AStar")))
}

/// The name PostgreSQL gives an unaliased output column: its FigureColname, `?column?` when
/// nothing names it. It must be exactly the server's: an outer query reads the column back
/// by that name, and a name guessed wrong would leave what it is derived from behind.
fn implicit_name(value: &Tree) -> Option<String> {
    let (name, _) = figure_name(value);
    Some(name.unwrap_or_else(|| "?column?".to_owned()).to_lowercase())
}

/// FigureColnameInternal (parser/parse_target.c): a name and its strength (2: a column's
/// or function's own name; 1: a fallback such as a cast's type or `case`; 0: none).
fn figure_name(value: &Tree) -> (Option<String>, u8) {
    use pg_query::protobuf::{AExprKind, JsonExprOp, MinMaxOp, SubLinkType, XmlExprOp};
    let named = |n: &str| (Some(n.to_owned()), 2);
    let is = |field: &str, wanted: i32| {
        value.field(field).and_then(Tree::as_int) == Some(i64::from(wanted))
    };
    let Some(node) = value.name() else {
        return (None, 0);
    };
    match node {
        // The last name, skipping `*` (and, for an indirection, subscripts); an indirection
        // without one is named after what it selects from.
        "ColumnRef" => match last_name(value.field("fields")) {
            Some(name) => (Some(name), 2),
            None => (None, 0),
        },
        "AIndirection" => match last_name(value.field("indirection")) {
            Some(name) => (Some(name), 2),
            None => value.field("arg").map_or((None, 0), figure_name),
        },
        "FuncCall" => (last_name(value.field("funcname")), 2),
        "AExpr" if is("kind", AExprKind::AexprNullif as i32) => named("nullif"),
        // A cast of something unnamed is named after the type.
        "TypeCast" => {
            let (name, strength) = value.field("arg").map_or((None, 0), figure_name);
            if strength <= 1 {
                if let Some(type_name) =
                    last_name(value.field("type_name").and_then(|t| t.field("names")))
                {
                    return (Some(type_name), 1);
                }
            }
            (name, strength)
        }
        "CollateClause" => value.field("arg").map_or((None, 0), figure_name),
        "GroupingFunc" => named("grouping"),
        "SubLink" if is("sub_link_type", SubLinkType::ExistsSublink as i32) => named("exists"),
        "SubLink" if is("sub_link_type", SubLinkType::ArraySublink as i32) => named("array"),
        // `(SELECT lower(x))` is named after its own output; `x = ANY (SELECT …)` is not
        // named.
        "SubLink" if is("sub_link_type", SubLinkType::ExprSublink as i32) => {
            match value
                .field("subselect")
                .and_then(|q| q.field("target_list"))
                .and_then(|list| targets(Some(list)).into_iter().next())
                .and_then(|(name, _)| name)
            {
                Some(name) => (Some(name), 2),
                None => (None, 0),
            }
        }
        // `CASE … ELSE x END` is named after x when x has a name of its own.
        "CaseExpr" => {
            let (name, strength) = value.field("defresult").map_or((None, 0), figure_name);
            if strength <= 1 {
                (Some("case".to_owned()), 1)
            } else {
                (name, strength)
            }
        }
        "AArrayExpr" => named("array"),
        "RowExpr" => named("row"),
        "CoalesceExpr" => named("coalesce"),
        "MinMaxExpr" if is("op", MinMaxOp::IsLeast as i32) => named("least"),
        "MinMaxExpr" if is("op", MinMaxOp::IsGreatest as i32) => named("greatest"),
        "XmlExpr" => {
            let op = value.field("op").and_then(Tree::as_int).unwrap_or(0);
            let name = match XmlExprOp::try_from(op as i32) {
                Ok(XmlExprOp::IsXmlconcat) => "xmlconcat",
                Ok(XmlExprOp::IsXmlelement) => "xmlelement",
                Ok(XmlExprOp::IsXmlforest) => "xmlforest",
                Ok(XmlExprOp::IsXmlparse) => "xmlparse",
                Ok(XmlExprOp::IsXmlpi) => "xmlpi",
                Ok(XmlExprOp::IsXmlroot) => "xmlroot",
                Ok(XmlExprOp::IsXmlserialize) => "xmlserialize",
                _ => return (None, 0),
            };
            named(name)
        }
        "XmlSerialize" => named("xmlserialize"),
        "JsonParseExpr" => named("json"),
        "JsonScalarExpr" => named("json_scalar"),
        "JsonSerializeExpr" => named("json_serialize"),
        "JsonObjectConstructor" => named("json_object"),
        "JsonArrayConstructor" | "JsonArrayQueryConstructor" => named("json_array"),
        "JsonObjectAgg" => named("json_objectagg"),
        "JsonArrayAgg" => named("json_arrayagg"),
        "JsonFuncExpr" => {
            let op = value.field("op").and_then(Tree::as_int).unwrap_or(0);
            match JsonExprOp::try_from(op as i32) {
                Ok(JsonExprOp::JsonExistsOp) => named("json_exists"),
                Ok(JsonExprOp::JsonQueryOp) => named("json_query"),
                Ok(JsonExprOp::JsonValueOp) => named("json_value"),
                _ => (None, 0),
            }
        }
        "MergeSupportFunc" => named("merge_action"),
        "SqlValueFunction" => (sql_value_function_name(value), 2),
        _ => (None, 0),
    }
}

/// The names of CURRENT_DATE, CURRENT_USER and the like (they act like functions).
fn sql_value_function_name(value: &Tree) -> Option<String> {
    use pg_query::protobuf::SqlValueFunctionOp as Op;
    let op = value.field("op").and_then(Tree::as_int)?;
    let name = match Op::try_from(op as i32).ok()? {
        Op::SvfopCurrentDate => "current_date",
        Op::SvfopCurrentTime | Op::SvfopCurrentTimeN => "current_time",
        Op::SvfopCurrentTimestamp | Op::SvfopCurrentTimestampN => "current_timestamp",
        Op::SvfopLocaltime | Op::SvfopLocaltimeN => "localtime",
        Op::SvfopLocaltimestamp | Op::SvfopLocaltimestampN => "localtimestamp",
        Op::SvfopCurrentRole => "current_role",
        Op::SvfopCurrentUser => "current_user",
        Op::SvfopUser => "user",
        Op::SvfopSessionUser => "session_user",
        Op::SvfopCurrentCatalog => "current_catalog",
        Op::SvfopCurrentSchema => "current_schema",
        _ => return None,
    };
    Some(name.to_owned())
}

/// Every name referenced anywhere under `node`, inside subqueries too: column names
/// (`c.email` gives `email`) and whole rows (`c`, `c.*` give `c`).
fn references(node: &Tree) -> Vec<String> {
    let mut found = Vec::new();
    collect_references(node, &mut found);
    found
}

fn collect_references(node: &Tree, found: &mut Vec<String>) {
    // `SELECT *` (or `TABLE t`): every column of what it reads, so the relations themselves.
    if node.name() == Some("SelectStmt")
        && node.field("target_list").is_some_and(|list| {
            list.children()
                .any(|(_, t)| t.field("val").is_some_and(|v| is_star(v) || expands(v)))
        })
    {
        if let Some(from) = node.field("from_clause") {
            collect_relations(from, found);
        }
    }
    if node.name() == Some("ColumnRef") {
        let mut parts = names(node.field("fields"));
        if is_star(node) || parts.len() == 1 {
            // `c.*`, or `c` alone: the qualifier is a whole row (or a column's name).
            found.append(&mut parts);
        } else if let Some(name) = parts.pop() {
            // `c.email`, `s.c.email`: the column; which relation it is from does not narrow
            // anything down, since names are compared anyway. Unless `c` has no column of
            // that name: then PostgreSQL calls the function `name` on the whole row
            // (`c.to_jsonb` is `to_jsonb(c)`), which `taint` decides.
            if let Some(row) = parts.pop() {
                found.push(row_call(&row, &name));
            }
            found.push(name);
        }
        return;
    }
    for (_, child) in node.children() {
        collect_references(child, found);
    }
}

/// The names of the relations a FROM clause reads, and their aliases.
fn collect_relations(node: &Tree, found: &mut Vec<String>) {
    match node.name() {
        Some("RangeVar") => {
            found.extend(
                node.field("relname")
                    .and_then(Tree::as_str)
                    .map(str::to_lowercase),
            );
            found.extend(alias_name(node));
        }
        Some("RangeSubselect" | "RangeFunction" | "RangeTableFunc") => {
            found.extend(alias_name(node));
            collect_references(node, found);
        }
        _ => {
            for (_, child) in node.children() {
                collect_relations(child, found);
            }
        }
    }
}

/// The strings of a name list (`String` nodes), lower-cased.
fn names(list: Option<&Tree>) -> Vec<String> {
    list.map(Tree::children)
        .into_iter()
        .flatten()
        .filter_map(|(_, part)| part.field("sval").and_then(Tree::as_str))
        .map(str::to_lowercase)
        .collect()
}

/// Functions that keep their arguments where a later statement can read them back without
/// reading a masked table: a notification, a setting, a large object (its data, length or
/// OID), the WAL, a sequence's value, an advisory lock's key (in `pg_locks`).
fn keeps_arguments(function: &str) -> bool {
    matches!(
        function,
        "pg_notify"
            | "set_config"
            | "lo_from_bytea"
            | "lo_put"
            | "lowrite"
            | "lo_create"
            | "lo_truncate"
            | "lo_truncate64"
            | "pg_logical_emit_message"
            | "setval"
    ) || (function.starts_with("pg_")
        && function.contains("advisory_")
        && function.contains("lock"))
}

/// The reference `row.name` in column notation, as one name: the function `name` called on
/// the whole row `row` unless `name` is a column. (NUL never occurs in a name.)
fn row_call(row: &str, name: &str) -> String {
    format!("{row}\0{name}")
}

/// `(row, name)` of a [`row_call`].
fn split_row_call(reference: &str) -> Option<(&str, &str)> {
    reference.split_once('\0')
}

fn last_name(list: Option<&Tree>) -> Option<String> {
    names(list).pop()
}

fn alias_name(node: &Tree) -> Option<String> {
    node.field("alias")?
        .field("aliasname")?
        .as_str()
        .filter(|a| !a.is_empty())
        .map(str::to_lowercase)
}

/// The expressions of a RETURNING clause.
fn returning(stmt: &Tree) -> Option<&Tree> {
    stmt.field("returning_clause")?.field("exprs")
}

fn has(node: &Tree, field: &str) -> bool {
    node.field(field).is_some_and(Tree::is_present)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lineage(sql: &str) -> Lineage {
        let parsed = pg_query::parse(sql, 0).unwrap();
        let stmt = parsed.protobuf.stmts[0].stmt.as_ref().unwrap();
        Lineage::of(&Tree::of(stmt).unwrap())
    }

    /// The columns of `customers`, the one relation with sensitive columns here.
    fn is_column(relation: &str, name: &str) -> Option<bool> {
        (relation == "customers").then_some(matches!(name, "id" | "name" | "email" | "ssn"))
    }

    /// Which outputs of `sql` derive from `customers.email` / `customers.ssn`.
    fn masked(sql: &str) -> Vec<bool> {
        lineage(sql)
            .taint(|n| matches!(n, "email" | "ssn" | "customers"), is_column)
            .outputs
    }

    #[test]
    fn outputs_derived_from_sensitive_names_are_found_through_renames() {
        let cases: &[(&str, &[bool])] = &[
            ("SELECT id, lower(email) FROM customers", &[false, true]),
            ("SELECT count(*), 1 FROM customers", &[false, false]),
            ("SELECT c.email AS e FROM customers c", &[true]),
            ("SELECT name || email FROM customers", &[true]),
            ("SELECT substr(email, 2)::bytea FROM customers", &[true]),
            ("SELECT row_to_json(c) FROM customers c", &[true]),
            ("SELECT to_jsonb(customers.*) FROM customers", &[true]),
            ("SELECT c FROM customers c", &[true]),
            ("SELECT json_agg(x) FROM customers x", &[true]),
            (
                "SELECT array_agg(ssn), string_agg(name, ',') FROM customers",
                &[true, false],
            ),
            (
                "SELECT ROW(id, email), ARRAY[email] FROM customers",
                &[true, true],
            ),
            ("SELECT (SELECT email FROM customers LIMIT 1)", &[true]),
            (
                "WITH x AS (SELECT email AS e, id FROM customers) SELECT upper(e), id + 1 FROM x",
                &[true, false],
            ),
            (
                "WITH x(a, b) AS (SELECT id, email FROM customers) SELECT a * 2, lower(b) FROM x",
                &[false, true],
            ),
            (
                "SELECT s.v || '' FROM (SELECT email AS v FROM customers) s",
                &[true],
            ),
            ("SELECT t FROM (SELECT email FROM customers) t", &[true]),
            (
                "SELECT name FROM people UNION SELECT lower(email) FROM customers",
                &[true],
            ),
            ("SELECT *, 1 FROM customers", &[true, false]),
            (
                "DELETE FROM customers WHERE id = 1 RETURNING md5(email)",
                &[true],
            ),
            ("SELECT md5(n) FROM (VALUES ('a')) v(n)", &[false]),
            // Column notation: a name that is no column is a function of the whole row.
            (
                "SELECT c.to_jsonb, c.id, c.name FROM customers c",
                &[true, false, false],
            ),
            (
                "SELECT customers.row_to_json FROM public.customers",
                &[true],
            ),
            ("SELECT public.customers.to_json FROM customers", &[true]),
            (
                "SELECT s.n, s.to_jsonb FROM (SELECT name AS n, email FROM customers) s",
                &[false, true],
            ),
            (
                "SELECT w.to_jsonb FROM (SELECT ssn FROM customers) w(x)",
                &[true],
            ),
            ("SELECT o.to_jsonb, o.total FROM orders o", &[false, false]),
            // Only the columns of the row named count, not other names in the statement.
            (
                "SELECT c.to_jsonb FROM customers c, (SELECT 1 AS to_jsonb) z",
                &[true],
            ),
            (
                "SELECT s.to_jsonb FROM (SELECT c.* FROM customers c, (SELECT 1 AS to_jsonb) z) s",
                &[true],
            ),
            (
                "SELECT s.id, s.name FROM (SELECT * FROM customers) s",
                &[false, false],
            ),
            (
                "WITH w AS (SELECT id, email FROM customers) SELECT w.id, w.to_jsonb FROM w",
                &[false, true],
            ),
            (
                "SELECT j.id, j.to_jsonb FROM (customers c JOIN orders o USING (id)) j",
                &[false, true],
            ),
            (
                "SELECT x.a FROM (SELECT id, email FROM customers) x(a, b)",
                &[false],
            ),
            (
                "SELECT f.value FROM customers c, jsonb_each(to_jsonb(c)) f",
                &[true],
            ),
            // Read back by the name PostgreSQL gives an unaliased column.
            (
                "SELECT name FROM (SELECT CASE WHEN true THEN ssn ELSE name END FROM customers) s",
                &[true],
            ),
            (
                "SELECT \"case\" FROM (SELECT CASE WHEN true THEN ssn END FROM customers) s",
                &[true],
            ),
            ("SELECT text FROM (SELECT (ssn || '')::text FROM customers) s", &[true]),
            (
                "SELECT int4 FROM (SELECT (ascii(ssn) + 0)::integer FROM customers) s",
                &[true],
            ),
            ("SELECT ascii FROM (SELECT ascii(ssn)::int FROM customers) s", &[true]),
            ("SELECT xmlforest FROM (SELECT xmlforest(ssn) FROM customers) s", &[true]),
            (
                "SELECT xmlserialize FROM (SELECT xmlserialize(content ssn::xml AS text) FROM customers) s",
                &[true],
            ),
            ("SELECT f FROM (SELECT (x).f[1] FROM customers x) s", &[true]),
            (
                "SELECT \"?column?\" FROM (SELECT ssn = ANY (SELECT 'a') FROM customers) s",
                &[true],
            ),
            ("SELECT json_object FROM (SELECT JSON_OBJECT('k': ssn) FROM customers) s", &[true]),
            // `(row).*` names its columns after the row type, whatever built the row.
            (
                "SELECT id, name FROM (SELECT (ROW(1, ssn)::people).* FROM customers) x",
                &[true, true],
            ),
        ];
        for (sql, expected) in cases {
            assert_eq!(masked(sql), *expected, "{sql}");
        }
    }

    #[test]
    fn writes_and_filters_derived_from_sensitive_names() {
        let taint =
            |sql: &str| lineage(sql).taint(|n| matches!(n, "email" | "customers"), is_column);
        for sql in [
            "INSERT INTO copy SELECT lower(email) FROM customers",
            "CREATE TABLE copy AS SELECT email FROM customers",
            "SELECT email INTO copy FROM customers",
            "CREATE VIEW v AS SELECT id, lower(email) FROM customers",
            "CREATE MATERIALIZED VIEW v AS SELECT c FROM customers c",
            "UPDATE people SET note = (SELECT email FROM customers LIMIT 1)",
            "SELECT pg_notify('ch', email) FROM customers",
            "SELECT set_config('x.y', email, false) FROM customers WHERE id = 5",
            "SELECT lo_from_bytea(0, email::bytea) FROM customers",
            "INSERT INTO people (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET note = (SELECT email FROM customers LIMIT 1)",
            "WITH w AS (INSERT INTO copy SELECT c.email FROM customers c RETURNING 1) SELECT 1",
        ] {
            assert!(taint(sql).written, "{sql}");
        }
        for sql in [
            "INSERT INTO copy SELECT id FROM customers WHERE email LIKE 'a%'",
            "UPDATE customers SET email = 'x' WHERE id = 1",
            "SELECT email FROM customers",
        ] {
            assert!(!taint(sql).written, "{sql}");
        }
        assert_eq!(
            taint("SELECT id FROM customers WHERE email LIKE 'a%' ORDER BY id").filtered,
            vec!["email".to_owned()]
        );
        assert_eq!(
            taint("SELECT c.id FROM customers c JOIN o ON o.mail = c.email").filtered,
            vec!["email".to_owned()]
        );
        for sql in [
            "SELECT id FROM customers LIMIT (SELECT ascii(email) FROM customers WHERE id = 1)",
            "SELECT id FROM customers OFFSET (SELECT length(email) FROM customers LIMIT 1)",
            "SELECT DISTINCT ON (email) id FROM customers",
            "SELECT id, rank() OVER w FROM customers WINDOW w AS (ORDER BY email)",
            "SELECT c.id FROM customers c, LATERAL (SELECT 1 WHERE c.email LIKE 'a%') x",
        ] {
            assert_eq!(taint(sql).filtered, vec!["email".to_owned()], "{sql}");
        }
        assert!(taint("SELECT id FROM customers WHERE id = 1")
            .filtered
            .is_empty());
        assert_eq!(
            taint("SELECT id FROM customers c WHERE c.to_jsonb::text LIKE '%@%'").filtered,
            vec!["c.to_jsonb".to_owned()]
        );
        assert!(taint("INSERT INTO copy SELECT c.row_to_json FROM customers c").written);
        for sql in [
            "SELECT pg_advisory_lock(ascii(email)) FROM customers",
            "SELECT pg_try_advisory_xact_lock_shared(1, length(email)) FROM customers",
            "SELECT setval('s', ascii(email)) FROM customers",
            "SELECT lo_create(ascii(email)) FROM customers",
            "SELECT (ascii(email)).pg_advisory_lock FROM customers",
        ] {
            assert!(taint(sql).written, "{sql}");
        }
        assert!(!taint("SELECT pg_advisory_lock(id) FROM customers").written);
    }

    #[test]
    fn copy_output_shape() {
        let shape = |sql: &str| lineage(sql).copy.unwrap();
        assert_eq!(
            shape("COPY customers (id, Email) TO STDOUT WITH (FORMAT csv, HEADER)"),
            CopyShape {
                columns: vec!["id".into(), "email".into()],
                csv: true,
                header: true,
                plain: true,
                binary: false,
                query_columns: Vec::new(),
            }
        );
        assert!(shape("COPY customers TO STDOUT CSV HEADER").csv);
        assert!(shape("COPY customers TO STDOUT (FORMAT binary)").binary);
        assert!(!shape("COPY customers TO STDOUT (DELIMITER ';')").plain);
        assert!(lineage("COPY customers FROM STDIN").copy.is_none());
        // A query over one plain table: bare column references are known columns.
        let name = |n: &str| Some(n.to_owned());
        assert_eq!(
            shape("COPY (SELECT id, c.email, lower(email), c, 1 FROM customers c WHERE id > 2) TO STDOUT")
                .query_columns,
            vec![name("id"), name("email"), None, name("c"), None]
        );
        for computed in [
            "COPY (SELECT email FROM customers JOIN orders USING (id)) TO STDOUT",
            "COPY (SELECT email FROM (SELECT name AS email FROM customers) s) TO STDOUT",
            "COPY (WITH s AS (SELECT 1) SELECT email FROM customers) TO STDOUT",
            "COPY (SELECT email FROM customers UNION SELECT email FROM customers) TO STDOUT",
            "COPY (SELECT email FROM customers, orders) TO STDOUT",
            "COPY (VALUES (1)) TO STDOUT",
            "COPY customers TO STDOUT",
        ] {
            assert!(shape(computed).query_columns.is_empty(), "{computed}");
        }
        // `*` shifts positions: nothing is known then.
        for star in [
            "COPY (SELECT c.* FROM customers c) TO STDOUT",
            "COPY (SELECT *, id FROM customers) TO STDOUT",
            "COPY (SELECT id, * FROM customers) TO STDOUT",
            "COPY (SELECT (c).*, id FROM customers c) TO STDOUT",
        ] {
            assert!(shape(star).query_columns.is_empty(), "{star}");
        }
    }
}
