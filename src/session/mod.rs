//! One client connection, from the first byte to the last.
//!
//! 1. handshake: TLS negotiation (SSLRequest or PG17 direct TLS), GSSENCRequest refusal,
//!    CancelRequest forwarding, StartupMessage checks, protocol version negotiation;
//! 2. `establish`: authentication of the client ([`crate::auth::front_door`]), the access
//!    check, upstream login as the granted role, the `session.start` audit record, then the
//!    greeting (our own BackendKeyData); a failure here is audited as `auth.failure`;
//! 3. [`relay::run`] until either side ends, then the `session.end` audit record.
//!
//! Steps 1–2 run under `server.auth_timeout`.

pub mod flow;
pub mod live;
pub mod relay;
pub mod shutdown;
pub mod state;
mod track;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn, Span};

use crate::audit::event::{Actor, User};
use crate::audit::{AuditLog, Event};
use crate::auth::front_door::{self, ClientConn};
use crate::auth::rate_limit::NotNow;
use crate::auth::{self, AuthError, Grant, Identity};
use crate::config::{Config, OauthBearer, PlaintextTokens, TlsMode};
use crate::error::{ClientError, SqlState};
use crate::net::listener::Door;
use crate::net::{tls::ALPN_POSTGRESQL, MaybeTls};
use crate::policy::session::{self, SessionSettings};
use crate::protocol::frame::{FrameBuffer, FrameLimits};
use crate::protocol::startup::{self, StartupMessage, StartupPacket, NEWEST_MINOR};
use crate::protocol::{backend, ProtocolError};
use crate::upstream::cancel::{CancelMap, Registration};
use crate::upstream::{self, Endpoint, UpstreamError};

/// Largest message accepted from a client before it is authenticated: a 64 KiB token and
/// its framing.
const MAX_AUTH_MESSAGE: usize = crate::auth::oidc::token::MAX_TOKEN_LEN + 1024;

/// How often a sign-in queued behind others from its address looks for a free slot.
const SLOT_POLL: std::time::Duration = std::time::Duration::from_millis(10);

/// A config snapshot together with what is derived from it (TLS acceptor, upstream endpoint).
pub struct Snapshot {
    pub config: Config,
    pub tls: Option<TlsAcceptor>,
    /// `tls-server-end-point` data of our certificate, for SCRAM-SHA-256-PLUS.
    pub channel_binding: Option<Vec<u8>>,
    pub upstream: Endpoint,
    /// Trusted OIDC issuers and their cached keys.
    pub issuers: Arc<crate::auth::oidc::Issuers>,
    /// Unique to this snapshot (counted up by each one built): what was judged under one
    /// snapshot is judged again under the next.
    pub generation: u64,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("config", &self.config)
            .field("tls", &self.tls.is_some())
            .field("upstream", &self.upstream)
            .finish()
    }
}

/// What every session shares.
#[derive(Debug)]
pub struct Context {
    pub snapshot: arc_swap::ArcSwap<Snapshot>,
    pub cancels: CancelMap,
    /// Per-process secret for stable fake SCRAM salts of unknown users.
    pub process_key: [u8; 32],
    /// Statements held for approval, and grants.
    pub approvals: crate::approvals::Approvals,
    pub shutdown: shutdown::Shutdown,
    /// The audit log, when `[audit]` is configured.
    pub audit: Option<AuditLog>,
    /// The id of the first session of this run (ids continue the audit log's).
    pub first_session: u64,
    /// Told of every configuration reload that took effect: sessions check they are still
    /// let in.
    pub reloads: tokio::sync::watch::Sender<()>,
    /// Statement analysis, cached across sessions.
    pub analyzer: crate::sql::Analyzer,
    /// Failed sign-ins per source address.
    pub failures: crate::auth::rate_limit::FailureLimiter,
    pub metrics: crate::metrics::Metrics,
    /// Which columns the masking rules cover, per database.
    pub catalogs: crate::masking::catalog::Catalogs,
    /// The last /readyz probe of the database server: when, and its error if any.
    pub upstream_probe: tokio::sync::Mutex<Option<(std::time::Instant, Option<String>)>>,
    /// Whether the server lately accepted pgwarden's own logins (for /readyz).
    pub upstream_logins: crate::upstream::LoginHealth,
    /// The sessions running now (the admin API's `/sessions`).
    pub sessions: live::LiveSessions,
}

