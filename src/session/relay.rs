//! The relay loop: one task moves raw frames both ways between client and upstream.
//!
//! Reads and writes of both sockets are all branches of one `select!`, so neither direction
//! can block the other (a proxy that awaits a write while the peer waits for it to read
//! deadlocks on large pipelines). Frames are scanned in place, inspected where needed, and
//! copied as runs into the other side's output buffer; each output buffer goes out in as few
//! `write` calls as the socket allows. Nothing is decoded or allocated per row.

use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tracing::{debug, info, warn};

use std::sync::Arc;

use super::flow::{Flow, Held, StatementAudit};
use super::live::State;
use super::shutdown::{Change, Phase};
use super::state::SessionState;
use super::track::Tracker;
use super::{Context, Established, SessionError};
use crate::audit::{OnFailure, StatementText};
use crate::config::TokenExpiry;
use crate::error::{ClientError, SqlState};
use crate::net::MaybeTls;
use crate::protocol::backend;
use crate::protocol::frame::FrameBuffer;

/// Stop reading from one side while this much is waiting to be written to the other.
const HIGH_WATER: usize = 512 * 1024;

/// How long a closing session waits for the client to take its final messages.
const CLOSING_GRACE: Duration = Duration::from_secs(5);

/// Messages forwarded and not yet answered, at most: beyond it the client is not read until
/// the server catches up. Each costs a few hundred bytes of bookkeeping, and a client that
/// pipelines without reading (Syncs are five bytes) could otherwise grow it without bound
/// while the kernel's socket buffers hold its messages and their answers.
const MAX_UNANSWERED: usize = 4096;

/// How long a session pgwarden ends waits for its cancel of a running statement to reach
/// the server.
const CANCEL_GRACE: Duration = Duration::from_secs(2);

/// How long a session pgwarden ended waits for the client to close its side.
const LINGER: Duration = Duration::from_secs(1);

struct Peer {
    rd: ReadHalf<MaybeTls>,
    wr: WriteHalf<MaybeTls>,
    inbuf: FrameBuffer,
    out: BytesMut,
    /// TLS streams may hold written data in the TLS layer until flushed.
    tls: bool,
    needs_flush: bool,
    bytes_read: u64,
}

impl Peer {
    fn new(stream: MaybeTls, inbuf: FrameBuffer) -> Self {
        let tls = stream.is_tls();
        let (rd, wr) = tokio::io::split(stream);
        Self {
            rd,
            wr,
            inbuf,
            out: BytesMut::with_capacity(16 * 1024),
            tls,
            needs_flush: false,
            bytes_read: 0,
        }
    }

    fn has_output(&self) -> bool {
        !self.out.is_empty() || self.needs_flush
    }

    /// Write what was just produced without waiting for the next loop iteration: in the common
    /// case (the socket has room) this saves a whole pass through the `select!` per message
    /// batch. If the socket is full nothing happens and the `push` branch takes over.
    fn try_push(&mut self) -> std::io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match std::pin::Pin::new(&mut self.wr).poll_write(&mut cx, &self.out) {
            std::task::Poll::Ready(Ok(0)) => Err(std::io::ErrorKind::WriteZero.into()),
            std::task::Poll::Ready(Ok(n)) => {
                self.pushed(n);
                Ok(())
            }
            std::task::Poll::Ready(Err(e)) => Err(e),
            // Registered a no-op waker; the `push` branch re-registers the task's own waker.
            std::task::Poll::Pending => Ok(()),
        }
    }

    /// Account for a [`push`]: `n` bytes written (0 after a flush).
    fn pushed(&mut self, n: usize) {
        if self.out.is_empty() {
            self.needs_flush = false;
            return;
        }
        self.out.advance(n);
        if self.out.is_empty() {
            self.out.clear();
            self.needs_flush = self.tls;
        }
    }
}

/// One write of pending output, or a flush once it is all written.
///
/// # Cancel safety
/// Cancel-safe: `write` either wrote some bytes (reported) or none, and `flush` can be
/// repeated.
async fn push(wr: &mut WriteHalf<MaybeTls>, out: &BytesMut) -> std::io::Result<usize> {
    if out.is_empty() {
        wr.flush().await.map(|()| 0)
    } else {
        match wr.write(out).await? {
            0 => Err(std::io::ErrorKind::WriteZero.into()),
            n => Ok(n),
        }
    }
}

