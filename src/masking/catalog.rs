//! Which output columns the masking rules cover, resolved through the database's catalog.
//!
//! A RowDescription names each direct column by (table OID, attribute number), whatever the
//! query calls it (`email AS e`, `c.email`). The catalog turns the rules' `schema.table` +
//! `column` into those numbers — for the table, its partitions and inheritance children, and
//! every view (or materialized view) built on a masked column, through `pg_depend`, with the
//! view's own columns judged by the lineage of its definition.
//!
//! The lookups run on a connection pgwarden opens itself (as the role of the session that
//! first needed the database), never on a client's session. Each database's resolution is
//! cached, refreshed every `masking.catalog_refresh`, and at once after a session runs DDL.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

use super::Rule;
use crate::auth::Grant;
use crate::config::Secret;
use crate::error::{ClientError, SqlState};
use crate::protocol::frame::FrameLimits;
use crate::sql::lineage::{Lineage, Taint};
use crate::sql::tree::Tree;
use crate::upstream::{self, Endpoint, UpstreamError};

/// The rule of a masked column derived from masked columns whose rules cannot be told
/// apart (a view column under a new name, a view deeper than [`MAX_VIEW_ROUNDS`]): no rule
/// exempts anyone from it, and it is redacted.
pub const ANY_RULE: usize = usize::MAX;

/// Levels of views resolved one by one (a query each); views built deeper than that on
/// masked columns are masked whole.
const MAX_VIEW_ROUNDS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot connect to read the catalog: {0}")]
    Upstream(#[from] UpstreamError),
    #[error("catalog query failed: {0}")]
    Query(String),
    #[error("catalog connection: {0}")]
    Io(#[from] std::io::Error),
}

impl CatalogError {
    /// What a client whose session needs the catalog is told: masking cannot be resolved,
    /// so nothing runs (fail closed).
    pub fn to_client(&self) -> ClientError {
        ClientError::fatal(
            SqlState::CONNECTION_FAILURE,
            "pgwarden cannot resolve which columns are masked in this database right now",
        )
        .with_hint("try again; if it persists, the operator should check pgwarden's log")
    }
}

/// A masked column: which rule masks it, and its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Masked {
    /// Index into `masking.rules`.
    pub rule: usize,
    pub type_oid: u32,
}

/// One column of a table with rules, in attribute order (for COPY).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableColumn {
    pub name: String,
    pub type_oid: u32,
    pub masked: Option<Masked>,
}

/// One database's resolution of the rules.
#[derive(Debug, Default)]
pub struct Catalog {
    /// (relation OID, attribute number) of every masked column.
    pub columns: HashMap<(u32, i16), Masked>,
    /// Lower-case names of relations holding masked columns (tables, their children, views).
    pub relations: HashSet<String>,
    /// OIDs of those relations (a whole-row column names its relation with attribute 0).
    pub oids: HashSet<u32>,
    /// Lower-case names of masked columns (the rules', and view columns derived from them).
    pub names: HashSet<String>,
    /// Every column of those relations, masked or not, by lower-case relation name (in
    /// any schema: the columns all relations of that name have). `c.name` names a column
    /// when `name` is one of them, else it calls the function `name` on the row.
    pub relation_columns: HashMap<String, HashSet<String>>,
    /// Columns of each relation with masked columns, by lower-case `relname` and
    /// `schema.relname`.
    pub tables: HashMap<String, Arc<[TableColumn]>>,
    /// The rules this was resolved for.
    rules: Vec<Rule>,
    loaded: Option<Instant>,
}

impl Catalog {
    /// A resolution of `rules` to these masked columns (each relation named by its OID
    /// only): for tests and benchmarks that do not read a real catalog.
    pub fn with_masked_columns(rules: Vec<Rule>, columns: HashMap<(u32, i16), Masked>) -> Self {
        let oids = columns.keys().map(|(oid, _)| *oid).collect();
        Self {
            rules,
            columns,
            oids,
            loaded: Some(Instant::now()),
            ..Self::default()
        }
    }

