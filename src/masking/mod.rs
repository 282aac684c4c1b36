//! Masking: sensitive values never leave unless the identity may see them (issue #6).
//!
//! - [`strategy`]: how a value is masked, always valid for its column type or NULL;
//! - [`detect`]: content detectors (email, payment cards with Luhn, US SSN, phone, IBAN with
//!   mod 97, secrets) — the net under the rules;
//! - [`catalog`]: which table and view columns the rules cover, resolved to (table OID,
//!   attribute number) through the catalog on a pgwarden-held connection;
//! - [`rewrite`]: a session's masking: a plan per RowDescription (direct columns by OID,
//!   computed columns by lineage), and the rewriting of DataRow, CopyData, ErrorResponse,
//!   NoticeResponse and NotificationResponse.

pub mod catalog;
pub mod detect;
pub mod rewrite;
pub mod strategy;

use std::time::Duration;

pub use detect::{Detectors, Hits, Kind};
pub use strategy::{Strategy, ValueKind};

use crate::auth::Identity;
use crate::policy::Action;

/// `[masking]`, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub rules: Vec<Rule>,
    pub detectors: Detectors,
    /// Identities these groups/users name see real values everywhere (rules and detectors).
    pub exempt_groups: Vec<String>,
    pub exempt_users: Vec<String>,
    /// Exempt from the detectors only.
    pub detector_exempt_groups: Vec<String>,
    /// The `hash` strategy's key.
    pub hash_key: Vec<u8>,
    /// What happens to a write whose values are derived from masked columns
    /// (`INSERT … SELECT email`, `CREATE TABLE … AS`, `pg_notify(…, email)`).
    pub derived_writes: Action,
    /// What happens when a masked column is used to filter, join, group or sort (the
    /// statement is always flagged in the audit record).
    pub masked_filters: Action,
    /// What happens to an ALTER or RENAME of a table with masked columns: renaming or
    /// moving it or its columns, or making it a child of another table, takes its values
    /// out of the rules that name them.
    pub schema_changes: Action,
    /// How often the catalog resolution is refreshed (also after DDL).
    pub catalog_refresh: Duration,
}

impl Default for Settings {
    /// No rules; every detector on.
    fn default() -> Self {
        Self {
            rules: Vec::new(),
            detectors: Detectors::default(),
            exempt_groups: Vec::new(),
            exempt_users: Vec::new(),
            detector_exempt_groups: Vec::new(),
            hash_key: Vec::new(),
            derived_writes: Action::Approve,
            masked_filters: Action::Allow,
            schema_changes: Action::Approve,
            catalog_refresh: Duration::from_secs(300),
        }
    }
}

/// One `[[masking.rules]]` entry: a table column and how it is masked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub schema: String,
    pub table: String,
    pub column: String,
    pub strategy: Strategy,
    pub exempt_groups: Vec<String>,
    pub exempt_users: Vec<String>,
    /// Empty: every database.
    pub databases: Vec<String>,
}

impl Rule {
    pub fn applies_to(&self, database: &str) -> bool {
        self.databases.is_empty() || self.databases.iter().any(|d| d == database)
    }

    /// `schema.table.column`, for audit records and messages.
    pub fn column_name(&self) -> String {
        format!("{}.{}.{}", self.schema, self.table, self.column)
    }
}

impl Settings {
    fn exempt(identity: &Identity, users: &[String], groups: &[String]) -> bool {
        users.contains(&identity.name) || identity.groups.iter().any(|g| groups.contains(g))
    }

    /// Whether `identity` sees the real values of `rule`.
    pub fn exempt_from_rule(&self, identity: &Identity, rule: &Rule) -> bool {
        Self::exempt(identity, &self.exempt_users, &self.exempt_groups)
            || Self::exempt(identity, &rule.exempt_users, &rule.exempt_groups)
    }

    /// The detectors that apply to `identity` (none when it is exempt).
    pub fn detectors_for(&self, identity: &Identity) -> Detectors {
        if Self::exempt(identity, &self.exempt_users, &self.exempt_groups)
            || Self::exempt(identity, &[], &self.detector_exempt_groups)
        {
            Detectors::none()
        } else {
            self.detectors.clone()
        }
    }
}
