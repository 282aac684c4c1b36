//! Front-door methods: the authentication exchange with the client, ending in an
//! [`Identity`]. Local users authenticate with SASL SCRAM-SHA-256; people with an OIDC token,
//! sent as the password ([`token_password`]) or through SASL OAUTHBEARER.

use std::collections::HashMap;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use super::oidc::Issuers;
use super::scram::{ScramExchange, ScramVerifier};
use super::{AuthError, AuthMethod, Identity};
use crate::config::LocalUser;
use crate::net::MaybeTls;
use crate::protocol::frame::FrameBuffer;
use crate::protocol::{backend, split_cstr, split_i32};

/// The client connection during authentication: its stream, what was read but not yet
/// handled, and messages waiting to be sent (e.g. NegotiateProtocolVersion).
pub struct ClientConn<'a> {
    pub stream: &'a mut MaybeTls,
    pub reader: &'a mut FrameBuffer,
    pub out: &'a mut BytesMut,
}

impl ClientConn<'_> {
    async fn flush(&mut self) -> Result<(), AuthError> {
        self.stream
            .write_all(self.out)
            .await
            .map_err(AuthError::Io)?;
        self.stream.flush().await.map_err(AuthError::Io)?;
        self.out.clear();
        Ok(())
    }

    /// Offer SASL `offered`, read the SASLInitialResponse: the mechanism chosen (one of
    /// `offered`) and the client's initial data, its length checked.
    async fn sasl_start<'m>(
        &mut self,
        offered: &[&'m str],
    ) -> Result<(&'m str, Vec<u8>), AuthError> {
        backend::authentication_sasl(self.out, offered);
        self.flush().await?;
        let initial = self.read_auth_message().await?;
        let (mechanism, rest) = split_cstr(&initial).ok_or(AuthError::Malformed(
            "SASLInitialResponse without mechanism",
        ))?;
        let Some(mechanism) = offered.iter().find(|m| m.as_bytes() == mechanism) else {
            return Err(AuthError::UnsupportedMechanism(
                String::from_utf8_lossy(mechanism).into_owned(),
            ));
        };
        let (len, data) =
            split_i32(rest).ok_or(AuthError::Malformed("SASLInitialResponse without length"))?;
        if usize::try_from(len).ok() != Some(data.len()) {
            return Err(AuthError::Malformed(
                "SASLInitialResponse length does not match",
            ));
        }
        Ok((mechanism, data.to_vec()))
    }

    /// Read one authentication ('p') message body.
    async fn read_auth_message(&mut self) -> Result<Vec<u8>, AuthError> {
        loop {
            if let Some(header) = self.reader.peek().map_err(AuthError::Protocol)? {
                if header.tag != b'p' {
                    return Err(AuthError::UnexpectedMessage {
                        expected: "an authentication response",
                        got: header.tag,
                    });
                }
                let body = self.reader.body(header).to_vec();
                self.reader.consume(header.wire_len());
                return Ok(body);
            }
            if self.reader.fill(self.stream).await.map_err(AuthError::Io)? == 0 {
                return Err(AuthError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }
}

/// SASL SCRAM-SHA-256 against a `[[auth.local]]` user. Unknown users get a doomed exchange,
/// so they cannot be told from wrong passwords. Over TLS, `channel_binding` (the
/// `tls-server-end-point` data of our certificate) makes SCRAM-SHA-256-PLUS available. On
/// success the AuthenticationSASLFinal is left in `conn.out`, to go out with
/// AuthenticationOk once the upstream is ready.
pub async fn local_scram(
    conn: &mut ClientConn<'_>,
    users: &HashMap<String, LocalUser>,
    process_key: &[u8; 32],
    channel_binding: Option<&[u8]>,
    user: &str,
) -> Result<Identity, AuthError> {
    let local = users.get(user);
    let verifier = local.map_or_else(
        || ScramVerifier::doomed(user, process_key),
        |u| u.verifier.clone(),
    );
    let mut exchange = ScramExchange::new(verifier, channel_binding.map(<[u8]>::to_vec));
    let failed = |reason| AuthError::Failed {
        user: user.to_owned(),
        reason,
        known: local.is_some(),
    };

    let (mechanism, initial) = conn.sasl_start(exchange.mechanisms()).await?;
    let server_first = exchange.client_first(mechanism, &initial).map_err(failed)?;
    backend::authentication_sasl_continue(conn.out, &server_first);
    conn.flush().await?;
    let response = conn.read_auth_message().await?;
    let server_final = exchange.client_final(&response).map_err(failed)?;
    backend::authentication_sasl_final(conn.out, &server_final);

    Ok(Identity {
        name: user.to_owned(),
        groups: local.map(|u| u.groups.clone()).unwrap_or_default(),
        method: AuthMethod::LocalScram,
        oidc: None,
    })
}

/// AuthenticationCleartextPassword, answered with an OIDC token. The caller has made sure the
/// connection is encrypted (or that the operator allowed loopback plaintext).
pub async fn token_password(
    conn: &mut ClientConn<'_>,
    issuers: &Issuers,
    user: &str,
) -> Result<Identity, AuthError> {
    backend::authentication_cleartext_password(conn.out);
    conn.flush().await?;
    let body = conn.read_auth_message().await?;
    let (password, rest) =
        split_cstr(&body).ok_or(AuthError::Malformed("PasswordMessage without terminator"))?;
    if !rest.is_empty() {
        return Err(AuthError::Malformed(
            "PasswordMessage longer than its password",
        ));
    }
    let failed = |error| AuthError::Token {
        user: user.to_owned(),
        error,
    };
    let text = std::str::from_utf8(password)
        .map_err(|_| failed(super::oidc::TokenError::Malformed("not UTF-8")))?;
    let token = issuers.verify(text).await.map_err(failed)?;
    Ok(Identity::from_token(token, AuthMethod::OidcPassword))
}

/// The SASL mechanism name of RFC 7628.
pub const OAUTHBEARER: &str = "OAUTHBEARER";

/// SASL OAUTHBEARER (RFC 7628), as PostgreSQL 18 runs it. A client without a token sends an
/// empty `auth=`: the discovery round, answered with the JSON error naming `issuer`'s
/// openid-configuration and the scope to ask for; libpq then signs the person in (device
/// flow) and connects again with the token. A rejected token gets the same JSON error before
/// the failure, as the RFC asks.
pub async fn oauthbearer(
    conn: &mut ClientConn<'_>,
    issuers: &Issuers,
    user: &str,
) -> Result<Identity, AuthError> {
    let (_, initial) = conn.sasl_start(&[OAUTHBEARER]).await?;
    let token = bearer_token(&initial)?;
    let verified = match token {
        Some(token) => issuers
            .verify(token)
            .await
            .map_err(|error| AuthError::Token {
                user: user.to_owned(),
                error,
            }),
        None => Err(AuthError::TokenRequired),
    };
    match verified {
        Ok(token) => Ok(Identity::from_token(token, AuthMethod::OauthBearer)),
        Err(e) => {
            // RFC 7628 §3.2.2: the error status, then the client's dummy response (0x01).
            let Some(settings) = issuers.settings().next() else {
                return Err(e);
            };
            let status = serde_json::json!({
                "status": "invalid_token",
                "openid-configuration": format!(
                    "{}/.well-known/openid-configuration",
                    settings.issuer.trim_end_matches('/')
                ),
                "scope": settings.scope,
            });
            backend::authentication_sasl_continue(conn.out, status.to_string().as_bytes());
            conn.flush().await?;
            let response = conn.read_auth_message().await?;
            if response != [0x01] {
                return Err(AuthError::Malformed(
                    "OAUTHBEARER error acknowledgement is not 0x01",
                ));
            }
            Err(e)
        }
    }
}

/// The token in an OAUTHBEARER initial response (`n,,\x01auth=Bearer TOKEN\x01\x01`), or
/// `None` for the discovery round's empty `auth=`.
fn bearer_token(message: &[u8]) -> Result<Option<&str>, AuthError> {
    let malformed = AuthError::Malformed;
    let text = std::str::from_utf8(message).map_err(|_| malformed("OAUTHBEARER is not UTF-8"))?;
    // gs2-header: channel-binding flag ("n", or "y": client could bind but thinks we cannot),
    // optional authzid, each followed by a comma.
    let rest = text
        .strip_prefix("n,")
        .or_else(|| text.strip_prefix("y,"))
        .ok_or(malformed("OAUTHBEARER without a valid gs2 header"))?;
    let (authzid, rest) = rest
        .split_once(',')
        .ok_or(malformed("OAUTHBEARER gs2 header is not terminated"))?;
    if !authzid.is_empty() {
        return Err(malformed("OAUTHBEARER authzid is not supported"));
    }
    let pairs = rest
        .strip_prefix('\x01')
        .and_then(|r| r.strip_suffix("\x01\x01"))
        .ok_or(malformed("OAUTHBEARER key/value pairs are not delimited"))?;
    let mut auth = None;
    for pair in pairs.split('\x01') {
        let (key, value) = pair
            .split_once('=')
            .ok_or(malformed("OAUTHBEARER pair without '='"))?;
        if key == "auth" {
            if auth.is_some() {
                return Err(malformed("OAUTHBEARER auth given twice"));
            }
            auth = Some(value);
        }
    }
    match auth.ok_or(malformed("OAUTHBEARER without auth"))? {
        "" => Ok(None),
        value => {
            let (scheme, token) = value
                .split_once(' ')
                .ok_or(malformed("OAUTHBEARER auth is not \"Bearer <token>\""))?;
            if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
                return Err(malformed("OAUTHBEARER auth is not \"Bearer <token>\""));
            }
            Ok(Some(token.trim()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_from_the_initial_response() {
        assert_eq!(
            bearer_token(b"n,,\x01auth=Bearer abc.def.ghi\x01\x01").unwrap(),
            Some("abc.def.ghi")
        );
        assert_eq!(
            bearer_token(b"y,,\x01host=db\x01auth=bearer t\x01\x01").unwrap(),
            Some("t")
        );
        assert_eq!(bearer_token(b"n,,\x01auth=\x01\x01").unwrap(), None);
        for bad in [
            &b"p=tls-unique,,\x01auth=Bearer t\x01\x01"[..],
            b"n,a=someone,\x01auth=Bearer t\x01\x01",
            b"n,,\x01auth=Basic dXNlcg==\x01\x01",
            b"n,,\x01auth=Bearer t\x01",
            b"n,,\x01host=db\x01\x01",
            b"n,,\x01auth=Bearer a\x01auth=Bearer b\x01\x01",
            b"",
        ] {
            assert!(bearer_token(bad).is_err(), "{bad:?}");
        }
    }
}