/// Why a session ended early. Each carries what the client was (or could not be) told.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("client I/O: {0}")]
    ClientIo(std::io::Error),
    #[error("upstream I/O: {0}")]
    UpstreamIo(std::io::Error),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("upstream protocol violation: {0}")]
    UpstreamProtocol(ProtocolError),
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    #[error(transparent)]
    Auth(AuthError),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("{0}")]
    Refused(ClientError),
    #[error("cannot audit the session: {0}")]
    Audit(#[from] crate::audit::AuditError),
}

impl From<AuthError> for SessionError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Io(e) => Self::ClientIo(e),
            AuthError::Protocol(e) => Self::Protocol(e),
            other => Self::Auth(other),
        }
    }
}

impl From<startup::ReadError> for SessionError {
    fn from(e: startup::ReadError) -> Self {
        match e {
            startup::ReadError::Io(e) => Self::ClientIo(e),
            startup::ReadError::Eof => Self::ClientIo(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed mid-packet",
            )),
            startup::ReadError::Protocol(e) => Self::Protocol(e),
        }
    }
}

impl SessionError {
    /// The category recorded in an `auth.failure` event, or `None` when the client simply went
    /// away. Never contains anything the client sent as a credential.
    fn audit_reason(&self) -> Option<&'static str> {
        Some(match self {
            Self::ClientIo(_) => return None,
            Self::Auth(AuthError::Failed { .. }) => "invalid_credentials",
            Self::Auth(AuthError::Token { error, .. }) => error.category(),
            Self::Auth(AuthError::TokenNeedsTls) => "plaintext_refused",
            Self::Auth(AuthError::TokenRequired) => "token_required",
            Self::Auth(AuthError::RateLimited { .. }) => "rate_limited",
            Self::Auth(AuthError::DatabaseNotAllowed { .. }) => "database_not_allowed",
            Self::Auth(AuthError::RoleNotAllowed { .. }) => "role_not_allowed",
            Self::Auth(AuthError::UnsupportedMechanism(_)) => "unsupported_mechanism",
            Self::Auth(_) | Self::Protocol(_) | Self::Tls(_) => "protocol_error",
            Self::Refused(_) => "refused",
            Self::Upstream(_) | Self::UpstreamIo(_) | Self::UpstreamProtocol(_) => {
                "upstream_login_failed"
            }
            Self::Audit(_) => "audit_unavailable",
        })
    }

    /// The ErrorResponse for this error, if the client can still be told.
    fn to_client(&self) -> Option<ClientError> {
        match self {
            Self::ClientIo(_) | Self::Tls(_) => None,
            Self::Protocol(e) => Some(ClientError::fatal(e.sqlstate(), e.to_string())),
            Self::UpstreamIo(_) | Self::UpstreamProtocol(_) => Some(ClientError::fatal(
                SqlState::CONNECTION_FAILURE,
                "lost the connection to the database server",
            )),
            Self::Auth(e) => Some(e.to_client()),
            Self::Upstream(e) => Some(e.to_client()),
            Self::Refused(e) => Some(e.clone()),
            Self::Audit(e) => Some(
                ClientError::fatal(
                    e.sqlstate(),
                    "pgwarden cannot write its audit log, so it refuses new sessions",
                )
                .with_hint(
                    "the operator must make the audit directory writable; see pgwarden's log",
                ),
            ),
        }
    }
}

