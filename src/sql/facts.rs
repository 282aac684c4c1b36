//! What one statement does, read from PostgreSQL's own parse tree: its kinds, the tables it
//! touches and how, the functions it calls, the settings it changes, and flags for the
//! patterns policy cares about. The walk visits every node ([`super::tree`]), so nothing
//! nested (a function in an `ARRAY[…]`, a `DELETE` in a CTE) escapes.
//!
//! Limits: table names are reported as written (`users` or `public.users`); resolving an
//! unqualified name against the session's `search_path` is the caller's job. A CTE's name
//! used as a table is reported as a table read (conservative).

use serde::Serialize;

use super::tree::Tree;
use super::{Access, TableRef};

/// Flags for statement shapes policy rules can match (`flags = ["no_where"]`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Flags {
    /// An UPDATE or DELETE without WHERE, anywhere in the statement (CTEs included).
    pub no_where: bool,
    /// INSERT/UPDATE/DELETE/MERGE inside a WITH clause.
    pub data_modifying_cte: bool,
    /// COPY … PROGRAM: runs a shell command on the database server.
    pub copy_program: bool,
    /// COPY to or from a file on the database server.
    pub copy_file: bool,
    /// Code whose statements are not visible here: DO, CALL, EXECUTE of a prepared statement.
    pub dynamic_sql: bool,
    /// EXPLAIN ANALYZE: the inner statement really runs.
    pub explain_analyze: bool,
    /// DROP … CASCADE: whatever depends on the objects goes too, tables and columns
    /// included (`DROP TYPE t CASCADE` drops the tables made `OF t`).
    pub drop_cascade: bool,
}

impl Flags {
    pub const NAMES: [&'static str; 7] = [
        "no_where",
        "data_modifying_cte",
        "copy_program",
        "copy_file",
        "dynamic_sql",
        "explain_analyze",
        "drop_cascade",
    ];

    pub fn has(&self, name: &str) -> bool {
        match name {
            "no_where" => self.no_where,
            "data_modifying_cte" => self.data_modifying_cte,
            "copy_program" => self.copy_program,
            "copy_file" => self.copy_file,
            "dynamic_sql" => self.dynamic_sql,
            "explain_analyze" => self.explain_analyze,
            "drop_cascade" => self.drop_cascade,
            _ => false,
        }
    }

    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        Self::NAMES.into_iter().filter(|n| self.has(n))
    }
}

/// One setting change: `SET name = value`, `RESET name`, `set_config('name', 'value', …)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingChange {
    /// Lower case; `*` when not a constant (set_config with a parameter), `all` for RESET ALL.
    pub name: String,
    pub value: SettingValue,
    /// For the current transaction only (SET LOCAL, set_config(…, true)), or maybe so.
    pub local: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettingValue {
    /// RESET, SET … TO DEFAULT: back to the session's starting value.
    Reset,
    /// One constant value, as written (`SET ROLE admin`: `admin`), or the text of a
    /// set_config value.
    Value(String),
    /// `SET search_path = a, "B"`: the elements, as the parser read them (unquoted names
    /// folded to lower case).
    List(Vec<String>),
    /// Anything else (a list, a parameter, an expression).
    Unknown,
}

/// What a statement does with a cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CursorUse {
    Declare(String),
    Fetch(String),
    Close(String),
}

/// The facts of one statement.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StatementFacts {
    /// What it is (`select`, `drop table`, …), first; for EXPLAIN ANALYZE and PREPARE also
    /// the kind of the statement inside.
    pub kinds: Vec<&'static str>,
    pub tables: Vec<TableRef>,
    /// Functions called, as written (`pg_read_file`, `pg_catalog.set_config`).
    pub functions: Vec<String>,
    /// Settings changed by SET / RESET / set_config (`*` when the name is not a constant).
    pub settings: Vec<String>,
    /// The same changes with their values, in order.
    #[serde(skip)]
    pub changes: Vec<SettingChange>,
    pub flags: Flags,
    /// `PREPARE name AS …`: the name.
    pub prepares: Option<String>,
    /// `EXECUTE name`: the name of the prepared statement run.
    pub executes: Option<String>,
    /// `DEALLOCATE name`; `*` for DEALLOCATE ALL and DISCARD ALL.
    pub deallocates: Option<String>,
    /// Cursors: `DECLARE name`, `FETCH`/`MOVE … name`, `CLOSE name` (`*` for CLOSE ALL and
    /// DISCARD ALL).
    #[serde(skip)]
    pub cursor: Option<CursorUse>,
    /// Backends signalled by `pg_cancel_backend` / `pg_terminate_backend`, one per call: the
    /// process id when it is a constant, `None` when it is computed (a column, a subquery).
    #[serde(skip)]
    pub signals: Vec<Option<i32>>,
    /// Some fact was read from a literal value (`set_config('statement_timeout', …)`): the
    /// facts hold for this text only, not for every statement of the same shape.
    #[serde(skip)]
    pub reads_literals: bool,
    /// Which names the statement's outputs, written values and filters come from (masking).
    #[serde(skip)]
    pub lineage: super::lineage::Lineage,
}

impl StatementFacts {
    pub fn kind(&self) -> &'static str {
        self.kinds.first().copied().unwrap_or("other")
    }

    /// What `EXECUTE name` runs, judged as what runs now: these facts (of `PREPARE name AS
    /// body`, or of the body itself) as an EXECUTE of the body's kinds.
    pub fn as_executed(&self, name: &str) -> StatementFacts {
        let mut body = self.clone();
        body.kinds.retain(|k| *k != "prepare");
        body.kinds.insert(0, "execute");
        body.prepares = None;
        body.executes = Some(name.to_owned());
        body
    }

    /// This body, run by `execute` (an `EXECUTE name(arguments)`): the server evaluates the
    /// arguments too, so what they call, change and signal counts as well.
    pub fn with_arguments_of(mut self, execute: &StatementFacts) -> StatementFacts {
        self.functions.extend(execute.functions.iter().cloned());
        self.functions.sort();
        self.functions.dedup();
        self.settings.extend(execute.settings.iter().cloned());
        self.changes.extend(execute.changes.iter().cloned());
        self.signals.extend(execute.signals.iter().copied());
        self.tables.extend(execute.tables.iter().cloned());
        self.tables.sort();
        self.tables.dedup();
        self.reads_literals |= execute.reads_literals;
        self
    }
}

/// Facts of one top-level statement (a `RawStmt`'s `stmt`).
pub fn facts_of(stmt: &Tree) -> StatementFacts {
    let mut facts = StatementFacts::default();
    let kind = kind_of(stmt);
    facts.kinds.push(kind);
    let access = match kind {
        "select" | "explain" | "show" | "set" | "reset" | "transaction" | "prepare" | "execute"
        | "deallocate" | "declare" | "fetch" | "close" | "listen" | "unlisten" | "notify"
        | "discard" | "do" | "call" | "other" => Access::Read,
        "truncate" => Access::Write,
        _ => Access::Ddl,
    };
    let mut walk = Walk {
        facts: &mut facts,
        in_cte: false,
        nested: false,
        not_run: false,
        in_view: false,
        function_rows: Vec::new(),
    };
    function_rows(stmt, &mut walk.function_rows);
    walk.visit(stmt, access);
    // Each kind once, the statement's own first.
    let mut seen = Vec::with_capacity(facts.kinds.len());
    facts.kinds.retain(|kind| {
        let first = !seen.contains(kind);
        seen.push(*kind);
        first
    });
    facts.tables.sort();
    facts.tables.dedup();
    facts.functions.sort();
    facts.functions.dedup();
    facts.settings.sort();
    facts.settings.dedup();
    facts
}

struct Walk<'f> {
    facts: &'f mut StatementFacts,
    in_cte: bool,
    /// The top-level statement was entered: statements met from now on are nested.
    nested: bool,
    /// Inside a plain EXPLAIN: what it shows is not run.
    not_run: bool,
    /// Inside the query of a view: it runs whenever the view is read, with no trace of it
    /// in the statements that read it.
    in_view: bool,
    /// Names of functions in FROM (`FROM concat('/etc/passwd') t`: `t`), whose row may be a
    /// plain value: `t.f` is then `f(value)`.
    function_rows: Vec<String>,
}

/// The names FROM gives functions in it: the alias, else the function's own name.
fn function_rows(node: &Tree, found: &mut Vec<String>) {
    if node.name() == Some("RangeFunction") {
        match node
            .field("alias")
            .and_then(|a| a.field("aliasname"))
            .and_then(Tree::as_str)
            .filter(|a| !a.is_empty())
        {
            Some(alias) => found.push(alias.to_lowercase()),
            None => {
                let mut calls = Vec::new();
                collect_calls(node.field("functions"), &mut calls);
                found.extend(calls);
            }
        }
    }
    for (_, child) in node.children() {
        function_rows(child, found);
    }
}