/// Sleep until `deadline`; without one, forever.
///
/// `select!` builds every branch's future on every turn of the loop, enabled or not: unlike
/// `sleep_until` (a clock read and a timer entry each time), this costs nothing until polled.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// How a session ended, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    ClientTerminated,
    ClientDisconnected,
    UpstreamClosed,
    Shutdown,
    ProtocolError,
    /// The person's OIDC token expired (`auth.on_token_expiry = "terminate"`).
    TokenExpired,
    /// A configuration reload no longer lets the person in (`[[access]]`, their local
    /// user or their identity provider).
    AccessRevoked,
    /// An administrator ended it (`POST /sessions/ID/end`).
    Ended,
}

impl Ending {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::ClientTerminated => "client terminated",
            Self::ClientDisconnected => "client disconnected",
            Self::UpstreamClosed => "database server closed the connection",
            Self::Shutdown => "pgwarden shutdown",
            Self::ProtocolError => "protocol error",
            Self::TokenExpired => "sign-in token expired",
            Self::AccessRevoked => "access revoked",
            Self::Ended => "ended by an administrator",
        }
    }

    /// Why a statement held for approval is withdrawn when the session ends this way.
    fn withdraws_because(&self) -> &'static str {
        match self {
            Self::ClientDisconnected | Self::ClientTerminated => "the client disconnected",
            Self::Shutdown => "pgwarden shut down",
            Self::TokenExpired => "the sign-in token expired",
            Self::AccessRevoked => "the person's access was revoked",
            Self::Ended => "an administrator ended the session",
            Self::UpstreamClosed | Self::ProtocolError => "the session ended",
        }
    }
}

/// What a finished session did, for the log and the audit record.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub ending: Ending,
    pub duration_ms: u64,
    pub statements: u64,
    pub bytes_from_client: u64,
    pub bytes_from_server: u64,
}

