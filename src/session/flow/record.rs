//! Putting statements on record: the `statement` record before a statement is forwarded,
//! its `statement.result` once the server has answered.

use std::sync::Arc;
use std::time::Instant;

use tracing::{info, warn};

use super::{protocol_name, Described, Flow, Protocol, StatementAudit};
use crate::audit::event::{QueryText, StatementRecord, Status};
use crate::audit::{Event, OnFailure, StatementText};
use crate::error::{ClientError, SqlState};
use crate::policy::Action;
use crate::protocol::backend;
use crate::protocol::views;
use crate::session::track::{Finished, Running};

impl Flow<'_> {
    /// Put a statement the policy refused on record.
    pub(super) async fn record_refused(&mut self, described: Described<'_>) {
        self.state.statements_seen += 1;
        self.metrics.statement("deny");
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
        self.metrics.statement(described.decision.action.as_str());
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

    /// Open an approval request for a held statement: on record, the client told how it
    /// is approved, and the relay given something to wait on.
    pub(super) async fn hold(&mut self, spec: super::HoldSpec) {
        let snapshot = self.snapshot.load();
        let Some(settings) = snapshot.config.approvals.as_ref() else {
            return;
        };
        let analysis = spec.analysis.as_deref();
        let new = crate::approvals::NewRequest {
            requester: self.identity.name.clone(),
            requester_owner: self.identity.owner(),
            requester_groups: self.identity.groups.clone(),
            session: self.session,
            database: self.database.to_owned(),
            role: self.role.to_owned(),
            current_role: self.current_role(analysis.map_or(&[], |a| &a.statements)),
            statement: spec.statement,
            normalized: analysis.map(|a| a.normalized.to_string()),
            fingerprint: analysis.map(|a| a.fingerprint.to_string()),
            grant_scope: spec.grant_scope.clone(),
            rule: spec.rule.clone(),
            intent: self.declared.intent.clone(),
            rule_approver_groups: snapshot.config.policy.approver_groups(&spec.rule),
        };
        let (request, waiter) = self.approvals.open(settings, new);
        info!(request = %request.id, rule = %spec.rule, "statement held for approval");
        crate::approvals::notify(settings, &request);
        if let Some(audit) = &self.audit {
            let event = Event::ApprovalRequest {
                session: self.session,
                request: request.id.clone(),
                actor: audit.actor.clone(),
                database: request.database.clone(),
                role: request.role.clone(),
                current_role: request.current_role.clone(),
                rule: request.rule.clone(),
                query: QueryText {
                    text: analysis.map(|a| a.normalized.clone()),
                    fingerprint: analysis.map(|a| a.fingerprint.clone()),
                    parse_error: false,
                    function_oid: None,
                },
                intent: request.intent.clone(),
                expires_at: request.expires_at.clone(),
            };
            if audit.log.record_written(event).await.is_err() {
                audit.log.count_lost();
            }
        }
        let id = &request.id;
        let api = settings
            .public_url
            .as_deref()
            .map(|url| format!(" or POST {url}/approvals/{id}/approve"))
            .unwrap_or_default();
        let notice = ClientError::notice(
            SqlState::SUCCESSFUL_COMPLETION,
            format!(
                "pgwarden is holding this statement for approval (request {id}, rule {})",
                spec.rule
            ),
        )
        .with_detail(format!(
            "An approver in {} approves it with: pgwarden approvals approve {id}{api}",
            request.approver_groups.join(", "),
        ))
        .with_hint(format!(
            "waiting up to {}; cancel (Ctrl-C) to withdraw the request",
            crate::approvals::human(settings.timeout)
        ));
        backend::notice_response(&mut self.to_client, &notice);
        self.held = Some(super::Held { request, waiter });
    }

    /// The held statement's request ended: record an expiry or withdrawal, and keep its final
    /// state for when the frame is processed again.
    pub async fn resolve_hold(
        &mut self,
        held: super::Held,
        status: crate::approvals::Status,
        because: &str,
    ) {
        use crate::approvals::Status;
        let id = held.request.id.clone();
        let request = match status {
            Status::Expired | Status::Withdrawn => {
                let closed = self.approvals.close(&id, status.clone(), because);
                if let Some(audit) = &self.audit {
                    let event = Event::ApprovalClosed {
                        session: self.session,
                        request: id.clone(),
                        request_status: status.as_str().to_owned(),
                        because: because.to_owned(),
                    };
                    if audit.log.record_written(event).await.is_err() {
                        audit.log.count_lost();
                    }
                }
                closed
            }
            _ => self.approvals.get(&id),
        };
        let mut request = request.unwrap_or(held.request);
        if matches!(status, Status::Expired | Status::Withdrawn) {
            // An answer that raced the expiry does not count: the session already gave up.
            request.status = status;
        }
        info!(request = %id, status = request.status.as_str(), "approval request ended");
        self.metrics.approval_finished(request.status.as_str());
        self.hold_answer = Some(request);
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
            if !finished.unanswered {
                self.metrics
                    .statement_seconds
                    .observe(finished.started.elapsed().as_secs_f64());
            }
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
        status: if finished.sqlstate.is_none() && !finished.skipped && !finished.unanswered {
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
        not_as_recorded: finished.not_as_recorded,
        unanswered: finished.unanswered,
        masked: crate::audit::event::MaskedNote::of(finished.masked),
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
            let text = String::from_utf8_lossy(described.sql);
            Some(crate::sql::secrets::without_passwords(&text).into())
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
        current_role: flow.current_role(analysis.map_or(&[], |a| &a.statements)),
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
        approval: described.approval.cloned(),
        intent: flow.declared.intent.clone(),
        trace_id: flow
            .declared
            .tags
            .as_ref()
            .and_then(|t| t.get("traceparent"))
            .and_then(|t| crate::sql::comments::trace_id(t)),
        tags: flow.declared.tags.clone(),
        masked_filters: analysis.map_or_else(Vec::new, |a| flow.masked_filters(&a.statements)),
    }
}