/// The unqualified names of the function calls directly in a RangeFunction's list.
fn collect_calls(node: Option<&Tree>, found: &mut Vec<String>) {
    for (_, child) in node.map(Tree::children).into_iter().flatten() {
        if child.name() == Some("FuncCall") {
            let name = qualified_name(child.field("funcname"));
            found.push(name.rsplit('.').next().unwrap_or(&name).to_lowercase());
        } else {
            // The lists of (call, column definitions) pairs.
            collect_calls(Some(child), found);
        }
    }
}

impl Walk<'_> {
    fn visit(&mut self, node: &Tree, access: Access) {
        let nested = std::mem::replace(&mut self.nested, true);
        // What a statement does inside another counts as a kind of it too, so that a rule
        // on `delete` sees the DELETE in a CTE, a COPY (…) or a MERGE, and a rule on
        // `select` sees the query of a COPY, a cursor, a view or CREATE TABLE AS.
        if !self.not_run {
            added_kinds(node, nested, &mut self.facts.kinds);
        }
        match node.name() {
            Some("RangeVar") => {
                let schema = node
                    .field("schemaname")
                    .and_then(Tree::as_str)
                    .unwrap_or("");
                let relation = node.field("relname").and_then(Tree::as_str).unwrap_or("");
                let name = if schema.is_empty() {
                    relation.to_owned()
                } else {
                    format!("{schema}.{relation}")
                };
                // A view over pg_settings can be updated like pg_settings, which turns an
                // UPDATE into set_config: a view naming it could change any setting later.
                if self.in_view && relation == "pg_settings" {
                    self.changes_any_setting();
                }
                self.facts.tables.push(TableRef {
                    name,
                    access,
                    temporary: schema == "pg_temp",
                });
                self.visit_fields(node, Access::Read, &["schemaname", "relname"]);
            }
            Some(dml @ ("InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt")) => {
                if self.in_cte {
                    self.facts.flags.data_modifying_cte = true;
                }
                if matches!(dml, "UpdateStmt" | "DeleteStmt")
                    && !node.field("where_clause").is_some_and(Tree::is_present)
                {
                    self.facts.flags.no_where = true;
                }
                // MERGE … ON true (a join condition that names no column matches every
                // row): its UPDATE or DELETE actions change every row of the target.
                if dml == "MergeStmt"
                    && !node.field("join_condition").is_some_and(names_a_column)
                    && node.field("merge_when_clauses").is_some_and(|clauses| {
                        clauses.children().any(|(_, clause)| {
                            use pg_query::protobuf::CmdType;
                            let command = clause.field("command_type").and_then(Tree::as_int);
                            command == Some(CmdType::CmdUpdate as i64)
                                || command == Some(CmdType::CmdDelete as i64)
                        })
                    })
                {
                    self.facts.flags.no_where = true;
                }
                if let Some(relation) = node.field("relation") {
                    // pg_settings has a rule that turns an UPDATE into set_config(name,
                    // setting, false): a write to it can change any setting.
                    if relation.field("relname").and_then(Tree::as_str) == Some("pg_settings") {
                        self.changes_any_setting();
                    }
                    self.visit(relation, Access::Write);
                }
                self.visit_fields(node, Access::Read, &["relation"]);
            }
            Some("SelectStmt") => self.visit_fields(node, Access::Read, &[]),
            Some("IntoClause") => {
                if let Some(rel) = node.field("rel") {
                    self.visit(rel, Access::Ddl);
                }
                self.visit_fields(node, Access::Read, &["rel"]);
            }
            Some("CommonTableExpr") => {
                let outer = std::mem::replace(&mut self.in_cte, true);
                self.visit_fields(node, access, &[]);
                self.in_cte = outer;
            }
            Some("FuncCall") => {
                let args = match node.field("args") {
                    Some(Tree::Seq(items)) => &items[..],
                    _ => &[],
                };
                self.called(qualified_name(node.field("funcname")), args);
                self.visit_fields(node, Access::Read, &["funcname"]);
            }
            // Column notation on a function in FROM: `SELECT t.pg_read_file FROM
            // concat('/etc/passwd') t` calls pg_read_file with t's value.
            Some("ColumnRef") => {
                let parts: Vec<&str> = node
                    .field("fields")
                    .map(Tree::children)
                    .into_iter()
                    .flatten()
                    .filter_map(|(_, part)| part.field("sval").and_then(Tree::as_str))
                    .collect();
                if let [.., row, name] = parts[..] {
                    if self
                        .function_rows
                        .iter()
                        .any(|r| r.eq_ignore_ascii_case(row))
                    {
                        self.called(name.to_owned(), &[]);
                    }
                }
            }
            // Column notation: `(x).f` is `f(x)` unless x is a row with a field f, which
            // only the server knows; so each name selected counts as a function called,
            // with what it is selected from as its argument (known for the first only).
            Some("AIndirection") => {
                let parts = node.field("indirection").map(Tree::children);
                for (i, (_, part)) in parts.into_iter().flatten().enumerate() {
                    if part.name() != Some("String") {
                        continue;
                    }
                    if let Some(name) = part.field("sval").and_then(Tree::as_str) {
                        let arg = node.field("arg").filter(|_| i == 0);
                        self.called(
                            name.to_owned(),
                            arg.map(std::slice::from_ref).unwrap_or(&[]),
                        );
                    }
                }
                self.visit_fields(node, access, &[]);
            }
            Some("CopyStmt") => {
                // Whether a server file is named is read from a literal: the tree shows
                // `TO ''` (which names none) like `TO STDOUT`, so `COPY t TO ''` must not
                // share its analysis with `COPY t TO '/some/file'`, which has its shape.
                self.facts.reads_literals = true;
                let from = node.field("is_from").is_some_and(Tree::as_bool);
                if node.field("is_program").is_some_and(Tree::as_bool) {
                    self.facts.flags.copy_program = true;
                } else if node.field("filename").is_some_and(Tree::is_present) {
                    self.facts.flags.copy_file = true;
                }
                if let Some(relation) = node.field("relation") {
                    self.visit(relation, if from { Access::Write } else { Access::Read });
                }
                self.visit_fields(node, Access::Read, &["relation"]);
            }
            Some("DropStmt") => {
                use pg_query::protobuf::DropBehavior;
                if node.field("behavior").and_then(Tree::as_int)
                    == Some(DropBehavior::DropCascade as i64)
                {
                    self.facts.flags.drop_cascade = true;
                }
                self.drop_objects(node);
                self.visit_fields(node, access, &[]);
            }
            Some("VariableSetStmt") => {
                use pg_query::protobuf::VariableSetKind;
                let name = node.field("name").and_then(Tree::as_str).unwrap_or("");
                let name = if name.is_empty() {
                    "all".to_owned()
                } else {
                    name.to_lowercase()
                };
                let kind = node
                    .field("kind")
                    .and_then(Tree::as_int)
                    .and_then(|k| VariableSetKind::try_from(k as i32).ok());
                let value = match kind {
                    Some(
                        VariableSetKind::VarReset
                        | VariableSetKind::VarResetAll
                        | VariableSetKind::VarSetDefault,
                    ) => SettingValue::Reset,
                    _ => {
                        // The value is a literal the normalized text does not keep.
                        self.facts.reads_literals = true;
                        let constants: Option<Vec<String>> = match node.field("args") {
                            Some(Tree::Seq(args)) => args.iter().map(constant_string).collect(),
                            _ => None,
                        };
                        match constants {
                            Some(list) if name == "search_path" => SettingValue::List(list),
                            Some(mut list) if list.len() == 1 => {
                                SettingValue::Value(list.remove(0))
                            }
                            _ => SettingValue::Unknown,
                        }
                    }
                };
                let local = node.field("is_local").is_some_and(Tree::as_bool);
                // SET TRANSACTION / SET SESSION CHARACTERISTICS AS TRANSACTION: one change
                // per mode, so that locks are checked mode by mode.
                let per_mode = match name.as_str() {
                    "transaction" => Some(""),
                    "session characteristics" => Some("default_"),
                    _ => None,
                };
                let modes = per_mode.map(|prefix| transaction_modes(node.field("args"), prefix));
                match modes {
                    Some(modes) if !modes.is_empty() => {
                        for change in modes {
                            self.facts.settings.push(change.name.clone());
                            self.facts.changes.push(change);
                        }
                    }
                    _ => {
                        self.facts.changes.push(SettingChange {
                            name: name.clone(),
                            value,
                            local,
                        });
                        self.facts.settings.push(name);
                    }
                }
                self.visit_fields(node, access, &[]);
            }
            // BEGIN / START TRANSACTION with modes: they override the session's defaults.
            Some("TransactionStmt") => {
                for change in transaction_modes(node.field("options"), "") {
                    self.facts.settings.push(change.name.clone());
                    self.facts.changes.push(change);
                }
                self.visit_fields(node, access, &[]);
            }
            Some("DoStmt") | Some("CallStmt") => {
                self.facts.flags.dynamic_sql = true;
                // A DO block's code is a literal: two blocks differ only there.
                self.facts.reads_literals |= node.name() == Some("DoStmt");
                self.visit_fields(node, access, &[]);
            }
            // So is a function's body (`AS '…'`).
            Some("CreateFunctionStmt") => {
                self.facts.reads_literals = true;
                self.visit_fields(node, access, &[]);
            }
            Some("ExecuteStmt") => {
                self.facts.flags.dynamic_sql = true;
                self.facts.executes = node.field("name").and_then(Tree::as_str).map(str::to_owned);
                self.visit_fields(node, access, &[]);
            }
            Some("DeallocateStmt") => {
                self.facts.deallocates = if node.field("isall").is_some_and(Tree::as_bool) {
                    Some("*".to_owned())
                } else {
                    node.field("name").and_then(Tree::as_str).map(str::to_owned)
                };
            }
            Some("DiscardStmt") => {
                let all = node.field("target").and_then(Tree::as_int)
                    == Some(pg_query::protobuf::DiscardMode::DiscardAll as i64);
                if all {
                    self.facts.deallocates = Some("*".to_owned());
                    self.facts.cursor = Some(CursorUse::Close("*".to_owned()));
                }
            }
            Some(cursor @ ("DeclareCursorStmt" | "FetchStmt" | "ClosePortalStmt")) => {
                let name = node
                    .field("portalname")
                    .and_then(Tree::as_str)
                    .filter(|n| !n.is_empty())
                    .map(str::to_owned);
                self.facts.cursor = match (cursor, name) {
                    ("DeclareCursorStmt", Some(name)) => Some(CursorUse::Declare(name)),
                    ("FetchStmt", Some(name)) => Some(CursorUse::Fetch(name)),
                    ("ClosePortalStmt", name) => {
                        Some(CursorUse::Close(name.unwrap_or_else(|| "*".to_owned())))
                    }
                    _ => None,
                };
                self.visit_fields(node, access, &[]);
            }
            Some("PrepareStmt") => {
                self.facts.prepares = node.field("name").and_then(Tree::as_str).map(str::to_owned);
                if let Some(query) = node.field("query") {
                    let inner = kind_of(query);
                    self.facts.kinds.push(inner);
                }
                self.visit_fields(node, access, &[]);
            }
            Some("ExplainStmt") => {
                self.facts.reads_literals |= options_have_values(node);
                let analyze = node.field("options").is_some_and(|options| {
                    options.children().any(|(_, option)| {
                        // `ANALYZE` alone, or with anything but an explicit false.
                        option.field("defname").and_then(Tree::as_str) == Some("analyze")
                            && option
                                .field("arg")
                                .and_then(constant_bool)
                                .is_none_or(|on| on)
                    })
                });
                if analyze {
                    self.facts.flags.explain_analyze = true;
                    if let Some(query) = node.field("query") {
                        self.facts.kinds.push(kind_of(query));
                    }
                }
                let not_run = !analyze || self.not_run;
                let outer = std::mem::replace(&mut self.not_run, not_run);
                self.visit_fields(node, access, &[]);
                self.not_run = outer;
            }
            Some("ViewStmt" | "RuleStmt" | "CreateTableAsStmt") => {
                let outer = self.in_view;
                // A materialized view's query runs again at every REFRESH.
                self.in_view = node.name() != Some("CreateTableAsStmt")
                    || kind_of(node) == "create materialized view";
                self.in_view |= outer;
                self.visit_fields(node, access, &[]);
                self.in_view = outer;
            }
            // INSERT … ON CONFLICT DO UPDATE updates the rows it conflicts with.
            Some("OnConflictClause") => {
                use pg_query::protobuf::OnConflictAction;
                if !self.not_run
                    && node.field("action").and_then(Tree::as_int)
                        == Some(OnConflictAction::OnconflictUpdate as i64)
                {
                    self.facts.kinds.push("update");
                }
                self.visit_fields(node, access, &[]);
            }
            Some("MergeWhenClause") => {
                use pg_query::protobuf::CmdType;
                let command = node
                    .field("command_type")
                    .and_then(Tree::as_int)
                    .and_then(|t| CmdType::try_from(t as i32).ok());
                if !self.not_run {
                    match command {
                        Some(CmdType::CmdUpdate) => self.facts.kinds.push("update"),
                        Some(CmdType::CmdInsert) => self.facts.kinds.push("insert"),
                        Some(CmdType::CmdDelete) => self.facts.kinds.push("delete"),
                        _ => {}
                    }
                }
                self.visit_fields(node, access, &[]);
            }
            // Role membership given or taken away with the role's other options (CREATE
            // ROLE … IN ROLE / ROLE / ADMIN, ALTER GROUP … ADD / DROP USER): a GRANT.
            Some(role @ ("CreateRoleStmt" | "AlterRoleStmt")) => {
                let membership = node.field("options").is_some_and(|options| {
                    options.children().any(|(_, option)| {
                        matches!(
                            option.field("defname").and_then(Tree::as_str),
                            Some("addroleto" | "rolemembers" | "adminmembers")
                        )
                    })
                });
                if membership {
                    let removes = role == "AlterRoleStmt"
                        && node.field("action").and_then(Tree::as_int) == Some(-1);
                    self.facts
                        .kinds
                        .push(if removes { "revoke" } else { "grant" });
                }
                self.visit_fields(node, access, &[]);
            }
            _ => self.visit_fields(node, access, &[]),
        }
    }

    /// A change of settings that cannot be named (refused as `*`).
    fn changes_any_setting(&mut self) {
        self.facts.changes.push(SettingChange {
            name: "*".to_owned(),
            value: SettingValue::Unknown,
            local: false,
        });
        self.facts.settings.push("*".to_owned());
    }

    /// A call of the function `name` (as written) with these arguments.
    fn called(&mut self, name: String, args: &[Tree]) {
        let arg = |n: usize| args.get(n);
        let unqualified = name.rsplit('.').next().unwrap_or(&name);
        // In a view, set_config would change settings whenever the view is read, where no
        // statement shows it.
        if unqualified == "set_config" && self.in_view {
            self.changes_any_setting();
        }
        // Whatever the qualification: `app.pg_catalog.set_config` is the same function.
        if unqualified == "set_config" {
            self.facts.reads_literals = true;
            let setting = arg(0)
                .and_then(constant_string)
                .map_or_else(|| "*".to_owned(), |s| s.to_lowercase());
            let value = arg(1)
                .and_then(constant_string)
                .map_or(SettingValue::Unknown, SettingValue::Value);
            // Session-wide only with a constant false.
            let local = arg(2).and_then(constant_bool) != Some(false);
            self.facts.changes.push(SettingChange {
                name: setting.clone(),
                value,
                local,
            });
            self.facts.settings.push(setting);
        }
        if matches!(unqualified, "pg_cancel_backend" | "pg_terminate_backend") {
            self.facts.reads_literals = true;
            let pid = arg(0)
                .and_then(constant_int)
                .and_then(|pid| i32::try_from(pid).ok());
            self.facts.signals.push(pid);
        }
        self.facts.functions.push(name);
    }

    fn visit_fields(&mut self, node: &Tree, access: Access, skip: &[&str]) {
        for (key, child) in node.children() {
            if !skip.contains(&key) {
                self.visit(child, access);
            }
        }
    }

    /// DROP TABLE/VIEW/…: the objects are name lists, not RangeVars.
    fn drop_objects(&mut self, node: &Tree) {
        use pg_query::protobuf::ObjectType;
        let relation_like = node
            .field("remove_type")
            .and_then(Tree::as_int)
            .and_then(|t| ObjectType::try_from(t as i32).ok())
            .is_some_and(|t| {
                matches!(
                    t,
                    ObjectType::ObjectTable
                        | ObjectType::ObjectView
                        | ObjectType::ObjectMatview
                        | ObjectType::ObjectForeignTable
                        | ObjectType::ObjectSequence
                        | ObjectType::ObjectIndex
                )
            });
        if !relation_like {
            return;
        }
        for (_, object) in node
            .field("objects")
            .map(Tree::children)
            .into_iter()
            .flatten()
        {
            let items = object.field("items");
            let name = qualified_name(items);
            if !name.is_empty() {
                let parts: Vec<&str> = items
                    .map(Tree::children)
                    .into_iter()
                    .flatten()
                    .filter_map(|(_, part)| part.field("sval").and_then(Tree::as_str))
                    .collect();
                self.facts.tables.push(TableRef {
                    name,
                    access: Access::Ddl,
                    temporary: matches!(parts.as_slice(), ["pg_temp", _]),
                });
            }
        }
    }
}

