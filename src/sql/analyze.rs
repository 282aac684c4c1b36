use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use lru::LruCache;
use pg_query::NodeEnum;

/// Statements longer than this are analysed but not cached, so the cache's memory stays
/// bounded (entries × this).
const MAX_CACHED_TEXT: usize = 8 * 1024;

/// What one Query or Parse message does, as far as the audit log and policy need to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Analysis {
    /// The text with every literal replaced by a `$n` placeholder.
    pub normalized: Arc<str>,
    /// libpg_query's fingerprint (16 hex digits): equal for statements that differ only in
    /// literal values, whitespace or comments.
    pub fingerprint: Arc<str>,
    /// One kind per statement, in order (`select`, `insert`, `create table`, …).
    pub kinds: Arc<[&'static str]>,
    /// Tables named anywhere in the message, with how they are used; sorted, no duplicates.
    pub tables: Arc<[TableRef]>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct TableRef {
    /// As written, schema-qualified when it was (`public.users` or `users`).
    pub name: String,
    pub access: Access,
}

/// How a statement uses a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Read,
    Write,
    Ddl,
    Other,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Ddl => "ddl",
            Self::Other => "other",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnalysisError {
    /// PostgreSQL's parser rejects the text. The message is the parser's, which may quote
    /// a fragment of the statement: show it to the client, never write it to the log.
    #[error("{0}")]
    Syntax(String),
    #[error("the statement is not valid UTF-8")]
    Encoding,
}

/// Analyses statements, with a bounded cache shared by all sessions.
#[derive(Debug)]
pub struct Analyzer {
    cache: Mutex<LruCache<Box<str>, Arc<Analysis>>>,
}

impl Analyzer {
    pub fn new(capacity: usize) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Self {
            cache: Mutex::new(LruCache::new(capacity)),
        }
    }

    pub fn analyze(&self, sql: &[u8]) -> Result<Arc<Analysis>, AnalysisError> {
        let sql = std::str::from_utf8(sql).map_err(|_| AnalysisError::Encoding)?;
        let cacheable = sql.len() <= MAX_CACHED_TEXT;
        if cacheable {
            if let Some(hit) = self.cached(sql) {
                return Ok(hit);
            }
        }
        let normalized = pg_query::normalize(sql).map_err(syntax_error)?;
        if cacheable && normalized.as_str() != sql {
            if let Some(hit) = self.cached(&normalized) {
                return Ok(hit);
            }
        }
        let analysis = Arc::new(analyze_uncached(sql, normalized)?);
        if cacheable {
            if let Ok(mut cache) = self.cache.lock() {
                cache.put(Box::from(&*analysis.normalized), analysis.clone());
            }
        }
        Ok(analysis)
    }

    fn cached(&self, key: &str) -> Option<Arc<Analysis>> {
        self.cache.lock().ok()?.get(key).cloned()
    }
}

fn syntax_error(e: pg_query::Error) -> AnalysisError {
    AnalysisError::Syntax(match e {
        pg_query::Error::Parse(message) => message,
        other => other.to_string(),
    })
}

fn analyze_uncached(sql: &str, normalized: String) -> Result<Analysis, AnalysisError> {
    let parsed = pg_query::parse(sql, 0).map_err(syntax_error)?;
    let fingerprint = pg_query::fingerprint(sql, 0, 0).map_err(syntax_error)?.hex;
    let kinds: Vec<&'static str> = parsed
        .protobuf
        .stmts
        .iter()
        .map(|raw| {
            raw.stmt
                .as_ref()
                .and_then(|s| s.node.as_ref())
                .map_or("other", kind_of)
        })
        .collect();
    let mut tables: Vec<TableRef> = parsed
        .tables
        .iter()
        .map(|(name, context)| TableRef {
            name: name.clone(),
            access: match context {
                pg_query::Context::Select => Access::Read,
                pg_query::Context::DML => Access::Write,
                pg_query::Context::DDL => Access::Ddl,
                pg_query::Context::None | pg_query::Context::Call => Access::Other,
            },
        })
        .collect();
    tables.sort();
    tables.dedup();
    Ok(Analysis {
        normalized: normalized.into(),
        fingerprint: fingerprint.into(),
        kinds: kinds.into(),
        tables: tables.into(),
    })
}