    /// A name (column, relation, alias target) that is sensitive for lineage.
    pub fn sensitive_name(&self, name: &str) -> bool {
        self.names.contains(name) || self.relations.contains(name)
    }

    /// Whether a relation with masked columns (lower-case name) has a column `name`;
    /// `None` for other relations.
    pub fn has_column(&self, relation: &str, name: &str) -> Option<bool> {
        self.relation_columns
            .get(relation)
            .map(|columns| columns.contains(name))
    }

    /// Which parts of a statement are derived from masked columns.
    pub fn taint(&self, lineage: &Lineage) -> Taint {
        lineage.taint(|n| self.sensitive_name(n), |r, n| self.has_column(r, n))
    }

    /// Record the columns of a relation with masked columns.
    fn add_relation_columns<'a>(&mut self, relation: &str, columns: impl Iterator<Item = &'a str>) {
        let columns: HashSet<String> = columns.map(str::to_lowercase).collect();
        self.relation_columns
            .entry(relation.to_lowercase())
            // Another schema's relation of that name: only the columns both have.
            .and_modify(|known| known.retain(|c| columns.contains(c)))
            .or_insert(columns);
    }

    /// Whether a table name as written (`customers`, `public.customers`) is a relation with
    /// masked columns. Unqualified names match in any schema (the safe side of not knowing
    /// the search_path).
    pub fn is_sensitive_relation(&self, written: &str) -> bool {
        let lower = written.to_lowercase();
        let relation = lower.rsplit('.').next().unwrap_or(&lower);
        self.relations.contains(relation)
    }

    /// Whether `rule` was part of this resolution (it applies to the database).
    pub fn covers(&self, rule: &Rule) -> bool {
        self.rules.contains(rule)
    }

    /// Older than `refresh`: time to reload.
    pub fn is_due(&self, refresh: std::time::Duration) -> bool {
        self.loaded.is_none_or(|at| at.elapsed() >= refresh)
    }

    /// The columns of a table with masked columns, for COPY.
    pub fn table(&self, written: &str) -> Option<&Arc<[TableColumn]>> {
        let lower = written.to_lowercase();
        self.tables.get(&lower).or_else(|| {
            // Unqualified: the relation by that name in any schema.
            (!lower.contains('.'))
                .then(|| self.tables.get(&lower))
                .flatten()
        })
    }
}

/// Connection details for the catalog connection of one database.
pub struct Login<'a> {
    pub endpoint: &'a Endpoint,
    pub grant: &'a Grant,
    pub password: Option<&'a Secret>,
    pub limits: FrameLimits,
}

/// Every database's resolution, shared by all sessions.
#[derive(Debug, Default)]
pub struct Catalogs {
    by_database: std::sync::Mutex<HashMap<String, Arc<Entry>>>,
}

#[derive(Debug, Default)]
struct Entry {
    current: arc_swap::ArcSwapOption<Catalog>,
    /// Serializes loads of one database.
    loading: Mutex<()>,
    /// Set by a session that ran DDL: the next lookup reloads.
    stale: std::sync::atomic::AtomicBool,
}

impl Catalogs {
    fn entry(&self, database: &str) -> Arc<Entry> {
        let mut map = self
            .by_database
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        map.entry(database.to_owned()).or_default().clone()
    }

    /// The resolution for `login.grant.database` under `rules`: cached while fresh, else
    /// loaded (one load at a time per database; sessions arriving meanwhile wait for it).
    pub async fn get(
        &self,
        rules: &[Rule],
        refresh: std::time::Duration,
        login: Login<'_>,
    ) -> Result<Arc<Catalog>, CatalogError> {
        let database = login.grant.database.as_str();
        let applicable: Vec<Rule> = rules
            .iter()
            .filter(|r| r.applies_to(database))
            .cloned()
            .collect();
        let entry = self.entry(database);
        let usable = |catalog: Option<Arc<Catalog>>| {
            catalog.filter(|c| {
                c.rules == applicable
                    && c.loaded.is_some_and(|at| at.elapsed() < refresh)
                    && !entry.stale.load(std::sync::atomic::Ordering::Acquire)
            })
        };
        if let Some(catalog) = usable(entry.current.load_full()) {
            return Ok(catalog);
        }
        let _loading = entry.loading.lock().await;
        if let Some(catalog) = usable(entry.current.load_full()) {
            return Ok(catalog);
        }
        entry
            .stale
            .store(false, std::sync::atomic::Ordering::Release);
        let catalog = Arc::new(load(rules, applicable, login).await?);
        entry.current.store(Some(catalog.clone()));
        Ok(catalog)
    }