/// `a.b.c` from a list of String nodes (function and object names).
fn qualified_name(list: Option<&Tree>) -> String {
    let mut parts = Vec::new();
    for (_, part) in list.map(Tree::children).into_iter().flatten() {
        if let Some(s) = part.field("sval").and_then(Tree::as_str) {
            parts.push(s);
        }
    }
    parts.join(".")
}

/// The value of a string constant (`'name'`, also through a cast).
fn constant_string(node: &Tree) -> Option<String> {
    match node.name()? {
        "AConst" => node
            .field("val")?
            .field("sval")?
            .as_str()
            .map(str::to_owned),
        "TypeCast" => constant_string(node.field("arg")?),
        _ => None,
    }
}

/// An integer constant (`42`, `'42'`, `42::int`).
fn constant_int(node: &Tree) -> Option<i64> {
    match node.name()? {
        "AConst" => {
            let val = node.field("val")?;
            match val.name()? {
                // protobuf leaves a zero out.
                "Integer" => Some(val.field("ival").and_then(Tree::as_int).unwrap_or(0)),
                _ => val.field("sval")?.as_str()?.trim().parse().ok(),
            }
        }
        "TypeCast" => constant_int(node.field("arg")?),
        _ => None,
    }
}

/// Whether an EXPLAIN or COPY statement gives any option a value. Facts and masking read
/// those values (`ANALYZE 'off'`, `FORMAT 'csv'`, `HEADER false`), and a quoted one is a
/// literal to the scanner, so the statement's shape does not pin it: its analysis must not
/// be shared by shape.
fn options_have_values(node: &Tree) -> bool {
    node.field("options").is_some_and(|options| {
        options
            .children()
            .any(|(_, option)| option.field("arg").is_some_and(Tree::is_present))
    })
}

