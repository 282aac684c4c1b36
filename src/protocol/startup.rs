//! The first packets of a connection. They have no tag byte: `len: i32, code: i32, payload`.
//!
//! Every length is checked before it is used: a startup packet is at most
//! [`MAX_STARTUP_PACKET`] bytes (PostgreSQL's own `MAX_STARTUP_PACKET_LENGTH`), parameters are
//! capped in number, and a packet must be consumed exactly.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::{split_cstr, split_i32, ProtocolError};

/// PostgreSQL refuses larger startup packets too.
pub const MAX_STARTUP_PACKET: usize = 10_000;
/// Real clients send about ten; anything near this is hostile.
pub const MAX_STARTUP_PARAMETERS: usize = 64;

const SSL_REQUEST_CODE: i32 = 80_877_103;
const GSSENC_REQUEST_CODE: i32 = 80_877_104;
const CANCEL_REQUEST_CODE: i32 = 80_877_102;
/// Longest cancel secret protocol 3.2 allows.
const MAX_CANCEL_SECRET: usize = 256;

/// The newest protocol minor version pgwarden speaks (3.0). Clients asking for more get a
/// NegotiateProtocolVersion and continue with 3.0, which every server version speaks.
pub const NEWEST_MINOR: u16 = 0;

/// One decoded startup-phase packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    Cancel(CancelRequest),
    Startup(StartupMessage),
}

/// A CancelRequest: which backend (as the client knows it) to cancel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelRequest {
    pub process_id: i32,
    pub secret: Vec<u8>,
}

/// A StartupMessage, with parameters in the order the client sent them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupMessage {
    pub minor_version: u16,
    /// Every parameter except protocol options (`_pq_.*`), byte-exact.
    pub parameters: Vec<(String, Vec<u8>)>,
    /// `_pq_.*` protocol options: pgwarden supports none, so they are reported back in
    /// NegotiateProtocolVersion.
    pub protocol_options: Vec<Vec<u8>>,
}

impl StartupMessage {
    pub fn parameter(&self, name: &str) -> Option<&[u8]> {
        self.parameters
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The `user` parameter (required and non-empty, checked at decode time).
    pub fn user(&self) -> String {
        self.parameter("user")
            .map(|u| String::from_utf8_lossy(u).into_owned())
            .unwrap_or_default()
    }

    /// The `database` parameter, defaulting to the user name as PostgreSQL does.
    pub fn database(&self) -> String {
        match self.parameter("database") {
            Some(db) if !db.is_empty() => String::from_utf8_lossy(db).into_owned(),
            _ => self.user(),
        }
    }

    /// Whether the client asked for a walsender (replication) connection.
    pub fn wants_replication(&self) -> bool {
        match self.parameter("replication") {
            None => false,
            Some(v) => {
                let v = String::from_utf8_lossy(v).to_ascii_lowercase();
                !matches!(v.as_str(), "false" | "off" | "no" | "0" | "")
            }
        }
    }

    /// Whether NegotiateProtocolVersion must be sent before authentication.
    pub fn needs_negotiation(&self) -> bool {
        self.minor_version > NEWEST_MINOR || !self.protocol_options.is_empty()
    }
}

/// Read one startup-phase packet. `Ok(None)` means the peer closed before sending anything.
///
/// A read may bring in more than one packet; the rest stays in `buf`. After an SSLRequest the
/// caller must find `buf` empty: bytes sent before the TLS handshake are refused, never
/// replayed inside the encrypted stream (the CVE-2021-23214 class).
pub async fn read_packet<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
) -> Result<Option<StartupPacket>, ReadError> {
    while buf.len() < 4 {
        if io.read_buf(buf).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(ReadError::Eof)
            };
        }
    }
    let declared = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let len = match usize::try_from(declared) {
        Ok(len) if (8..=MAX_STARTUP_PACKET).contains(&len) => len,
        _ => return Err(ProtocolError::BadStartupLength(declared.into()).into()),
    };
    while buf.len() < len {
        buf.reserve(len - buf.len());
        if io.read_buf(buf).await? == 0 {
            return Err(ReadError::Eof);
        }
    }
    let packet = buf.split_to(len);
    Ok(Some(decode(&packet[4..])?))
}

/// Why reading a startup packet failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("connection closed in the middle of a startup packet")]
    Eof,
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

/// Decode a startup packet body (after the length word).
pub fn decode(mut body: &[u8]) -> Result<StartupPacket, ProtocolError> {
    let code = body.get_i32();
    match code {
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE if !body.is_empty() => {
            Err(ProtocolError::Malformed {
                what: "SSL/GSS request",
                detail: "trailing bytes",
            })
        }
        SSL_REQUEST_CODE => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST_CODE => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST_CODE => {
            let (process_id, secret) = split_i32(body).ok_or(ProtocolError::Malformed {
                what: "cancel request",
                detail: "too short",
            })?;
            if !(4..=MAX_CANCEL_SECRET).contains(&secret.len()) {
                return Err(ProtocolError::Malformed {
                    what: "cancel request",
                    detail: "secret key has an invalid length",
                });
            }
            Ok(StartupPacket::Cancel(CancelRequest {
                process_id,
                secret: secret.to_vec(),
            }))
        }
        version => decode_startup(version, body).map(StartupPacket::Startup),
    }
}

