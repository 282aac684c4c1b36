//! Raw PostgreSQL wire protocol for tests that talk to pgwarden byte by byte: startup-phase
//! packets, reading messages and everything up to a close, ErrorResponse fields, and a SCRAM
//! login done by hand (over any stream, so over TLS too).

use std::collections::HashMap;
use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::ALICE_PASSWORD;

/// Protocol version 3.0 in a StartupMessage.
pub const PROTOCOL_3_0: i32 = 196_608;
/// Protocol version 3.2 (PostgreSQL 18) in a StartupMessage.
pub const PROTOCOL_3_2: i32 = 196_610;
/// The request code of an SSLRequest.
pub const SSL_REQUEST: i32 = 80_877_103;
/// The request code of a GSSENCRequest.
pub const GSSENC_REQUEST: i32 = 80_877_104;
/// The request code of a CancelRequest.
pub const CANCEL_REQUEST: i32 = 80_877_102;
/// Bound on every wait for the proxy: far more than a healthy proxy needs, short enough that a
/// hang fails the test instead of the whole run.
pub const WAIT: Duration = Duration::from_secs(10);

/// A StartupMessage (or any untagged startup-phase packet) with `code` and parameters.
pub fn startup_packet(code: i32, params: &[(&str, &[u8])]) -> Vec<u8> {
    let mut body = code.to_be_bytes().to_vec();
    for (name, value) in params {
        body.extend_from_slice(name.as_bytes());
        body.push(0);
        body.extend_from_slice(value);
        body.push(0);
    }
    body.push(0);
    let mut packet = i32::try_from(body.len() + 4)
        .unwrap()
        .to_be_bytes()
        .to_vec();
    packet.extend_from_slice(&body);
    packet
}

/// A protocol 3.0 StartupMessage for user `alice`, database `app`.
pub fn alice_startup() -> Vec<u8> {
    startup_packet(PROTOCOL_3_0, &[("user", b"alice"), ("database", b"app")])
}

/// An SSLRequest or GSSENCRequest: just the length word and `code` ([`SSL_REQUEST`],
/// [`GSSENC_REQUEST`]).
pub fn encryption_request(code: i32) -> Vec<u8> {
    [8i32.to_be_bytes(), code.to_be_bytes()].concat()
}

/// Split `bytes` into the complete tagged messages at its front, as (tag, body) pairs; a
/// trailing partial message or an impossible length word ends the list.
pub fn parse_messages(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut messages = Vec::new();
    while bytes.len() >= 5 {
        let len = i32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
        let Ok(len) = usize::try_from(len) else { break };
        if len < 4 || bytes.len() < len + 1 {
            break;
        }
        messages.push((bytes[0], bytes[5..len + 1].to_vec()));
        bytes = &bytes[len + 1..];
    }
    messages
}

/// The fields of an ErrorResponse (or NoticeResponse) body by field code: `b'S'` severity,
/// `b'C'` SQLSTATE, `b'M'` message, ...
pub fn error_fields(body: &[u8]) -> HashMap<u8, String> {
    let mut fields = HashMap::new();
    let mut rest = body;
    while let Some((&code, after)) = rest.split_first() {
        if code == 0 {
            break;
        }
        let nul = after.iter().position(|&b| b == 0).unwrap_or(after.len());
        fields.insert(code, String::from_utf8_lossy(&after[..nul]).into_owned());
        rest = after.get(nul + 1..).unwrap_or_default();
    }
    fields
}

/// How a [`read_until_close`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The proxy closed the connection.
    Eof,
    /// A read failed (a reset counts as closed).
    Error(std::io::ErrorKind),
    /// The wait ran out with the connection still open.
    TimedOut,
}

/// Everything the proxy sent until it closed the connection (or the wait ran out).
#[derive(Debug)]
pub struct Outcome {
    pub bytes: Vec<u8>,
    pub end: End,
}

impl Outcome {
    /// The connection was closed (EOF or a read error) before the wait ran out.
    pub fn closed(&self) -> bool {
        self.end != End::TimedOut
    }

    /// The complete messages at the front of what was received.
    pub fn messages(&self) -> Vec<(u8, Vec<u8>)> {
        parse_messages(&self.bytes)
    }

