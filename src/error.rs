//! What a client sees when something goes wrong: a SQLSTATE, a severity and a message.
//!
//! Every module has its own error enum; each one knows the SQLSTATE and severity it maps to,
//! and [`ClientError`] is the shape in which it reaches the client as an ErrorResponse.

use std::fmt;

/// A five-character SQLSTATE code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SqlState(&'static str);

impl SqlState {
    pub const FEATURE_NOT_SUPPORTED: Self = Self("0A000");
    pub const CONNECTION_FAILURE: Self = Self("08006");
    pub const CONNECTION_EXCEPTION: Self = Self("08000");
    pub const SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION: Self = Self("08001");
    pub const PROTOCOL_VIOLATION: Self = Self("08P01");
    pub const INVALID_AUTHORIZATION_SPECIFICATION: Self = Self("28000");
    pub const INVALID_PASSWORD: Self = Self("28P01");
    pub const PROGRAM_LIMIT_EXCEEDED: Self = Self("54000");
    pub const TOO_MANY_CONNECTIONS: Self = Self("53300");
    pub const ADMIN_SHUTDOWN: Self = Self("57P01");
    pub const CANNOT_CONNECT_NOW: Self = Self("57P03");
    pub const INSUFFICIENT_PRIVILEGE: Self = Self("42501");
    pub const INTERNAL_ERROR: Self = Self("XX000");

    pub fn code(&self) -> &'static str {
        self.0
    }
}

impl fmt::Display for SqlState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// ErrorResponse severity. Only the ones pgwarden emits itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
}

impl Severity {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Error => "ERROR",
            Self::Fatal => "FATAL",
        }
    }
}

/// An error as the client will see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    pub severity: Severity,
    pub sqlstate: SqlState,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl ClientError {
    pub fn fatal(sqlstate: SqlState, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Fatal,
            sqlstate,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    pub fn error(sqlstate: SqlState, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            sqlstate,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.severity.as_str(),
            self.sqlstate,
            self.message
        )
    }
}
