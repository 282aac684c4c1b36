//! What the audit log records. Field names follow OCSF where a class fits (docs/audit.md has
//! the mapping): `actor.user`, `src_endpoint`, `database`, `status`; each record also carries
//! the OCSF `class_uid`/`activity_id` of its event.
//!
//! Adding an event type is one variant here (plus its OCSF class in [`Event::ocsf`]).
//! Secrets never appear: there is no field that could hold a password, token or SCRAM data.

use std::net::SocketAddr;
use std::sync::Arc;

use serde::Serialize;

use crate::sql::TableRef;

/// Who, as established by authentication.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Actor {
    pub user: User,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
    /// How the identity was established (`local-scram`, `oidc-password`, `oauthbearer`).
    pub auth_method: String,
    /// OCSF `uid`: the token's `sub`, for OIDC identities.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// The issuer that vouched for an OIDC identity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// `id_token` or `access_token`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_type: Option<String>,
}

/// The client's address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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

/// Every record `type`, for checking what a reviewer asks `audit search --type` for.
pub const TYPES: &[&str] = &[
    "file.start",
    "log.recovered",
    "log.write_failed",
    "checkpoint",
    "proxy.start",
    "proxy.stop",
    "config.reload",
    "session.start",
    "session.end",
    "statement",
    "statement.result",
    "approval.request",
    "approval.answer",
    "approval.closed",
    "admin.call",
    "admin.session_end",
    "cancel.request",
    "auth.failure",
];

/// One event, tagged by `type` in the JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
    ProxyStart {
        version: String,
        listen: String,
        /// The id of this run's first session: ids go on from the previous run's.
        first_session: u64,
    },
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
    /// A statement, written before it is forwarded (or when it is refused). Its outcome
    /// follows in a `statement.result` record with the same `session` and `statement`.
    #[serde(rename = "statement")]
    Statement(Box<StatementRecord>),
    #[serde(rename = "statement.result")]
    StatementResult {
        session: u64,
        statement: u64,
        status: Status,
        /// The command tag of the last statement that completed (`SELECT`, `INSERT`, …).
        #[serde(skip_serializing_if = "Option::is_none")]
        command: Option<String>,
        /// Rows returned or affected, summed over the message's statements.
        rows: u64,
        /// From forwarding to the last response of the statement, in microseconds.
        duration_us: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        sqlstate: Option<String>,
        /// The statement never ran: an earlier message of the same pipeline failed, so the
        /// server skipped it.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        skipped: bool,
        /// The server did not carry out the Parse or Bind this Execute was recorded as
        /// running (it failed or was skipped after the Execute was sent): what ran is what
        /// that statement or portal name held before, not the recorded text.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        not_as_recorded: bool,
        /// The session ended (the client left, pgwarden shut down, the server went away)
        /// before the server answered: whether it ran, and how, is not known.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        unanswered: bool,
        /// What was masked in its results: columns and counts, never values.
        #[serde(skip_serializing_if = "Option::is_none")]
        masked: Option<MaskedNote>,
    },
    /// A statement held for approval: the request a person must answer.
    #[serde(rename = "approval.request")]
    ApprovalRequest {
        session: u64,
        request: String,
        actor: Arc<Actor>,
        database: String,
        role: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        current_role: Option<String>,
        rule: String,
        /// Normalized like statement records; the approver sees the full text in the API.
        query: QueryText,
        /// The requester's declared intent.
        #[serde(skip_serializing_if = "Option::is_none")]
        intent: Option<String>,
        expires_at: String,
    },
    /// An approver's answer, through the admin API.
    #[serde(rename = "approval.answer")]
    ApprovalAnswer {
        request: String,
        by: String,
        by_groups: Vec<String>,
        approve: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// Approved with a grant: the same statement shape runs without waiting this long.
        #[serde(skip_serializing_if = "Option::is_none")]
        grant_minutes: Option<u64>,
        /// The request's status after this answer.
        request_status: String,
    },
    /// A request that ended without enough answers: `expired` or `withdrawn` (cancelled,
    /// disconnected, session ended).
    #[serde(rename = "approval.closed")]
    ApprovalClosed {
        session: u64,
        request: String,
        request_status: String,
        because: String,
    },
    /// A call to the admin API's approvals endpoints (who is in the answer record).
    #[serde(rename = "admin.call")]
    AdminCall {
        /// The verified caller, when the token was accepted.
        #[serde(skip_serializing_if = "Option::is_none")]
        caller: Option<String>,
        method: String,
        path: String,
        /// The HTTP status returned.
        status: u16,
    },
    /// Someone ended a running session through the admin API (the `session.end` record
    /// follows once it has ended).
    #[serde(rename = "admin.session_end")]
    AdminSessionEnd {
        session: u64,
        by: String,
        by_groups: Vec<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A CancelRequest: from where, which live session its key named (`null` for a guessed
    /// or stale key), and whether it was passed on to that session's server process.
    #[serde(rename = "cancel.request")]
    CancelRequest {
        src_endpoint: Endpoint,
        session: Option<u64>,
        forwarded: bool,
    },
    #[serde(rename = "auth.failure")]
    AuthFailure {
        /// The connection's id (as in the log; no session started).
        session: u64,
        /// The user name the client claimed.
        user: String,
        /// Who the client proved to be, when the refusal came after that (`[[access]]`, the
        /// upstream login): the person the failure is about, not necessarily `user`.
        actor: Option<Actor>,
        src_endpoint: Endpoint,
        /// The database asked for.
        database: String,
        /// A category (`invalid_password`, `database_not_allowed`, …), never credentials.
        reason: String,
    },
}

/// Who ran what, through which path, and what pgwarden decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatementRecord {
    pub session: u64,
    /// 1, 2, 3, … within the session.
    pub statement: u64,
    /// Shared by every record of the session; cloned per record as a pointer.
    pub actor: Arc<Actor>,
    pub database: String,
    /// The upstream role pgwarden logged in as.
    pub role: String,
    /// The role the statement runs as, when SET ROLE made it another (`a or b` while
    /// pgwarden cannot yet tell which: a SET ROLE whose outcome it has not seen).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_role: Option<String>,
    /// `simple`, `extended` or `function-call`.
    pub protocol: &'static str,
    /// Extended protocol: the prepared statement's name (empty for the unnamed one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prepared: Option<String>,
    pub query: QueryText,
    /// One per statement of the message: `select`, `insert`, `drop table`, …
    pub kinds: Arc<[&'static str]>,
    /// `{"name": "public.users", "access": "read" | "write" | "ddl" | "other"}`.
    pub tables: Arc<[TableRef]>,
    /// Bind parameter values as HMAC-SHA256 (hex) with `audit.parameter_key`; never clear.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Vec<Option<String>>>,
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// The rule that decided, when one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Why a refused statement was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A statement that ran after approval: which request, and who approved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalNote>,
    /// Why: the sqlcommenter `intent` tag, else the session's `pgwarden.intent`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intent: Option<String>,
    /// Every sqlcommenter tag of the statement (`route`, `controller`, `traceparent`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Arc<crate::sql::comments::Tags>>,
    /// The OpenTelemetry trace of the caller, from a well-formed `traceparent` tag.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// Masked columns the statement filters, joins, groups or sorts on (an inference risk:
    /// the values never leave, but questions about them are answered).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub masked_filters: Vec<String>,
}

/// What masking did to one statement's results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MaskedNote {
    /// `schema.table.column` of the rules applied; `(computed)` for derived columns.
    pub columns: Vec<String>,
    /// Values masked by rules (and derived columns).
    pub values: u64,
    /// Values the detectors found, by kind.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub detected: std::collections::BTreeMap<&'static str, u32>,
}

