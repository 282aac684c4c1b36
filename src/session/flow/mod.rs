//! What happens to each frame on its way through a session: every statement is analysed
//! with PostgreSQL's own parser, decided by the policy, recorded in the audit log *before*
//! it is forwarded, and its outcome recorded when the server's answer comes back
//! (`session/track.rs`).
//!
//! A statement the policy refuses, or that the audit log cannot record (unless
//! `audit.on_failure = "continue"`), never reaches PostgreSQL: an inert message takes its
//! place so the client gets the refusal in the right slot, with the transaction semantics of
//! a server error (an open transaction is aborted; a pipeline skips to its Sync).

use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};

use super::state::{Decided, PortalRun, SessionState};
use super::track::{self, Expect, PortalChange, Rewrite, Tracker};
use super::{SessionError, Snapshot};
use crate::approvals::{Approvals, Request, Waiter};
use crate::audit::event::Actor;
use crate::audit::event::ApprovalNote;
use crate::audit::{AuditLog, OnFailure, StatementText};
use crate::auth::Identity;
use crate::error::{ClientError, SqlState};
use crate::policy::session::SessionSettings;
use crate::policy::Decision;
use crate::protocol::frame::{peek_frame, FrameBuffer, FrameHeader, HEADER_LEN};
use crate::protocol::{backend, split_i32, views, ProtocolError};
use crate::sql::{Analysis, AnalysisError, Analyzer, StatementFacts};

mod decide;
mod masking;
mod record;

use masking::{write_describe_portal, Masked};

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
    pub approvals: &'a Approvals,
    /// Every session's upstream backend, for telling this person's sessions from others'.
    pub cancels: &'a crate::upstream::cancel::CancelMap,
    pub metrics: &'a crate::metrics::Metrics,
    pub audit: Option<StatementAudit<'a>>,
    /// Session settings from the policy: the locked ones may not change.
    pub settings: SessionSettings,
    pub state: SessionState,
    pub tracker: Tracker,
    pub upstream_sent_fatal: bool,
    /// A statement just put on hold: the relay waits on it before reading further frames.
    pub held: Option<Held>,
    /// The final state of the held statement's request, for when its frame is processed again.
    pub hold_answer: Option<Request>,
    /// Messages for the client that do not answer a statement (the hold notice).
    pub to_client: BytesMut,
    /// Why the message being processed runs: its intent and sqlcommenter tags.
    pub declared: Declared,
    /// What this identity may not see; `None` when it sees everything.
    pub masking: Option<crate::masking::rewrite::Masking>,
    /// Which configuration `masking` was built from ([`Snapshot::generation`]).
    pub masking_config: u64,
    pub catalogs: &'a crate::masking::catalog::Catalogs,
    /// The session changed the schema: masking's catalog resolution is reloaded before
    /// its next statement.
    pub catalog_dirty: bool,
    /// The Execute just decided runs this portal: a Describe of it goes first, so masking
    /// knows its columns whatever the client described before.
    pub describe_first: Option<Vec<u8>>,
    /// Scratch space for a rewritten server frame.
    pub masked_frame: BytesMut,
    /// A Query or Execute that may run COPY FROM STDIN went out, and the client has ended
    /// this many COPYs since (CopyDone or CopyFail): a Sync sent now may be read by one of
    /// its COPYs, which ignores it.
    pub copy_in: Option<u32>,
    /// The server said CopyInResponse and the COPY has not ended: a Sync the client sends
    /// now is ignored by the server, and no ReadyForQuery will answer it.
    pub copy_started: bool,
    /// The client's previous message was a Describe of this portal: its RowDescription comes
    /// right before the rows of an Execute of it, so pgwarden need not describe it again.
    pub described_portal: Option<Vec<u8>>,
    /// Executes sent since the last Sync, and what the first settles if it was a lone SET
    /// or RESET: the Sync's clean, idle answer then makes it certain.
    pub executes_since_sync: usize,
    pub settle_at_sync: Option<track::Settled>,
    /// Why the session is ending for its person (their sign-in token expired, or a reload
    /// revoked their access): what the client sends from now on is left unread, except the
    /// rest of a COPY in progress, and the session ends once what it sent before has been
    /// answered.
    pub signing_off: Option<super::relay::Ending>,
}

