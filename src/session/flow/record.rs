//! Putting statements on record: the `statement` record before a statement is forwarded,
//! its `statement.result` once the server has answered.

use std::sync::Arc;
use std::time::Instant;

use tracing::warn;

use super::{protocol_name, Described, Flow, Protocol, StatementAudit};
use crate::audit::event::{QueryText, StatementRecord, Status};
use crate::audit::{Event, OnFailure, StatementText};
use crate::error::ClientError;
use crate::policy::Action;
use crate::protocol::views;
use crate::session::track::{Finished, Running};

impl Flow<'_> {
    /// Put a statement the policy refused on record.
    pub(super) async fn record_refused(&mut self, described: Described<'_>) {
        self.state.statements_seen += 1;
        let Some(audit) = &self.audit else {
            return;
        };
        let record = statement_record(self, audit, self.state.statements_seen, described);
        // A refusal that cannot be recorded is still a refusal; the loss is counted.
        if audit
            .log
            .record_written(Event::Statement(Box::new(record)))
            .await
            .is_err()
        {
            audit.log.count_lost();
        }
    }

    /// Record a statement that is about to run. `Ok` carries what tracks its outcome;
    /// `Err` is the refusal when it cannot be recorded and `audit.on_failure = "refuse"`.
    pub(super) async fn run_statement(
        &mut self,
        described: Described<'_>,
    ) -> Result<Option<Running>, ClientError> {
        self.state.statements_seen += 1;
        let Some(audit) = &self.audit else {
            return Ok(None);
        };
        let statement = self.state.statements_seen;
        let record = statement_record(self, audit, statement, described);
        match audit
            .log
            .record_written(Event::Statement(Box::new(record)))
            .await
        {
            Ok(()) => Ok(Some(Running {
                statement,
                started: Instant::now(),
            })),
            Err(e) => match audit.on_failure {
                OnFailure::Refuse => {
                    warn!(error = %e, "statement refused: the audit log cannot record it");
                    Err(ClientError::error(
                        e.sqlstate(),
                        "pgwarden refused this statement because the audit log cannot record it",
                    )
                    .with_detail(e.to_string())
                    .with_hint(
                        "statements run again as soon as the audit log is writable; tell the pgwarden operator",
                    ))
                }
                OnFailure::Continue => {
                    warn!(error = %e, "statement forwarded without an audit record (audit.on_failure = continue)");
                    audit.log.count_lost();
                    Ok(None)
                }
            },
        }
    }

    /// HMAC of each Bind parameter, when the log records them.
    pub(super) fn hash_parameters(&self, bind: &views::Bind<'_>) -> Option<Vec<Option<String>>> {
        let key = self.audit.as_ref()?.parameter_key.as_ref()?;
        Some(
            bind.parameter_values()
                .map(|value| {
                    value.map(|v| crate::audit::record::hex(ring::hmac::sign(key, v).as_ref()))
                })
                .collect(),
        )
    }

    /// Record the outcomes of statements that finished. They ride along with the next write
    /// (the statement already ran; nothing waits for its outcome).
    pub fn record_outcomes(&mut self) {
        if self.tracker.finished.is_empty() {
            return;
        }
        let Some(audit) = &self.audit else {
            self.tracker.finished.clear();
            return;
        };
        for finished in self.tracker.finished.drain(..) {
            audit
                .log
                .record_later(outcome_record(self.session, finished));
        }
    }
}

fn outcome_record(session: u64, finished: Finished) -> Event {
    Event::StatementResult {
        session,
        statement: finished.statement,
        status: if finished.sqlstate.is_none() && !finished.skipped {
            Status::Success
        } else {
            Status::Failure
        },
        command: finished.command,
        rows: finished.rows,
        duration_us: finished.started.elapsed().as_micros() as u64,
        sqlstate: finished
            .sqlstate
            .map(|code| String::from_utf8_lossy(&code).into_owned()),
        skipped: finished.skipped,
    }
}

fn statement_record(
    flow: &Flow<'_>,
    audit: &StatementAudit<'_>,
    statement: u64,
    described: Described<'_>,
) -> StatementRecord {
    let protocol = protocol_name(described.protocol);
    let (prepared, function_oid) = match described.protocol {
        Protocol::Simple => (None, None),
        Protocol::Extended { statement_name } => (
            Some(String::from_utf8_lossy(statement_name).into_owned()),
            None,
        ),
        Protocol::FunctionCall { function_oid } => (None, Some(function_oid)),
    };
    let analysis = described.analysis.as_deref();
    let text = match (audit.text, analysis) {
        (StatementText::Full, _) if function_oid.is_none() => {
            Some(String::from_utf8_lossy(described.sql).into())
        }
        (_, Some(analysis)) => Some(analysis.normalized.clone()),
        // Unparsable text may hold values: not written.
        (_, None) => None,
    };
    StatementRecord {
        session: flow.session,
        statement,
        actor: audit.actor.clone(),
        database: flow.database.to_owned(),
        role: flow.role.to_owned(),
        protocol,
        prepared,
        query: QueryText {
            text,
            fingerprint: analysis.map(|a| a.fingerprint.clone()),
            parse_error: analysis.is_none() && function_oid.is_none(),
            function_oid,
        },
        kinds: analysis.map_or_else(|| Arc::from([]), |a| a.kinds.clone()),
        tables: analysis.map_or_else(|| Arc::from([]), |a| a.tables.clone()),
        parameters: described.parameters,
        decision: described.decision.action.as_str(),
        rule: described.decision.rule.clone(),
        reason: (described.decision.action != Action::Allow)
            .then(|| described.decision.message.clone())
            .flatten(),
    }
}
