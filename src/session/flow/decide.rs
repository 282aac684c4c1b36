//! Deciding statements: analysis in the session's encoding, the policy from the current
//! configuration, then the session's own limits (locked settings, SET ROLE, prepared bodies).

use std::borrow::Cow;
use std::sync::Arc;

use tracing::{debug, info};

use super::{protocol_name, Flow, Protocol, Ruling};
use crate::approvals::{GrantScope, Status as ApprovalStatus};
use crate::audit::event::ApprovalNote;
use crate::error::{ClientError, SqlState};
use crate::policy::{Action, Decision, Subject};
use crate::session::state::SessionState;
use crate::sql::{Analysis, AnalysisError, StatementFacts};

impl Flow<'_> {
    pub(super) fn analyze(&self, sql: &[u8]) -> Result<Arc<Analysis>, AnalysisError> {
        let encoding = self
            .state
            .parameters
            .get(&b"client_encoding"[..])
            .map_or(&b"UTF8"[..], Vec::as_slice);
        self.analyzer.analyze_encoded(sql, encoding)
    }

    /// The policy's decision on statements, from the configuration current right now; then
    /// the session's own limits: locked settings, SET ROLE only to granted roles, and no
    /// statement at all if the server reads strings differently from the parser.
    pub(super) fn decide(&self, statements: &[StatementFacts]) -> Decision {
        let own_backends = if statements.iter().any(|s| !s.signals.is_empty()) {
            self.cancels.backends_of(&self.identity.owner())
        } else {
            Vec::new()
        };
        let snapshot = self.snapshot.load();
        // Rules are applied for every role the session may be running as (after a SET ROLE
        // the server has not confirmed yet, both), in every search_path it may have; a SET
        // earlier in the same message counts for the statements after it. The strictest
        // decision stands.
        let (search_path, roles) = self.path_and_roles_for(statements);
        // Each schema an unqualified name may be found in is tried on its own: with the
        // whole path at once, the first rule matching any of them would win, and an allow
        // rule for one schema could shadow a deny rule for another.
        let policy = &snapshot.config.policy;
        let per_schema = search_path.len() > 1 && policy.names_schemas();
        let mut decision: Option<Decision> = None;
        for role in roles.iter() {
            let schemas = search_path
                .chunks(1)
                .filter(|_| per_schema)
                .chain((!per_schema).then_some(&search_path[..]));
            for schema in schemas {
                let subject = Subject {
                    own_backends: &own_backends,
                    user: &self.identity.name,
                    groups: &self.identity.groups,
                    database: self.database,
                    role,
                    search_path: schema,
                    has_intent: self.declared.intent.is_some(),
                };
                let this = policy.decide(&subject, statements);
                if decision.as_ref().is_none_or(|d| this.action > d.action) {
                    decision = Some(this);
                }
            }
        }
        let decision = decision.unwrap_or_else(Decision::allow);
        if decision.action == Action::Deny {
            return decision;
        }
        if self
            .state
            .parameters
            .get(&b"standard_conforming_strings"[..])
            .is_some_and(|v| v.as_slice() == b"off")
        {
            return refuse(
                "policy.standard-conforming-strings",
                "the server reads backslashes in strings differently (standard_conforming_strings = off) from the parser pgwarden checks statements with".into(),
            );
        }
        for (index, facts) in statements.iter().enumerate() {
            if let Some(mut refused) = self.setting_refusal(facts, &snapshot.config.access) {
                refused.statement = index;
                return refused;
            }
        }
        self.masking_decision(statements, &decision)
            .unwrap_or(decision)
    }

    /// A setting change this session may not make.
    pub(super) fn setting_refusal(
        &self,
        facts: &StatementFacts,
        access: &[crate::config::AccessRule],
    ) -> Option<Decision> {
        let may_use_role = |role: &str| {
            crate::auth::authorize(self.identity, self.database, Some(role), access).is_ok()
        };
        crate::policy::session::setting_refusal(facts, &self.settings, &may_use_role)
            .map(|(rule, message)| refuse(rule, message))
    }

    /// Decide analysed text; text the parser rejects follows `policy.on_parse_error`.
    pub(super) fn rule(
        &mut self,
        analysis: &Result<Arc<Analysis>, AnalysisError>,
        protocol: Protocol<'_>,
    ) -> Ruling {
        match analysis {
            Ok(analysis) if analysis.statements.iter().any(|s| s.executes.is_some()) => {
                // EXECUTE name is judged by what it runs; an unknown name is refused (the
                // server would fail it anyway, and nothing unknown runs).
                let mut statements = Vec::with_capacity(analysis.statements.len());
                for facts in analysis.statements.iter() {
                    // CREATE TABLE … AS EXECUTE would be judged by the body alone: the new
                    // table, and a copy of masked values into it, would go unseen.
                    if facts.executes.is_some()
                        && facts
                            .kinds
                            .iter()
                            .any(|k| matches!(*k, "create table" | "create materialized view"))
                    {
                        let decision = refuse(
                            "policy.create-table-as-execute",
                            "CREATE TABLE … AS EXECUTE is not supported through pgwarden; use CREATE TABLE … AS SELECT".into(),
                        );
                        return self.ruling(decision, protocol, Some(analysis));
                    }
                    match &facts.executes {
                        None => statements.push(facts.clone()),
                        // A body a message still unanswered replaced may be what the server
                        // runs (that message may fail): judged by each.
                        Some(name) => match self.state.prepared_bodies(name) {
                            bodies if !bodies.is_empty() => {
                                for body in bodies {
                                    statements.push(body.with_arguments_of(facts));
                                }
                            }
                            // With nothing in flight and nothing forgotten the server has
                            // no such name either, and says so; behind messages not yet
                            // answered (a DEALLOCATE that may fail), or after pgwarden lost
                            // track of names, it may, and pgwarden cannot tell what it holds.
                            _ if self.tracker.is_empty() && !self.state.names_forgotten => {
                                let decision = refuse(
                                    UNKNOWN_PREPARED,
                                    format!("prepared statement \"{name}\" does not exist"),
                                );
                                return self.ruling(decision, protocol, Some(analysis));
                            }
                            _ => {
                                let decision = refuse(
                                    "policy.prepared-statement-in-doubt",
                                    format!("pgwarden cannot tell whether prepared statement \"{name}\" exists, or what it holds: messages that change it were pipelined, and may have failed; PREPARE it again once they are answered"),
                                );
                                return self.ruling(decision, protocol, Some(analysis));
                            }
                        },
                    }
                }
                self.ruling(self.decide(&statements), protocol, Some(analysis))
            }
            Ok(analysis) => {
                self.ruling(self.decide(&analysis.statements), protocol, Some(analysis))
            }
            Err(error) => {
                let on_parse_error = self.snapshot.load().config.policy.on_parse_error;
                // The parser's message quotes the text near the error, which may be a
                // password: the client sees it, the audit log's `reason` does not.
                let recorded = match error {
                    AnalysisError::Syntax { .. } => {
                        "PostgreSQL's parser rejects the statement (its message quotes the text, so it is not recorded)".to_owned()
                    }
                    other => other.to_string(),
                };
                let decision = Decision {
                    action: on_parse_error,
                    rule: Some("policy.on_parse_error".into()),
                    message: Some(recorded),
                    statement: 0,
                };
                if on_parse_error == Action::Allow {
                    return Ruling {
                        decision,
                        refusal: None,
                        hold: false,
                        approval: None,
                        grant_scope: None,
                    };
                }
                let refusal = match error {
                    AnalysisError::Syntax { message, position } => {
                        let error = ClientError::error(SqlState::SYNTAX_ERROR, message.clone())
                            .with_hint(
                                "pgwarden checks every statement with PostgreSQL's parser before it runs",
                            );
                        match position {
                            Some(at) => error.with_position(*at),
                            None => error,
                        }
                    }
                    AnalysisError::Encoding => ClientError::error(
                        SqlState::CHARACTER_NOT_IN_REPERTOIRE,
                        "invalid byte sequence for encoding \"UTF8\"",
                    ),
                    AnalysisError::TooComplex => ClientError::error(
                        SqlState::STATEMENT_TOO_COMPLEX,
                        "the statement is nested too deeply for pgwarden to check",
                    )
                    .with_hint(
                        "simplify the statement (PostgreSQL's own parser has the same limit)",
                    ),
                    AnalysisError::TooManyStatements => ClientError::error(
                        SqlState::PROGRAM_LIMIT_EXCEEDED,
                        format!("pgwarden cannot check this message: {error}"),
                    )
                    .with_hint("send the statements in smaller batches"),
                    AnalysisError::UnsafeEncoding(_) => {
                        ClientError::error(SqlState::FEATURE_NOT_SUPPORTED, error.to_string())
                            .with_hint("set client_encoding to UTF8")
                    }
                };
                Ruling {
                    decision: Decision {
                        action: Action::Deny,
                        ..decision
                    },
                    refusal: Some(refusal),
                    hold: false,
                    approval: None,
                    grant_scope: None,
                }
            }
        }
    }

    /// What the client is told when a decision is not to run the statement; for `approve`,
    /// whether it runs (an answer for this very statement, or a grant), waits, or is refused.
    pub(super) fn ruling(
        &mut self,
        mut decision: Decision,
        protocol: Protocol<'_>,
        analysis: Option<&Analysis>,
    ) -> Ruling {
        // Only an `approve` decision can meet a grant (hashing it costs a microsecond).
        let grant_scope = analysis
            .filter(|_| decision.action == Action::Approve)
            .and_then(|analysis| self.grant_scope(analysis));
        let mut approval = None;
        let mut hold = false;
        let refusal = match decision.action {
            Action::Allow => None,
            Action::Deny => Some(refusal_for(&decision, "denied")),
            Action::Approve => match self.approval_for(&decision, grant_scope.as_deref()) {
                Approval::Run(note) => {
                    approval = Some(note);
                    None
                }
                Approval::Hold => {
                    hold = true;
                    None
                }
                // Denied, not answered in time, withdrawn, or no approvals here: what it
                // comes to (and what the audit log records) is a refusal, and why.
                Approval::Refuse(error) => {
                    decision.action = Action::Deny;
                    decision.message = Some(match &error.detail {
                        Some(detail) => format!("{}; {detail}", error.message),
                        None => error.message.clone(),
                    });
                    Some(error)
                }
            },
        };
        if refusal.is_some() {
            info!(
                rule = decision.rule.as_deref().unwrap_or("default"),
                action = decision.action.as_str(),
                protocol = protocol_name(protocol),
                "statement refused by policy"
            );
        } else {
            // Kinds and tables only: never the text, which may hold values.
            debug!(
                rule = decision.rule.as_deref().unwrap_or("default"),
                action = decision.action.as_str(),
                held = hold,
                protocol = protocol_name(protocol),
                kinds = ?analysis.map(|a| &a.kinds[..]).unwrap_or_default(),
                "statement decided"
            );
        }
        Ruling {
            decision,
            refusal,
            hold,
            approval,
            grant_scope,
        }
    }

    /// The search_path and roles `statements` may run with: the session's, widened by what
    /// a SET earlier in the same message may change.
    fn path_and_roles_for(
        &self,
        statements: &[StatementFacts],
    ) -> (Cow<'_, [String]>, Cow<'_, [String]>) {
        let state = &self.state;
        let mut search_path = state.effective_search_path();
        let mut roles = state.effective_roles();
        if roles.is_empty() {
            roles = Cow::Owned(vec![self.role.to_owned()]);
        }
        if SessionState::may_change_path_or_role(statements) {
            let (mut path, mut more_roles) = (search_path.into_owned(), roles.into_owned());
            state.widen_for(statements, self.role, None, &mut path, &mut more_roles);
            search_path = Cow::Owned(path);
            roles = Cow::Owned(more_roles);
        }
        (search_path, roles)
    }

    /// The roles `statements` may run as, for records and approvers, when that is not just
    /// the login role.
    pub(super) fn current_role(&self, statements: &[StatementFacts]) -> Option<String> {
        let (_, roles) = self.path_and_roles_for(statements);
        (roles.len() != 1 || roles[0] != self.role).then(|| roles.join(" or "))
    }

    /// What a grant for this message covers: its shape ([`Analysis::fingerprint`]) under the
    /// search_path and roles it runs with now, since under another path the same text names
    /// other tables, and under another role it runs with other privileges. `None` when it
    /// runs a SQL-level EXECUTE: the name can be prepared again with another body, so no
    /// grant covers it.
    fn grant_scope(&self, analysis: &Analysis) -> Option<String> {
        use sha2::Digest;
        if analysis.statements.iter().any(|s| s.executes.is_some()) {
            return None;
        }
        let mut scope = sha2::Sha256::new();
        scope.update(analysis.fingerprint.as_bytes());
        for schema in self.state.effective_search_path().iter() {
            scope.update(b"\0schema\0");
            scope.update(schema.as_bytes());
        }
        for role in self.state.effective_roles().iter() {
            scope.update(b"\0role\0");
            scope.update(role.as_bytes());
        }
        Some(crate::audit::record::hex(&scope.finalize()))
    }

    fn approval_for(&mut self, decision: &Decision, grant_scope: Option<&str>) -> Approval {
        let snapshot = self.snapshot.load();
        let Some(settings) = snapshot.config.approvals.as_ref() else {
            return Approval::Refuse(refusal_for(decision, "holds for approval").with_hint(
                "this pgwarden has no [approvals] configured; ask an administrator to run it, or for a rule that allows it",
            ));
        };
        // The answer to this statement's own request, now that it is processed again.
        if let Some(request) = self.hold_answer.take() {
            let id = &request.id;
            return match request.status {
                ApprovalStatus::Approved => Approval::Run(ApprovalNote {
                    request: id.clone(),
                    approved_by: request.approvers(),
                    grant: false,
                }),
                ApprovalStatus::Denied => {
                    let answer = request.answers.iter().find(|a| !a.approve);
                    let by = answer.map_or("an approver", |a| a.by.as_str());
                    let mut error = ClientError::error(
                        SqlState::INSUFFICIENT_PRIVILEGE,
                        format!("pgwarden: {by} denied this statement (approval request {id})"),
                    );
                    if let Some(reason) = answer.and_then(|a| a.reason.clone()) {
                        error = error.with_detail(format!("reason: {reason}"));
                    }
                    Approval::Refuse(error)
                }
                ApprovalStatus::Expired => Approval::Refuse(
                    ClientError::error(
                        SqlState::QUERY_CANCELED,
                        format!(
                            "pgwarden: approval request {id} was not answered within {}; the statement did not run",
                            crate::approvals::human(settings.timeout)
                        ),
                    )
                    .with_hint("ask an approver to look at it sooner, then run the statement again"),
                ),
                ApprovalStatus::Withdrawn | ApprovalStatus::Pending => Approval::Refuse(
                    ClientError::error(
                        SqlState::QUERY_CANCELED,
                        "canceling statement due to user request",
                    )
                    .with_detail(format!("approval request {id} was withdrawn")),
                ),
            };
        }
        let scope = grant_scope.map(|shape| GrantScope {
            owner: self.identity.owner(),
            database: self.database.to_owned(),
            role: self.role.to_owned(),
            shape: shape.to_owned(),
        });
        if let Some(grant) = scope.and_then(|scope| self.approvals.grant_for(&scope)) {
            return Approval::Run(ApprovalNote {
                request: grant.request,
                approved_by: vec![grant.granted_by],
                grant: true,
            });
        }
        Approval::Hold
    }
}