    /// An authentication request ('R') is among the complete messages received.
    pub fn has_auth_request(&self) -> bool {
        self.messages().iter().any(|(tag, _)| *tag == b'R')
    }

    /// Assert: the connection was closed, no authentication request came, and an
    /// ErrorResponse with severity FATAL and `sqlstate` did. Returns its fields.
    #[track_caller]
    pub fn assert_fatal(&self, sqlstate: &str) -> HashMap<u8, String> {
        assert!(
            self.closed(),
            "pgwarden did not close the connection within {WAIT:?}: {self:?}"
        );
        let messages = self.messages();
        assert!(
            !messages.iter().any(|(tag, _)| *tag == b'R'),
            "an authentication request was sent: {messages:?}"
        );
        let Some((_, body)) = messages.iter().find(|(tag, _)| *tag == b'E') else {
            panic!(
                "no ErrorResponse before the close; received {:?} ({:?})",
                self.bytes, self.end
            )
        };
        let fields = error_fields(body);
        assert_eq!(
            fields.get(&b'S').map(String::as_str),
            Some("FATAL"),
            "{fields:?}"
        );
        assert_eq!(
            fields.get(&b'C').map(String::as_str),
            Some(sqlstate),
            "{fields:?}"
        );
        fields
    }
}

/// Read until EOF, a read error (a reset counts as closed) or `limit` (usually [`WAIT`]).
pub async fn read_until_close<S: AsyncRead + Unpin>(stream: &mut S, limit: Duration) -> Outcome {
    let deadline = tokio::time::Instant::now() + limit;
    let mut bytes = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => {
                return Outcome {
                    bytes,
                    end: End::TimedOut,
                }
            }
            Ok(Ok(0)) => {
                return Outcome {
                    bytes,
                    end: End::Eof,
                }
            }
            Ok(Ok(n)) => bytes.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => {
                return Outcome {
                    bytes,
                    end: End::Error(e.kind()),
                }
            }
        }
    }
}

/// Read one whole tagged message as (tag, body), failing the test on EOF (no timeout).
pub async fn read_message_untimed<S: AsyncRead + Unpin>(stream: &mut S) -> (u8, Vec<u8>) {
    let tag = stream.read_u8().await.expect("read message tag");
    let len = stream.read_i32().await.expect("read message length");
    let len = usize::try_from(len)
        .ok()
        .filter(|l| *l >= 4)
        .expect("sane length");
    let mut body = vec![0u8; len - 4];
    stream
        .read_exact(&mut body)
        .await
        .expect("read message body");
    (tag, body)
}

/// Read one whole tagged message as (tag, body), failing the test on EOF or after [`WAIT`].
pub async fn read_message<S: AsyncRead + Unpin>(stream: &mut S) -> (u8, Vec<u8>) {
    tokio::time::timeout(WAIT, read_message_untimed(stream))
        .await
        .expect("pgwarden did not send a message in time")
}

/// The authentication request code of an 'R' message (10 = SASL, 11 = SASLContinue,
/// 12 = SASLFinal, 0 = Ok); fails the test on anything else, with the fields of an
/// ErrorResponse.
#[track_caller]
pub fn auth_code(message: &(u8, Vec<u8>)) -> i32 {
    let (tag, body) = message;
    if *tag == b'E' {
        panic!(
            "expected an authentication request, got an error: {:?}",
            error_fields(body)
        );
    }
    assert_eq!(
        *tag, b'R',
        "expected an authentication request, got {message:?}"
    );
    i32::from_be_bytes(body[..4].try_into().unwrap())
}