/// A session that passed authentication and has its upstream connection.
pub struct Established {
    pub client: MaybeTls,
    pub client_reader: FrameBuffer,
    pub upstream: upstream::Upstream,
    pub identity: Identity,
    pub grant: Grant,
    /// The policy's session settings (values sent at login, and the locked names).
    pub settings: SessionSettings,
    /// The search_path the session starts with (`*`: unknown).
    pub search_path: Vec<String>,
    /// `pgwarden.intent` from the startup packet (options or a parameter).
    pub intent: Option<String>,
    /// The role the session starts running as: its startup `role` (already judged), else
    /// the granted one.
    pub current_role: String,
    /// Keeps the proxy-issued cancel key registered while the session lives.
    pub cancel_key: Registration,
    /// What this identity may not see (`None`: everything may be seen).
    pub masking: Option<crate::masking::rewrite::Masking>,
    /// The configuration the session was let in by ([`Snapshot::generation`]).
    pub login_generation: u64,
    /// How the admin API lists the session while it runs.
    pub listing: live::LiveSession,
}

/// Serve one client connection. `admitted` is false when the connection limit is reached:
/// the client still gets a proper FATAL (after TLS, so it can read it).
pub async fn serve(
    ctx: Arc<Context>,
    id: u64,
    tcp: TcpStream,
    (peer, door): (SocketAddr, Door),
    admitted: bool,
) {
    let snapshot = ctx.snapshot.load_full();
    let timeout = snapshot.config.server.auth_timeout;
    let established = match tokio::time::timeout(
        timeout,
        handshake(&ctx, &snapshot, tcp, id, (peer, door), admitted),
    )
    .await
    {
        Err(_) => {
            ctx.metrics.auth_timeouts.inc();
            info!(
                timeout_ms = timeout.as_millis() as u64,
                "authentication timed out; connection closed"
            );
            return;
        }
        Ok(Ok(None)) => return,
        Ok(Ok(Some(established))) => established,
        Ok(Err(e)) => {
            match &e {
                SessionError::ClientIo(err) => {
                    debug!(error = %err, "client went away during startup")
                }
                SessionError::Auth(err) => {
                    let reason = e.audit_reason().unwrap_or("protocol_error");
                    let error = err.for_operator();
                    if err.is_access_refusal() {
                        warn!(reason, error, "access refused by [[access]]");
                    } else {
                        warn!(reason, error, "sign-in refused");
                    }
                }
                other @ (SessionError::Upstream(_)
                | SessionError::UpstreamIo(_)
                | SessionError::UpstreamProtocol(_)) => {
                    let upstream = snapshot.upstream.describe();
                    warn!(error = %other, upstream = %upstream, "upstream login failed");
                }
                other => warn!(error = %other, "connection refused"),
            }
            return;
        }
    };
    info!(peer = %peer, "session started");
    ctx.metrics.sessions.inc();
    let summary = relay::run(&ctx, id, established).await;
    ctx.metrics.sessions.dec();
    if let Some(audit) = &ctx.audit {
        let event = Event::SessionEnd {
            session: id,
            duration_ms: summary.duration_ms,
            statements: summary.statements,
            bytes_from_client: summary.bytes_from_client,
            bytes_from_server: summary.bytes_from_server,
            ending: summary.ending.as_str().to_owned(),
        };
        if let Err(e) = audit.record(event).await {
            warn!(error = %e, "could not audit the end of a session");
        }
    }
}

