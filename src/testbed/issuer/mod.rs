//! A development OpenID Connect issuer on loopback, for tests and `pgwarden demo`.
//!
//! It serves what pgwarden consumes from a real provider: the discovery document
//! (`/.well-known/openid-configuration`) and the key set (`/jwks`), over HTTPS when given a
//! certificate. Keys are generated per run (RS256 by default, ES256 and EdDSA on request) and
//! can be rotated; tokens are signed with the active key by [`DevIssuer::sign`]. It counts
//! the key-set fetches it serves, so tests can check pgwarden's caching and rate limits from
//! the outside.
//!
//! For `pgwarden login` it also runs the device authorization grant (RFC 8628): a client asks
//! for a code, a person approves it on `/device` by choosing who they are from the issuer's
//! list of people (no passwords: this is a development issuer), and the token endpoint then
//! issues an ID token, an access token and a refresh token. The authorization code flow with
//! PKCE (`/authorize`, loopback redirect URIs and S256 only) works the same way. Endpoints are in `endpoints.rs`.
//!
//! It is not a general-purpose provider: any client id is accepted and nobody is checked.

mod endpoints;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rand::distr::{Alphanumeric, SampleString};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// The key types the issuer can sign with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    Rs256,
    Es256,
    EdDsa,
}

struct SigningKey {
    alg: Algorithm,
    kid: String,
    encoding: EncodingKey,
    jwk: Jwk,
    /// SubjectPublicKeyInfo PEM, for RSA keys.
    public_pem: Option<String>,
}

impl SigningKey {
    fn generate(alg: KeyAlgorithm) -> Result<Self, String> {
        let kid = format!("dev-{}", Alphanumeric.sample_string(&mut rand::rng(), 12));
        let (alg, encoding, public_pem) = match alg {
            KeyAlgorithm::Rs256 => {
                use rsa::pkcs1::EncodeRsaPrivateKey;
                use rsa::pkcs8::EncodePublicKey;
                let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048)
                    .map_err(|e| e.to_string())?;
                let der = key.to_pkcs1_der().map_err(|e| e.to_string())?;
                let pem = key
                    .to_public_key()
                    .to_public_key_pem(rsa::pkcs8::LineEnding::LF)
                    .map_err(|e| e.to_string())?;
                (
                    Algorithm::RS256,
                    EncodingKey::from_rsa_der(der.as_bytes()),
                    Some(pem),
                )
            }
            KeyAlgorithm::Es256 => {
                let rng = ring::rand::SystemRandom::new();
                let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(
                    &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    &rng,
                )
                .map_err(|e| e.to_string())?;
                (
                    Algorithm::ES256,
                    EncodingKey::from_ec_der(pkcs8.as_ref()),
                    None,
                )
            }
            KeyAlgorithm::EdDsa => {
                // PKCS#8 v1 for Ed25519: a fixed prefix, then the 32-byte seed.
                let mut der = ED25519_PKCS8_PREFIX.to_vec();
                der.extend_from_slice(&rand::random::<[u8; 32]>());
                (Algorithm::EdDSA, EncodingKey::from_ed_der(&der), None)
            }
        };
        let mut jwk = Jwk::from_encoding_key(&encoding, alg).map_err(|e| e.to_string())?;
        jwk.common.key_id = Some(kid.clone());
        jwk.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Signature);
        Ok(Self {
            alg,
            kid,
            encoding,
            jwk,
            public_pem,
        })
    }
}

const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

struct State {
    issuer: String,
    /// The one published key, which signs.
    key: SigningKey,
    /// Who can sign in on `/device`: id → claims (`sub`, `email`, `groups`, …).
    people: BTreeMap<String, Value>,
    /// `aud` of the access tokens the token endpoint issues.
    access_audience: String,
    /// Lifetime of issued tokens.
    token_ttl_secs: i64,
    /// Pending device grants by device code.
    devices: HashMap<String, endpoints::DeviceGrant>,
    /// Authorization codes (code flow with PKCE) by code.
    codes: HashMap<String, endpoints::CodeGrant>,
    /// Refresh token → (person id, client id).
    refresh_tokens: HashMap<String, (String, String)>,
}

impl State {
    fn sign(&self, mut header: Header, claims: &Value) -> Result<String, String> {
        header.alg = self.key.alg;
        if header.kid.is_none() {
            header.kid = Some(self.key.kid.clone());
        }
        jsonwebtoken::encode(&header, claims, &self.key.encoding).map_err(|e| e.to_string())
    }

    /// `iss`, `aud`, `iat`, `exp` (now + `ttl_secs`, which may be negative), then `person`'s
    /// claims on top.
    fn standard_claims(&self, audience: &str, person: &Value, ttl_secs: i64) -> Value {
        let now = unix_now();
        let mut claims = json!({
            "iss": self.issuer,
            "aud": audience,
            "iat": now,
            "exp": now + ttl_secs,
        });
        if let (Some(map), Some(extra)) = (claims.as_object_mut(), person.as_object()) {
            for (k, v) in extra {
                map.insert(k.clone(), v.clone());
            }
        }
        claims
    }

    fn id_token(&self, audience: &str, person: &Value, ttl_secs: i64) -> String {
        let claims = self.standard_claims(audience, person, ttl_secs);
        self.sign(Header::default(), &claims).unwrap_or_default()
    }

