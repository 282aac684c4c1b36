//! What happens to each frame on its way through a session: every statement is analysed
//! with PostgreSQL's own parser, decided by the policy, recorded in the audit log *before*
//! it is forwarded, and its outcome recorded when the server's answer comes back
//! ([`super::track`]).
//!
//! A statement the policy refuses, or that the audit log cannot record (unless
//! `audit.on_failure = "continue"`), never reaches PostgreSQL: an inert message takes its
//! place so the client gets the refusal in the right slot, with the transaction semantics of
//! a server error (an open transaction is aborted; a pipeline skips to its Sync).

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use tracing::{info, warn};

use super::state::SessionState;
use super::track::{self, Expect, Finished, Rewrite, Running, Tracker};
use super::{SessionError, Snapshot};
use crate::audit::event::{Actor, QueryText, StatementRecord, Status};
use crate::audit::{AuditLog, Event, OnFailure, StatementText};
use crate::auth::Identity;
use crate::error::{ClientError, SqlState};
use crate::policy::session::SessionSettings;
use crate::policy::{Action, ApprovalAnswer, ApprovalRequest, Approver, Decision, Subject};
use crate::protocol::frame::{peek_frame, FrameBuffer, FrameHeader, HEADER_LEN};
use crate::protocol::{backend, split_i32, views, ProtocolError};
use crate::sql::facts::SettingValue;
use crate::sql::{Analysis, AnalysisError, Analyzer, StatementFacts};

use super::relay::Ending;

/// Which protocol path carried a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol<'a> {
    /// A simple Query message: it may hold several statements.
    Simple,
    /// Parse/Execute: one statement, possibly named.
    Extended { statement_name: &'a [u8] },
    /// The fast-path FunctionCall message (libpq's large-object functions): no SQL.
    FunctionCall { function_oid: u32 },
}

/// Everything a session needs to decide and record its statements.
pub struct Flow<'a> {
    pub session: u64,
    pub identity: &'a Identity,
    pub database: &'a str,
    pub role: &'a str,
    /// The current configuration: the policy is read from it for every statement, so a
    /// reload applies to the next statement of every session.
    pub snapshot: &'a ArcSwap<Snapshot>,
    pub analyzer: &'a Analyzer,
    pub approver: &'a dyn Approver,
    pub audit: Option<StatementAudit<'a>>,
    /// Session settings from the policy: the locked ones may not change.
    pub settings: SessionSettings,
    pub state: SessionState,
    pub tracker: Tracker,
    pub upstream_sent_fatal: bool,
}

/// The audit log and how statements go into it.
pub struct StatementAudit<'a> {
    pub log: &'a AuditLog,
    pub actor: Arc<Actor>,
    pub on_failure: OnFailure,
    pub text: StatementText,
    pub parameter_key: Option<ring::hmac::Key>,
}

/// A statement on its way to the audit log.
struct Described<'s> {
    sql: &'s [u8],
    analysis: Option<Arc<Analysis>>,
    protocol: Protocol<'s>,
    parameters: Option<Vec<Option<String>>>,
    decision: &'s Decision,
}

/// The fate of one client frame.
enum Verdict {
    Forward,
    /// Not forwarded (skipping to Sync after a refusal).
    Drop,
    /// Replaced upstream by an inert message of this shape; the client gets this error.
    Refuse(Expect, ClientError),
}

/// Decided, with the refusal a client gets when the decision is not to run it.
struct Ruling {
    decision: Decision,
    refusal: Option<ClientError>,
}

