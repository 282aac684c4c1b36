//! The server side of SCRAM-SHA-256 (RFC 5802/7677) as PostgreSQL speaks it, against verifiers
//! in PostgreSQL's own `rolpassword` format:
//! `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (base64 parts).
//!
//! The exchange is sans-IO: the session feeds it client messages and sends back what it
//! returns. Unknown users get a "doomed" exchange with a plausible, stable salt, so a client
//! cannot tell an unknown user from a wrong password (PostgreSQL does the same).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use rand::RngExt;
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

pub const MECHANISM: &str = "SCRAM-SHA-256";
/// SCRAM with `tls-server-end-point` channel binding: offered over TLS, so a password
/// exchange cannot be relayed through a man in the middle holding another certificate.
pub const MECHANISM_PLUS: &str = "SCRAM-SHA-256-PLUS";

/// A stored SCRAM-SHA-256 verifier.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: [u8; 32],
    server_key: [u8; 32],
}

impl std::fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramVerifier")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl ScramVerifier {
    /// Parse PostgreSQL's `rolpassword` format.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || {
            "not a SCRAM-SHA-256 verifier (expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>)".to_owned()
        };
        let rest = text.trim().strip_prefix("SCRAM-SHA-256$").ok_or_else(bad)?;
        let (params, keys) = rest.split_once('$').ok_or_else(bad)?;
        let (iterations, salt) = params.split_once(':').ok_or_else(bad)?;
        let (stored, server) = keys.split_once(':').ok_or_else(bad)?;
        let iterations: u32 = iterations.parse().map_err(|_| bad())?;
        if iterations == 0 {
            return Err("the iteration count must be positive".into());
        }
        let salt = B64.decode(salt).map_err(|_| bad())?;
        let key = |s: &str| -> Result<[u8; 32], String> {
            B64.decode(s)
                .ok()
                .and_then(|k| k.try_into().ok())
                .ok_or_else(bad)
        };
        Ok(Self {
            iterations,
            salt,
            stored_key: key(stored)?,
            server_key: key(server)?,
        })
    }

    /// A verifier that no password matches, with a salt derived from `user` and a per-process
    /// key so repeated attempts for the same unknown user look consistent.
    pub fn doomed(user: &str, process_key: &[u8; 32]) -> Self {
        let salt = hmac(process_key, user.as_bytes());
        Self {
            iterations: 4096,
            salt: salt.get(..16).map(<[u8]>::to_vec).unwrap_or_default(),
            stored_key: rand::rng().random(),
            server_key: rand::rng().random(),
        }
    }
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let Ok(mut mac) = <HmacSha256 as KeyInit>::new_from_slice(key) else {
        unreachable!("HMAC accepts keys of any length")
    };
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// Why a SCRAM exchange failed. The client only ever learns "password authentication failed"
/// (see [`super::AuthError`]); these details go to the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("client requested channel binding, which is not offered")]
    ChannelBindingNotOffered,
    #[error("client chose SCRAM-SHA-256 saying the server cannot do channel binding, but it can (possible downgrade attack)")]
    ChannelBindingDowngrade,
    #[error("channel binding data does not match this connection")]
    ChannelBindingMismatch,
    #[error("nonce mismatch")]
    NonceMismatch,
    #[error("wrong password")]
    WrongPassword,
}

/// One server-side exchange.
pub struct ScramExchange {
    verifier: ScramVerifier,
    /// `tls-server-end-point` data when SCRAM-SHA-256-PLUS was offered (TLS connections).
    channel_binding: Option<Vec<u8>>,
    state: State,
}

enum State {
    ExpectClientFirst,
    ExpectClientFinal {
        client_first_bare: String,
        server_first: String,
        nonce: String,
        /// What `c=` must decode to: the GS2 header, plus the binding data for `p=`.
        expected_binding: Vec<u8>,
    },
    Done,
}

impl ScramExchange {
    /// `channel_binding`: the connection's `tls-server-end-point` data when
    /// [`MECHANISM_PLUS`] is offered, `None` otherwise.
    pub fn new(verifier: ScramVerifier, channel_binding: Option<Vec<u8>>) -> Self {
        Self {
            verifier,
            channel_binding,
            state: State::ExpectClientFirst,
        }
    }

