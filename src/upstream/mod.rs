//! The upstream leg: connecting to PostgreSQL as the role pgwarden was granted, with
//! credentials only pgwarden holds, and forwarding CancelRequests.

pub mod cancel;
mod login;

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use crate::config::{Config, SslMode, UpstreamAddr, UpstreamAuth};
use crate::error::{ClientError, SqlState};
use crate::net::{tls, MaybeTls};

pub use login::{login, Upstream};

/// How pgwarden's own logins to the database server went lately, for /readyz: the network
/// probe cannot tell that the server refuses pgwarden's credentials.
#[derive(Debug, Default)]
pub struct LoginHealth {
    inner: std::sync::Mutex<LoginRecord>,
}

#[derive(Debug, Default)]
struct LoginRecord {
    succeeded: Option<std::time::Instant>,
    /// When, as which role, and why.
    refused: Option<(std::time::Instant, String, String)>,
}

/// How long a refused login keeps /readyz unready unless a login succeeds meanwhile.
const REFUSAL_MEMORY: std::time::Duration = std::time::Duration::from_secs(60);

impl LoginHealth {
    pub fn succeeded(&self) {
        if let Ok(mut record) = self.inner.lock() {
            record.succeeded = Some(std::time::Instant::now());
        }
    }

    pub fn refused(&self, role: &str, error: &UpstreamError) {
        if let Ok(mut record) = self.inner.lock() {
            record.refused = Some((
                std::time::Instant::now(),
                role.to_owned(),
                error.to_string(),
            ));
        }
    }

    /// Why sessions cannot start, if the last login in the past minute was refused for
    /// pgwarden's credentials and none succeeded since.
    pub fn problem(&self) -> Option<String> {
        let record = self.inner.lock().ok()?;
        let (at, role, error) = record.refused.as_ref()?;
        let recent = at.elapsed() < REFUSAL_MEMORY;
        let since = record.succeeded.is_none_or(|ok| ok < *at);
        (recent && since).then(|| format!("pgwarden's login as role \"{role}\" failed: {error}"))
    }
}