/// Steps 1–3. `Ok(None)`: the connection ended normally before a session (cancel request,
/// port probe, client gave up).
async fn handshake(
    ctx: &Context,
    snapshot: &Snapshot,
    tcp: TcpStream,
    id: u64,
    (peer, door): (SocketAddr, Door),
    admitted: bool,
) -> Result<Option<Established>, SessionError> {
    let config = &snapshot.config;
    tcp.set_nodelay(true).map_err(SessionError::ClientIo)?;
    let mut first = [0u8; 1];
    if tcp.peek(&mut first).await.map_err(SessionError::ClientIo)? == 0 {
        return Ok(None);
    }
    let tls = snapshot
        .tls
        .as_ref()
        .filter(|_| config.server.tls_mode != TlsMode::Disabled);
    let mut stream = if first[0] == 0x16 {
        // A TLS ClientHello straight away: PG17 direct TLS, which requires ALPN "postgresql".
        let Some(acceptor) = tls else {
            debug!("direct TLS attempted but TLS is disabled");
            return Ok(None);
        };
        let tls_stream = acceptor.accept(tcp).await.map_err(SessionError::Tls)?;
        let alpn_ok = tls_stream.get_ref().1.alpn_protocol() == Some(ALPN_POSTGRESQL);
        let mut stream = MaybeTls::ServerTls(Box::new(tls_stream));
        if !alpn_ok {
            let err = ClientError::fatal(
                SqlState::PROTOCOL_VIOLATION,
                "received direct SSL connection request without ALPN protocol negotiation extension",
            );
            send_error(&mut stream, &err).await;
            return Ok(None);
        }
        stream
    } else {
        MaybeTls::Plain(tcp)
    };

    let mut buf = BytesMut::new();
    let mut negotiations = 0;
    let startup = loop {
        let packet = match startup::read_packet(&mut stream, &mut buf).await {
            Ok(Some(packet)) => packet,
            Ok(None) => return Ok(None),
            Err(e) => return Err(report(&mut stream, e.into()).await),
        };
        match packet {
            StartupPacket::SslRequest | StartupPacket::GssEncRequest => {
                negotiations += 1;
                if stream.is_tls() || negotiations > 2 {
                    let e = ProtocolError::RepeatedNegotiation;
                    return Err(report(&mut stream, e.into()).await);
                }
                if !buf.is_empty() {
                    return Err(
                        report(&mut stream, ProtocolError::DataAfterSslRequest.into()).await,
                    );
                }
                let accept_tls = matches!(packet, StartupPacket::SslRequest) && tls.is_some();
                let answer = if accept_tls { b"S" } else { b"N" };
                stream
                    .write_all(answer)
                    .await
                    .map_err(SessionError::ClientIo)?;
                stream = match (accept_tls, tls, stream) {
                    (true, Some(acceptor), MaybeTls::Plain(tcp)) => {
                        let tls_stream = acceptor.accept(tcp).await.map_err(SessionError::Tls)?;
                        MaybeTls::ServerTls(Box::new(tls_stream))
                    }
                    (_, _, unchanged) => unchanged,
                };
            }
            StartupPacket::Cancel(request) => {
                let outcome = ctx
                    .cancels
                    .cancel(request.process_id, &request.secret)
                    .await;
                let (session, forwarded) = match outcome {
                    Some((session, Ok(()))) => {
                        info!(session, "cancel request forwarded");
                        (Some(session), true)
                    }
                    None => {
                        warn!(
                            process_id = request.process_id,
                            "cancel request with an unknown key ignored"
                        );
                        (None, false)
                    }
                    Some((session, Err(e))) => {
                        warn!(session, error = %e, "cancel request could not be forwarded");
                        (Some(session), false)
                    }
                };
                if let Some(audit) = &ctx.audit {
                    let event = Event::CancelRequest {
                        src_endpoint: peer.into(),
                        session,
                        forwarded,
                    };
                    if let Err(e) = audit.record(event).await {
                        warn!(error = %e, "could not audit a cancel request");
                    }
                }
                return Ok(None);
            }
            StartupPacket::Startup(startup) => break startup,
        }
    };

    let span = Span::current();
    span.record("tls", stream.tls_version().unwrap_or("off"));
    span.record("user", startup.user().as_str());
    span.record("db", startup.database().as_str());

    // Who the client proved to be, once it has: a refusal after that is theirs.
    let mut signed_in = None;
    match establish(
        ctx,
        snapshot,
        &mut stream,
        buf,
        &startup,
        (id, peer, door),
        admitted,
        &mut signed_in,
    )
    .await
    {
        Ok(parts) => Ok(Some(Established {
            current_role: parts.current_role,
            client: stream,
            client_reader: parts.reader,
            upstream: parts.upstream,
            identity: parts.identity,
            grant: parts.grant,
            settings: parts.settings,
            search_path: parts.search_path,
            intent: session::startup_setting(&startup.parameters, "pgwarden.intent")
                .and_then(|i| state::intent(&i)),
            cancel_key: parts.registration,
            masking: parts.masking,
            login_generation: snapshot.generation,
            listing: parts.listing,
        })),
        Err(e) => {
            if let Some(reason) = e.audit_reason() {
                ctx.metrics.auth_failure(reason);
            }
            if let (Some(audit), Some(reason)) = (&ctx.audit, e.audit_reason()) {
                let event = Event::AuthFailure {
                    session: id,
                    user: startup.user(),
                    actor: signed_in.as_ref().map(actor_of),
                    src_endpoint: peer.into(),
                    database: startup.database(),
                    reason: reason.to_owned(),
                };
                if let Err(audit_error) = audit.record(event).await {
                    warn!(error = %audit_error, "could not audit a failed login");
                }
            }
            Err(report(&mut stream, e).await)
        }
    }
}