/// `true`/`false`/`on`/`off` in an EXPLAIN or COPY option.
pub(super) fn constant_bool(node: &Tree) -> Option<bool> {
    let text = match node.name()? {
        "String" => node.field("sval")?.as_str()?.to_owned(),
        "Boolean" => return Some(node.field("boolval").is_some_and(Tree::as_bool)),
        "AConst" => {
            let val = node.field("val")?;
            if val.name() == Some("Boolean") {
                return Some(val.field("boolval").is_some_and(Tree::as_bool));
            }
            val.field("sval")?.as_str()?.to_owned()
        }
        _ => constant_string(node)?,
    };
    match text.to_ascii_lowercase().as_str() {
        "true" | "on" | "1" | "yes" => Some(true),
        "false" | "off" | "0" | "no" => Some(false),
        _ => None,
    }
}

/// Whether a column is referenced anywhere under `node`.
fn names_a_column(node: &Tree) -> bool {
    node.name() == Some("ColumnRef") || node.children().any(|(_, child)| names_a_column(child))
}

/// Transaction modes (`READ WRITE`, `ISOLATION LEVEL …`, `DEFERRABLE`) as setting changes:
/// `transaction_read_only` and so on, with `prefix` (`default_` for SESSION
/// CHARACTERISTICS). Booleans become `on`/`off`.
fn transaction_modes(options: Option<&Tree>, prefix: &str) -> Vec<SettingChange> {
    let Some(options) = options else {
        return Vec::new();
    };
    options
        .children()
        .filter_map(|(_, option)| {
            let mode = option.field("defname").and_then(Tree::as_str)?;
            if !mode.starts_with("transaction_") {
                return None;
            }
            let arg = option.field("arg");
            // READ ONLY / READ WRITE and DEFERRABLE are integer constants in the tree.
            let on = arg.and_then(|a| constant_bool(a).or_else(|| constant_int(a).map(|n| n != 0)));
            let value = match on {
                Some(on) => SettingValue::Value(if on { "on" } else { "off" }.to_owned()),
                None => arg
                    .and_then(constant_string)
                    .map_or(SettingValue::Unknown, SettingValue::Value),
            };
            Some(SettingChange {
                name: format!("{prefix}{mode}"),
                value,
                local: prefix.is_empty(),
            })
        })
        .collect()
}

/// The kinds a statement adds besides its own: DML nested anywhere (a CTE, `COPY (DELETE
/// …)`, a rule's action), the query a COPY, cursor, view, CREATE TABLE AS, SELECT INTO or
/// INSERT … SELECT reads, and the statements of a CREATE SCHEMA. A subquery in an
/// expression adds nothing: the statement around it is what it serves.
fn added_kinds(node: &Tree, nested: bool, kinds: &mut Vec<&'static str>) {
    let Some(name) = node.name() else { return };
    if nested
        && matches!(
            name,
            "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt"
        )
    {
        kinds.push(kind_of(node));
    }
    let reads = |query: Option<&Tree>| {
        query.is_some_and(|q| {
            q.name() == Some("SelectStmt") && !q.field("values_lists").is_some_and(Tree::is_present)
        })
    };
    match name {
        "CopyStmt" | "DeclareCursorStmt" | "CreateTableAsStmt" | "ViewStmt"
            if reads(node.field("query")) =>
        {
            kinds.push("select");
        }
        "InsertStmt" if reads(node.field("select_stmt")) => kinds.push("select"),
        "SelectStmt" if node.field("into_clause").is_some_and(Tree::is_present) => {
            kinds.push("select");
        }
        "CreateSchemaStmt" => {
            if let Some(elements) = node.field("schema_elts") {
                kinds.extend(elements.children().map(|(_, element)| kind_of(element)));
            }
        }
        // ALTER FUNCTION … RENAME / OWNER TO / SET SCHEMA / DEPENDS ON EXTENSION and the
        // like are written as statements of their own, about any object type: they alter
        // the function (or trigger, rule) all the same.
        "RenameStmt" => kinds.extend(altered_object(node, "rename_type")),
        "AlterOwnerStmt" | "AlterObjectDependsStmt" => {
            kinds.extend(altered_object(node, "object_type"));
        }
        "AlterTableCmd" => kinds.extend(altered_by_table_command(node)),
        _ => {}
    }
}

/// The kind of altering a function, trigger or rule, for the statements that alter any
/// object type (RENAME, OWNER TO, SET SCHEMA, DEPENDS ON EXTENSION).
fn altered_object(node: &Tree, type_field: &str) -> Option<&'static str> {
    use pg_query::protobuf::ObjectType;
    let object_type = node
        .field(type_field)
        .and_then(Tree::as_int)
        .and_then(|t| ObjectType::try_from(t as i32).ok())?;
    match object_type {
        ObjectType::ObjectFunction
        | ObjectType::ObjectProcedure
        | ObjectType::ObjectRoutine
        | ObjectType::ObjectAggregate => Some("alter function"),
        ObjectType::ObjectTrigger => Some("alter trigger"),
        ObjectType::ObjectRule => Some("alter rule"),
        ObjectType::ObjectEventTrigger => Some("alter event trigger"),
        ObjectType::ObjectPolicy => Some("alter policy"),
        _ => None,
    }
}

/// What one ALTER TABLE subcommand changes besides the table's shape: who owns it, which of
/// its triggers and rules run, and whether row-level security applies.
fn altered_by_table_command(command: &Tree) -> Option<&'static str> {
    use pg_query::protobuf::AlterTableType as At;
    let subtype = command
        .field("subtype")
        .and_then(Tree::as_int)
        .and_then(|t| At::try_from(t as i32).ok())?;
    match subtype {
        At::AtChangeOwner => Some("alter owner"),
        At::AtEnableTrig
        | At::AtEnableAlwaysTrig
        | At::AtEnableReplicaTrig
        | At::AtDisableTrig
        | At::AtEnableTrigAll
        | At::AtDisableTrigAll
        | At::AtEnableTrigUser
        | At::AtDisableTrigUser => Some("alter trigger"),
        At::AtEnableRule | At::AtEnableAlwaysRule | At::AtEnableReplicaRule | At::AtDisableRule => {
            Some("alter rule")
        }
        At::AtEnableRowSecurity
        | At::AtDisableRowSecurity
        | At::AtForceRowSecurity
        | At::AtNoForceRowSecurity => Some("alter row level security"),
        _ => None,
    }
}

/// The kind of a fast-path FunctionCall message (which has no SQL text).
pub const FUNCTION_CALL: &str = "function call";

