//! What a client sees when something goes wrong: a SQLSTATE, a severity and a message.
//!
//! Every module has its own error enum; each one knows the SQLSTATE and severity it maps to,
//! and [`ClientError`] is the shape in which it reaches the client as an ErrorResponse.

use std::fmt;

/// A five-character SQLSTATE code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SqlState([u8; 5]);

impl SqlState {
    pub const SUCCESSFUL_COMPLETION: Self = Self(*b"00000");
    pub const FEATURE_NOT_SUPPORTED: Self = Self(*b"0A000");
    pub const CONNECTION_FAILURE: Self = Self(*b"08006");
    pub const CONNECTION_EXCEPTION: Self = Self(*b"08000");
    pub const SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION: Self = Self(*b"08001");
    pub const PROTOCOL_VIOLATION: Self = Self(*b"08P01");
    pub const INVALID_AUTHORIZATION_SPECIFICATION: Self = Self(*b"28000");
    pub const INVALID_PASSWORD: Self = Self(*b"28P01");
    pub const PROGRAM_LIMIT_EXCEEDED: Self = Self(*b"54000");
    pub const TOO_MANY_CONNECTIONS: Self = Self(*b"53300");
    pub const ADMIN_SHUTDOWN: Self = Self(*b"57P01");
    pub const QUERY_CANCELED: Self = Self(*b"57014");
    pub const CANNOT_CONNECT_NOW: Self = Self(*b"57P03");
    pub const INSUFFICIENT_PRIVILEGE: Self = Self(*b"42501");
    pub const SYNTAX_ERROR: Self = Self(*b"42601");
    pub const DUPLICATE_PREPARED_STATEMENT: Self = Self(*b"42P05");
    pub const INVALID_SQL_STATEMENT_NAME: Self = Self(*b"26000");
    pub const STATEMENT_TOO_COMPLEX: Self = Self(*b"54001");
    pub const CHARACTER_NOT_IN_REPERTOIRE: Self = Self(*b"22021");
    pub const IO_ERROR: Self = Self(*b"58030");
    pub const INTERNAL_ERROR: Self = Self(*b"XX000");

    /// A code received from a peer, if it has the SQLSTATE shape (five ASCII letters/digits).
    pub fn parse(code: &str) -> Option<Self> {
        let bytes: [u8; 5] = code.as_bytes().try_into().ok()?;
        bytes
            .iter()
            .all(u8::is_ascii_alphanumeric)
            .then_some(Self(bytes))
    }

    pub fn code(&self) -> &str {
        // Constructed only from ASCII (constants above and `parse`).
        std::str::from_utf8(&self.0).unwrap_or("XX000")
    }
}

impl fmt::Display for SqlState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// ErrorResponse severity. Only the ones pgwarden emits itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// In a NoticeResponse, not an error.
    Notice,
    Error,
    Fatal,
}

impl Severity {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Notice => "NOTICE",
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
    /// Where in the statement text (1-based, in characters): clients show the line.
    pub position: Option<u32>,
}

impl ClientError {
    pub fn fatal(sqlstate: SqlState, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Fatal,
            sqlstate,
            message: message.into(),
            detail: None,
            hint: None,
            position: None,
        }
    }

    pub fn error(sqlstate: SqlState, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            sqlstate,
            message: message.into(),
            detail: None,
            hint: None,
            position: None,
        }
    }

    /// For a NoticeResponse ([`crate::protocol::backend::notice_response`]).
    pub fn notice(sqlstate: SqlState, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Notice,
            sqlstate,
            message: message.into(),
            detail: None,
            hint: None,
            position: None,
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

    pub fn with_position(mut self, position: u32) -> Self {
        self.position = Some(position);
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

/// An error and its sources on one line (libraries such as openidconnect nest the useful
/// part several levels down).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