/// What a client declared about a statement.
#[derive(Debug, Clone, Default)]
pub struct Declared {
    /// The sqlcommenter `intent` tag, else the session's `pgwarden.intent`.
    pub intent: Option<String>,
    pub tags: Option<Arc<crate::sql::comments::Tags>>,
}

/// A statement waiting for approval: its frame stays first in the client buffer.
#[derive(Debug)]
pub struct Held {
    pub request: Request,
    pub waiter: Waiter,
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
    approval: Option<&'s ApprovalNote>,
}

/// The fate of one client frame.
enum Verdict {
    Forward,
    /// Not forwarded (skipping to Sync after a refusal).
    Drop,
    /// Replaced upstream by an inert message of this shape; the client gets this error.
    Refuse(Expect, ClientError),
    /// Held for approval: neither forwarded nor consumed until a person answers.
    Hold(HoldSpec),
}

/// What a request for approval shows about the held statement.
struct HoldSpec {
    statement: String,
    analysis: Option<Arc<Analysis>>,
    rule: String,
    grant_scope: Option<String>,
}

impl Flow<'_> {
    /// What the client declared about `sql`: its sqlcommenter tags, and its intent — the
    /// `intent` tag, else a `SET pgwarden.intent` earlier in the same message, else the
    /// session's.
    fn declare(&mut self, sql: &[u8], statements: Option<&[StatementFacts]>) {
        let tags = crate::sql::comments::sqlcommenter(sql).map(Arc::new);
        let in_message = statements.into_iter().flatten().rev().find_map(|facts| {
            facts.changes.iter().rev().find_map(|c| match &c.value {
                crate::sql::facts::SettingValue::Value(v) if c.name == "pgwarden.intent" => {
                    Some(v.clone())
                }
                _ => None,
            })
        });
        let intent = tags
            .as_ref()
            .and_then(|t| t.get("intent").cloned())
            .or(in_message)
            .and_then(|i| crate::session::state::intent(&i))
            .or_else(|| self.state.intent.clone());
        self.declared = Declared { intent, tags };
    }
}

impl Flow<'_> {
    /// The portal and statement an Execute or Describe of `portal` is sent as running.
    fn origin_of(&self, portal: &[u8]) -> Option<track::Origin> {
        self.state.portals.get(portal).map(|p| track::Origin {
            bound: p.bound,
            statement: p.statement.clone(),
            sql: p
                .prepared
                .as_ref()
                .map(|s| s.sql.clone())
                .unwrap_or_default(),
        })
    }

    /// Every message sent has been answered (a COPY taking data has not been: its Query or
    /// Execute is answered when it ends).
    pub fn all_answered(&self) -> bool {
        self.state.between_statements() && self.tracker.is_empty()
    }

    /// While signing off: the rest of a COPY, or the Sync that ends what was sent before,
    /// may still come from the client.
    pub fn may_read_while_signing_off(&self) -> bool {
        self.copy_may_take_data() || self.tracker.segment_open()
    }

    /// The session ends without reading the client again (it is signing off, and the client
    /// sent something other than the Sync that ends what it sent before, or nothing for a
    /// while). If messages were sent after its last Sync, the server holds their answers
    /// until a Sync: pgwarden sends one itself, and drops its ReadyForQuery.
    pub fn sync_for_ending(&mut self, upstream_out: &mut BytesMut) {
        if self.copy_may_take_data() || !self.tracker.segment_open() {
            return;
        }
        postgres_protocol::message::frontend::sync(upstream_out);
        self.state.on_sync();
        self.tracker.push_hidden_sync();
    }

    /// A COPY FROM STDIN is taking data, or one sent may still start: the client's CopyData
    /// must be read. (`copy_in` alone stays set after a COPY that failed before starting.)
    pub fn copy_may_take_data(&self) -> bool {
        self.copy_started || self.tracker.awaits_copy_in()
    }
}