/// Every statement kind [`StatementFacts::kinds`] can hold, sorted: what a rule's
/// `statements` may name (`policy` refuses a rule naming anything else, which would never
/// match). A test checks it against the kinds this module writes.
pub const KINDS: [&str; 112] = [
    "alter database",
    "alter default privileges",
    "alter event trigger",
    "alter extension",
    "alter function",
    "alter index",
    "alter materialized view",
    "alter operator",
    "alter operator family",
    "alter owner",
    "alter policy",
    "alter role",
    "alter row level security",
    "alter rule",
    "alter sequence",
    "alter system",
    "alter table",
    "alter trigger",
    "alter type",
    "alter view",
    "analyze",
    "call",
    "checkpoint",
    "close",
    "cluster",
    "comment",
    "copy",
    "create",
    "create access method",
    "create aggregate",
    "create cast",
    "create conversion",
    "create database",
    "create event trigger",
    "create extension",
    "create foreign data wrapper",
    "create foreign table",
    "create function",
    "create index",
    "create language",
    "create materialized view",
    "create operator",
    "create operator class",
    "create operator family",
    "create policy",
    "create procedure",
    "create publication",
    "create role",
    "create rule",
    "create schema",
    "create sequence",
    "create server",
    "create subscription",
    "create table",
    "create transform",
    "create trigger",
    "create type",
    "create user mapping",
    "create view",
    "deallocate",
    "declare",
    "delete",
    "discard",
    "do",
    "drop",
    "drop database",
    "drop event trigger",
    "drop extension",
    "drop foreign table",
    "drop function",
    "drop index",
    "drop materialized view",
    "drop owned",
    "drop policy",
    "drop procedure",
    "drop role",
    "drop rule",
    "drop schema",
    "drop sequence",
    "drop table",
    "drop trigger",
    "drop type",
    "drop view",
    "execute",
    "explain",
    "fetch",
    "function call",
    "grant",
    "import foreign schema",
    "insert",
    "listen",
    "load",
    "lock",
    "merge",
    "notify",
    "other",
    "prepare",
    "reassign owned",
    "refresh materialized view",
    "reindex",
    "rename",
    "reset",
    "revoke",
    "security label",
    "select",
    "set",
    "show",
    "transaction",
    "truncate",
    "unlisten",
    "update",
    "vacuum",
];