    /// The mechanisms to offer, preferred first.
    pub fn mechanisms(&self) -> &'static [&'static str] {
        match self.channel_binding {
            Some(_) => &[MECHANISM_PLUS, MECHANISM],
            None => &[MECHANISM],
        }
    }

    /// Handle client-first-message for the `mechanism` the client chose; returns
    /// server-first-message.
    pub fn client_first(&mut self, mechanism: &str, message: &[u8]) -> Result<Vec<u8>, ScramError> {
        let message =
            std::str::from_utf8(message).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        // gs2-header = cbind-flag "," [authzid] ","
        let (flag, rest) = message
            .split_once(',')
            .ok_or(ScramError::Malformed("no GS2 header"))?;
        let plus = mechanism == MECHANISM_PLUS;
        let binding_data: &[u8] = match (flag, plus, &self.channel_binding) {
            ("p=tls-server-end-point", true, Some(data)) => data,
            (f, _, None) if f.starts_with("p=") => {
                return Err(ScramError::ChannelBindingNotOffered)
            }
            (f, _, _) if f.starts_with("p=") => {
                return Err(ScramError::Malformed("unsupported channel binding type"))
            }
            // Channel binding chosen, but the flag says otherwise.
            (_, true, _) => {
                return Err(ScramError::Malformed(
                    "SCRAM-SHA-256-PLUS without channel binding",
                ))
            }
            ("y", false, Some(_)) => return Err(ScramError::ChannelBindingDowngrade),
            ("n" | "y", false, _) => &[],
            _ => return Err(ScramError::Malformed("bad channel binding flag")),
        };
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or(ScramError::Malformed("no GS2 header"))?;
        if !authzid.is_empty() {
            return Err(ScramError::Malformed(
                "authorization identities are not supported",
            ));
        }
        // client-first-message-bare = [reserved-mext ","] username "," nonce ["," extensions]
        let mut attrs = bare.split(',');
        match attrs.next() {
            // PostgreSQL ignores the SCRAM user name: the startup packet's user is the one.
            Some(n) if n.starts_with("n=") => {}
            _ => return Err(ScramError::Malformed("no user name attribute")),
        }
        let client_nonce = match attrs.next() {
            Some(r) if r.len() > 2 && r.starts_with("r=") => &r[2..],
            _ => return Err(ScramError::Malformed("no nonce")),
        };
        if !client_nonce
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b',')
        {
            return Err(ScramError::Malformed("invalid nonce"));
        }
        let server_nonce: [u8; 18] = rand::rng().random();
        let nonce = format!("{client_nonce}{}", B64.encode(server_nonce));
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&self.verifier.salt),
            self.verifier.iterations
        );
        let mut expected_binding = format!("{flag},,").into_bytes();
        expected_binding.extend_from_slice(binding_data);
        self.state = State::ExpectClientFinal {
            client_first_bare: bare.to_owned(),
            server_first: server_first.clone(),
            nonce,
            expected_binding,
        };
        Ok(server_first.into_bytes())
    }

    /// Handle client-final-message; returns server-final-message when the proof is right.
    pub fn client_final(&mut self, message: &[u8]) -> Result<Vec<u8>, ScramError> {
        let State::ExpectClientFinal {
            client_first_bare,
            server_first,
            nonce,
            expected_binding,
        } = std::mem::replace(&mut self.state, State::Done)
        else {
            return Err(ScramError::Malformed("unexpected message"));
        };
        let message =
            std::str::from_utf8(message).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = message
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("no proof"))?;
        let mut attrs = without_proof.split(',');
        let binding = match attrs.next() {
            Some(c) if c.starts_with("c=") => &c[2..],
            _ => return Err(ScramError::Malformed("no channel binding attribute")),
        };
        if B64.decode(binding).ok().as_deref() != Some(expected_binding.as_slice()) {
            return Err(ScramError::ChannelBindingMismatch);
        }
        match attrs.next() {
            Some(r) if r.strip_prefix("r=") == Some(nonce.as_str()) => {}
            _ => return Err(ScramError::NonceMismatch),
        }
        let proof: [u8; 32] = B64
            .decode(proof)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or(ScramError::Malformed("bad proof"))?;
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let client_signature = hmac(&self.verifier.stored_key, auth_message.as_bytes());
        let mut client_key = [0u8; 32];
        for (k, (p, s)) in client_key
            .iter_mut()
            .zip(proof.iter().zip(client_signature.iter()))
        {
            *k = p ^ s;
        }
        let computed: [u8; 32] = Sha256::digest(client_key).into();
        // Constant-time comparison: fold the differences instead of returning early.
        let diff = computed
            .iter()
            .zip(self.verifier.stored_key.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff != 0 {
            return Err(ScramError::WrongPassword);
        }
        let server_signature = hmac(&self.verifier.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)).into_bytes())
    }
}