/// A short, stable name for what a top-level statement does.
fn kind_of(node: &NodeEnum) -> &'static str {
    use pg_query::protobuf::ObjectType;
    match node {
        NodeEnum::SelectStmt(_) => "select",
        NodeEnum::InsertStmt(_) => "insert",
        NodeEnum::UpdateStmt(_) => "update",
        NodeEnum::DeleteStmt(_) => "delete",
        NodeEnum::MergeStmt(_) => "merge",
        NodeEnum::CopyStmt(_) => "copy",
        NodeEnum::TruncateStmt(_) => "truncate",
        NodeEnum::TransactionStmt(_) => "transaction",
        NodeEnum::VariableSetStmt(_) => "set",
        NodeEnum::VariableShowStmt(_) => "show",
        NodeEnum::ExplainStmt(_) => "explain",
        NodeEnum::PrepareStmt(_) => "prepare",
        NodeEnum::ExecuteStmt(_) => "execute",
        NodeEnum::DeallocateStmt(_) => "deallocate",
        NodeEnum::DoStmt(_) => "do",
        NodeEnum::CallStmt(_) => "call",
        NodeEnum::GrantStmt(g) if g.is_grant => "grant",
        NodeEnum::GrantStmt(_) => "revoke",
        NodeEnum::GrantRoleStmt(g) if g.is_grant => "grant",
        NodeEnum::GrantRoleStmt(_) => "revoke",
        NodeEnum::VacuumStmt(v) if v.is_vacuumcmd => "vacuum",
        NodeEnum::VacuumStmt(_) => "analyze",
        NodeEnum::ListenStmt(_) => "listen",
        NodeEnum::UnlistenStmt(_) => "unlisten",
        NodeEnum::NotifyStmt(_) => "notify",
        NodeEnum::LockStmt(_) => "lock",
        NodeEnum::DeclareCursorStmt(_) => "declare",
        NodeEnum::FetchStmt(_) => "fetch",
        NodeEnum::ClosePortalStmt(_) => "close",
        NodeEnum::DiscardStmt(_) => "discard",
        NodeEnum::CreateStmt(_) | NodeEnum::CreateTableAsStmt(_) => "create table",
        NodeEnum::IndexStmt(_) => "create index",
        NodeEnum::ViewStmt(_) => "create view",
        NodeEnum::CreateSchemaStmt(_) => "create schema",
        NodeEnum::CreateFunctionStmt(_) => "create function",
        NodeEnum::CreateTrigStmt(_) => "create trigger",
        NodeEnum::RuleStmt(_) => "create rule",
        NodeEnum::CreateRoleStmt(_) => "create role",
        NodeEnum::CreatedbStmt(_) => "create database",
        NodeEnum::CreateSeqStmt(_) => "create sequence",
        NodeEnum::CreateExtensionStmt(_) => "create extension",
        NodeEnum::AlterTableStmt(_) => "alter table",
        NodeEnum::AlterRoleStmt(_) => "alter role",
        NodeEnum::AlterSystemStmt(_) => "alter system",
        NodeEnum::RenameStmt(_) => "rename",
        NodeEnum::DropStmt(drop) => match ObjectType::try_from(drop.remove_type) {
            Ok(ObjectType::ObjectTable) => "drop table",
            Ok(ObjectType::ObjectView) => "drop view",
            Ok(ObjectType::ObjectIndex) => "drop index",
            Ok(ObjectType::ObjectSchema) => "drop schema",
            Ok(ObjectType::ObjectFunction) => "drop function",
            _ => "drop",
        },
        NodeEnum::DropdbStmt(_) => "drop database",
        NodeEnum::DropRoleStmt(_) => "drop role",
        NodeEnum::CommentStmt(_) => "comment",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tables(analysis: &Analysis) -> Vec<(&str, Access)> {
        analysis
            .tables
            .iter()
            .map(|t| (t.name.as_str(), t.access))
            .collect()
    }

    #[test]
    fn literals_never_survive_normalization() {
        let analyzer = Analyzer::new(16);
        let a = analyzer
            .analyze(b"ALTER ROLE app PASSWORD 'hunter2'; SELECT * FROM users WHERE email = 'a@b.c' AND id = 42")
            .unwrap();
        assert!(!a.normalized.contains("hunter2"), "{}", a.normalized);
        assert!(!a.normalized.contains("a@b.c"), "{}", a.normalized);
        assert!(!a.normalized.contains("42"), "{}", a.normalized);
        assert_eq!(*a.kinds, ["alter role", "select"]);
        assert_eq!(tables(&a), [("users", Access::Read)]);
    }

    #[test]
    fn statements_of_one_shape_share_fingerprint_and_cache_entry() {
        let analyzer = Analyzer::new(16);
        let a = analyzer
            .analyze(b"UPDATE accounts SET balance = 1 WHERE id = 7")
            .unwrap();
        let b = analyzer
            .analyze(b"update accounts  set balance = 99 where id = 8")
            .unwrap();
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_eq!(a.fingerprint.len(), 16);
        assert!(Arc::ptr_eq(&a, &b) || a.normalized != b.normalized);
        let c = analyzer
            .analyze(b"UPDATE accounts SET balance = 2 WHERE id = 9")
            .unwrap();
        assert!(Arc::ptr_eq(&a, &c), "same normalized text: one cache entry");
        assert_eq!(tables(&a), [("accounts", Access::Write)]);
        let other = analyzer.analyze(b"DELETE FROM accounts").unwrap();
        assert_ne!(a.fingerprint, other.fingerprint);
    }

    #[test]
    fn kinds_and_tables_cover_common_statements() {
        let analyzer = Analyzer::new(16);
        type Case<'a> = (&'a str, &'a [&'a str], &'a [(&'a str, Access)]);
        let cases: &[Case<'_>] = &[
            ("BEGIN", &["transaction"], &[]),
            (
                "INSERT INTO shop.orders SELECT * FROM staging",
                &["insert"],
                &[("shop.orders", Access::Write), ("staging", Access::Read)],
            ),
            ("DROP TABLE t", &["drop table"], &[("t", Access::Ddl)]),
            (
                "CREATE TABLE t (id int)",
                &["create table"],
                &[("t", Access::Ddl)],
            ),
            ("SET search_path = app", &["set"], &[]),
            ("COPY t FROM STDIN", &["copy"], &[("t", Access::Write)]),
            ("DO $$ BEGIN END $$", &["do"], &[]),
            (
                "REVOKE ALL ON t FROM bob",
                &["revoke"],
                &[("t", Access::Ddl)],
            ),
            ("", &[], &[]),
        ];
        for (sql, kinds, expected) in cases {
            let a = analyzer.analyze(sql.as_bytes()).unwrap();
            assert_eq!(&*a.kinds, *kinds, "{sql}");
            assert_eq!(&tables(&a), expected, "{sql}");
        }
    }

    #[test]
    fn rejects_what_postgres_rejects() {
        let analyzer = Analyzer::new(16);
        assert!(matches!(
            analyzer.analyze(b"SELEC 1"),
            Err(AnalysisError::Syntax(_))
        ));
        assert!(matches!(
            analyzer.analyze(b"SELECT 'unterminated"),
            Err(AnalysisError::Syntax(_))
        ));
        assert_eq!(
            analyzer.analyze(b"SELECT '\xff'"),
            Err(AnalysisError::Encoding)
        );
    }
}
