//! The PostgreSQL wire protocol, as far as pgwarden needs it.
//!
//! * [`frame`]: cancel-safe, length-checked framing of regular messages over raw bytes.
//! * [`startup`]: the untagged first packets (SSLRequest, GSSENCRequest, CancelRequest,
//!   StartupMessage) and their validation.
//! * [`backend`]: builders for the server messages pgwarden synthesizes itself.
//! * [`views`]: borrowed, exact-length views of the client messages the session inspects.
//!
//! Decoding is deliberately lazy: the relay passes raw bytes through and only the messages it
//! must understand are decoded, from an exact-length body, with every inner length checked.

pub mod backend;
pub mod frame;
pub mod startup;
pub mod views;

use crate::error::{Severity, SqlState};

/// Something a peer sent that is not valid protocol.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("invalid length {len} in message of type {}", describe_tag(*tag))]
    BadLength { tag: u8, len: i64 },
    #[error("message of type {} is {len} bytes, over the limit of {limit}", describe_tag(*tag))]
    TooLarge { tag: u8, len: usize, limit: usize },
    #[error("invalid startup packet length {0}")]
    BadStartupLength(i64),
    #[error("malformed {what}: {detail}")]
    Malformed {
        what: &'static str,
        detail: &'static str,
    },
    #[error("startup packet has more than {0} parameters")]
    TooManyParameters(usize),
    #[error("no PostgreSQL user name specified in startup packet")]
    NoUser,
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.2")]
    UnsupportedVersion { major: u16, minor: u16 },
    #[error("unexpected message type {} during {phase}", describe_tag(*tag))]
    Unexpected { tag: u8, phase: &'static str },
    #[error("received unencrypted data after SSL request")]
    DataAfterSslRequest,
    #[error("encryption was requested again after it was negotiated")]
    RepeatedNegotiation,
}

impl ProtocolError {
    pub fn sqlstate(&self) -> SqlState {
        match self {
            Self::TooLarge { .. } => SqlState::PROGRAM_LIMIT_EXCEEDED,
            Self::UnsupportedVersion { .. } => SqlState::FEATURE_NOT_SUPPORTED,
            Self::NoUser => SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            _ => SqlState::PROTOCOL_VIOLATION,
        }
    }

    pub fn severity(&self) -> Severity {
        Severity::Fatal
    }
}

/// A printable name for a tag byte, for error messages.
pub fn describe_tag(tag: u8) -> String {
    if tag.is_ascii_graphic() {
        format!("'{}'", tag as char)
    } else {
        format!("0x{tag:02x}")
    }
}

/// Read a NUL-terminated string from the front of `buf`, returning it (without the NUL) and
/// the rest.
pub fn split_cstr(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = buf.iter().position(|&b| b == 0)?;
    Some((buf.get(..nul)?, buf.get(nul + 1..)?))
}

/// Read a big-endian i16 from the front of `buf`.
pub fn split_i16(buf: &[u8]) -> Option<(i16, &[u8])> {
    let (head, rest) = buf.split_first_chunk::<2>()?;
    Some((i16::from_be_bytes(*head), rest))
}

/// Read a big-endian i32 from the front of `buf`.
pub fn split_i32(buf: &[u8]) -> Option<(i32, &[u8])> {
    let (head, rest) = buf.split_first_chunk::<4>()?;
    Some((i32::from_be_bytes(*head), rest))
}