/// What [`establish`] produces; the session adds the client stream.
struct Parts {
    reader: FrameBuffer,
    upstream: upstream::Upstream,
    identity: Identity,
    grant: Grant,
    settings: SessionSettings,
    search_path: Vec<String>,
    /// The role the server says the session runs as (its startup or default `role`).
    current_role: String,
    registration: Registration,
    masking: Option<crate::masking::rewrite::Masking>,
    listing: live::LiveSession,
}

/// Step 2–3: admission checks, client authentication, access check, upstream login, and the
/// greeting. Errors are returned unreported: the caller audits and reports them, with who
/// signed in (`signed_in`, set once authentication succeeds).
#[allow(clippy::too_many_arguments)]
async fn establish(
    ctx: &Context,
    snapshot: &Snapshot,
    stream: &mut MaybeTls,
    buf: BytesMut,
    startup: &StartupMessage,
    (id, peer, door): (u64, SocketAddr, Door),
    admitted: bool,
    signed_in: &mut Option<Identity>,
) -> Result<Parts, SessionError> {
    let config = &snapshot.config;
    let span = Span::current();
    admit(config, stream, startup, admitted).map_err(SessionError::Refused)?;
    let mut out = BytesMut::new();
    if startup.needs_negotiation() {
        backend::negotiate_protocol_version(
            &mut out,
            i32::from(NEWEST_MINOR),
            &startup.protocol_options,
        );
    }
    let limits = FrameLimits {
        max_message: MAX_AUTH_MESSAGE,
    };
    let mut reader = FrameBuffer::with_leftover(limits, buf);
    let user = startup.user();
    let mut conn = ClientConn {
        stream: &mut *stream,
        reader: &mut reader,
        out: &mut out,
    };
    let identity = authenticate(ctx, snapshot, &mut conn, startup, peer, door).await?;
    span.record("identity", identity.name.as_str());
    *signed_in = Some(identity.clone());
    let database = startup.database();
    // A person signing in with a token names the upstream role they want as the startup
    // user; their own name (or nothing) means their default role.
    let requested_role = (identity.oidc.is_some() && !user.is_empty() && user != identity.name)
        .then_some(user.as_str());
    let grant = auth::authorize(&identity, &database, requested_role, &config.access)?;
    span.record("role", grant.role.as_str());
    let settings = config.policy.session_settings(&crate::policy::Subject {
        user: &identity.name,
        groups: &identity.groups,
        database: &grant.database,
        role: &grant.role,
        search_path: &[],
        has_intent: false,
        own_backends: &[],
    });
    if let Some(switch) = session::unsupported_option(&startup.parameters) {
        return Err(SessionError::Refused(
            ClientError::fatal(
                SqlState::FEATURE_NOT_SUPPORTED,
                format!("pgwarden does not accept the switch \"{switch}\" in options"),
            )
            .with_hint("options may hold -c name=value and --name=value only"),
        ));
    }
    if let Some(name) = session::locked_in_startup(&startup.parameters, &settings) {
        return Err(SessionError::Refused(
            ClientError::fatal(
                SqlState::INSUFFICIENT_PRIVILEGE,
                format!("the setting \"{name}\" is locked for you by pgwarden's policy"),
            )
            .with_hint("connect without setting it (in options or as a startup parameter)"),
        ));
    }
    if let Some(encoding) = session::unsafe_encoding_in_startup(&startup.parameters) {
        return Err(unsafe_encoding(&encoding));
    }
    let may_use_role = |role: &str| {
        auth::authorize(&identity, &grant.database, Some(role), &config.access).is_ok()
    };
    if let Some(message) = session::role_change_in_startup(&startup.parameters, &may_use_role) {
        return Err(SessionError::Refused(
            ClientError::fatal(SqlState::INSUFFICIENT_PRIVILEGE, message)
                .with_hint("connect without it; SET ROLE to a role [[access]] grants you works after connecting"),
        ));
    }
    let parameters = session::startup_parameters(&startup.parameters, &settings);

    let password = match config.upstream.roles.get(&grant.role) {
        Some(password) => password.as_ref(),
        None => return Err(UpstreamError::UnknownRole(grant.role.clone()).into()),
    };
    let upstream_limits = FrameLimits {
        max_message: config.server.max_server_message,
    };
    let masking =
        session_masking(ctx, snapshot, &identity, &grant, password, upstream_limits).await?;
    let login = async {
        let mut upstream = upstream::login(
            &snapshot.upstream,
            &grant,
            password,
            &parameters,
            upstream_limits,
        )
        .await?;
        // The search_path and role the session starts with, as the server has them: a
        // role's or the database's default (ALTER ROLE … SET) counts as much as the
        // startup packet.
        let settings = upstream.current_settings(&["search_path", "role"]).await?;
        Ok::<_, UpstreamError>((upstream, settings))
    };
    let (upstream, mut current) = match login.await {
        Ok(logged_in) => {
            ctx.upstream_logins.succeeded();
            logged_in
        }
        // Logged by the caller, with every other reason a session does not start.
        Err(e) => {
            if e.is_credential_problem() {
                ctx.upstream_logins.refused(&grant.role, &e);
            }
            return Err(e.into());
        }
    };
    debug!(
        upstream = %snapshot.upstream.describe(),
        role = %grant.role,
        search_path = %current
            .first()
            .and_then(|v| v.as_deref())
            .map(String::from_utf8_lossy)
            .unwrap_or_default(),
        "logged in upstream"
    );
    // The encoding the session starts in, wherever it came from (the startup packet, the
    // role's or database's defaults, the server's): RESET returns to it.
    if let Some((_, encoding)) = upstream.parameters.iter().find(|(name, value)| {
        name == b"client_encoding"
            && crate::sql::is_unsafe_encoding(&String::from_utf8_lossy(value))
    }) {
        return Err(unsafe_encoding(&String::from_utf8_lossy(encoding)));
    }
    let current_role = current
        .pop()
        .flatten()
        .map(|role| String::from_utf8_lossy(&role).into_owned())
        .filter(|role| role != "none" && !role.is_empty())
        .unwrap_or_else(|| grant.role.clone());
    let search_path = match current.pop().flatten() {
        Some(text) => state::parse_search_path(&String::from_utf8_lossy(&text), &grant.role),
        None => vec!["*".to_owned()],
    };
    let listing = live::LiveSession {
        session: id,
        actor: actor_of(&identity),
        src_endpoint: peer.into(),
        tls: stream.tls_version().map(str::to_owned),
        application_name: startup
            .parameter("application_name")
            .map(|v| String::from_utf8_lossy(v).into_owned()),
        database: grant.database.clone(),
        role: grant.role.clone(),
        started: crate::audit::now_ms(),
        activity: Default::default(),
        owner: identity.owner(),
    };
    if let Some(audit) = &ctx.audit {
        // Nothing runs unaudited: no session until its session.start record is on disk.
        audit
            .record_durable(Event::SessionStart {
                session: id,
                actor: listing.actor.clone(),
                src_endpoint: listing.src_endpoint.clone(),
                tls: listing.tls.clone(),
                application_name: listing.application_name.clone(),
                database: listing.database.clone(),
                role: listing.role.clone(),
            })
            .await?;
    }
    let registration = ctx.cancels.register(
        snapshot.upstream.clone(),
        upstream.process_id,
        upstream.secret.clone(),
        (identity.owner(), id),
    );

    backend::authentication_ok(&mut out);
    out.extend_from_slice(&upstream.greeting);
    backend::backend_key_data(
        &mut out,
        registration.key.process_id,
        &registration.key.secret,
    );
    backend::ready_for_query(&mut out, upstream.transaction_status);
    stream
        .write_all(&out)
        .await
        .map_err(SessionError::ClientIo)?;
    stream.flush().await.map_err(SessionError::ClientIo)?;

    reader.set_limits(FrameLimits {
        max_message: config.server.max_client_message,
    });
    Ok(Parts {
        masking,
        reader,
        upstream,
        identity,
        grant,
        settings,
        search_path,
        current_role,
        registration,
        listing,
    })
}