    /// A session changed the schema: the next lookup in `database` reloads.
    pub fn invalidate(&self, database: &str) {
        self.entry(database)
            .stale
            .store(true, std::sync::atomic::Ordering::Release);
    }
}

/// Resolve `applicable` (the rules for this database; indexes refer to `all`).
async fn load(
    all: &[Rule],
    applicable: Vec<Rule>,
    login: Login<'_>,
) -> Result<Catalog, CatalogError> {
    let mut catalog = Catalog {
        rules: applicable,
        loaded: Some(Instant::now()),
        ..Catalog::default()
    };
    if catalog.rules.is_empty() {
        return Ok(catalog);
    }
    let mut conn = upstream::login(
        login.endpoint,
        login.grant,
        login.password,
        &[],
        login.limits,
    )
    .await?;
    let result = resolve(all, &mut catalog, &mut conn).await;
    // Best effort goodbye; the connection closes either way.
    let _ = conn.stream.write_all(b"X\0\0\0\x04").await;
    result.map(|()| catalog)
}

async fn resolve(
    all: &[Rule],
    catalog: &mut Catalog,
    conn: &mut upstream::Upstream,
) -> Result<(), CatalogError> {
    let rule_index = |schema: &str, table: &str, column: &str| {
        all.iter().position(|r| {
            catalog.rules.contains(r)
                && r.schema == schema
                && r.table == table
                && r.column == column
        })
    };
    let targets: Vec<String> = catalog
        .rules
        .iter()
        .map(|r| format!("('{}', '{}')", r.schema, r.table))
        .collect();
    // The rule tables and, recursively, their partitions and inheritance children; every
    // column, in order.
    let sql = format!(
        "WITH RECURSIVE rel(oid, nsp, root) AS ( \
           SELECT c.oid, n.nspname::text, c.relname::text FROM pg_catalog.pg_class c \
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
           WHERE (n.nspname::text, c.relname::text) IN ({}) \
           UNION SELECT i.inhrelid, rel.nsp, rel.root FROM pg_catalog.pg_inherits i \
           JOIN rel ON i.inhparent = rel.oid) \
         SELECT rel.oid, a.attnum, rel.nsp, rel.root, cn.nspname, c.relname, a.attname, a.atttypid \
         FROM rel JOIN pg_catalog.pg_class c ON c.oid = rel.oid \
         JOIN pg_catalog.pg_namespace cn ON cn.oid = c.relnamespace \
         JOIN pg_catalog.pg_attribute a ON a.attrelid = rel.oid \
         WHERE a.attnum > 0 AND NOT a.attisdropped ORDER BY rel.oid, a.attnum",
        targets.join(", ")
    );
    let mut tables: HashMap<u32, (String, String, Vec<TableColumn>)> = HashMap::new();
    for row in simple_query(conn, &sql).await? {
        let [oid, attnum, root_schema, root, schema, relname, attname, type_oid] = &row[..] else {
            return Err(CatalogError::Query("unexpected column count".into()));
        };
        let oid = number(oid)? as u32;
        let attnum = number(attnum)? as i16;
        let type_oid = number(type_oid)? as u32;
        let (root_schema, root, attname) = (text(root_schema)?, text(root)?, text(attname)?);
        let masked =
            rule_index(&root_schema, &root, &attname).map(|rule| Masked { rule, type_oid });
        if let Some(masked) = masked {
            catalog.columns.insert((oid, attnum), masked);
            catalog.names.insert(attname.to_lowercase());
        }
        let table = tables
            .entry(oid)
            .or_insert_with(|| (String::new(), String::new(), Vec::new()));
        table.0 = text(schema)?;
        table.1 = text(relname)?;
        table.2.push(TableColumn {
            name: attname,
            type_oid,
            masked,
        });
    }
    let mut sensitive_oids: HashSet<u32> = HashSet::new();
    for (oid, (schema, relname, columns)) in tables {
        if columns.iter().any(|c| c.masked.is_some()) {
            sensitive_oids.insert(oid);
            catalog.oids.insert(oid);
            catalog.relations.insert(relname.to_lowercase());
            catalog.add_relation_columns(&relname, columns.iter().map(|c| c.name.as_str()));
            let columns: Arc<[TableColumn]> = columns.into();
            catalog.tables.insert(
                format!("{schema}.{relname}").to_lowercase(),
                columns.clone(),
            );
            catalog.tables.insert(relname.to_lowercase(), columns);
        }
    }

    // Views and materialized views built on masked columns, level by level.
    let edges = simple_query(
        conn,
        "SELECT DISTINCT r.ev_class, d.refobjid, d.refobjsubid FROM pg_catalog.pg_depend d \
         JOIN pg_catalog.pg_rewrite r ON d.objid = r.oid \
         WHERE d.classid = 'pg_catalog.pg_rewrite'::regclass \
           AND d.refclassid = 'pg_catalog.pg_class'::regclass AND r.ev_class <> d.refobjid",
    )
    .await?;
    let mut edges_parsed = Vec::with_capacity(edges.len());
    for row in &edges {
        let [view, referenced, subid] = &row[..] else {
            return Err(CatalogError::Query("unexpected column count".into()));
        };
        edges_parsed.push((
            number(view)? as u32,
            number(referenced)? as u32,
            number(subid)? as i16,
        ));
    }
    for round in 0.. {
        if round == MAX_VIEW_ROUNDS {
            // Deeper still: every view that reads, at any depth, one already found is masked
            // whole, without reading its definition.
            let mut deeper: HashSet<u32> = HashSet::new();
            loop {
                let before = deeper.len();
                for (view, referenced, _) in &edges_parsed {
                    if !sensitive_oids.contains(view)
                        && (sensitive_oids.contains(referenced) || deeper.contains(referenced))
                    {
                        deeper.insert(*view);
                    }
                }
                if deeper.len() == before {
                    break;
                }
            }
            mask_whole_views(conn, catalog, &deeper).await?;
            break;
        }
        let new_views: Vec<u32> = edges_parsed
            .iter()
            .filter(|(view, referenced, subid)| {
                !sensitive_oids.contains(view)
                    && sensitive_oids.contains(referenced)
                    && (*subid == 0 || catalog.columns.contains_key(&(*referenced, *subid)))
            })
            .map(|(view, _, _)| *view)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if new_views.is_empty() {
            break;
        }
        let list: Vec<String> = new_views.iter().map(u32::to_string).collect();
        let rows = simple_query(
            conn,
            &format!(
                "SELECT c.oid, c.relname, pg_catalog.pg_get_viewdef(c.oid), a.attnum, a.attname, a.atttypid \
                 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid \
                 WHERE c.oid IN ({}) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY c.oid, a.attnum",
                list.join(", ")
            ),
        )
        .await?;
        let mut views: HashMap<u32, View> = HashMap::new();
        for row in rows {
            let [oid, relname, definition, attnum, attname, type_oid] = &row[..] else {
                return Err(CatalogError::Query("unexpected column count".into()));
            };
            let view = views
                .entry(number(oid)? as u32)
                .or_insert_with(|| (String::new(), String::new(), Vec::new()));
            view.0 = text(relname)?;
            view.1 = text(definition)?;
            view.2.push((
                number(attnum)? as i16,
                text(attname)?,
                number(type_oid)? as u32,
            ));
        }
        for (oid, (relname, definition, columns)) in views {
            let taint = view_taint(&definition, columns.len(), catalog);
            let rule_of = |name: &str| {
                all.iter()
                    .position(|r| catalog.rules.contains(r) && r.column.eq_ignore_ascii_case(name))
            };
            for (i, (attnum, attname, type_oid)) in columns.iter().enumerate() {
                // Unknown lineage: every column of the view is sensitive.
                if taint
                    .as_ref()
                    .is_none_or(|t| t.get(i).copied().unwrap_or(true))
                {
                    let rule = rule_of(attname).unwrap_or(ANY_RULE);
                    catalog.columns.insert(
                        (oid, *attnum),
                        Masked {
                            rule,
                            type_oid: *type_oid,
                        },
                    );
                    catalog.names.insert(attname.to_lowercase());
                }
            }
            catalog
                .add_relation_columns(&relname, columns.iter().map(|(_, name, _)| name.as_str()));
            sensitive_oids.insert(oid);
            catalog.oids.insert(oid);
            catalog.relations.insert(relname.to_lowercase());
        }
    }
    Ok(())
}

