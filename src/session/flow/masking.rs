//! Masking in the flow: each server frame that carries values goes through the session's
//! [`Masking`](crate::masking::rewrite::Masking); the catalog resolution is kept fresh; and
//! the gate refuses or holds writes derived from masked columns.

use bytes::{BufMut, BytesMut};
use tracing::warn;

use super::Flow;
use crate::error::{ClientError, SqlState};
use crate::masking::rewrite::{Masking, Source};
use crate::policy::{Action, Decision};
use crate::protocol::backend;
use crate::protocol::frame::FrameLimits;
use crate::session::state::SessionState;
use crate::sql::facts::CursorUse;
use crate::sql::StatementFacts;

/// What masking made of a server frame.
pub enum Masked {
    Keep,
    /// Send the rewritten frame instead.
    Replaced,
    /// Send nothing.
    Drop,
    /// Not readable: the session ends rather than pass it on unmasked.
    Malformed(&'static str),
}

/// A Describe of a portal (`D`, `P`, name).
pub fn write_describe_portal(out: &mut BytesMut, portal: &[u8]) {
    out.put_u8(b'D');
    out.put_i32((4 + 1 + portal.len() + 1) as i32);
    out.put_u8(b'P');
    out.put_slice(portal);
    out.put_u8(0);
}

/// The statement a result comes from, as masking sees it: FETCH returns what its cursor's
/// DECLARE selects, SQL-level EXECUTE what its PREPARE does; a cursor or statement pgwarden
/// does not know is `Unknown` (every computed column masked).
fn source_of<'a>(facts: Option<&'a StatementFacts>, state: &'a SessionState) -> Source<'a> {
    let Some(facts) = facts else {
        return Source::Unknown;
    };
    // Looked up when the results come, so a name that a message sent since (or later in
    // the same one) redefined may not be what ran: such a name is unknown until settled.
    if let Some(CursorUse::Fetch(name)) = &facts.cursor {
        if state.cursors_in_doubt.contains(name) {
            return Source::Unknown;
        }
        return state
            .cursors
            .get(name)
            .map_or(Source::Unknown, Source::Statement);
    }
    if let Some(name) = &facts.executes {
        if state.prepared_in_doubt.contains_key(name) {
            return Source::Unknown;
        }
        return state
            .sql_prepared
            .get(name)
            .map_or(Source::Unknown, Source::Statement);
    }
    Source::Statement(facts)
}

impl Flow<'_> {
    /// Mask one server frame into `out`.
    pub(super) fn mask_server_frame(&mut self, tag: u8, body: &[u8], out: &mut BytesMut) -> Masked {
        let Some(masking) = self.masking.as_mut() else {
            return Masked::Keep;
        };
        let current = self.tracker.current_statement();
        let facts = current.and_then(|(analysis, index)| analysis.statements.get(index));
        let source = source_of(facts, &self.state);
        let outcome = match tag {
            b'T' => match masking.on_row_description(body, source) {
                Ok(()) => Masked::Keep,
                Err(malformed) => Masked::Malformed(malformed.0),
            },
            b'H' => {
                masking.on_copy_out(body, source);
                if masking.copy_refused() {
                    Masked::Drop
                } else {
                    Masked::Keep
                }
            }
            b'd' | b'c' if masking.copy_refused() => Masked::Drop,
            b'C' if masking.copy_refused() => {
                backend::error_response(
                    out,
                    &ClientError::error(SqlState::INSUFFICIENT_PRIVILEGE, masking.copy_refusal())
                    .with_hint("use COPY … TO STDOUT in text or CSV format with default options, or SELECT"),
                );
                Masked::Replaced
            }
            b'D' => match masking.data_row(body, out) {
                Ok(true) => Masked::Replaced,
                Ok(false) => Masked::Keep,
                Err(malformed) => Masked::Malformed(malformed.0),
            },
            b'd' if masking.copy_data(body, out) => Masked::Replaced,
            b'E' | b'N' => {
                if self.tracker.answering_parse() {
                    // `column "emial" does not exist`, `invalid input syntax for type
                    // integer: "abc"`: names and literals the client sent, not data.
                    masking.observe_without_data();
                } else {
                    masking.observe(source);
                }
                if masking.error_or_notice(tag, body, out) {
                    Masked::Replaced
                } else {
                    Masked::Keep
                }
            }
            b'A' if masking.notification(body, out) => Masked::Replaced,
            _ => Masked::Keep,
        };
        if matches!(tag, b'C' | b'E' | b'Z' | b'I' | b's') {
            let counts = std::mem::take(&mut masking.counts);
            if !counts.is_empty() {
                self.metrics.masked(&counts);
            }
            masking.end();
            self.tracker.add_masked(counts);
        }
        outcome
    }