/// What an `approve` decision comes to for one statement.
enum Approval {
    Run(ApprovalNote),
    Hold,
    Refuse(ClientError),
}

/// A denial by one of the session's own limits (not a configured rule).
/// The rule refusing an `EXECUTE` of a name pgwarden knows no `PREPARE` of.
const UNKNOWN_PREPARED: &str = "policy.unknown-prepared-statement";

pub(super) fn refuse(rule: &str, message: String) -> Decision {
    Decision {
        action: Action::Deny,
        rule: Some(rule.to_owned()),
        message: Some(message),
        statement: 0,
    }
}

/// The error a refused statement gets: 42501 (insufficient_privilege) with the rule and its
/// message, as a server's permission error would read.
fn refusal_for(decision: &Decision, verb: &str) -> ClientError {
    let rule = decision.rule.as_deref().unwrap_or("policy.default");
    // What the server would say, with its code (26000) that clients check for.
    if rule == UNKNOWN_PREPARED {
        let message = decision.message.clone().unwrap_or_default();
        return ClientError::error(SqlState::INVALID_SQL_STATEMENT_NAME, message).with_hint(
            "pgwarden knows of no PREPARE of that name in this session (it was never prepared, was deallocated, or its PREPARE failed); rule policy.unknown-prepared-statement",
        );
    }
    let message = match &decision.message {
        Some(why) => format!("pgwarden {verb} this statement (rule {rule}): {why}"),
        None => format!("pgwarden {verb} this statement (rule {rule})"),
    };
    let mut error = ClientError::error(SqlState::INSUFFICIENT_PRIVILEGE, message);
    if verb == "denied" && rule.starts_with("guardrail.") {
        // Who can change it, and how to see what decides.
        error = error.with_hint(
            "this is one of pgwarden's built-in guardrails; an administrator can let some people past it with a rule above priority 100 or [policy] guardrail_exempt_groups (docs/policy.md), and `pgwarden policy test` shows which rule decides a statement",
        );
    }
    if decision.statement > 0 {
        error.with_detail(format!(
            "statement {} of the message; nothing of the message was run",
            decision.statement + 1
        ))
    } else {
        error
    }
}