/// Mask every column of `views`.
async fn mask_whole_views(
    conn: &mut upstream::Upstream,
    catalog: &mut Catalog,
    views: &HashSet<u32>,
) -> Result<(), CatalogError> {
    if views.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = views.iter().map(u32::to_string).collect();
    let rows = simple_query(
        conn,
        &format!(
            "SELECT c.oid, c.relname, a.attnum, a.attname, a.atttypid \
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid \
             WHERE c.oid IN ({}) AND a.attnum > 0 AND NOT a.attisdropped",
            list.join(", ")
        ),
    )
    .await?;
    let rule = ANY_RULE;
    for row in rows {
        let [oid, relname, attnum, attname, type_oid] = &row[..] else {
            return Err(CatalogError::Query("unexpected column count".into()));
        };
        let oid = number(oid)? as u32;
        catalog.columns.insert(
            (oid, number(attnum)? as i16),
            Masked {
                rule,
                type_oid: number(type_oid)? as u32,
            },
        );
        catalog.names.insert(text(attname)?.to_lowercase());
        catalog.oids.insert(oid);
        catalog.relations.insert(text(relname)?.to_lowercase());
    }
    Ok(())
}

/// A view's name, definition and columns (attribute number, name, type).
type View = (String, String, Vec<(i16, String, u32)>);