fn decode_startup(version: i32, mut body: &[u8]) -> Result<StartupMessage, ProtocolError> {
    let major = (version >> 16) as u16;
    let minor = (version & 0xffff) as u16;
    if major != 3 {
        return Err(ProtocolError::UnsupportedVersion { major, minor });
    }
    let mut parameters: Vec<(String, Vec<u8>)> = Vec::new();
    let mut protocol_options = Vec::new();
    let malformed = |detail| ProtocolError::Malformed {
        what: "startup packet",
        detail,
    };
    loop {
        let (name, rest) = split_cstr(body).ok_or(malformed("missing terminator"))?;
        if name.is_empty() {
            if !rest.is_empty() {
                return Err(malformed("bytes after the final terminator"));
            }
            break;
        }
        let (value, rest) = split_cstr(rest).ok_or(malformed("parameter without a value"))?;
        body = rest;
        if parameters.len() + protocol_options.len() >= MAX_STARTUP_PARAMETERS {
            return Err(ProtocolError::TooManyParameters(MAX_STARTUP_PARAMETERS));
        }
        if name.starts_with(b"_pq_.") {
            protocol_options.push(name.to_vec());
            continue;
        }
        let name =
            std::str::from_utf8(name).map_err(|_| malformed("parameter name is not UTF-8"))?;
        if parameters.iter().any(|(n, _)| n == name) {
            return Err(malformed("duplicate parameter"));
        }
        parameters.push((name.to_owned(), value.to_vec()));
    }
    let message = StartupMessage {
        minor_version: minor,
        parameters,
        protocol_options,
    };
    match message.parameter("user") {
        Some(user) if !user.is_empty() => Ok(message),
        _ => Err(ProtocolError::NoUser),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(code: i32, payload: &[u8]) -> Vec<u8> {
        let mut p = ((payload.len() + 8) as i32).to_be_bytes().to_vec();
        p.extend_from_slice(&code.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    async fn read(bytes: &[u8]) -> Result<Option<StartupPacket>, ReadError> {
        let mut buf = BytesMut::new();
        let mut io = bytes;
        read_packet(&mut io, &mut buf).await
    }

    #[tokio::test]
    async fn decodes_a_startup_message() {
        let p = packet(196_608, b"user\0alice\0database\0app\0options\0-c x=1\0\0");
        let Some(StartupPacket::Startup(s)) = read(&p).await.unwrap() else {
            panic!()
        };
        assert_eq!(s.user(), "alice");
        assert_eq!(s.database(), "app");
        assert_eq!(s.parameter("options"), Some(&b"-c x=1"[..]));
        assert!(!s.needs_negotiation());
    }

    #[tokio::test]
    async fn database_defaults_to_user() {
        let p = packet(196_608, b"user\0alice\0\0");
        let Some(StartupPacket::Startup(s)) = read(&p).await.unwrap() else {
            panic!()
        };
        assert_eq!(s.database(), "alice");
    }

    #[tokio::test]
    async fn protocol_32_and_pq_options_need_negotiation() {
        let p = packet(196_610, b"user\0alice\0_pq_.grease\0x\0\0");
        let Some(StartupPacket::Startup(s)) = read(&p).await.unwrap() else {
            panic!()
        };
        assert!(s.needs_negotiation());
        assert_eq!(s.protocol_options, vec![b"_pq_.grease".to_vec()]);
    }

    #[tokio::test]
    async fn ssl_gss_and_cancel() {
        assert_eq!(
            read(&packet(SSL_REQUEST_CODE, b"")).await.unwrap(),
            Some(StartupPacket::SslRequest)
        );
        assert_eq!(
            read(&packet(GSSENC_REQUEST_CODE, b"")).await.unwrap(),
            Some(StartupPacket::GssEncRequest)
        );
        let c = read(&packet(CANCEL_REQUEST_CODE, &[0, 0, 0, 7, 1, 2, 3, 4]))
            .await
            .unwrap();
        assert_eq!(
            c,
            Some(StartupPacket::Cancel(CancelRequest {
                process_id: 7,
                secret: vec![1, 2, 3, 4]
            }))
        );
    }

    #[tokio::test]
    async fn hostile_packets_are_refused() {
        assert!(read(&[0, 0, 0, 0]).await.is_err());
        assert!(read(&[0x7f, 0xff, 0xff, 0xff]).await.is_err());
        assert!(read(&[0xff, 0xff, 0xff, 0xff]).await.is_err());
        assert!(matches!(
            read(&packet(196_608, b"database\0x\0\0")).await,
            Err(ReadError::Protocol(ProtocolError::NoUser))
        ));
        assert!(read(&packet(196_608, b"user\0\0\0")).await.is_err());
        assert!(read(&packet(196_608, b"user\0alice")).await.is_err());
        assert!(read(&packet(196_608, b"user\0a\0\0junk")).await.is_err());
        assert!(read(&packet(131_072, b"user\0a\0\0")).await.is_err());
        let mut many = Vec::new();
        for i in 0..100 {
            many.extend_from_slice(format!("p{i}\0v\0").as_bytes());
        }
        many.extend_from_slice(b"user\0a\0\0");
        assert!(matches!(
            read(&packet(196_608, &many)).await,
            Err(ReadError::Protocol(ProtocolError::TooManyParameters(_)))
        ));
        assert_eq!(read(b"").await.unwrap(), None);
        assert!(matches!(read(&[0, 0, 0, 9, 0]).await, Err(ReadError::Eof)));
    }
}
