//! Statement analysis with PostgreSQL's own parser (libpg_query, via `pg_query`).
//!
//! [`Analyzer::analyze`] turns the text of a Query or Parse message into an [`Analysis`]:
//! literal-free normalized text, a fingerprint that is the same for every statement of the
//! same shape, and per-message facts (statement kinds, tables). Results are cached: first by
//! the exact text (statements without literals, such as prepared ones, hit at once), then by
//! the normalized text (the same statement shape with other literal values).
//!
//! The normalized text is what the audit log stores: literals become `$n` placeholders, so
//! values (passwords in `ALTER ROLE … PASSWORD`, customer data in `WHERE email = …`) never
//! reach the log unless `audit.statement_text = "full"`.

mod analyze;
pub mod comments;
pub mod facts;
pub mod lineage;
mod quick_key;
pub mod secrets;
pub mod tree;

pub use analyze::{
    is_unsafe_encoding, Access, Analysis, AnalysisError, Analyzer, TableRef, ANALYSIS_STACK,
    WORKER_STACK,
};
pub use facts::{Flags, StatementFacts};