    /// Between statements: after a config reload, rebuild the session's masking from the
    /// new settings (a reload applies to the next statement, as for the policy); otherwise
    /// reload the catalog resolution when this session changed the schema or it is due. A
    /// failed reload keeps the previous masking (and says so).
    pub(super) async fn refresh_masking(&mut self) {
        let snapshot = self.snapshot.load();
        let settings = &snapshot.config.masking;
        let config = snapshot.generation;
        let reconfigure = config != self.masking_config;
        if !reconfigure {
            let Some(masking) = self.masking.as_ref() else {
                return;
            };
            // Schema changes are visible to pgwarden's connection once committed.
            let dirty = self.catalog_dirty && self.state.transaction_status == b'I';
            if !dirty && !masking.catalog().is_due(settings.catalog_refresh) {
                return;
            }
        }
        if self.catalog_dirty && self.state.transaction_status == b'I' {
            self.catalogs.invalidate(self.database);
            self.catalog_dirty = false;
        }
        let grant = crate::auth::Grant {
            database: self.database.to_owned(),
            role: self.role.to_owned(),
        };
        let password = snapshot
            .config
            .upstream
            .roles
            .get(self.role)
            .and_then(|p| p.as_ref());
        let login = crate::masking::catalog::Login {
            endpoint: &snapshot.upstream,
            grant: &grant,
            password,
            limits: FrameLimits {
                max_message: snapshot.config.server.max_server_message,
            },
        };
        let catalog = match self
            .catalogs
            .get(&settings.rules, settings.catalog_refresh, login)
            .await
        {
            Ok(catalog) => catalog,
            Err(e) => {
                warn!(error = %e, "cannot refresh the masked columns; keeping the previous resolution");
                return;
            }
        };
        if reconfigure {
            let counts = self
                .masking
                .as_mut()
                .map(|m| std::mem::take(&mut m.counts))
                .unwrap_or_default();
            self.masking = Masking::for_session(settings, catalog, self.identity);
            if let Some(masking) = self.masking.as_mut() {
                masking.counts = counts;
            }
            self.masking_config = config;
        } else if let Some(masking) = self.masking.as_mut() {
            masking.set_catalog(catalog);
        }
    }

    /// A statement about to run changes the schema: masking's catalog resolution is
    /// reloaded once it is done (and committed: pgwarden's own connection cannot see it
    /// before).
    pub(super) fn note_schema_change(&mut self, statements: &[StatementFacts]) {
        if statements.iter().any(|f| {
            let kind = f.kind();
            kind.starts_with("create") || kind.starts_with("alter") || kind.starts_with("drop")
        }) {
            self.catalog_dirty = true;
        }
    }

    /// The masking checks of the gate: a write derived from masked columns, or a masked
    /// column used to filter, under `masking.derived_writes` / `masking.masked_filters`.
    /// Returns a decision stricter than `decision`, if one applies.
    pub(super) fn masking_decision(
        &self,
        statements: &[StatementFacts],
        decision: &Decision,
    ) -> Option<Decision> {
        let masking = self.masking.as_ref()?;
        if !masking.has_rules() {
            return None;
        }
        let snapshot = self.snapshot.load();
        let settings = &snapshot.config.masking;
        let mut strictest: Option<Decision> = None;
        for (index, facts) in statements.iter().enumerate() {
            // The planner's statistics keep sample values of every column (most common
            // values, histogram bounds), masked ones included.
            if facts.tables.iter().any(|t| {
                let name = t.name.rsplit('.').next().unwrap_or(&t.name);
                matches!(
                    name,
                    "pg_stats" | "pg_stats_ext" | "pg_stats_ext_exprs" | "pg_statistic"
                )
            }) {
                return Some(Decision {
                    action: Action::Deny,
                    rule: Some("masking.statistics".into()),
                    message: Some(
                        "the planner's statistics hold sample values of masked columns; they are not shown to identities with masking rules".into(),
                    ),
                    statement: index,
                });
            }
            if !masking.touches(facts) {
                continue;
            }
            // ALTER TABLE … RENAME (COLUMN), SET SCHEMA, INHERIT, ATTACH PARTITION, ALTER
            // COLUMN TYPE …: afterwards the rules naming the table or column no longer
            // match, and its values are shown in clear.
            let alters = facts
                .kinds
                .iter()
                .any(|k| *k == "rename" || k.starts_with("alter "));
            if alters
                && facts.tables.iter().any(|t| {
                    t.access == crate::sql::Access::Ddl
                        && masking.catalog().is_sensitive_relation(&t.name)
                })
            {
                let current = strictest.as_ref().map_or(decision.action, |d| d.action);
                if strength(settings.schema_changes) > strength(current) {
                    strictest = Some(Decision {
                        action: settings.schema_changes,
                        rule: Some("masking.schema_changes".into()),
                        message: Some(
                            "the statement alters a table with masked columns (renamed or moved, its values would leave the rules that mask them)".into(),
                        ),
                        statement: index,
                    });
                }
            }
            let taint = masking.catalog().taint(&facts.lineage);
            let mut consider = |action: Action, rule: &str, message: String| {
                let current = strictest.as_ref().map_or(decision.action, |d| d.action);
                if strength(action) > strength(current) {
                    strictest = Some(Decision {
                        action,
                        rule: Some(rule.to_owned()),
                        message: Some(message),
                        statement: index,
                    });
                }
            };
            if taint.written {
                consider(
                    settings.derived_writes,
                    "masking.derived_writes",
                    "the statement writes values derived from masked columns".into(),
                );
            }
            if !taint.filtered.is_empty() {
                consider(
                    settings.masked_filters,
                    "masking.masked_filters",
                    format!(
                        "the statement filters, joins, groups or sorts on masked columns ({})",
                        taint.filtered.join(", ")
                    ),
                );
            }
        }
        strictest
    }

    /// Masked names a statement filters, joins, groups or sorts on (for its audit record).
    pub(super) fn masked_filters(&self, statements: &[StatementFacts]) -> Vec<String> {
        let Some(masking) = self.masking.as_ref().filter(|m| m.has_rules()) else {
            return Vec::new();
        };
        let mut names: Vec<String> = statements
            .iter()
            .filter(|f| masking.touches(f))
            .flat_map(|f| masking.catalog().taint(&f.lineage).filtered)
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

fn strength(action: Action) -> u8 {
    match action {
        Action::Allow => 0,
        Action::Approve => 1,
        Action::Deny => 2,
    }
}