/// Make a verifier for `password` in PostgreSQL's format (random salt, 4096 iterations), as
/// `pgwarden hash-password` prints it.
pub fn hash_password(password: &[u8]) -> String {
    postgres_protocol::password::scram_sha_256(password)
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    /// A real client (postgres-protocol's, as tokio-postgres uses) against the server side.
    fn run(
        verifier: &str,
        password: &[u8],
        offered: Option<&[u8]>,
        mechanism: &str,
        client_binding: ChannelBinding,
    ) -> Result<(), ScramError> {
        let mut server = ScramExchange::new(
            ScramVerifier::parse(verifier).unwrap(),
            offered.map(<[u8]>::to_vec),
        );
        let mut client = ScramSha256::new(password, client_binding);
        let server_first = server.client_first(mechanism, client.message())?;
        client.update(&server_first).unwrap();
        let server_final = server.client_final(client.message())?;
        client
            .finish(&server_final)
            .map_err(|_| ScramError::Malformed("client rejected server"))
    }

    #[test]
    fn a_real_client_authenticates_with_the_right_password_only() {
        let verifier = hash_password(b"correct horse");
        let plain = || ChannelBinding::unsupported();
        assert_eq!(
            run(&verifier, b"correct horse", None, MECHANISM, plain()),
            Ok(())
        );
        assert_eq!(
            run(&verifier, b"wrong", None, MECHANISM, plain()),
            Err(ScramError::WrongPassword)
        );
    }

    #[test]
    fn channel_binding_ties_the_exchange_to_the_certificate() {
        let verifier = hash_password(b"pw");
        let ours = b"hash of our certificate".as_slice();
        let bound = |data: &[u8]| ChannelBinding::tls_server_end_point(data.to_vec());
        assert_eq!(
            run(&verifier, b"pw", Some(ours), MECHANISM_PLUS, bound(ours)),
            Ok(())
        );
        // A man in the middle presents another certificate: the client binds to that one.
        assert_eq!(
            run(
                &verifier,
                b"pw",
                Some(ours),
                MECHANISM_PLUS,
                bound(b"theirs")
            ),
            Err(ScramError::ChannelBindingMismatch)
        );
        // A client that could bind but was told we cannot: a downgrade.
        assert_eq!(
            run(
                &verifier,
                b"pw",
                Some(ours),
                MECHANISM,
                ChannelBinding::unrequested()
            ),
            Err(ScramError::ChannelBindingDowngrade)
        );
        // Plain SCRAM stays available over TLS for clients without channel binding.
        assert_eq!(
            run(
                &verifier,
                b"pw",
                Some(ours),
                MECHANISM,
                ChannelBinding::unsupported()
            ),
            Ok(())
        );
        // Without TLS nothing can be bound.
        assert_eq!(
            run(&verifier, b"pw", None, MECHANISM_PLUS, bound(ours)),
            Err(ScramError::ChannelBindingNotOffered)
        );
    }

    #[test]
    fn parses_the_rolpassword_format() {
        // The shape of pg_authid.rolpassword; one really produced by PostgreSQL is used by
        // tests/cli.rs (`a_verifier_from_pg_authid_works_as_a_local_user_verifier`).
        let pg = "SCRAM-SHA-256$4096:yH0hzfsI7fKbE3zMFG8plQ==$+Ya/m3mSjExg5FJ4n9ObJyX4T0CqEvs1Sf4z9WZwRjk=:+wnIJrK6K4RhuTV3Ht95ReZrPjk9GmaVITMmXQ9FyyI=";
        assert!(ScramVerifier::parse(pg).is_ok());
        assert!(ScramVerifier::parse("md5abcdef").is_err());
        assert!(ScramVerifier::parse("SCRAM-SHA-256$0:c2FsdA==$a:b").is_err());
    }

    #[test]
    fn doomed_exchanges_fail_like_wrong_passwords() {
        let key = [7u8; 32];
        let mut server = ScramExchange::new(ScramVerifier::doomed("nobody", &key), None);
        let mut client = ScramSha256::new(b"anything", ChannelBinding::unsupported());
        let first = server.client_first(MECHANISM, client.message()).unwrap();
        client.update(&first).unwrap();
        assert_eq!(
            server.client_final(client.message()),
            Err(ScramError::WrongPassword)
        );
    }

    #[test]
    fn malformed_first_messages_are_refused() {
        let verifier = ScramVerifier::parse(&hash_password(b"x")).unwrap();
        let mut server = ScramExchange::new(verifier, None);
        assert!(server.client_first(MECHANISM, b"n,a=bob,n=,r=abc").is_err());
        assert!(server.client_first(MECHANISM, b"garbage").is_err());
        assert!(server.client_first(MECHANISM, b"n,,n=,r=").is_err());
    }
}