/// The masking of a session about to start: the database's catalog resolution (loaded
/// now if need be; a session that cannot know what to mask does not start).
pub(crate) async fn session_masking(
    ctx: &Context,
    snapshot: &Snapshot,
    identity: &Identity,
    grant: &Grant,
    password: Option<&crate::config::Secret>,
    limits: FrameLimits,
) -> Result<Option<crate::masking::rewrite::Masking>, SessionError> {
    let settings = &snapshot.config.masking;
    let catalog = ctx
        .catalogs
        .get(
            &settings.rules,
            settings.catalog_refresh,
            crate::masking::catalog::Login {
                endpoint: &snapshot.upstream,
                grant,
                password,
                limits,
            },
        )
        .await
        .map_err(|e| {
            warn!(error = %e, database = %grant.database, "cannot resolve masked columns");
            SessionError::Refused(e.to_client())
        })?;
    Ok(crate::masking::rewrite::Masking::for_session(
        settings, catalog, identity,
    ))
}

/// The refusal of a session that would start in a client encoding pgwarden cannot read.
fn unsafe_encoding(encoding: &str) -> SessionError {
    SessionError::Refused(
        ClientError::fatal(
            SqlState::FEATURE_NOT_SUPPORTED,
            format!(
                "pgwarden cannot check statements in client_encoding {encoding} (SJIS, BIG5, GBK, UHC, GB18030 and JOHAB are refused)"
            ),
        )
        .with_hint("connect with client_encoding UTF8 (PGCLIENTENCODING=UTF8)"),
    )
}