    fn access_token(&self, client_id: &str, person: &Value, ttl_secs: i64) -> String {
        let mut claims = self.standard_claims(&self.access_audience, person, ttl_secs);
        if let Some(map) = claims.as_object_mut() {
            map.insert("client_id".into(), json!(client_id));
            map.insert("jti".into(), json!(random_code(16)));
        }
        let header = Header {
            typ: Some("at+jwt".into()),
            ..Header::default()
        };
        self.sign(header, &claims).unwrap_or_default()
    }
}

fn random_code(len: usize) -> String {
    Alphanumeric.sample_string(&mut rand::rng(), len)
}

struct Shared {
    state: Mutex<State>,
    jwks_fetches: AtomicU64,
}

/// A running development issuer. Dropping it stops it.
pub struct DevIssuer {
    url: String,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl Drop for DevIssuer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl DevIssuer {
    /// Listen on `addr` (port 0: any free port). With `tls`, the issuer URL is
    /// `https://localhost:PORT` (the test certificates name `localhost`); without,
    /// `http://127.0.0.1:PORT`.
    pub async fn start(
        addr: SocketAddr,
        tls: Option<TlsAcceptor>,
        alg: KeyAlgorithm,
    ) -> Result<Self, String> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("bind {addr}: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let url = match tls {
            Some(_) => format!("https://localhost:{}", addr.port()),
            None => format!("http://127.0.0.1:{}", addr.port()),
        };
        let key = tokio::task::spawn_blocking(move || SigningKey::generate(alg))
            .await
            .map_err(|e| e.to_string())??;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                issuer: url.clone(),
                key,
                people: BTreeMap::new(),
                access_audience: "pgwarden".into(),
                token_ttl_secs: 3600,
                devices: HashMap::new(),
                codes: HashMap::new(),
                refresh_tokens: HashMap::new(),
            }),
            jwks_fetches: AtomicU64::new(0),
        });
        let stop = CancellationToken::new();
        tokio::spawn(endpoints::serve(
            listener,
            tls,
            shared.clone(),
            stop.clone(),
        ));
        Ok(Self { url, shared, stop })
    }

    /// The issuer identifier (`iss`), also the base of the discovery URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn jwks_fetches(&self) -> u64 {
        self.shared.jwks_fetches.load(Ordering::SeqCst)
    }

    /// The active key's id.
    pub fn active_kid(&self) -> String {
        self.with_active(|k| k.kid.clone())
    }

    /// The active RSA key's public key as PEM (what an HMAC-confusion attacker would use).
    pub fn public_key_pem(&self) -> Option<String> {
        self.with_active(|k| k.public_pem.clone())
    }

    /// Generate a new signing key and publish only it: tokens signed before are no longer
    /// verifiable, as after a real provider retires a key.
    pub async fn rotate(&self, alg: KeyAlgorithm) -> Result<(), String> {
        let key = tokio::task::spawn_blocking(move || SigningKey::generate(alg))
            .await
            .map_err(|e| e.to_string())??;
        self.with_state(|s| s.key = key);
        Ok(())
    }

    /// Sign `claims` with the active key. `header.kid` left `None` gets the active key's;
    /// `alg` is always the key's.
    pub fn sign(&self, header: Header, claims: &Value) -> Result<String, String> {
        self.with_state(|s| s.sign(header, claims))
    }

    /// An ID token for `person` (claims `sub`, `email`, `groups`…) valid for `ttl_secs`.
    pub fn id_token(&self, audience: &str, person: &Value, ttl_secs: i64) -> String {
        self.with_state(|s| s.id_token(audience, person, ttl_secs))
    }

    /// An RFC 9068 access token for `person`, for the resource `audience`.
    pub fn access_token(&self, audience: &str, person: &Value, ttl_secs: i64) -> String {
        self.with_state(|s| {
            let mut claims = s.standard_claims(audience, person, ttl_secs);
            if let Some(map) = claims.as_object_mut() {
                map.insert("client_id".into(), json!("pgwarden-cli"));
                map.insert("jti".into(), json!(random_code(16)));
            }
            let header = Header {
                typ: Some("at+jwt".into()),
                ..Header::default()
            };
            s.sign(header, &claims).unwrap_or_default()
        })
    }

    /// `iss`, `aud`, `iat`, `exp` (now + `ttl_secs`, which may be negative), then `person`'s
    /// claims on top.
    pub fn standard_claims(&self, audience: &str, person: &Value, ttl_secs: i64) -> Value {
        self.with_state(|s| s.standard_claims(audience, person, ttl_secs))
    }

    /// Someone who can sign in on `/device` (claims must include `sub`).
    pub fn add_person(&self, id: &str, claims: Value) {
        self.with_state(|s| s.people.insert(id.to_owned(), claims));
    }

    /// `aud` of access tokens from the token endpoint (default `pgwarden`), and the lifetime
    /// of the tokens it issues.
    pub fn set_issued_tokens(&self, access_audience: &str, ttl_secs: i64) {
        self.with_state(|s| {
            s.access_audience = access_audience.to_owned();
            s.token_ttl_secs = ttl_secs;
        });
    }

    fn with_state<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut state = self
            .shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut state)
    }

    fn with_active<T>(&self, f: impl FnOnce(&SigningKey) -> T) -> T {
        self.with_state(|s| f(&s.key))
    }
}

/// A TLS acceptor for the issuer's HTTPS (the same certificate files as pgwarden's, without
/// pgwarden's `postgresql` ALPN, which an HTTP client would not offer).
pub fn https_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<TlsAcceptor, String> {
    let config = crate::net::tls::https_server_config(cert, key).map_err(|e| e.to_string())?;
    Ok(TlsAcceptor::from(config))
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
