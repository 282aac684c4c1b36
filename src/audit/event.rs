//! What the audit log records. Field names follow OCSF where a class fits (docs/audit.md has
//! the mapping): `actor.user`, `src_endpoint`, `database`, `status`; each record also carries
//! the OCSF `class_uid`/`activity_id` of its event.
//!
//! Adding an event type is one variant here (plus its OCSF class in [`Event::ocsf`]).
//! Secrets never appear: there is no field that could hold a password, token or SCRAM data.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Who, as established by authentication.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub user: User,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
    /// How the identity was established (`local-scram`, later OIDC methods).
    pub auth_method: String,
}

/// The client's address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub ip: String,
    pub port: u16,
}

impl From<SocketAddr> for Endpoint {
    fn from(addr: SocketAddr) -> Self {
        Self {
            ip: addr.ip().to_string(),
            port: addr.port(),
        }
    }
}

/// One event, tagged by `type` in the JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Event {
    /// First record of every file: links it to the file before.
    #[serde(rename = "file.start")]
    FileStart {
        /// Name of the previous file in the directory, if any.
        previous_file: Option<String>,
    },
    /// Written at start-up when the last file ended in a partial line (a crash mid-write):
    /// the partial bytes are sealed off by a newline and counted here.
    #[serde(rename = "log.recovered")]
    LogRecovered { file: String, torn_bytes: u64 },
    /// Written once writing works again after failures: how many accepted events were lost.
    #[serde(rename = "log.write_failed")]
    WriteFailed { lost_events: u64, error: String },
    /// Signs the chain head: the seq and hash of the record just before this one.
    #[serde(rename = "checkpoint")]
    Checkpoint {
        covers_seq: u64,
        covers_hash: String,
        /// First 8 bytes (hex) of SHA-256 of the Ed25519 public key.
        key_id: String,
        /// Base64 Ed25519 signature of [`super::checkpoint::message`].
        signature: String,
    },
    #[serde(rename = "proxy.start")]
    ProxyStart { version: String, listen: String },
    #[serde(rename = "proxy.stop")]
    ProxyStop { reason: String },
    #[serde(rename = "config.reload")]
    ConfigReload {
        path: String,
        status: Status,
        error: Option<String>,
    },
    #[serde(rename = "session.start")]
    SessionStart {
        session: u64,
        actor: Actor,
        src_endpoint: Endpoint,
        /// TLS version on the client leg, `null` for plaintext.
        tls: Option<String>,
        application_name: Option<String>,
        database: String,
        /// The upstream role pgwarden logged in as.
        role: String,
    },
    #[serde(rename = "session.end")]
    SessionEnd {
        session: u64,
        duration_ms: u64,
        statements: u64,
        bytes_from_client: u64,
        bytes_from_server: u64,
        ending: String,
    },
    #[serde(rename = "auth.failure")]
    AuthFailure {
        /// The user name the client claimed.
        user: String,
        src_endpoint: Endpoint,
        /// A category (`invalid_password`, `database_not_allowed`, …), never credentials.
        reason: String,
    },
}

/// OCSF `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    Success,
    Failure,
}

impl Event {
    /// OCSF (class_uid, activity_id): 3002 Authentication (1 Logon, 2 Logoff), 6005 Datastore
    /// Activity, 6002 Application Lifecycle (1 Install … 3 Start, 4 Stop); `None` for the
    /// log's own bookkeeping records.
    pub fn ocsf(&self) -> Option<(u32, u32)> {
        match self {
            Self::FileStart { .. }
            | Self::LogRecovered { .. }
            | Self::WriteFailed { .. }
            | Self::Checkpoint { .. } => None,
            Self::ProxyStart { .. } => Some((6002, 3)),
            Self::ProxyStop { .. } => Some((6002, 4)),
            Self::ConfigReload { .. } => Some((6002, 99)),
            Self::SessionStart { .. } | Self::AuthFailure { .. } => Some((3002, 1)),
            Self::SessionEnd { .. } => Some((3002, 2)),
        }
    }
}