impl MaskedNote {
    pub fn of(counts: crate::masking::rewrite::Counts) -> Option<Self> {
        (!counts.is_empty()).then(|| Self {
            columns: counts.columns.into_iter().collect(),
            values: counts.values,
            detected: counts
                .detected
                .0
                .iter()
                .map(|(kind, n)| (kind.as_str(), *n))
                .collect(),
        })
    }
}

/// How an `approve` decision was satisfied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApprovalNote {
    pub request: String,
    pub approved_by: Vec<String>,
    /// Ran under a grant from an earlier request, without waiting.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub grant: bool,
}

/// The statement's text as the log keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueryText {
    /// Normalized (literals as `$n`) unless `audit.statement_text = "full"`; `null` when the
    /// text could not be parsed (it may hold values, so it is not written).
    pub text: Option<Arc<str>>,
    /// Equal for statements of the same shape; `null` when unparsable.
    pub fingerprint: Option<Arc<str>>,
    /// Set when PostgreSQL's parser rejects the text.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub parse_error: bool,
    /// FunctionCall messages: the OID of the function called.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function_oid: Option<u32>,
}

/// OCSF `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
            // 6005 Datastore Activity; 99 Other: the kind of statement is in `kinds`.
            Self::Statement(_) | Self::StatementResult { .. } | Self::CancelRequest { .. } => {
                Some((6005, 99))
            }
            // 3005 User Access Management; 99 Other: access to one statement, granted or not.
            Self::ApprovalRequest { .. }
            | Self::ApprovalAnswer { .. }
            | Self::ApprovalClosed { .. } => Some((3005, 99)),
            // 6003 API Activity.
            Self::AdminCall { .. } => Some((6003, 99)),
            // 3002 Authentication; 99 Other: a logoff someone else asked for.
            Self::AdminSessionEnd { .. } => Some((3002, 99)),
        }
    }
}

#[cfg(test)]
mod tests {
    /// [`super::TYPES`] is every `type` the enum writes.
    #[test]
    fn types_lists_every_event() {
        let source = include_str!("event.rs");
        let enum_body = &source[source.find("pub enum Event {").unwrap()..];
        let enum_body = &enum_body[..enum_body.find("\n}\n").unwrap()];
        let written: Vec<&str> = enum_body
            .split("#[serde(rename = \"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .collect();
        assert_eq!(written.len(), super::TYPES.len(), "{written:?}");
        for kind in written {
            assert!(super::TYPES.contains(&kind), "{kind} is missing from TYPES");
        }
    }
}