/// Step 2: the rate limit, then the front-door method for this client — SCRAM for local
/// users, otherwise (when issuers are configured) a token, by OAUTHBEARER or as the password.
async fn authenticate(
    ctx: &Context,
    snapshot: &Snapshot,
    conn: &mut ClientConn<'_>,
    startup: &StartupMessage,
    peer: SocketAddr,
    door: Door,
) -> Result<Identity, AuthError> {
    let config = &snapshot.config;
    let user = startup.user();
    // Under server.auth_timeout: an attempt that finds no free slot in time gives up.
    let attempt = loop {
        match ctx.failures.attempt(&config.rate_limit, peer.ip(), &user) {
            Ok(attempt) => break attempt,
            Err(NotNow::Busy) => tokio::time::sleep(SLOT_POLL).await,
            Err(NotNow::Backoff(wait)) => {
                return Err(AuthError::RateLimited {
                    retry_after_s: wait.as_secs().max(1),
                })
            }
        }
    };
    let tls = conn.stream.is_tls();
    let use_token = !snapshot.issuers.is_empty() && !config.local_users.contains_key(&user);
    // A token must not cross the network in clear: refuse before the client sends it.
    if use_token
        && !tls
        && !(config.plaintext_tokens == PlaintextTokens::Loopback && peer.ip().is_loopback())
    {
        return Err(AuthError::TokenNeedsTls);
    }
    let oauthbearer = use_token
        && (door == Door::OauthBearer
            || match config.oauthbearer {
                OauthBearer::Off => false,
                OauthBearer::Always => true,
                OauthBearer::OnRequest => {
                    session::startup_setting(&startup.parameters, "pgwarden.auth")
                        .is_some_and(|v| v.eq_ignore_ascii_case("oauthbearer"))
                }
            });
    let result = if oauthbearer {
        front_door::oauthbearer(conn, &snapshot.issuers, &user).await
    } else if use_token {
        front_door::token_password(conn, &snapshot.issuers, &user).await
    } else {
        // SCRAM-SHA-256-PLUS binds the exchange to our certificate; only meaningful over TLS.
        let binding = snapshot.channel_binding.as_deref().filter(|_| tls);
        front_door::local_scram(conn, &config.local_users, &ctx.process_key, binding, &user).await
    };
    // A token's user name that is also a local user's would make `users = [...]` in access,
    // policy and masking rules match both people.
    let result = match result {
        Ok(identity)
            if identity.oidc.is_some() && config.local_users.contains_key(&identity.name) =>
        {
            Err(AuthError::Token {
                user: identity.name,
                error: crate::auth::oidc::TokenError::LocalNameConflict,
            })
        }
        other => other,
    };
    use crate::auth::rate_limit::Outcome;
    attempt.finish(match &result {
        Ok(_) => Outcome::SignedIn,
        Err(AuthError::Failed { .. } | AuthError::Token { .. }) => Outcome::Refused,
        Err(_) => Outcome::Other,
    });
    result
}

