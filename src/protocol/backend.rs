//! Builders for the server messages pgwarden writes itself. Each appends one complete message
//! to an output buffer, so several can go out in a single write.

use bytes::{BufMut, BytesMut};

use crate::error::ClientError;

/// Append `tag`, a length placeholder, the body written by `body`, then patch the length.
pub fn message(out: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    out.put_u8(tag);
    let len_at = out.len();
    out.put_i32(0);
    body(out);
    // Messages we build are bounded by our own strings or by a server message we rewrite
    // (at most server.limits.max_server_message), far below i32::MAX.
    let len = i32::try_from(out.len() - len_at).unwrap_or(i32::MAX);
    out[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
}

pub fn put_cstr(out: &mut BytesMut, s: &[u8]) {
    // A NUL inside would end the field early and shift every later field: drop it.
    out.extend(s.iter().copied().filter(|&b| b != 0));
    out.put_u8(0);
}

/// ErrorResponse ('E').
pub fn error_response(out: &mut BytesMut, err: &ClientError) {
    fields(out, b'E', err);
}

/// NoticeResponse ('N'): the same fields as an error, at NOTICE severity.
pub fn notice_response(out: &mut BytesMut, notice: &ClientError) {
    fields(out, b'N', notice);
}

fn fields(out: &mut BytesMut, tag: u8, err: &ClientError) {
    message(out, tag, |out| {
        out.put_u8(b'S');
        put_cstr(out, err.severity.as_str().as_bytes());
        out.put_u8(b'V');
        put_cstr(out, err.severity.as_str().as_bytes());
        out.put_u8(b'C');
        put_cstr(out, err.sqlstate.code().as_bytes());
        out.put_u8(b'M');
        put_cstr(out, err.message.as_bytes());
        if let Some(detail) = &err.detail {
            out.put_u8(b'D');
            put_cstr(out, detail.as_bytes());
        }
        if let Some(hint) = &err.hint {
            out.put_u8(b'H');
            put_cstr(out, hint.as_bytes());
        }
        if let Some(position) = err.position {
            out.put_u8(b'P');
            put_cstr(out, position.to_string().as_bytes());
        }
        out.put_u8(0);
    });
}

/// AuthenticationOk.
pub fn authentication_ok(out: &mut BytesMut) {
    message(out, b'R', |out| out.put_i32(0));
}

/// AuthenticationCleartextPassword.
pub fn authentication_cleartext_password(out: &mut BytesMut) {
    message(out, b'R', |out| out.put_i32(3));
}

/// AuthenticationSASL with the offered mechanisms.
pub fn authentication_sasl(out: &mut BytesMut, mechanisms: &[&str]) {
    message(out, b'R', |out| {
        out.put_i32(10);
        for mechanism in mechanisms {
            put_cstr(out, mechanism.as_bytes());
        }
        out.put_u8(0);
    });
}

/// AuthenticationSASLContinue.
pub fn authentication_sasl_continue(out: &mut BytesMut, data: &[u8]) {
    message(out, b'R', |out| {
        out.put_i32(11);
        out.put_slice(data);
    });
}

/// AuthenticationSASLFinal.
pub fn authentication_sasl_final(out: &mut BytesMut, data: &[u8]) {
    message(out, b'R', |out| {
        out.put_i32(12);
        out.put_slice(data);
    });
}

/// ParameterStatus.
pub fn parameter_status(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    message(out, b'S', |out| {
        put_cstr(out, name);
        put_cstr(out, value);
    });
}

/// BackendKeyData. Protocol 3.0 keys are 4 bytes; 3.2 allows up to 256.
pub fn backend_key_data(out: &mut BytesMut, process_id: i32, secret: &[u8]) {
    message(out, b'K', |out| {
        out.put_i32(process_id);
        out.put_slice(secret);
    });
}

/// ReadyForQuery with a transaction status byte (`I`, `T` or `E`).
pub fn ready_for_query(out: &mut BytesMut, status: u8) {
    message(out, b'Z', |out| out.put_u8(status));
}

/// NegotiateProtocolVersion: the newest minor version we support and the `_pq_.*` options we
/// do not recognise.
pub fn negotiate_protocol_version(out: &mut BytesMut, newest_minor: i32, unknown: &[Vec<u8>]) {
    message(out, b'v', |out| {
        out.put_i32(newest_minor);
        out.put_i32(i32::try_from(unknown.len()).unwrap_or(i32::MAX));
        for name in unknown {
            put_cstr(out, name);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::SqlState;

    #[test]
    fn error_response_has_all_fields_and_a_correct_length() {
        let mut out = BytesMut::new();
        let err = ClientError::fatal(SqlState::INVALID_PASSWORD, "bad\0password").with_hint("h");
        error_response(&mut out, &err);
        assert_eq!(out[0], b'E');
        let len = i32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize;
        assert_eq!(len + 1, out.len());
        let body = &out[5..];
        assert!(body.windows(6).any(|w| w == b"C28P01"));
        assert!(body.windows(12).any(|w| w == b"Mbadpassword"));
        assert_eq!(*body.last().unwrap(), 0);
    }

    #[test]
    fn negotiate_protocol_version_lists_unknown_options() {
        let mut out = BytesMut::new();
        negotiate_protocol_version(&mut out, 2, &[b"_pq_.foo".to_vec()]);
        assert_eq!(&out[..], b"v\0\0\0\x15\0\0\0\x02\0\0\0\x01_pq_.foo\0");
    }
}