impl HoldSpec {
    fn new(sql: &[u8], analysis: Option<Arc<Analysis>>, ruling: &Ruling) -> Self {
        Self {
            statement: crate::sql::secrets::without_passwords(&String::from_utf8_lossy(sql))
                .into_owned(),
            analysis,
            rule: ruling
                .decision
                .rule
                .clone()
                .unwrap_or_else(|| "policy.default".into()),
            grant_scope: ruling.grant_scope.clone(),
        }
    }
}

/// Decided, with the refusal a client gets when the decision is not to run it.
struct Ruling {
    decision: Decision,
    refusal: Option<ClientError>,
    /// `approve`, not yet answered: the statement waits.
    hold: bool,
    /// `approve`, answered yes (or granted): the statement runs.
    approval: Option<ApprovalNote>,
    /// What a grant given when approving it would cover (see `Flow::grant_scope`).
    grant_scope: Option<String>,
}

impl Flow<'_> {
    /// Scan complete client frames; decide, record and forward them (or refuse them).
    /// Returns `Some` when the client said Terminate.
    pub async fn client_frames(
        &mut self,
        inbuf: &mut FrameBuffer,
        upstream_out: &mut BytesMut,
    ) -> Result<Option<Ending>, SessionError> {
        if self.state.between_statements() {
            self.refresh_masking().await;
        }
        let limits = inbuf.limits();
        let mut offset = 0;
        // Start of the frames not yet copied: runs of forwarded frames are copied at once.
        let mut run_start = 0;
        let mut ending = None;
        let mut close_segment = false;
        while let Some(header) = peek_frame(&inbuf.bytes()[offset..], limits)? {
            // Once signing off, only the rest of a COPY and the Sync that ends what was sent
            // before are read. (The held frame still gets its answer: withdrawn.)
            if self.signing_off.is_some()
                && self.hold_answer.is_none()
                && !self.copy_may_take_data()
                && !(header.tag == b'S' && self.tracker.segment_open())
            {
                close_segment = true;
                break;
            }
            let end = offset + header.wire_len();
            let body = &inbuf.bytes()[offset + HEADER_LEN..end];
            let verdict = if self.state.skip_until_sync && !matches!(header.tag, b'S' | b'X') {
                Verdict::Drop
            } else {
                self.client_frame(header, body, &mut ending).await?
            };
            // An approval answers the held frame, which comes first after a hold: whatever
            // that frame was decided this time, no frame behind it may use the answer.
            self.hold_answer = None;
            match verdict {
                Verdict::Forward => {
                    if let Some(portal) = self.describe_first.take() {
                        upstream_out.extend_from_slice(&inbuf.bytes()[run_start..offset]);
                        write_describe_portal(upstream_out, &portal);
                        run_start = offset;
                    }
                }
                Verdict::Drop => {
                    upstream_out.extend_from_slice(&inbuf.bytes()[run_start..offset]);
                    run_start = end;
                }
                Verdict::Hold(spec) => {
                    // Everything before the held frame goes; the frame and everything after
                    // it stay in the buffer, unread, until the answer.
                    upstream_out.extend_from_slice(&inbuf.bytes()[run_start..offset]);
                    inbuf.consume(offset);
                    self.hold(spec).await;
                    return Ok(None);
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
        if close_segment {
            self.sync_for_ending(upstream_out);
        }
        Ok(ending)
    }

    async fn client_frame(
        &mut self,
        header: FrameHeader,
        body: &[u8],
        ending: &mut Option<Ending>,
    ) -> Result<Verdict, SessionError> {
        let described_portal = self.described_portal.take();
        match header.tag {
            b'Q' => {
                // A Query between an Execute of a lone SET and its Sync may change or undo it.
                self.break_pending_settle();
                let sql = views::query(body)?;
                let analysis = self.analyze(sql);
                self.declare(sql, analysis.as_ref().ok().map(|a| &a.statements[..]));
                let ruling = self.rule(&analysis, Protocol::Simple);
                // A held Query is processed again when answered: counted then, once.
                if ruling.hold {
                    return Ok(Verdict::Hold(HoldSpec::new(sql, analysis.ok(), &ruling)));
                }
                self.state.on_query();
                let described = Described {
                    sql,
                    analysis: analysis.ok(),
                    protocol: Protocol::Simple,
                    parameters: None,
                    decision: &ruling.decision,
                    approval: ruling.approval.as_ref(),
                };
                if let Some(refusal) = ruling.refusal {
                    self.record_refused(described).await;
                    return Ok(Verdict::Refuse(Expect::Query, refusal));
                }
                let analysis = described.analysis.clone();
                return Ok(match self.run_statement(described).await {
                    Ok(run) => {
                        let mut names_before = None;
                        if let Some(analysis) = &analysis {
                            // A search_path change is not certain until the server has run
                            // it without error (a SET LOCAL outside a transaction, a failing
                            // SET, a set_config that no row calls change nothing): the path
                            // is widened now, and settled when the answer shows it held.
                            names_before = self
                                .state
                                .on_sql_statements(&analysis.statements, self.role);
                            self.note_schema_change(&analysis.statements);
                        }
                        let settles = analysis
                            .as_ref()
                            .and_then(|a| self.state.settled_by(&a.statements, self.role));
                        // The server ignores Syncs while a COPY FROM STDIN takes data.
                        self.copy_in = analysis.as_deref().is_some_and(starts_copy_in).then_some(0);
                        self.tracker.push_changing_names(
                            Expect::Query,
                            run,
                            analysis,
                            names_before,
                        );
                        if self.copy_in.is_some() {
                            self.tracker.expect_copy_in();
                        }
                        if let Some(settled) = settles {
                            self.tracker.settles(settled);
                        }
                        Verdict::Forward
                    }
                    Err(refusal) => Verdict::Refuse(Expect::Query, refusal),
                });
            }
            b'P' => {
                let parse = views::parse(body)?;
                self.declare(parse.sql, None);
                let existing = self.state.statements.get(parse.statement);
                let unchanged = existing.is_some_and(|s| s.sql == parse.sql);
                // A SQL PREPARE made the name too (one namespace on the server).
                let sql_prepared = !parse.statement.is_empty()
                    && std::str::from_utf8(parse.statement)
                        .is_ok_and(|name| self.state.sql_prepared.contains_key(name));
                // PostgreSQL refuses to redefine a named statement and keeps the first one;
                // so does pgwarden, before anything else, so that what it judges and masks
                // for the name stays what the server runs.
                if (existing.is_some() && !unchanged && !parse.statement.is_empty()) || sql_prepared
                {
                    let name = String::from_utf8_lossy(parse.statement);
                    return Ok(Verdict::Refuse(
                        Expect::Parse,
                        ClientError::error(
                            SqlState::DUPLICATE_PREPARED_STATEMENT,
                            format!("prepared statement \"{name}\" already exists"),
                        ),
                    ));
                }
                let existed = existing.is_some();
                let (analysis, ruling) = if unchanged {
                    // Drivers re-send the same text for the same name: decide it again (the
                    // policy may have been reloaded), but without a second analysis.
                    let prepared = &self.state.statements[parse.statement];
                    let analysis = prepared
                        .analysis
                        .clone()
                        .ok_or_else(|| AnalysisError::Syntax {
                            message: "the statement could not be parsed".into(),
                            position: None,
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
                if ruling.hold {
                    return Ok(Verdict::Hold(HoldSpec::new(
                        parse.sql,
                        analysis.ok(),
                        &ruling,
                    )));
                }
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
                        approval: None,
                    };
                    self.record_refused(described).await;
                    // The server drops the unnamed statement when a Parse of it fails, and
                    // keeps a named one it already has.
                    if parse.statement.is_empty() || !existed {
                        self.state.statements.remove(parse.statement);
                    }
                    return Ok(Verdict::Refuse(Expect::Parse, refusal));
                }
                let decided = Decided {
                    rule: ruling.decision.rule.clone(),
                    approval: ruling.approval,
                    tags: self.declared.tags.clone(),
                    generation: self.snapshot.load().generation,
                };
                let may_be_skipped = self.tracker.segment_may_fail();
                self.state
                    .on_parse(&parse, || analysis.ok(), decided, may_be_skipped);
                // A new definition holds once the server has it too (ParseComplete); the
                // server re-parses the unnamed statement every time, and a Parse sent again
                // while the first is unanswered defines the name if the first is skipped.
                if parse.statement.is_empty()
                    || !existed
                    || self.tracker.defines(parse.statement, parse.sql)
                {
                    self.tracker.push_parse(
                        Bytes::copy_from_slice(parse.statement),
                        Bytes::copy_from_slice(parse.sql),
                    );
                } else {
                    self.tracker.push(Expect::Parse, None);
                }
            }
            b'B' => {
                let bind = views::bind(body)?;
                // Every statement pgwarden lets run was judged at its Parse; one it does not
                // know (a SQL-level PREPARE, whose name the protocol shares) would run
                // unjudged and unmasked.
                if !self.state.statements.contains_key(bind.statement) {
                    let name = String::from_utf8_lossy(bind.statement);
                    // What the server says; the hint covers why pgwarden has no such name.
                    let error = ClientError::error(
                        SqlState::INVALID_SQL_STATEMENT_NAME,
                        if bind.statement.is_empty() {
                            "unnamed prepared statement does not exist".to_owned()
                        } else {
                            format!("prepared statement \"{name}\" does not exist")
                        },
                    )
                    .with_hint(if bind.statement.is_empty() {
                        "its Parse failed or was refused (see the error it got)"
                    } else {
                        "its Parse failed or was refused (see the error it got), or it was PREPAREd in SQL, which runs through pgwarden with EXECUTE rather than a protocol Bind"
                    });
                    return Ok(Verdict::Refuse(Expect::Parse, error));
                }
                let parameters = self.hash_parameters(&bind);
                let (before, bound) = self.state.on_bind(&bind, parameters);
                let change = PortalChange {
                    name: Bytes::copy_from_slice(bind.portal),
                    before,
                    after: Some(bound),
                };
                self.tracker.push_portal_change(Expect::Bind, change);
            }
            b'C' => {
                let (target, name) = views::target(body, "Close message")?;
                if target == views::Target::Portal {
                    let change = PortalChange {
                        name: Bytes::copy_from_slice(name),
                        before: self.state.close_portal(name),
                        after: None,
                    };
                    self.tracker.push_portal_change(Expect::Close, change);
                } else {
                    let may_be_skipped = self.tracker.segment_may_fail();
                    let closed = self.state.close_statement(name, may_be_skipped);
                    self.tracker.push_statement_close(closed);
                }
            }
            b'D' => {
                let (target, name) = views::target(body, "Describe message")?;
                let (analysis, origin) = match target {
                    views::Target::Portal => {
                        self.described_portal = Some(name.to_vec());
                        let analysis = self
                            .state
                            .portal_statement(name)
                            .and_then(|(_, prepared)| prepared.and_then(|p| p.analysis.clone()));
                        (analysis, self.origin_of(name))
                    }
                    _ => (None, None),
                };
                self.tracker.push_for(Expect::Describe, None, analysis);
                // Its RowDescription is what masks the Execute behind it: if the Bind it
                // describes did not happen, neither is known.
                if let Some(origin) = origin {
                    self.tracker.set_origin(origin);
                }
            }
            b'E' => {
                let (portal, _max_rows) = views::execute(body)?;
                let origin = self.origin_of(portal);
                let generation = self.snapshot.load().generation;
                let PortalRun {
                    sql,
                    statement: name,
                    analysis,
                    parameters,
                    rule,
                    approval,
                    tags,
                    moved,
                    reloaded,
                    earlier,
                    lost,
                } = self.state.portal_run(portal, generation);
                self.declared = Declared {
                    intent: tags
                        .as_ref()
                        .and_then(|t| t.get("intent"))
                        .and_then(|i| crate::session::state::intent(i))
                        .or_else(|| self.state.intent.clone()),
                    tags,
                };
                // Decided when it was prepared; judged again now, under the rules in force,
                // if it is a SQL-level EXECUTE (by the body it runs), if the rules were
                // reloaded or the search_path or role changed since (the server plans it
                // again, and its unqualified names may now be other tables), or if the
                // server may run an earlier statement of the name (judged by each).
                let runs_sql_execute = analysis
                    .as_ref()
                    .is_some_and(|a| a.statements.iter().any(|s| s.executes.is_some()));
                let executing = analysis
                    .clone()
                    .filter(|_| moved || reloaded || earlier.is_some() || runs_sql_execute)
                    .map(|a| match &earlier {
                        Some(earlier) => Arc::new(Analysis {
                            statements: a
                                .statements
                                .iter()
                                .chain(earlier.iter())
                                .cloned()
                                .collect(),
                            ..(*a).clone()
                        }),
                        None => a,
                    });
                let mut approval = approval;
                let protocol = Protocol::Extended {
                    statement_name: &name,
                };
                let in_doubt = |why: &str| {
                    decide::refuse(
                        "policy.statement-in-doubt",
                        format!(
                            "portal \"{}\" {why}; pgwarden cannot tell which statement it would run: bind it again",
                            String::from_utf8_lossy(portal)
                        ),
                    )
                };
                let ruling = if lost {
                    let decision = in_doubt("was bound to a statement the server did not define (its Parse was skipped or failed)");
                    Some(self.ruling(decision, protocol, None))
                } else if let Some(executing) = executing {
                    let mut ruling = self.rule(&Ok(executing), protocol);
                    // Approved when it was prepared, for this text under this search_path
                    // and these roles: rules reloaded since that still ask for approval do
                    // not ask again.
                    if ruling.hold
                        && approval.is_some()
                        && !moved
                        && earlier.is_none()
                        && !runs_sql_execute
                    {
                        ruling.hold = false;
                        ruling.approval = approval.clone();
                    }
                    // An approver would be shown a text that may not be what runs.
                    if ruling.hold && earlier.is_some() {
                        let decision = in_doubt("is bound to a name a Close or Parse still unanswered may have left as it was");
                        ruling = self.ruling(decision, protocol, analysis.as_deref());
                    }
                    Some(ruling)
                } else {
                    None
                };
                let decision = if let Some(ruling) = ruling {
                    if ruling.hold {
                        return Ok(Verdict::Hold(HoldSpec::new(
                            &sql,
                            analysis.clone(),
                            &ruling,
                        )));
                    }
                    if let Some(refusal) = ruling.refusal {
                        let described = Described {
                            sql: &sql,
                            analysis,
                            protocol,
                            parameters,
                            decision: &ruling.decision,
                            approval: None,
                        };
                        self.record_refused(described).await;
                        return Ok(Verdict::Refuse(Expect::Parse, refusal));
                    }
                    approval = ruling.approval;
                    if reloaded && !moved && earlier.is_none() && !runs_sql_execute {
                        self.state.judged_again(
                            &name,
                            &sql,
                            ruling.decision.rule.clone(),
                            approval.clone(),
                            generation,
                        );
                    }
                    ruling.decision
                } else {
                    Decision {
                        action: if approval.is_some() {
                            crate::policy::Action::Approve
                        } else {
                            crate::policy::Action::Allow
                        },
                        rule,
                        ..Decision::allow()
                    }
                };
                let prepares = analysis.clone();
                // What an earlier statement of the name returns is not known: masked as
                // unknown.
                let results_of = analysis.clone().filter(|_| earlier.is_none());
                let described = Described {
                    sql: &sql,
                    analysis,
                    protocol: Protocol::Extended {
                        statement_name: &name,
                    },
                    parameters,
                    decision: &decision,
                    approval: approval.as_ref(),
                };
                return Ok(match self.run_statement(described).await {
                    Ok(run) => {
                        // A PREPARE or DEALLOCATE sent through Parse takes effect here.
                        let mut names_before = None;
                        if let Some(analysis) = prepares {
                            names_before = self
                                .state
                                .on_sql_statements(&analysis.statements, self.role);
                            self.note_schema_change(&analysis.statements);
                        }
                        if self.masking.is_some() && described_portal.as_deref() != Some(portal) {
                            self.tracker
                                .push_for(Expect::HiddenDescribe, None, results_of.clone());
                            if let Some(origin) = &origin {
                                self.tracker.set_origin(origin.clone());
                            }
                            self.describe_first = Some(portal.to_vec());
                        }
                        self.copy_in = results_of
                            .as_deref()
                            .is_some_and(starts_copy_in)
                            .then_some(0);
                        self.executes_since_sync += 1;
                        self.settle_at_sync = results_of
                            .as_deref()
                            .filter(|_| self.executes_since_sync == 1)
                            .and_then(|a| self.state.settled_by(&a.statements, self.role));
                        self.tracker.push_changing_names(
                            Expect::Execute,
                            run,
                            results_of,
                            names_before,
                        );
                        if let Some(origin) = origin {
                            self.tracker.set_origin(origin);
                        }
                        if self.copy_in.is_some() {
                            self.tracker.expect_copy_in();
                        }
                        Verdict::Forward
                    }
                    Err(refusal) => Verdict::Refuse(Expect::Parse, refusal),
                });
            }
            b'S' => {
                expect_empty(header, body)?;
                if self.copy_started {
                    return Ok(Verdict::Forward);
                }
                self.state.on_sync();
                self.state.skip_until_sync = false;
                let settles = self
                    .settle_at_sync
                    .take()
                    .filter(|_| self.executes_since_sync == 1);
                self.executes_since_sync = 0;
                if let Some(copies_ended) = self.copy_in {
                    self.tracker.push_sync_in_copy(copies_ended);
                } else {
                    self.tracker.push(Expect::Sync, None);
                    if let Some(settled) = settles {
                        self.tracker.settles(settled);
                    }
                }
            }
            b'H' => expect_empty(header, body)?,
            b'F' => {
                self.break_pending_settle();
                let (oid, _) = split_i32(body).ok_or(ProtocolError::Malformed {
                    what: "FunctionCall message",
                    detail: "too short",
                })?;
                let protocol = Protocol::FunctionCall {
                    function_oid: oid as u32,
                };
                let facts = StatementFacts {
                    kinds: vec![crate::sql::facts::FUNCTION_CALL],
                    functions: vec![format!("oid:{}", oid as u32)],
                    ..StatementFacts::default()
                };
                let ruling = self.ruling(self.decide(std::slice::from_ref(&facts)), protocol, None);
                if ruling.hold {
                    let text = format!("-- fast-path call of function oid {}", oid as u32);
                    return Ok(Verdict::Hold(HoldSpec::new(text.as_bytes(), None, &ruling)));
                }
                self.state.in_flight += 1;
                let described = Described {
                    sql: b"",
                    analysis: None,
                    protocol,
                    parameters: None,
                    decision: &ruling.decision,
                    approval: ruling.approval.as_ref(),
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
            b'd' => {}
            b'c' | b'f' => {
                if let Some(copies_ended) = &mut self.copy_in {
                    *copies_ended = copies_ended.saturating_add(1);
                }
                self.copy_started = false;
            }
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
            // Checked before masking, which reads the columns of the statement answered.
            if !self.tracker.fits(header.tag) {
                return Err(SessionError::UpstreamProtocol(ProtocolError::Unexpected {
                    tag: header.tag,
                    phase: "the session (it answers no message the client sent)",
                }));
            }
            match header.tag {
                b'G' => self.copy_started = true,
                // The COPY ended (done, failed, or never started).
                b'C' => self.copy_started = false,
                b'Z' => {
                    self.copy_started = false;
                    let status = *body.first().ok_or(SessionError::UpstreamProtocol(
                        ProtocolError::Malformed {
                            what: "ReadyForQuery",
                            detail: "no status",
                        },
                    ))?;
                    let binds_before = self.tracker.binds_before_ready();
                    self.state.on_ready_for_query(status, binds_before);
                }
                b'S' => {
                    let (name, value) =
                        views::parameter_status(body).map_err(SessionError::UpstreamProtocol)?;
                    self.state.on_parameter_status(name, value);
                }
                b'E' => {
                    self.copy_started = false;
                    let fields =
                        views::error_fields(body).map_err(SessionError::UpstreamProtocol)?;
                    self.upstream_sent_fatal |= fields
                        .iter()
                        .any(|(code, v)| *code == b'V' && (*v == b"FATAL" || *v == b"PANIC"));
                }
                _ => {}
            }
            let mut masked = std::mem::take(&mut self.masked_frame);
            masked.clear();
            let masking = self.mask_server_frame(header.tag, body, &mut masked);
            if let Masked::Malformed(what) = masking {
                return Err(SessionError::UpstreamProtocol(ProtocolError::Malformed {
                    what,
                    detail: "cannot be read to mask it",
                }));
            }
            let rewrite = self.tracker.on_server(header.tag, body);
            for correction in self.tracker.corrections.drain(..) {
                self.state.correct(correction, self.role);
            }
            if header.tag == b'Z' && self.tracker.is_empty() {
                self.state.names_settled();
                if self.state.transaction_status == b'I' {
                    self.state.transaction_over();
                }
            }
            match (rewrite, masking) {
                (Rewrite::Replace(error), _) => {
                    client_out.extend_from_slice(&inbuf.bytes()[run_start..offset]);
                    backend::error_response(client_out, &error);
                    run_start = end;
                }
                (Rewrite::Drop, _) | (Rewrite::Keep, Masked::Drop) => {
                    client_out.extend_from_slice(&inbuf.bytes()[run_start..offset]);
                    run_start = end;
                }
                (Rewrite::Keep, Masked::Replaced) => {
                    client_out.extend_from_slice(&inbuf.bytes()[run_start..offset]);
                    client_out.extend_from_slice(&masked);
                    run_start = end;
                }
                (Rewrite::Keep, Masked::Keep | Masked::Malformed(_)) => {}
            }
            self.masked_frame = masked;
            offset = end;
        }
        client_out.extend_from_slice(&inbuf.bytes()[run_start..offset]);
        inbuf.consume(offset);
        Ok(())
    }
}

impl Flow<'_> {
    /// Something other than the lone SET runs before the Sync of its pipeline: the SET is
    /// no longer certain when the Sync comes back.
    fn break_pending_settle(&mut self) {
        if self.executes_since_sync > 0 {
            self.executes_since_sync += 1;
            self.settle_at_sync = None;
        }
    }
}

/// Whether running `analysis` may start a COPY FROM STDIN (a COPY without an output shape,
/// to or from no file or program).
fn starts_copy_in(analysis: &Analysis) -> bool {
    analysis.statements.iter().any(|f| {
        f.kind() == "copy"
            && f.lineage.copy.is_none()
            && !f.flags.copy_file
            && !f.flags.copy_program
    })
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