impl Flow<'_> {
    /// Scan complete client frames; decide, record and forward them (or refuse them).
    /// Returns `Some` when the client said Terminate.
    pub async fn client_frames(
        &mut self,
        inbuf: &mut FrameBuffer,
        upstream_out: &mut BytesMut,
    ) -> Result<Option<Ending>, SessionError> {
        let limits = inbuf.limits();
        let mut offset = 0;
        // Start of the frames not yet copied: runs of forwarded frames are copied at once.
        let mut run_start = 0;
        let mut ending = None;
        while let Some(header) = peek_frame(&inbuf.bytes()[offset..], limits)? {
            let end = offset + header.wire_len();
            let body = &inbuf.bytes()[offset + HEADER_LEN..end];
            let verdict = if self.state.skip_until_sync && !matches!(header.tag, b'S' | b'X') {
                Verdict::Drop
            } else {
                self.client_frame(header, body, &mut ending).await?
            };
            match verdict {
                Verdict::Forward => {}
                Verdict::Drop => {
                    upstream_out.extend_from_slice(&inbuf.bytes()[run_start..offset]);
                    run_start = end;
                }
                Verdict::Refuse(expect, error) => {
                    upstream_out.extend_from_slice(&inbuf.bytes()[run_start..offset]);
                    track::write_inert(upstream_out, expect);
                    self.tracker.push_refused(expect, error);
                    // The server skips to Sync after the inert Parse fails; so do we, so that
                    // nothing behind the refused message is recorded as run.
                    if expect == Expect::Parse {
                        self.state.skip_until_sync = true;
                    }
                    run_start = end;
                }
            }
            offset = end;
            if ending.is_some() {
                break;
            }
        }
        upstream_out.extend_from_slice(&inbuf.bytes()[run_start..offset]);
        inbuf.consume(offset);
        Ok(ending)
    }

    async fn client_frame(
        &mut self,
        header: FrameHeader,
        body: &[u8],
        ending: &mut Option<Ending>,
    ) -> Result<Verdict, SessionError> {
        match header.tag {
            b'Q' => {
                let sql = views::query(body)?;
                self.state.on_query();
                let analysis = self.analyze(sql);
                let ruling = self.rule(&analysis, Protocol::Simple);
                let described = Described {
                    sql,
                    analysis: analysis.ok(),
                    protocol: Protocol::Simple,
                    parameters: None,
                    decision: &ruling.decision,
                };
                if let Some(refusal) = ruling.refusal {
                    self.record_refused(described).await;
                    return Ok(Verdict::Refuse(Expect::Query, refusal));
                }
                let analysis = described.analysis.clone();
                return Ok(match self.run_statement(described).await {
                    Ok(run) => {
                        if let Some(analysis) = analysis {
                            self.state
                                .on_sql_statements(&analysis.statements, self.role);
                        }
                        self.tracker.push(Expect::Query, run);
                        Verdict::Forward
                    }
                    Err(refusal) => Verdict::Refuse(Expect::Query, refusal),
                });
            }
            b'P' => {
                let parse = views::parse(body)?;
                let unchanged = self
                    .state
                    .statements
                    .get(parse.statement)
                    .is_some_and(|s| s.sql == parse.sql);
                let (analysis, ruling) = if unchanged {
                    // Drivers re-send the same text for the same name: decide it again (the
                    // policy may have been reloaded), but without a second analysis.
                    let prepared = &self.state.statements[parse.statement];
                    let analysis = prepared.analysis.clone().ok_or_else(|| {
                        AnalysisError::Syntax("the statement could not be parsed".into())
                    });
                    let ruling = self.rule(
                        &analysis,
                        Protocol::Extended {
                            statement_name: parse.statement,
                        },
                    );
                    (analysis, ruling)
                } else {
                    let analysis = self.analyze(parse.sql);
                    let ruling = self.rule(
                        &analysis,
                        Protocol::Extended {
                            statement_name: parse.statement,
                        },
                    );
                    (analysis, ruling)
                };
                if let Some(refusal) = ruling.refusal {
                    // On record as refused; never prepared, so nothing can Execute it.
                    let described = Described {
                        sql: parse.sql,
                        analysis: analysis.ok(),
                        protocol: Protocol::Extended {
                            statement_name: parse.statement,
                        },
                        parameters: None,
                        decision: &ruling.decision,
                    };
                    self.record_refused(described).await;
                    self.state.statements.remove(parse.statement);
                    return Ok(Verdict::Refuse(Expect::Parse, refusal));
                }
                let rule = ruling.decision.rule.clone();
                self.state.on_parse(&parse, || analysis.ok(), rule);
                self.tracker.push(Expect::Parse, None);
            }
            b'B' => {
                let bind = views::bind(body)?;
                let parameters = self.hash_parameters(&bind);
                self.state.on_bind(&bind, parameters);
                self.tracker.push(Expect::Bind, None);
            }
            b'C' => {
                let (target, name) = views::target(body, "Close message")?;
                self.state.on_close(target, name);
                self.tracker.push(Expect::Close, None);
            }
            b'D' => {
                views::target(body, "Describe message")?;
                self.tracker.push(Expect::Describe, None);
            }
            b'E' => {
                let (portal, _max_rows) = views::execute(body)?;
                // Cheap reference-counted copies: the session state is borrowed no further.
                let (sql, name, analysis, parameters, rule) =
                    match self.state.portal_statement(portal) {
                        Some((portal, prepared)) => (
                            prepared.map(|p| p.sql.clone()).unwrap_or_default(),
                            portal.statement.clone(),
                            prepared.and_then(|p| p.analysis.clone()),
                            portal.parameters.clone(),
                            prepared.and_then(|p| p.rule.clone()),
                        ),
                        // The server answers "portal does not exist"; the attempt is still
                        // on record.
                        None => (Bytes::new(), Bytes::new(), None, None, None),
                    };
                // Decided when it was prepared.
                let decision = Decision {
                    rule,
                    ..Decision::allow()
                };
                let prepares = analysis.clone();
                let described = Described {
                    sql: &sql,
                    analysis,
                    protocol: Protocol::Extended {
                        statement_name: &name,
                    },
                    parameters,
                    decision: &decision,
                };
                return Ok(match self.run_statement(described).await {
                    Ok(run) => {
                        // A PREPARE or DEALLOCATE sent through Parse takes effect here.
                        if let Some(analysis) = prepares {
                            self.state
                                .on_sql_statements(&analysis.statements, self.role);
                        }
                        self.tracker.push(Expect::Execute, run);
                        Verdict::Forward
                    }
                    Err(refusal) => Verdict::Refuse(Expect::Parse, refusal),
                });
            }
            b'S' => {
                expect_empty(header, body)?;
                self.state.on_sync();
                self.state.skip_until_sync = false;
                self.tracker.push(Expect::Sync, None);
            }
            b'H' => expect_empty(header, body)?,
            b'F' => {
                let (oid, _) = split_i32(body).ok_or(ProtocolError::Malformed {
                    what: "FunctionCall message",
                    detail: "too short",
                })?;
                self.state.in_flight += 1;
                let protocol = Protocol::FunctionCall {
                    function_oid: oid as u32,
                };
                let facts = StatementFacts {
                    kinds: vec!["function call"],
                    functions: vec![format!("oid:{}", oid as u32)],
                    ..StatementFacts::default()
                };
                let ruling = self.ruling(self.decide(std::slice::from_ref(&facts)), protocol, None);
                let described = Described {
                    sql: b"",
                    analysis: None,
                    protocol,
                    parameters: None,
                    decision: &ruling.decision,
                };
                if let Some(refusal) = ruling.refusal {
                    self.record_refused(described).await;
                    return Ok(Verdict::Refuse(Expect::Query, refusal));
                }
                return Ok(match self.run_statement(described).await {
                    Ok(run) => {
                        self.tracker.push(Expect::FunctionCall, run);
                        Verdict::Forward
                    }
                    // A refused FunctionCall is answered like a failed Query: error, ready.
                    Err(refusal) => Verdict::Refuse(Expect::Query, refusal),
                });
            }
            // COPY data from the client: passed through.
            b'd' | b'c' | b'f' => {}
            b'X' => {
                expect_empty(header, body)?;
                *ending = Some(Ending::ClientTerminated);
            }
            tag => {
                return Err(ProtocolError::Unexpected {
                    tag,
                    phase: "the session",
                }
                .into())
            }
        }
        Ok(Verdict::Forward)
    }

    fn analyze(&self, sql: &[u8]) -> Result<Arc<Analysis>, AnalysisError> {
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
    fn decide(&self, statements: &[StatementFacts]) -> Decision {
        let subject = Subject {
            user: &self.identity.name,
            groups: &self.identity.groups,
            database: self.database,
            role: self.role,
            search_path: &self.state.search_path,
        };
        let snapshot = self.snapshot.load();
        let decision = snapshot.config.policy.decide(&subject, statements);
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
        decision
    }

    /// A setting change this session may not make.
    fn setting_refusal(
        &self,
        facts: &StatementFacts,
        access: &[crate::config::AccessRule],
    ) -> Option<Decision> {
        for change in &facts.changes {
            let name = change.name.as_str();
            let reset = change.value == SettingValue::Reset;
            match name {
                "role" => {
                    let granted = match &change.value {
                        SettingValue::Reset => true,
                        SettingValue::Value(role) => {
                            role == "none"
                                || crate::auth::authorize(
                                    self.identity,
                                    self.database,
                                    Some(role),
                                    access,
                                )
                                .is_ok()
                        }
                        SettingValue::Unknown | SettingValue::List(_) => false,
                    };
                    if !granted {
                        return Some(refuse(
                            "policy.set-role",
                            "SET ROLE is allowed only to roles [[access]] grants you on this database".into(),
                        ));
                    }
                }
                "session_authorization" if !reset => {
                    return Some(refuse(
                        "policy.set-role",
                        "SET SESSION AUTHORIZATION is not allowed through pgwarden".into(),
                    ));
                }
                // set_config with a name that is not a constant could name anything.
                "*" => {
                    return Some(refuse(
                        "policy.locked-setting",
                        "set_config needs a constant setting name through pgwarden".into(),
                    ));
                }
                name if !reset && self.settings.is_locked(name) => {
                    return Some(refuse(
                        "policy.locked-setting",
                        format!("the setting \"{name}\" is locked for you"),
                    ));
                }
                _ => {}
            }
        }
        None
    }

    /// Decide analysed text; text the parser rejects follows `policy.on_parse_error`.
    fn rule(
        &self,
        analysis: &Result<Arc<Analysis>, AnalysisError>,
        protocol: Protocol<'_>,
    ) -> Ruling {
        match analysis {
            Ok(analysis) if analysis.statements.iter().any(|s| s.executes.is_some()) => {
                // EXECUTE name is judged by what it runs; an unknown name is refused (the
                // server would fail it anyway, and nothing unknown runs).
                let mut statements = Vec::with_capacity(analysis.statements.len());
                for facts in analysis.statements.iter() {
                    match &facts.executes {
                        None => statements.push(facts.clone()),
                        Some(name) => match self.state.prepared_body(name) {
                            Some(body) => statements.push(body),
                            None => {
                                let decision = refuse(
                                    "policy.unknown-prepared-statement",
                                    format!("prepared statement \"{name}\" is not known to pgwarden in this session; PREPARE it first"),
                                );
                                return self.ruling(
                                    decision,
                                    protocol,
                                    Some(&analysis.fingerprint),
                                );
                            }
                        },
                    }
                }
                self.ruling(
                    self.decide(&statements),
                    protocol,
                    Some(&analysis.fingerprint),
                )
            }
            Ok(analysis) => self.ruling(
                self.decide(&analysis.statements),
                protocol,
                Some(&analysis.fingerprint),
            ),
            Err(error) => {
                let on_parse_error = self.snapshot.load().config.policy.on_parse_error;
                let decision = Decision {
                    action: on_parse_error,
                    rule: Some("policy.on_parse_error".into()),
                    message: Some(error.to_string()),
                    statement: 0,
                };
                if on_parse_error == Action::Allow {
                    return Ruling {
                        decision,
                        refusal: None,
                    };
                }
                let refusal = match error {
                    AnalysisError::Syntax(message) => ClientError::error(
                        SqlState::SYNTAX_ERROR,
                        message.clone(),
                    )
                    .with_hint(
                        "pgwarden checks every statement with PostgreSQL's parser before it runs",
                    ),
                    AnalysisError::Encoding => ClientError::error(
                        SqlState::CHARACTER_NOT_IN_REPERTOIRE,
                        "invalid byte sequence for encoding \"UTF8\"",
                    ),
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
                }
            }
        }
    }

    /// What the client is told when a decision is not to run the statement.
    fn ruling(
        &self,
        decision: Decision,
        protocol: Protocol<'_>,
        fingerprint: Option<&str>,
    ) -> Ruling {
        let refusal = match decision.action {
            Action::Allow => None,
            Action::Deny => Some(refusal_for(&decision, "denied")),
            Action::Approve => {
                let request = ApprovalRequest {
                    user: &self.identity.name,
                    database: self.database,
                    role: self.role,
                    rule: decision.rule.as_deref().unwrap_or("policy.default"),
                    fingerprint,
                };
                match self.approver.request(&request) {
                    ApprovalAnswer::Refused { reason } => {
                        Some(refusal_for(&decision, "holds for approval").with_hint(reason))
                    }
                }
            }
        };
        if refusal.is_some() {
            info!(
                rule = decision.rule.as_deref().unwrap_or("default"),
                action = decision.action.as_str(),
                protocol = protocol_name(protocol),
                "statement refused by policy"
            );
        }
        Ruling { decision, refusal }
    }

    /// Put a statement the policy refused on record.
    async fn record_refused(&mut self, described: Described<'_>) {
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
    async fn run_statement(
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
    fn hash_parameters(&self, bind: &views::Bind<'_>) -> Option<Vec<Option<String>>> {
        let key = self.audit.as_ref()?.parameter_key.as_ref()?;
        Some(
            bind.parameter_values()
                .map(|value| {
                    value.map(|v| crate::audit::record::hex(ring::hmac::sign(key, v).as_ref()))
                })
                .collect(),
        )
    }

    /// Scan complete server frames: track what the session needs, attribute responses to
    /// statements, swap refused slots' errors for pgwarden's, and copy to the client.
    pub fn server_frames(
        &mut self,
        inbuf: &mut FrameBuffer,
        client_out: &mut BytesMut,
    ) -> Result<(), SessionError> {
        let limits = inbuf.limits();
        let mut offset = 0;
        let mut run_start = 0;
        while let Some(header) =
            peek_frame(&inbuf.bytes()[offset..], limits).map_err(SessionError::UpstreamProtocol)?
        {
            let end = offset + header.wire_len();
            let body = &inbuf.bytes()[offset + HEADER_LEN..end];
            match header.tag {
                b'Z' => {
                    let status = *body.first().ok_or(SessionError::UpstreamProtocol(
                        ProtocolError::Malformed {
                            what: "ReadyForQuery",
                            detail: "no status",
                        },
                    ))?;
                    self.state.on_ready_for_query(status);
                }
                b'S' => {
                    let (name, value) =
                        views::parameter_status(body).map_err(SessionError::UpstreamProtocol)?;
                    self.state.on_parameter_status(name, value);
                }
                b'E' => {
                    let fields =
                        views::error_fields(body).map_err(SessionError::UpstreamProtocol)?;
                    self.upstream_sent_fatal |= fields
                        .iter()
                        .any(|(code, v)| *code == b'V' && (*v == b"FATAL" || *v == b"PANIC"));
                }
                _ => {}
            }
            if let Rewrite::Replace(error) = self.tracker.on_server(header.tag, body) {
                client_out.extend_from_slice(&inbuf.bytes()[run_start..offset]);
                backend::error_response(client_out, &error);
                run_start = end;
            }
            offset = end;
        }
        client_out.extend_from_slice(&inbuf.bytes()[run_start..offset]);
        inbuf.consume(offset);
        Ok(())
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

/// A denial by one of the session's own limits (not a configured rule).
fn refuse(rule: &str, message: String) -> Decision {
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
    let message = match &decision.message {
        Some(why) => format!("pgwarden {verb} this statement (rule {rule}): {why}"),
        None => format!("pgwarden {verb} this statement (rule {rule})"),
    };
    let error = ClientError::error(SqlState::INSUFFICIENT_PRIVILEGE, message);
    if decision.statement > 0 {
        error.with_detail(format!(
            "statement {} of the message; nothing of the message was run",
            decision.statement + 1
        ))
    } else {
        error
    }
}

fn protocol_name(protocol: Protocol<'_>) -> &'static str {
    match protocol {
        Protocol::Simple => "simple",
        Protocol::Extended { .. } => "extended",
        Protocol::FunctionCall { .. } => "function-call",
    }
}

fn expect_empty(header: FrameHeader, body: &[u8]) -> Result<(), ProtocolError> {
    if body.is_empty() {
        Ok(())
    } else {
        Err(ProtocolError::BadLength {
            tag: header.tag,
            len: body.len() as i64 + 4,
        })
    }
}