/// Why the upstream leg failed. Messages never contain credentials.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to the database server at {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("timed out connecting to the database server at {addr}")]
    Timeout { addr: String },
    #[error("the database server does not accept TLS (upstream sslmode requires it)")]
    TlsRefused,
    #[error("TLS handshake with the database server failed: {0}")]
    Tls(std::io::Error),
    #[error("invalid upstream TLS setup: {0}")]
    TlsSetup(#[from] tls::TlsError),
    #[error("I/O error talking to the database server: {0}")]
    Io(#[from] std::io::Error),
    #[error("the database server sent an invalid message: {0}")]
    Protocol(#[from] crate::protocol::ProtocolError),
    #[error("the database server closed the connection during login")]
    ClosedDuringLogin,
    /// The server refused the login or startup; its ErrorResponse fields are passed on.
    #[error("the database server refused the login: {message}")]
    Refused { sqlstate: String, message: String },
    #[error("the database server asked for {0} authentication, which pgwarden does not support")]
    UnsupportedAuth(&'static str),
    #[error("the database server asked for {0} authentication, which upstream.auth_methods does not allow")]
    AuthNotAllowed(&'static str),
    #[error("the database server accepted the login without completing SCRAM (it never proved it knows the password)")]
    ScramIncomplete,
    #[error("the database server asked for a password but none is configured for role \"{0}\"")]
    NoPassword(String),
    #[error("SCRAM authentication with the database server failed: {0}")]
    Scram(std::io::Error),
    #[error("upstream role \"{0}\" has no [[upstream.roles]] entry")]
    UnknownRole(String),
}

impl UpstreamError {
    /// The server refused pgwarden's own credentials for a role (a wrong or missing
    /// password, an authentication method not allowed): no session of that role can start,
    /// whoever the client is.
    pub fn is_credential_problem(&self) -> bool {
        match self {
            Self::Refused { sqlstate, .. } => sqlstate.starts_with("28"),
            Self::UnsupportedAuth(_)
            | Self::AuthNotAllowed(_)
            | Self::ScramIncomplete
            | Self::NoPassword(_)
            | Self::Scram(_) => true,
            _ => false,
        }
    }

    /// What the client is told. Connection details stay in pgwarden's log.
    pub fn to_client(&self) -> ClientError {
        match self {
            Self::Connect { .. } | Self::Timeout { .. } | Self::ClosedDuringLogin | Self::Io(_) => {
                ClientError::fatal(
                    SqlState::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
                    "the database server is unavailable",
                )
                .with_hint("pgwarden could not reach PostgreSQL; see pgwarden's log for details")
            }
            Self::Refused {
                sqlstate, message, ..
            } if sqlstate.starts_with("28") => ClientError::fatal(
                SqlState::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
                "pgwarden could not log in to the database server",
            )
            .with_detail(message.clone())
            .with_hint("the upstream credentials in pgwarden's [[upstream.roles]] were refused"),
            // Anything else (no such database, too many connections, ...) is the server's own
            // words, which carry no credentials: pass its SQLSTATE and message on.
            Self::Refused {
                sqlstate, message, ..
            } => ClientError::fatal(
                SqlState::parse(sqlstate).unwrap_or(SqlState::CONNECTION_FAILURE),
                message.clone(),
            ),
            _ => ClientError::fatal(
                SqlState::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
                "pgwarden could not establish the upstream connection",
            )
            .with_hint("see pgwarden's log for details"),
        }
    }
}

/// Where and how to reach the upstream server; built once per config snapshot.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: UpstreamAddr,
    pub connect_timeout: Duration,
    /// What the server may ask for at login (`upstream.auth_methods`).
    pub auth_methods: Vec<UpstreamAuth>,
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
}

impl Endpoint {
    pub fn from_config(config: &Config) -> Result<Self, UpstreamError> {
        let up = &config.upstream;
        let tls = match (up.sslmode, &up.addr) {
            (SslMode::Disable, _) | (_, UpstreamAddr::Unix { .. }) => None,
            (mode, UpstreamAddr::Tcp { host, .. }) => {
                let ca = (mode == SslMode::VerifyFull)
                    .then_some(up.ca.as_deref())
                    .flatten();
                let name = up.server_name.clone().unwrap_or_else(|| host.clone());
                let name = ServerName::try_from(name).map_err(|e| {
                    UpstreamError::TlsSetup(tls::TlsError::Rustls(rustls::Error::General(
                        e.to_string(),
                    )))
                })?;
                Some((tls::upstream_config(ca)?, name))
            }
        };
        Ok(Self {
            addr: up.addr.clone(),
            connect_timeout: up.connect_timeout,
            auth_methods: up.auth_methods.clone(),
            tls,
        })
    }

    pub fn describe(&self) -> String {
        match &self.addr {
            UpstreamAddr::Tcp { host, port } => format!("{host}:{port}"),
            UpstreamAddr::Unix { dir, port } => format!("{}/.s.PGSQL.{port}", dir.display()),
        }
    }

    /// Open a transport to the server, negotiating TLS when configured.
    pub async fn connect(&self) -> Result<MaybeTls, UpstreamError> {
        let addr = self.describe();
        let stream = tokio::time::timeout(self.connect_timeout, self.connect_inner())
            .await
            .map_err(|_| UpstreamError::Timeout { addr: addr.clone() })?;
        stream
    }

    async fn connect_inner(&self) -> Result<MaybeTls, UpstreamError> {
        let addr = self.describe();
        let connect_err = |source| UpstreamError::Connect {
            addr: addr.clone(),
            source,
        };
        match &self.addr {
            UpstreamAddr::Unix { .. } => Ok(MaybeTls::Unix(
                UnixStream::connect(&addr).await.map_err(connect_err)?,
            )),
            UpstreamAddr::Tcp { host, port } => {
                let mut tcp = TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(connect_err)?;
                tcp.set_nodelay(true)?;
                let Some((config, name)) = &self.tls else {
                    return Ok(MaybeTls::Plain(tcp));
                };
                let mut request = BytesMut::new();
                postgres_protocol::message::frontend::ssl_request(&mut request);
                tcp.write_all(&request).await?;
                // Read exactly one byte: anything after it must come through TLS
                // (CVE-2021-23222).
                match tcp.read_u8().await? {
                    b'S' => {}
                    _ => return Err(UpstreamError::TlsRefused),
                }
                let connector = tokio_rustls::TlsConnector::from(config.clone());
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(UpstreamError::Tls)?;
                Ok(MaybeTls::ClientTls(Box::new(tls)))
            }
        }
    }
}