/// Who, for the audit log.
fn actor_of(identity: &Identity) -> Actor {
    Actor {
        user: User {
            name: identity.name.clone(),
            groups: identity.groups.clone(),
            auth_method: identity.method.as_str().to_owned(),
            uid: identity.oidc.as_ref().map(|o| o.subject.clone()),
            issuer: identity.oidc.as_ref().map(|o| o.issuer.clone()),
            token_type: identity
                .oidc
                .as_ref()
                .map(|o| o.token_kind.as_str().to_owned()),
        },
    }
}

/// Checks on the startup packet before any authentication.
fn admit(
    config: &Config,
    stream: &MaybeTls,
    startup: &StartupMessage,
    admitted: bool,
) -> Result<(), ClientError> {
    if config.server.tls_mode == TlsMode::Required && !stream.is_tls() {
        return Err(ClientError::fatal(
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            "pgwarden requires an encrypted connection",
        )
        .with_hint("connect with sslmode=require (or verify-full). If another error came just before this one, that is why the connection failed: with sslmode=prefer (libpq's default) a client refused over TLS tries again without it"));
    }
    if startup.wants_replication() {
        return Err(ClientError::fatal(
            SqlState::FEATURE_NOT_SUPPORTED,
            "replication connections are not supported through pgwarden",
        )
        .with_hint("connect replication clients directly to the server"));
    }
    if !admitted {
        return Err(ClientError::fatal(
            SqlState::TOO_MANY_CONNECTIONS,
            "sorry, too many clients already",
        ));
    }
    Ok(())
}

/// Tell the client why it is being disconnected (if it can still hear it), then hand the
/// error back for logging.
async fn report(stream: &mut MaybeTls, error: SessionError) -> SessionError {
    if let Some(client_error) = error.to_client() {
        send_error(stream, &client_error).await;
    }
    error
}

async fn send_error(stream: &mut MaybeTls, error: &ClientError) {
    let mut out = BytesMut::new();
    backend::error_response(&mut out, error);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        stream.write_all(&out).await?;
        stream.flush().await?;
        stream.shutdown().await
    })
    .await;
}