/// A raw SCRAM-SHA-256 exchange after the StartupMessage was sent: answers `sasl_request`
/// (the AuthenticationSASL already read) with `password` and returns the server's reply to
/// the final client message (AuthenticationSASLFinal, its signature verified, or an
/// ErrorResponse).
pub async fn scram<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    sasl_request: (u8, Vec<u8>),
    password: &str,
) -> (u8, Vec<u8>) {
    assert_eq!(auth_code(&sasl_request), 10, "AuthenticationSASL expected");
    assert!(
        sasl_request
            .1
            .windows(SCRAM_SHA_256.len())
            .any(|w| w == SCRAM_SHA_256.as_bytes()),
        "SCRAM-SHA-256 not offered"
    );
    let mut client = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
    let mut out = BytesMut::new();
    frontend::sasl_initial_response(SCRAM_SHA_256, client.message(), &mut out).unwrap();
    stream.write_all(&out).await.unwrap();
    let cont = read_message(stream).await;
    assert_eq!(auth_code(&cont), 11, "AuthenticationSASLContinue expected");
    client.update(&cont.1[4..]).expect("server-first-message");
    out.clear();
    frontend::sasl_response(client.message(), &mut out).unwrap();
    stream.write_all(&out).await.unwrap();
    let reply = read_message(stream).await;
    if reply.0 == b'R' {
        assert_eq!(auth_code(&reply), 12, "AuthenticationSASLFinal expected");
        client.finish(&reply.1[4..]).expect("server signature");
    }
    reply
}

/// Finish a login with `password` after the StartupMessage was sent: the SCRAM exchange,
/// then everything up to and including ReadyForQuery; an ErrorResponse fails the test.
/// Returns the BackendKeyData body (process id and secret key) if one came.
pub async fn finish_login<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    password: &str,
) -> Option<Vec<u8>> {
    let sasl = read_message(stream).await;
    let reply = scram(stream, sasl, password).await;
    assert_eq!(reply.0, b'R', "login failed: {:?}", error_fields(&reply.1));
    let mut key = None;
    loop {
        let (tag, body) = read_message(stream).await;
        match tag {
            b'K' => key = Some(body),
            b'Z' => return key,
            b'E' => panic!("login failed: {:?}", error_fields(&body)),
            _ => {}
        }
    }
}

/// Log in as alice on a raw stream: [`alice_startup`], then [`finish_login`] up to and
/// including ReadyForQuery. Returns the BackendKeyData body if one came.
pub async fn alice_login<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) -> Option<Vec<u8>> {
    stream.write_all(&alice_startup()).await.unwrap();
    finish_login(stream, ALICE_PASSWORD).await
}

/// A Bind of `statement` to `portal` with no parameters and text results.
pub fn bind_without_parameters(portal: &str, statement: &str, out: &mut BytesMut) {
    frontend::bind(
        portal,
        statement,
        std::iter::empty::<i16>(),
        std::iter::empty::<Option<&[u8]>>(),
        |_: Option<&[u8]>,
         _: &mut BytesMut|
         -> Result<postgres_protocol::IsNull, Box<dyn std::error::Error + Sync + Send>> {
            unreachable!("no parameters")
        },
        std::iter::empty::<i16>(),
        out,
    )
    .map_err(|_| "bind")
    .unwrap();
}

/// Read until `count` ReadyForQuery messages have come; the SQLSTATEs of the errors met.
pub async fn sqlstates_until_ready<S: AsyncRead + Unpin>(
    stream: &mut S,
    count: usize,
) -> Vec<String> {
    let mut codes = Vec::new();
    let mut ready = 0;
    while ready < count {
        let (tag, body) = read_message(stream).await;
        match tag {
            b'E' => codes.push(error_fields(&body).remove(&b'C').unwrap_or_default()),
            b'Z' => ready += 1,
            _ => {}
        }
    }
    codes
}

/// A Parse of `sql` as `statement`, parameter types left to the server.
pub fn parse_untyped(statement: &str, sql: &str, out: &mut BytesMut) {
    frontend::parse(statement, sql, std::iter::empty(), out).unwrap();
}

/// A pipeline segment in which the server skips a Close and a Parse of `statement` (with
/// the new text `sql`): `SELECT 1/0`, parsed as `failing` and run, fails before them. Ends
/// with its Sync.
pub fn redefinition_the_server_skips(
    failing: &str,
    statement: &str,
    sql: &str,
    out: &mut BytesMut,
) {
    parse_untyped(failing, "SELECT 1/0", out);
    bind_without_parameters("", failing, out);
    frontend::execute("", 0, out).unwrap();
    frontend::close(b'S', statement, out).unwrap();
    parse_untyped(statement, sql, out);
    frontend::sync(out);
}