/// A short, stable name for what a statement node does.
pub fn kind_of(node: &Tree) -> &'static str {
    use pg_query::protobuf::ObjectType;
    let object_type = |field: &str| {
        node.field(field)
            .and_then(Tree::as_int)
            .and_then(|t| ObjectType::try_from(t as i32).ok())
    };
    match node.name().unwrap_or("") {
        "SelectStmt" if node.field("into_clause").is_some_and(Tree::is_present) => "create table",
        "SelectStmt" => "select",
        "InsertStmt" => "insert",
        "UpdateStmt" => "update",
        "DeleteStmt" => "delete",
        "MergeStmt" => "merge",
        "CopyStmt" => "copy",
        "TruncateStmt" => "truncate",
        "TransactionStmt" => "transaction",
        "VariableSetStmt" => match node.field("kind").and_then(Tree::as_int) {
            Some(k)
                if k == pg_query::protobuf::VariableSetKind::VarReset as i64
                    || k == pg_query::protobuf::VariableSetKind::VarResetAll as i64 =>
            {
                "reset"
            }
            _ => "set",
        },
        "VariableShowStmt" => "show",
        "ExplainStmt" => "explain",
        "PrepareStmt" => "prepare",
        "ExecuteStmt" => "execute",
        "DeallocateStmt" => "deallocate",
        "DoStmt" => "do",
        "CallStmt" => "call",
        "GrantStmt" if node.field("is_grant").is_some_and(Tree::as_bool) => "grant",
        "GrantStmt" => "revoke",
        "GrantRoleStmt" if node.field("is_grant").is_some_and(Tree::as_bool) => "grant",
        "GrantRoleStmt" => "revoke",
        "VacuumStmt" if node.field("is_vacuumcmd").is_some_and(Tree::as_bool) => "vacuum",
        "VacuumStmt" => "analyze",
        "ReindexStmt" => "reindex",
        "ClusterStmt" => "cluster",
        "ListenStmt" => "listen",
        "UnlistenStmt" => "unlisten",
        "NotifyStmt" => "notify",
        "LockStmt" => "lock",
        "DeclareCursorStmt" => "declare",
        "FetchStmt" => "fetch",
        "ClosePortalStmt" => "close",
        "DiscardStmt" => "discard",
        "CheckPointStmt" => "checkpoint",
        "LoadStmt" => "load",
        "CreateStmt" => "create table",
        "CreateTableAsStmt" => match object_type("objtype") {
            Some(ObjectType::ObjectMatview) => "create materialized view",
            _ => "create table",
        },
        "IndexStmt" => "create index",
        "ViewStmt" => "create view",
        "CreateSchemaStmt" => "create schema",
        "CreateFunctionStmt" if node.field("is_procedure").is_some_and(Tree::as_bool) => {
            "create procedure"
        }
        "CreateFunctionStmt" => "create function",
        "AlterFunctionStmt" => "alter function",
        "CreateTrigStmt" => "create trigger",
        "RuleStmt" => "create rule",
        "CreateRoleStmt" => "create role",
        "AlterRoleStmt" | "AlterRoleSetStmt" => "alter role",
        "DropRoleStmt" => "drop role",
        "CreatedbStmt" => "create database",
        "AlterDatabaseStmt" | "AlterDatabaseSetStmt" => "alter database",
        "DropdbStmt" => "drop database",
        "CreateSeqStmt" => "create sequence",
        "AlterSeqStmt" => "alter sequence",
        "CreateExtensionStmt" => "create extension",
        "CreateEnumStmt" | "CompositeTypeStmt" | "CreateRangeStmt" | "CreateDomainStmt" => {
            "create type"
        }
        "AlterTableStmt" => match object_type("objtype") {
            Some(ObjectType::ObjectIndex) => "alter index",
            Some(ObjectType::ObjectView) => "alter view",
            Some(ObjectType::ObjectSequence) => "alter sequence",
            Some(ObjectType::ObjectMatview) => "alter materialized view",
            _ => "alter table",
        },
        "AlterSystemStmt" => "alter system",
        "RenameStmt" => "rename",
        "AlterOwnerStmt" => "alter owner",
        // ALTER … SET SCHEMA: PostgreSQL's command tag names the object type.
        "AlterObjectSchemaStmt" => match object_type("object_type") {
            Some(ObjectType::ObjectTable | ObjectType::ObjectForeignTable) => "alter table",
            Some(ObjectType::ObjectView) => "alter view",
            Some(ObjectType::ObjectMatview) => "alter materialized view",
            Some(ObjectType::ObjectSequence) => "alter sequence",
            Some(
                ObjectType::ObjectFunction
                | ObjectType::ObjectProcedure
                | ObjectType::ObjectRoutine
                | ObjectType::ObjectAggregate,
            ) => "alter function",
            Some(ObjectType::ObjectType | ObjectType::ObjectDomain) => "alter type",
            _ => "other",
        },
        "RefreshMatViewStmt" => "refresh materialized view",
        "CommentStmt" => "comment",
        // An operator, cast or aggregate calls a function with no function call in the
        // statements that use it: code, like CREATE FUNCTION.
        "DefineStmt" => match object_type("kind") {
            Some(ObjectType::ObjectAggregate) => "create aggregate",
            Some(ObjectType::ObjectOperator) => "create operator",
            _ => "create",
        },
        "CreateCastStmt" => "create cast",
        "CreateOpClassStmt" => "create operator class",
        "CreateOpFamilyStmt" => "create operator family",
        "AlterOpFamilyStmt" => "alter operator family",
        "AlterOperatorStmt" => "alter operator",
        "CreateConversionStmt" => "create conversion",
        "CreateTransformStmt" => "create transform",
        "CreateAmStmt" => "create access method",
        "CreatePLangStmt" => "create language",
        "CreateEventTrigStmt" => "create event trigger",
        "AlterEventTrigStmt" => "alter event trigger",
        "AlterExtensionStmt" | "AlterExtensionContentsStmt" => "alter extension",
        "CreatePolicyStmt" => "create policy",
        "AlterPolicyStmt" => "alter policy",
        "SecLabelStmt" => "security label",
        "DropOwnedStmt" => "drop owned",
        "ReassignOwnedStmt" => "reassign owned",
        "AlterDefaultPrivilegesStmt" => "alter default privileges",
        "CreateForeignTableStmt" => "create foreign table",
        "CreateForeignServerStmt" | "AlterForeignServerStmt" => "create server",
        "CreateFdwStmt" | "AlterFdwStmt" => "create foreign data wrapper",
        "CreateUserMappingStmt" | "AlterUserMappingStmt" => "create user mapping",
        "ImportForeignSchemaStmt" => "import foreign schema",
        "CreateSubscriptionStmt" | "AlterSubscriptionStmt" => "create subscription",
        "CreatePublicationStmt" | "AlterPublicationStmt" => "create publication",
        "DropStmt" => match object_type("remove_type") {
            Some(ObjectType::ObjectTable) => "drop table",
            Some(ObjectType::ObjectView) => "drop view",
            Some(ObjectType::ObjectMatview) => "drop materialized view",
            Some(ObjectType::ObjectIndex) => "drop index",
            Some(ObjectType::ObjectSequence) => "drop sequence",
            Some(ObjectType::ObjectSchema) => "drop schema",
            Some(ObjectType::ObjectFunction) => "drop function",
            Some(ObjectType::ObjectProcedure) => "drop procedure",
            Some(ObjectType::ObjectTrigger) => "drop trigger",
            Some(ObjectType::ObjectRule) => "drop rule",
            Some(ObjectType::ObjectType) => "drop type",
            Some(ObjectType::ObjectExtension) => "drop extension",
            Some(ObjectType::ObjectForeignTable) => "drop foreign table",
            Some(ObjectType::ObjectPolicy) => "drop policy",
            Some(ObjectType::ObjectEventTrigger) => "drop event trigger",
            _ => "drop",
        },
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use crate::sql::Analyzer;

    /// [`KINDS`] is exactly what this module writes: the strings its kind functions return
    /// and those pushed as kinds.
    #[test]
    fn kinds_lists_every_kind_this_module_writes() {
        let source = include_str!("facts.rs");
        let mut written = std::collections::BTreeSet::new();
        let mut note = |text: &str, after: &[&str]| {
            let pieces: Vec<&str> = text.split('"').collect();
            for pair in pieces.windows(2).step_by(2) {
                let (before, literal) = (pair[0].trim_end(), pair[1]);
                if !literal.is_empty()
                    && literal.chars().all(|c| c.is_ascii_lowercase() || c == ' ')
                    && after.iter().any(|a| before.ends_with(a))
                {
                    written.insert(literal.to_owned());
                }
            }
        };
        for function in [
            "fn kind_of(",
            "fn altered_object(",
            "fn altered_by_table_command(",
        ] {
            let start = source.find(function).unwrap();
            let end = start + source[start..].find("\n}\n").unwrap();
            let body = &source[start..end];
            assert!(
                !body.contains("\\\""),
                "an escaped quote would pair strings wrongly"
            );
            note(body, &["=>", "Some(", "{"]);
        }
        for (at, push) in source.match_indices("kinds.push(\"") {
            let rest = &source[at + push.len()..];
            written.insert(rest[..rest.find('"').unwrap()].to_owned());
        }
        written.insert(super::FUNCTION_CALL.to_owned());
        let listed: std::collections::BTreeSet<String> =
            super::KINDS.iter().map(|k| (*k).to_owned()).collect();
        assert_eq!(written, listed);
        assert!(
            super::KINDS.windows(2).all(|w| w[0] < w[1]),
            "KINDS is sorted"
        );
    }

    /// `(sql, kinds of each statement joined by ";", tables as "name:access", functions,
    /// flags)`.
    type Case = (
        &'static str,
        &'static str,
        &'static [&'static str],
        &'static [&'static str],
        &'static [&'static str],
    );

    const CASES: &[Case] = &[
        // Reads.
        ("SELECT 1", "select", &[], &[], &[]),
        ("SELECT * FROM users WHERE id = 1", "select", &["users:read"], &[], &[]),
        ("SELECT u.email AS e FROM public.users u JOIN orders o ON o.uid = u.id", "select", &["orders:read", "public.users:read"], &[], &[]),
        ("SELECT * FROM a UNION SELECT * FROM b EXCEPT SELECT * FROM c", "select", &["a:read", "b:read", "c:read"], &[], &[]),
        ("SELECT (SELECT max(id) FROM t2) FROM t1", "select", &["t1:read", "t2:read"], &["max"], &[]),
        ("SELECT * FROM t WHERE id IN (SELECT id FROM s WHERE x = ANY(ARRAY[1,2]))", "select", &["s:read", "t:read"], &[], &[]),
        ("SELECT ARRAY[pg_read_file('/etc/passwd')]", "select", &[], &["pg_read_file"], &[]),
        // Column notation calls a function too: `(x).f` is `f(x)`.
        ("SELECT ('/etc/passwd'::text).pg_read_file", "select", &[], &["pg_read_file"], &[]),
        ("SELECT (t.x).lower.pg_ls_dir FROM t", "select", &["t:read"], &["lower", "pg_ls_dir"], &[]),
        ("SELECT (c.address).city, (c.tags)[1] FROM c", "select", &["c:read"], &["city"], &[]),
        // … and on a function in FROM, whose row is its value.
        ("SELECT t.pg_read_file FROM concat('/etc/passwd') t", "select", &[], &["concat", "pg_read_file"], &[]),
        ("SELECT unnest.pg_ls_dir, u.id FROM unnest(ARRAY['.']), u", "select", &["u:read"], &["pg_ls_dir", "unnest"], &[]),
        ("SELECT x.lo_import FROM ROWS FROM (pg_catalog.concat('/x')) AS x", "select", &[], &["lo_import", "pg_catalog.concat"], &[]),
        ("SELECT json_build_object('k', pg_ls_dir('.'))", "select", &[], &["json_build_object", "pg_ls_dir"], &[]),
        ("SELECT coalesce(lo_import('/etc/hosts'), 0)", "select", &[], &["lo_import"], &[]),
        ("SELECT CASE WHEN true THEN pg_read_binary_file('x') END", "select", &[], &["pg_read_binary_file"], &[]),
        ("SELECT 'a' COLLATE \"C\" || pg_catalog.pg_read_file('y')", "select", &[], &["pg_catalog.pg_read_file"], &[]),
        ("SELECT * FROM generate_series(1, 3) g", "select", &[], &["generate_series"], &[]),
        ("SELECT * FROM dblink('host=x', 'select 1') AS t(a int)", "select", &[], &["dblink"], &[]),
        ("SELECT pg_terminate_backend(pid) FROM pg_stat_activity", "select", &["pg_stat_activity:read"], &["pg_terminate_backend"], &[]),
        ("SELECT set_config('statement_timeout', '0', false)", "select", &[], &["set_config"], &[]),
        ("WITH x AS (SELECT * FROM t) SELECT * FROM x", "select", &["t:read", "x:read"], &[], &[]),
        ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) SELECT * FROM r", "select", &["r:read"], &[], &[]),
        ("SELECT * FROM t FOR UPDATE", "select", &["t:read"], &[], &[]),
        ("SELECT * FROM LATERAL (SELECT 1) s, t TABLESAMPLE SYSTEM (10)", "select", &["t:read"], &[], &[]),
        ("TABLE t", "select", &["t:read"], &[], &[]),
        ("VALUES (1), (2)", "select", &[], &[], &[]),
        ("SELECT $1::int", "select", &[], &[], &[]),
        ("SELECT count(*) FILTER (WHERE x > 0) OVER (PARTITION BY y) FROM t", "select", &["t:read"], &["count"], &[]),
        // Writes.
        ("INSERT INTO t VALUES (1)", "insert", &["t:write"], &[], &[]),
        ("INSERT INTO s.t (a) SELECT a FROM u ON CONFLICT (a) DO UPDATE SET a = excluded.a", "insert;select;update", &["s.t:write", "u:read"], &[], &[]),
        ("INSERT INTO t VALUES (1) RETURNING *", "insert", &["t:write"], &[], &[]),
        ("UPDATE t SET a = 1 WHERE id = 2", "update", &["t:write"], &[], &[]),
        ("UPDATE t SET a = 1", "update", &["t:write"], &[], &["no_where"]),
        ("UPDATE t SET a = u.a FROM u WHERE t.id = u.id", "update", &["t:write", "u:read"], &[], &[]),
        ("DELETE FROM t WHERE id = 1", "delete", &["t:write"], &[], &[]),
        ("DELETE FROM t", "delete", &["t:write"], &[], &["no_where"]),
        ("DELETE FROM ONLY t USING u WHERE t.id = u.id", "delete", &["t:write", "u:read"], &[], &[]),
        ("DELETE FROM t WHERE CURRENT OF c", "delete", &["t:write"], &[], &[]),
        ("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", "select;delete", &["d:read", "t:write"], &[], &["no_where", "data_modifying_cte"]),
        ("WITH d AS (DELETE FROM t WHERE id = 1 RETURNING *) INSERT INTO archive SELECT * FROM d", "insert;select;delete", &["archive:write", "d:read", "t:write"], &[], &["data_modifying_cte"]),
        ("WITH u AS (UPDATE t SET a = 1 RETURNING id) SELECT count(*) FROM u", "select;update", &["t:write", "u:read"], &["count"], &["no_where", "data_modifying_cte"]),
        ("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET a = s.a WHEN NOT MATCHED THEN INSERT VALUES (s.id, s.a)", "merge;update;insert", &["s:read", "t:write"], &[], &[]),
        ("TRUNCATE t, u", "truncate", &["t:write", "u:write"], &[], &[]),
        ("SELECT * INTO new_t FROM t", "create table;select", &["new_t:ddl", "t:read"], &[], &[]),
        // COPY.
        ("COPY t FROM STDIN", "copy", &["t:write"], &[], &[]),
        ("COPY t TO STDOUT", "copy", &["t:read"], &[], &[]),
        ("COPY (SELECT * FROM t) TO STDOUT WITH CSV", "copy;select", &["t:read"], &[], &[]),
        ("COPY t FROM PROGRAM 'curl evil'", "copy", &["t:write"], &[], &["copy_program"]),
        ("COPY t TO '/tmp/out.csv'", "copy", &["t:read"], &[], &["copy_file"]),
        ("COPY t FROM '/etc/passwd'", "copy", &["t:write"], &[], &["copy_file"]),
        // DDL.
        ("CREATE TABLE t (id int PRIMARY KEY REFERENCES u (id))", "create table", &["t:ddl", "u:ddl"], &[], &[]),
        ("CREATE TABLE t AS SELECT * FROM u", "create table;select", &["t:ddl", "u:read"], &[], &[]),
        ("CREATE MATERIALIZED VIEW mv AS SELECT * FROM u", "create materialized view;select", &["mv:ddl", "u:read"], &[], &[]),
        ("CREATE VIEW v AS SELECT a FROM t", "create view;select", &["t:read", "v:ddl"], &[], &[]),
        ("CREATE INDEX CONCURRENTLY i ON t (a)", "create index", &["t:ddl"], &[], &[]),
        ("ALTER TABLE t ADD COLUMN b int", "alter table", &["t:ddl"], &[], &[]),
        ("ALTER INDEX i RENAME TO j", "rename", &["i:ddl"], &[], &[]),
        ("ALTER FUNCTION f(int) RENAME TO g", "rename;alter function", &[], &[], &[]),
        ("ALTER PROCEDURE p() OWNER TO r", "alter owner;alter function", &[], &[], &[]),
        ("ALTER AGGREGATE a(int) SET SCHEMA s", "alter function", &[], &[], &[]),
        ("ALTER TABLE t SET SCHEMA s", "alter table", &["t:ddl"], &[], &[]),
        ("ALTER FUNCTION f() DEPENDS ON EXTENSION e", "other;alter function", &[], &[], &[]),
        ("ALTER TRIGGER tr ON t RENAME TO tr2", "rename;alter trigger", &["t:ddl"], &[], &[]),
        ("ALTER RULE r ON t RENAME TO r2", "rename;alter rule", &["t:ddl"], &[], &[]),
        ("ALTER TABLE t DISABLE TRIGGER ALL, ENABLE RULE r, OWNER TO x", "alter table;alter trigger;alter rule;alter owner", &["t:ddl"], &[], &[]),
        ("ALTER TABLE t DISABLE ROW LEVEL SECURITY", "alter table;alter row level security", &["t:ddl"], &[], &[]),
        ("CREATE POLICY p ON t USING (owner = current_user)", "create policy", &["t:ddl"], &[], &[]),
        ("ALTER POLICY p ON t RENAME TO q", "rename;alter policy", &["t:ddl"], &[], &[]),
        ("DROP POLICY p ON t", "drop policy", &[], &[], &[]),
        ("CREATE EVENT TRIGGER e ON ddl_command_start EXECUTE FUNCTION f()", "create event trigger", &[], &[], &[]),
        ("ALTER EXTENSION hstore UPDATE TO '1.8'", "alter extension", &[], &[], &[]),
        ("ALTER EXTENSION hstore ADD FUNCTION f()", "alter extension", &[], &[], &[]),
        ("CREATE OPERATOR CLASS c FOR TYPE int USING btree AS FUNCTION 1 f(int, int)", "create operator class", &[], &[], &[]),
        ("CREATE LANGUAGE plx HANDLER plx_call", "create language", &[], &[], &[]),
        ("SECURITY LABEL ON TABLE t IS 'secret'", "security label", &[], &[], &[]),
        ("DROP TABLE t", "drop table", &["t:ddl"], &[], &[]),
        ("DROP TABLE IF EXISTS s.t, u CASCADE", "drop table", &["s.t:ddl", "u:ddl"], &[], &["drop_cascade"]),
        ("DROP VIEW v", "drop view", &["v:ddl"], &[], &[]),
        ("DROP INDEX i", "drop index", &["i:ddl"], &[], &[]),
        ("DROP SCHEMA s CASCADE", "drop schema", &[], &[], &["drop_cascade"]),
        ("DROP DATABASE d", "drop database", &[], &[], &[]),
        ("DROP FUNCTION f(int)", "drop function", &[], &[], &[]),
        ("DROP ROLE r", "drop role", &[], &[], &[]),
        ("CREATE SCHEMA s", "create schema", &[], &[], &[]),
        ("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'", "create function", &[], &[], &[]),
        ("CREATE PROCEDURE p() LANGUAGE sql AS $$ DELETE FROM t $$", "create procedure", &[], &[], &[]),
        ("CREATE TRIGGER tr AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()", "create trigger", &["t:ddl"], &[], &[]),
        ("CREATE RULE r AS ON INSERT TO t DO INSTEAD DELETE FROM u", "create rule;delete", &["t:ddl", "u:write"], &[], &["no_where"]),
        ("CREATE EXTENSION dblink", "create extension", &[], &[], &[]),
        ("CREATE ROLE r LOGIN", "create role", &[], &[], &[]),
        ("ALTER ROLE r SUPERUSER", "alter role", &[], &[], &[]),
        ("ALTER SYSTEM SET wal_level = minimal", "alter system", &[], &[], &[]),
        ("CREATE DATABASE d", "create database", &[], &[], &[]),
        ("CREATE SEQUENCE seq", "create sequence", &["seq:ddl"], &[], &[]),
        ("CREATE TYPE mood AS ENUM ('sad', 'happy')", "create type", &[], &[], &[]),
        ("COMMENT ON TABLE t IS 'x'", "comment", &[], &[], &[]),
        ("REFRESH MATERIALIZED VIEW mv", "refresh materialized view", &["mv:ddl"], &[], &[]),
        ("GRANT SELECT ON t TO r", "grant", &["t:ddl"], &[], &[]),
        ("REVOKE ALL ON t FROM r", "revoke", &["t:ddl"], &[], &[]),
        ("GRANT admin TO bob", "grant", &[], &[], &[]),
        // Session and transaction control.
        ("BEGIN", "transaction", &[], &[], &[]),
        ("START TRANSACTION ISOLATION LEVEL SERIALIZABLE", "transaction", &[], &[], &[]),
        ("COMMIT", "transaction", &[], &[], &[]),
        ("ROLLBACK TO SAVEPOINT s", "transaction", &[], &[], &[]),
        ("SET search_path = app, public", "set", &[], &[], &[]),
        ("SET LOCAL statement_timeout = 0", "set", &[], &[], &[]),
        ("SET ROLE admin", "set", &[], &[], &[]),
        ("SET SESSION AUTHORIZATION bob", "set", &[], &[], &[]),
        ("RESET statement_timeout", "reset", &[], &[], &[]),
        ("RESET ALL", "reset", &[], &[], &[]),
        ("SHOW search_path", "show", &[], &[], &[]),
        ("DISCARD ALL", "discard", &[], &[], &[]),
        ("LISTEN ch", "listen", &[], &[], &[]),
        ("NOTIFY ch, 'x'", "notify", &[], &[], &[]),
        ("UNLISTEN *", "unlisten", &[], &[], &[]),
        ("LOCK TABLE t IN ACCESS EXCLUSIVE MODE", "lock", &["t:ddl"], &[], &[]),
        ("VACUUM ANALYZE t", "vacuum", &["t:ddl"], &[], &[]),
        ("ANALYZE t", "analyze", &["t:ddl"], &[], &[]),
        ("REINDEX TABLE t", "reindex", &["t:ddl"], &[], &[]),
        ("CLUSTER t USING i", "cluster", &["t:ddl"], &[], &[]),
        ("CHECKPOINT", "checkpoint", &[], &[], &[]),
        ("DECLARE c CURSOR FOR SELECT * FROM t", "declare;select", &["t:read"], &[], &[]),
        ("FETCH 10 FROM c", "fetch", &[], &[], &[]),
        ("CLOSE c", "close", &[], &[], &[]),
        // Code whose statements are not visible.
        ("DO $$ BEGIN DELETE FROM t; END $$", "do", &[], &[], &["dynamic_sql"]),
        ("CALL p(1)", "call", &[], &["p"], &["dynamic_sql"]),
        ("PREPARE q AS DELETE FROM t", "prepare;delete", &["t:write"], &[], &["no_where"]),
        ("EXECUTE q", "execute", &[], &[], &["dynamic_sql"]),
        ("DEALLOCATE q", "deallocate", &[], &[], &[]),
        // EXPLAIN: ANALYZE runs the inner statement.
        ("EXPLAIN DELETE FROM t", "explain", &["t:write"], &[], &["no_where"]),
        ("EXPLAIN ANALYZE DELETE FROM t", "explain;delete", &["t:write"], &[], &["no_where", "explain_analyze"]),
        ("EXPLAIN (ANALYZE, BUFFERS) SELECT * FROM t", "explain;select", &["t:read"], &[], &["explain_analyze"]),
        ("DROP TYPE row_type CASCADE", "drop type", &[], &[], &["drop_cascade"]),
        ("DROP FUNCTION f(int), g() CASCADE", "drop function", &[], &[], &["drop_cascade"]),
        ("EXPLAIN (ANALYZE false) UPDATE t SET a = 1", "explain", &["t:write"], &[], &["no_where"]),
        // Quoting and comments.
        ("SELECT \"Weird Name\".x FROM \"Weird Name\"", "select", &["Weird Name:read"], &[], &[]),
        ("/* DROP TABLE t */ SELECT 1 -- ; DELETE FROM t", "select", &[], &[], &[]),
        ("SELECT 'DROP TABLE t; --'", "select", &[], &[], &[]),
        ("SELECT $$; DELETE FROM t; $$", "select", &[], &[], &[]),
        ("SELECT E'\\'; DELETE FROM t; --'", "select", &[], &[], &[]),
        // What other statements do inside them.
        ("DROP OWNED BY CURRENT_USER CASCADE", "drop owned", &[], &[], &[]),
        (
            "CREATE SCHEMA s GRANT ALL ON TABLE public.payroll TO PUBLIC",
            "create schema;grant",
            &["public.payroll:ddl"],
            &[],
            &[],
        ),
        ("ALTER GROUP admins ADD USER bob", "alter role;grant", &[], &[], &[]),
        ("ALTER GROUP admins DROP USER bob", "alter role;revoke", &[], &[], &[]),
        ("CREATE ROLE x IN ROLE admins", "create role;grant", &[], &[], &[]),
        (
            "COPY (DELETE FROM t WHERE id = 1 RETURNING id) TO STDOUT",
            "copy;delete",
            &["t:write"],
            &[],
            &[],
        ),
        (
            "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
            "merge;delete",
            &["s:read", "t:write"],
            &[],
            &[],
        ),
        (
            "MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE",
            "merge;delete",
            &["s:read", "t:write"],
            &[],
            &["no_where"],
        ),
        (
            "MERGE INTO t USING s ON 1 = 1 WHEN MATCHED THEN UPDATE SET a = 1",
            "merge;update",
            &["s:read", "t:write"],
            &[],
            &["no_where"],
        ),
        // A plain EXPLAIN runs nothing.
        ("EXPLAIN DELETE FROM t WHERE id = 1", "explain", &["t:write"], &[], &[]),
    ];

    #[test]
    fn facts_of_statements_as_postgres_parses_them() {
        let analyzer = Analyzer::new(1024);
        for (sql, kinds, tables, functions, flags) in CASES {
            let analysis = analyzer
                .analyze(sql.as_bytes())
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            let got_kinds: Vec<String> = analysis
                .statements
                .iter()
                .map(|s| s.kinds.join(";"))
                .collect();
            assert_eq!(got_kinds.join(" | "), *kinds, "kinds of {sql}");
            let facts = &analysis.statements[0];
            let got_tables: Vec<String> = facts
                .tables
                .iter()
                .map(|t| format!("{}:{}", t.name, t.access.as_str()))
                .collect();
            assert_eq!(got_tables, *tables, "tables of {sql}");
            assert_eq!(facts.functions, *functions, "functions of {sql}");
            let got_flags: Vec<&str> = facts.flags.names().collect();
            assert_eq!(got_flags, *flags, "flags of {sql}");
        }
        assert!(CASES.len() >= 100, "{} cases", CASES.len());
    }

    #[test]
    fn settings_changed_are_named() {
        let analyzer = Analyzer::new(16);
        let settings = |sql: &str| {
            analyzer.analyze(sql.as_bytes()).unwrap().statements[0]
                .settings
                .clone()
        };
        assert_eq!(settings("SET statement_timeout = 0"), ["statement_timeout"]);
        assert_eq!(settings("RESET ALL"), ["all"]);
        assert_eq!(settings("SET ROLE admin"), ["role"]);
        assert_eq!(
            settings("SELECT set_config('Search_Path', 'x', false)"),
            ["search_path"]
        );
        assert_eq!(settings("SELECT set_config($1, 'x', false)"), ["*"]);
        assert_eq!(
            settings("SELECT app.pg_catalog.set_config('statement_timeout', '0', false)"),
            ["statement_timeout"]
        );
        assert_eq!(
            settings("UPDATE pg_catalog.pg_settings SET setting = 'off' WHERE name = 'x'"),
            ["*"]
        );
        assert_eq!(
            settings("START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ WRITE"),
            ["transaction_isolation", "transaction_read_only"]
        );
        assert_eq!(
            settings("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"),
            ["default_transaction_read_only"]
        );
        let changes = |sql: &str| {
            analyzer.analyze(sql.as_bytes()).unwrap().statements[0]
                .changes
                .iter()
                .map(|c| (c.name.clone(), c.value.clone()))
                .collect::<Vec<_>>()
        };
        use super::SettingValue::{Reset, Unknown, Value};
        assert_eq!(
            changes("SET ROLE admin"),
            [("role".into(), Value("admin".into()))]
        );
        // The value is a literal: another role is another cache entry.
        assert_eq!(
            changes("SET ROLE other"),
            [("role".into(), Value("other".into()))]
        );
        assert_eq!(changes("RESET ROLE"), [("role".into(), Reset)]);
        assert_eq!(
            changes("SET SESSION AUTHORIZATION DEFAULT"),
            [("session_authorization".into(), Reset)]
        );
        assert_eq!(
            changes("SET statement_timeout TO DEFAULT"),
            [("statement_timeout".into(), Reset)]
        );
        assert_eq!(
            changes("SET search_path = a, \"B\""),
            [(
                "search_path".into(),
                super::SettingValue::List(vec!["a".into(), "B".into()])
            )]
        );
        assert_eq!(changes("SET work_mem = 64"), [("work_mem".into(), Unknown)]);
        assert_eq!(
            changes("SELECT set_config('statement_timeout', '0', false)"),
            [("statement_timeout".into(), Value("0".into()))]
        );
    }

    /// `COPY t TO ''` (no file the tree can tell) has the shape of `COPY t TO '/a/file'`:
    /// the first must not decide for the second through the shared cache.
    #[test]
    fn copy_file_names_are_not_shared_by_shape() {
        let analyzer = Analyzer::new(16);
        for sql in ["COPY orders TO ''", "COPY orders FROM ''"] {
            assert!(
                !analyzer.analyze(sql.as_bytes()).unwrap().statements[0]
                    .flags
                    .copy_file
            );
        }
        for sql in [
            "COPY orders TO '/tmp/out.csv'",
            "COPY orders FROM '/etc/hostname'",
        ] {
            let analysis = analyzer.analyze(sql.as_bytes()).unwrap();
            assert!(analysis.statements[0].flags.copy_file, "{sql}");
        }
    }

    #[test]
    fn signalled_backends_are_read_from_constants() {
        let analyzer = Analyzer::new(16);
        let signals = |sql: &str| {
            analyzer.analyze(sql.as_bytes()).unwrap().statements[0]
                .signals
                .clone()
        };
        assert_eq!(signals("SELECT pg_cancel_backend(4242)"), [Some(4242)]);
        // Another pid in the same shape is another cache entry.
        assert_eq!(signals("SELECT pg_cancel_backend(77)"), [Some(77)]);
        assert_eq!(
            signals("SELECT pg_catalog.pg_terminate_backend('12'::int, 1000)"),
            [Some(12)]
        );
        assert_eq!(
            signals("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"),
            [None]
        );
        assert_eq!(signals("SELECT pg_cancel_backend($1)"), [None]);
        // The parser folds the sign in (and -1 is nobody's session).
        assert_eq!(signals("SELECT pg_cancel_backend(-1)"), [Some(-1)]);
        assert_eq!(signals("SELECT pg_cancel_backend(99999999999)"), [None]);
        assert_eq!(
            signals("SELECT pg_cancel_backend(1), pg_cancel_backend(pg_backend_pid())"),
            [Some(1), None]
        );
        assert!(signals("SELECT pg_backend_pid()").is_empty());
        // Column notation.
        assert_eq!(signals("SELECT (4243).pg_cancel_backend"), [Some(4243)]);
        assert_eq!(
            signals("SELECT (pid).pg_terminate_backend FROM pg_stat_activity"),
            [None]
        );
        assert_eq!(signals("SELECT (5).abs.pg_cancel_backend"), [None]);
        assert_eq!(
            signals("SELECT x.pg_terminate_backend FROM int4(12345) x"),
            [None]
        );
    }

    #[test]
    fn statements_split_as_postgres_splits_them() {
        let analyzer = Analyzer::new(16);
        let a = analyzer
            .analyze(b"COPY t FROM STDIN;\nDROP TABLE x")
            .unwrap();
        assert_eq!(*a.kinds, ["copy", "drop table"]);
        let b = analyzer.analyze(b"SELECT 1; ; SELECT 2;").unwrap();
        assert_eq!(*b.kinds, ["select", "select"]);
        let prepared = analyzer.analyze(b"PREPARE p AS SELECT 1").unwrap();
        assert_eq!(prepared.statements[0].prepares.as_deref(), Some("p"));
        let executed = analyzer.analyze(b"EXECUTE p(1)").unwrap();
        assert_eq!(executed.statements[0].executes.as_deref(), Some("p"));
    }
}