/// Per view column, whether its definition derives it from a sensitive name; `None` when
/// that cannot be told (the definition does not parse, or its columns do not line up).
fn view_taint(definition: &str, columns: usize, catalog: &Catalog) -> Option<Vec<bool>> {
    let parsed = pg_query::parse(definition, 0).ok()?;
    let stmt = parsed.protobuf.stmts.first()?.stmt.as_ref()?;
    let tree = Tree::of(stmt).ok()?;
    let taint = catalog.taint(&Lineage::of(&tree));
    (!taint.star && taint.outputs.len() == columns).then_some(taint.outputs)
}

fn number(value: &Option<String>) -> Result<i64, CatalogError> {
    value
        .as_deref()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| CatalogError::Query("expected a number".into()))
}

fn text(value: &Option<String>) -> Result<String, CatalogError> {
    value
        .clone()
        .ok_or_else(|| CatalogError::Query("unexpected NULL".into()))
}

/// Run one query (no parameters) and return its rows as text.
async fn simple_query(
    conn: &mut upstream::Upstream,
    sql: &str,
) -> Result<Vec<Vec<Option<String>>>, CatalogError> {
    let rows = conn
        .simple_query(sql)
        .await
        .map_err(|e| CatalogError::Query(e.to_string()))?
        .map_err(CatalogError::Query)?;
    Ok(rows
        .into_iter()
        .map(|row| {
            row.into_iter()
                .map(|v| v.map(|v| String::from_utf8_lossy(&v).into_owned()))
                .collect()
        })
        .collect())
}