/// Relay until one side ends. Errors are reported to the client where it can still hear them.
pub async fn run(ctx: &Context, id: u64, session: Established) -> Summary {
    let started = Instant::now();
    let Established {
        client,
        client_reader,
        upstream,
        identity,
        grant,
        settings,
        search_path,
        intent,
        current_role,
        cancel_key,
        masking,
        login_generation,
        listing,
    } = session;
    let mut cancel_requests = cancel_key.requests.clone();
    let snapshot = ctx.snapshot.load();
    let masking_config = snapshot.generation;
    let audit_settings = snapshot.config.audit.as_ref();
    // When the person's token expires, the session ends between statements.
    let token_deadline = identity
        .oidc
        .as_ref()
        .filter(|_| snapshot.config.on_token_expiry == TokenExpiry::Terminate)
        .map(|oidc| {
            let left = oidc
                .accepted_until
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
            Instant::now() + left
        });
    let mut flow = Flow {
        session: id,
        identity: &identity,
        database: &grant.database,
        role: &grant.role,
        snapshot: &ctx.snapshot,
        analyzer: &ctx.analyzer,
        approvals: &ctx.approvals,
        cancels: &ctx.cancels,
        metrics: &ctx.metrics,
        audit: ctx.audit.as_ref().map(|log| StatementAudit {
            log,
            actor: Arc::new(super::actor_of(&identity)),
            on_failure: audit_settings.map_or(OnFailure::Refuse, |a| a.on_failure),
            text: audit_settings.map_or(StatementText::Normalized, |a| a.statement_text),
            parameter_key: audit_settings
                .and_then(|a| a.parameter_key.as_ref())
                .map(|key| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.expose().as_bytes())),
        }),
        settings,
        state: SessionState::new(upstream.transaction_status, upstream.parameters),
        tracker: Tracker::default(),
        upstream_sent_fatal: false,
        held: None,
        hold_answer: None,
        to_client: BytesMut::new(),
        declared: Default::default(),
        masking,
        masking_config,
        catalogs: &ctx.catalogs,
        catalog_dirty: false,
        describe_first: None,
        masked_frame: BytesMut::new(),
        copy_in: None,
        copy_started: false,
        described_portal: None,
        executes_since_sync: 0,
        settle_at_sync: None,
        signing_off: None,
    };
    drop(snapshot);
    flow.state.initial_search_path = search_path.clone();
    flow.state.search_path = search_path;
    flow.state.login_role.clone_from(&grant.role);
    flow.state.reset_role.clone_from(&current_role);
    flow.state.roles = vec![current_role];
    flow.state.initial_intent = intent.clone();
    flow.state.intent = intent;
    let mut client = Peer::new(client, client_reader);
    let mut server = Peer::new(upstream.stream, upstream.reader);
    let mut closing: Option<Ending> = None;
    // Why a reload revoked the session's access, for the client's last message.
    let mut revoked: Option<String> = None;

    // Frames the client pipelined behind its last authentication message (and anything the
    // server sent after its first ReadyForQuery) are already buffered: handle them now, not
    // only after the next read, which may never come.
    // A statement held for approval: no client frame is processed until it is answered.
    let mut held: Option<Held> = None;
    let mut leftover_step = if !server.inbuf.is_empty() || !client.inbuf.is_empty() {
        let step = match flow.server_frames(&mut server.inbuf, &mut client.out) {
            Ok(()) => {
                let step = flow.client_frames(&mut client.inbuf, &mut server.out).await;
                take_hold(&mut flow, &mut held, &mut client.out, &mut cancel_requests);
                step
            }
            Err(e) => Err(e),
        };
        Some(step)
    } else {
        None
    };

    let mut phase = ctx.shutdown.watch();
    let activity = listing.activity.clone();
    let listed = ctx.sessions.add(listing, phase.id());
    // Why an administrator ended the session, once one did.
    let mut ended_by: Option<String> = None;
    // A reload between this session's login and now counts too.
    let mut reloads = ctx.reloads.subscribe();
    if ctx.snapshot.load().generation != login_generation {
        reloads.mark_changed();
    }
    // A session that starts while draining ends as soon as it is idle.
    let mut draining = ctx.shutdown.phase() != Phase::Running;

    // Once closing, the last words (an ErrorResponse) get this long to reach a client that
    // may have stopped reading.
    let mut closing_deadline = None;
    // When pgwarden sends its own Sync if the client does not end what it sent before its
    // token expired ([`Flow::sync_for_ending`]).
    let mut segment_deadline: Option<Instant> = None;
    let ending = loop {
        if let Some(ending) = closing {
            if !client.has_output() {
                break ending;
            }
            let deadline = *closing_deadline.get_or_insert_with(|| Instant::now() + CLOSING_GRACE);
            if Instant::now() >= deadline {
                debug!("client did not read its final messages; closing anyway");
                break ending;
            }
        }
        // Once signing off, a client that leaves what it sent open (no Sync) gets a moment
        // to send the Sync, then pgwarden sends one.
        if flow.signing_off.is_some() && closing.is_none() && !flow.copy_may_take_data() {
            if !flow.tracker.segment_open() {
                segment_deadline = None;
            } else if segment_deadline.is_some_and(|at| Instant::now() >= at) {
                flow.sync_for_ending(&mut server.out);
                segment_deadline = None;
            } else {
                segment_deadline.get_or_insert_with(|| Instant::now() + LINGER);
            }
        }
        // While a statement is held, the client is still read (to notice it leaving), up to
        // a bound, but nothing it sends is processed.
        let read_client = closing.is_none()
            && (flow.signing_off.is_none() || flow.may_read_while_signing_off())
            && flow.tracker.len() < MAX_UNANSWERED
            && server.out.len() < HIGH_WATER
            && (held.is_none() || client.inbuf.bytes().len() < HIGH_WATER);
        let read_server = closing.is_none() && client.out.len() < HIGH_WATER;
        let step: Result<Option<Ending>, SessionError> = if let Some(step) = leftover_step.take() {
            step
        } else {
            tokio::select! {
                biased;
                () = until(closing_deadline), if closing_deadline.is_some() => Ok(None),
                () = until(segment_deadline), if segment_deadline.is_some() => Ok(None),
                () = until(token_deadline), if token_deadline.is_some() && flow.signing_off.is_none() && closing.is_none() => {
                    info!("the sign-in token expired; ending the session once what was sent is answered");
                    sign_off(Ending::TokenExpired, &mut flow, &mut held, &mut client, &mut server, &mut cancel_requests).await
                },
                changed = reloads.changed(), if flow.signing_off.is_none() && closing.is_none() => {
                    let snapshot = ctx.snapshot.load();
                    // Roles a SET ROLE took the session to were granted when it was judged;
                    // the role it started with may come from the server's own settings.
                    let roles = std::iter::once(flow.role).chain(
                        flow.state.roles.iter().map(String::as_str).filter(|r| *r != flow.state.reset_role),
                    );
                    match crate::auth::still_authorized(&identity, flow.database, roles, &snapshot.config) {
                        Err(reason) if changed.is_ok() => {
                            warn!(reason, "a reload revoked this session's access; ending it once what was sent is answered");
                            revoked = Some(reason);
                            sign_off(Ending::AccessRevoked, &mut flow, &mut held, &mut client, &mut server, &mut cancel_requests).await
                        }
                        _ => Ok(None),
                    }
                },
                change = phase.changed(), if closing.is_none() => match change {
                    Change::Phase(Phase::Terminating) => Ok(Some(Ending::Shutdown)),
                    Change::Phase(_) => {
                        draining = true;
                        debug!("shutdown requested; ending the session once it is idle");
                        Ok(flow.state.is_idle().then_some(Ending::Shutdown))
                    }
                    Change::Ended(why) => {
                        warn!(why, "an administrator ended the session");
                        ended_by = Some(why);
                        Ok(Some(Ending::Ended))
                    }
                },
                r = push(&mut client.wr, &client.out), if client.has_output() => {
                    r.map(|n| { client.pushed(n); None }).map_err(SessionError::ClientIo)
                }
                r = push(&mut server.wr, &server.out), if server.has_output() => {
                    r.map(|n| { server.pushed(n); None }).map_err(SessionError::UpstreamIo)
                }
                status = held_outcome(&mut held), if held.is_some() && closing.is_none() => {
                    let because = "no answer in time";
                    resume_after_hold(&mut flow, &mut held, status, because, &mut client, &mut server, &mut cancel_requests).await
                },
                _ = cancel_requests.changed(), if held.is_some() && closing.is_none() => {
                    let status = crate::approvals::Status::Withdrawn;
                    resume_after_hold(&mut flow, &mut held, status, "the client cancelled", &mut client, &mut server, &mut cancel_requests).await
                },
                r = client.inbuf.fill(&mut client.rd), if read_client => match r {
                    Ok(0) => Ok(Some(Ending::ClientDisconnected)),
                    Ok(n) if held.is_some() => {
                        client.bytes_read += n as u64;
                        Ok(None)
                    }
                    Ok(n) => {
                        client.bytes_read += n as u64;
                        match flow.client_frames(&mut client.inbuf, &mut server.out).await {
                            Ok(ending) => {
                                take_hold(&mut flow, &mut held, &mut client.out, &mut cancel_requests);
                                client
                                    .try_push()
                                    .map_err(SessionError::ClientIo)
                                    .and_then(|()| server.try_push().map_err(SessionError::UpstreamIo))
                                    .map(|()| ending)
                            }
                            Err(e) => Err(e),
                        }
                    }
                    Err(e) => Err(SessionError::ClientIo(e)),
                },
                r = server.inbuf.fill(&mut server.rd), if read_server => match r {
                    Ok(0) => Ok(Some(Ending::UpstreamClosed)),
                    Ok(n) => {
                        server.bytes_read += n as u64;
                        match flow
                            .server_frames(&mut server.inbuf, &mut client.out)
                            .and_then(|()| client.try_push().map_err(SessionError::ClientIo))
                        {
                            Ok(()) => {
                                flow.record_outcomes();
                                if let Some(ending) = flow.signing_off.filter(|_| flow.all_answered()) {
                                    Ok(Some(ending))
                                } else {
                                    Ok((draining && flow.state.is_idle()).then_some(Ending::Shutdown))
                                }
                            }
                            Err(e) => Err(e),
                        }
                    }
                    Err(e) => Err(SessionError::UpstreamIo(e)),
                },
            }
        };
        match step {
            Ok(None) => {}
            Ok(Some(ending)) => {
                match ending {
                    Ending::Shutdown => backend::error_response(
                        &mut client.out,
                        &ClientError::fatal(
                            SqlState::ADMIN_SHUTDOWN,
                            "terminating connection because pgwarden is shutting down",
                        ),
                    ),
                    Ending::Ended => backend::error_response(
                        &mut client.out,
                        &ClientError::fatal(
                            SqlState::ADMIN_SHUTDOWN,
                            format!(
                                "terminating connection: {}",
                                ended_by.as_deref().unwrap_or("ended by an administrator")
                            ),
                        ),
                    ),
                    Ending::TokenExpired => backend::error_response(
                        &mut client.out,
                        &ClientError::fatal(
                            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
                            "terminating connection because your sign-in token has expired",
                        )
                        .with_hint("sign in again (pgwarden login) and reconnect"),
                    ),
                    Ending::AccessRevoked => backend::error_response(
                        &mut client.out,
                        &ClientError::fatal(
                            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
                            format!(
                                "terminating connection because your access was revoked: {}",
                                revoked.as_deref().unwrap_or("pgwarden's configuration changed")
                            ),
                        )
                        .with_hint("pgwarden's configuration was reloaded; ask its administrators if this is unexpected"),
                    ),
                    Ending::UpstreamClosed if !flow.upstream_sent_fatal => backend::error_response(
                        &mut client.out,
                        &ClientError::fatal(
                            SqlState::CONNECTION_FAILURE,
                            "the database server closed the connection unexpectedly",
                        ),
                    ),
                    Ending::ClientDisconnected | Ending::ClientTerminated => break ending,
                    _ => {}
                }
                closing = Some(ending);
            }
            Err(SessionError::ClientIo(e)) => {
                debug!(error = %e, "client connection failed");
                break Ending::ClientDisconnected;
            }
            Err(SessionError::Protocol(e)) => {
                warn!(error = %e, "closing session after a protocol violation");
                backend::error_response(
                    &mut client.out,
                    &ClientError::fatal(e.sqlstate(), e.to_string()),
                );
                closing = Some(Ending::ProtocolError);
            }
            Err(e) => {
                warn!(error = %e, "upstream connection failed");
                if !flow.upstream_sent_fatal {
                    backend::error_response(
                        &mut client.out,
                        &ClientError::fatal(
                            SqlState::CONNECTION_FAILURE,
                            "lost the connection to the database server",
                        ),
                    );
                }
                closing = Some(Ending::UpstreamClosed);
            }
        }
        activity.set(
            flow.state.statements_seen,
            if held.is_some() {
                State::Held
            } else if flow.state.in_flight > 0 {
                State::Active
            } else {
                match flow.state.transaction_status {
                    b'T' => State::InTransaction,
                    b'E' => State::InFailedTransaction,
                    _ => State::Idle,
                }
            },
        );
    };

    // Ending: no longer one an administrator could end.
    drop(listed);
    if let Some(pending) = held.take() {
        flow.resolve_hold(
            pending,
            crate::approvals::Status::Withdrawn,
            ending.withdraws_because(),
        )
        .await;
    }

    // pgwarden ends this session with a statement still running: the server would run it to
    // its end for nobody (it notices a closed connection only when it next writes). Cancel
    // it, as the client's own cancel would.
    if matches!(
        ending,
        Ending::Shutdown | Ending::Ended | Ending::ProtocolError
    ) && !flow.tracker.is_empty()
    {
        let key = cancel_key.key;
        match tokio::time::timeout(
            CANCEL_GRACE,
            ctx.cancels.cancel(key.process_id, &key.secret),
        )
        .await
        {
            Ok(Some((_, Ok(())))) => debug!("cancelled the statement still running upstream"),
            Ok(Some((_, Err(e)))) => {
                warn!(error = %e, "could not cancel the statement still running upstream")
            }
            Ok(None) => warn!("the statement still running upstream had no cancel key"),
            Err(_) => warn!("cancelling the statement still running upstream timed out"),
        }
    }
    // Forward whatever the client still sent (e.g. its Terminate) and say goodbye upstream;
    // best effort, the socket closes right after.
    if ending != Ending::UpstreamClosed {
        if !server.out.ends_with(b"X\0\0\0\x04") {
            server.out.extend_from_slice(b"X\0\0\0\x04");
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
            server.wr.write_all(&server.out).await?;
            server.wr.shutdown().await
        })
        .await;
        // A client that sent statements and Terminate in one go is gone, but the server
        // runs them first: read its answers (to no one), so their outcomes are on record
        // (a statement still running after the grace is recorded without one).
        if ending == Ending::ClientTerminated && !flow.tracker.is_empty() {
            let mut nowhere = BytesMut::new();
            let _ = tokio::time::timeout(CLOSING_GRACE, async {
                while matches!(server.inbuf.fill(&mut server.rd).await, Ok(n) if n > 0) {
                    if flow.server_frames(&mut server.inbuf, &mut nowhere).is_err() {
                        break;
                    }
                    nowhere.clear();
                }
            })
            .await;
            flow.record_outcomes();
        }
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), client.wr.shutdown()).await;
    // Closing a socket with unread bytes makes the kernel reset the connection, and the
    // reset can destroy the final error before the client has read it: when pgwarden ends
    // the session, read and drop what the client still sends until it closes, briefly.
    if !matches!(
        ending,
        Ending::ClientDisconnected | Ending::ClientTerminated
    ) {
        let mut sink = [0u8; 4096];
        let _ = tokio::time::timeout(LINGER, async {
            while matches!(client.rd.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
    }
    // Statements forwarded but not answered before the session ended: on record as such.
    flow.tracker.abandon();
    flow.record_outcomes();
    let summary = Summary {
        ending,
        duration_ms: started.elapsed().as_millis() as u64,
        statements: flow.state.statements_seen,
        bytes_from_client: client.bytes_read,
        bytes_from_server: server.bytes_read,
    };
    info!(
        ending = ending.as_str(),
        duration_ms = summary.duration_ms,
        statements = summary.statements,
        bytes_from_client = summary.bytes_from_client,
        bytes_from_server = summary.bytes_from_server,
        "session ended"
    );
    summary
}

/// After client frames were processed: pass on what the flow has for the client (the hold
/// notice), and take over a hold it started.
fn take_hold(
    flow: &mut Flow<'_>,
    held: &mut Option<Held>,
    client_out: &mut BytesMut,
    cancel_requests: &mut tokio::sync::watch::Receiver<u64>,
) {
    if !flow.to_client.is_empty() {
        client_out.extend_from_slice(&flow.to_client);
        flow.to_client.clear();
    }
    if let Some(hold) = flow.held.take() {
        // Only cancel requests from now on withdraw it.
        cancel_requests.borrow_and_update();
        *held = Some(hold);
    }
}

/// The held statement's request, once it has an outcome.
///
/// # Cancel safety
/// Cancel-safe: [`crate::approvals::Waiter::outcome`] is.
async fn held_outcome(held: &mut Option<Held>) -> crate::approvals::Status {
    match held {
        Some(hold) => hold.waiter.outcome().await,
        None => std::future::pending().await,
    }
}

/// The session is ending for its person (`ending`: their token expired, or their access
/// was revoked): nothing more is read from the client but the end of what it already sent,
/// and a held statement is withdrawn, not run. The session ends once all is answered.
async fn sign_off(
    ending: Ending,
    flow: &mut Flow<'_>,
    held: &mut Option<Held>,
    client: &mut Peer,
    server: &mut Peer,
    cancel_requests: &mut tokio::sync::watch::Receiver<u64>,
) -> Result<Option<Ending>, SessionError> {
    flow.signing_off = Some(ending);
    let status = crate::approvals::Status::Withdrawn;
    let because = ending.withdraws_because();
    resume_after_hold(flow, held, status, because, client, server, cancel_requests)
        .await
        .map(|next| next.or_else(|| flow.all_answered().then_some(ending)))
}

/// The hold is over: record how it ended, then process the held frame (now with its answer)
/// and whatever the client sent behind it.
async fn resume_after_hold(
    flow: &mut Flow<'_>,
    held: &mut Option<Held>,
    status: crate::approvals::Status,
    because: &str,
    client: &mut Peer,
    server: &mut Peer,
    cancel_requests: &mut tokio::sync::watch::Receiver<u64>,
) -> Result<Option<Ending>, SessionError> {
    let Some(hold) = held.take() else {
        return Ok(None);
    };
    flow.resolve_hold(hold, status, because).await;
    let ending = flow
        .client_frames(&mut client.inbuf, &mut server.out)
        .await?;
    take_hold(flow, held, &mut client.out, cancel_requests);
    client.try_push().map_err(SessionError::ClientIo)?;
    server.try_push().map_err(SessionError::UpstreamIo)?;
    Ok(ending)
}
