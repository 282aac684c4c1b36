//! One JWT: its unverified parts, and signature + claim verification against an issuer's keys.
//!
//! ID tokens go through openidconnect's verifier; RFC 9068 access tokens (`typ: at+jwt`)
//! through jsonwebtoken, on the same key set. Before either library sees the token we pin the
//! algorithm to an asymmetric one the key itself allows, so `none` and HMAC-with-a-public-key
//! never reach a signature check.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::Algorithm;
use openidconnect::core::{CoreIdToken, CoreIdTokenVerifier, CoreJwsSigningAlgorithm};
use openidconnect::{
    ClaimsVerificationError, ClientId, IssuerUrl, Nonce, SignatureVerificationError,
};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::keys::KeySet;
use super::{IssuerSettings, TokenError, TokenKind};

/// Largest token accepted, in bytes.
pub const MAX_TOKEN_LEN: usize = 64 * 1024;

/// The JOSE header fields we look at.
#[derive(Debug, Deserialize)]
pub struct Header {
    pub alg: String,
    #[serde(default)]
    pub typ: Option<String>,
    #[serde(default)]
    pub kid: Option<String>,
    #[serde(default)]
    crit: Option<Value>,
    #[serde(default)]
    cty: Option<Value>,
}

/// A token split and decoded, nothing verified yet.
#[derive(Debug)]
pub struct Unverified<'a> {
    pub text: &'a str,
    pub header: Header,
    pub claims: Map<String, Value>,
}

impl<'a> Unverified<'a> {
    pub fn parse(text: &'a str) -> Result<Self, TokenError> {
        let text = text.trim();
        if text.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLarge);
        }
        let mut parts = text.split('.');
        let (Some(header), Some(payload), Some(_signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed("not a JWT (three base64url parts)"));
        };
        let decode = |part: &str, what| {
            URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|_| TokenError::Malformed(what))
        };
        let header: Header = serde_json::from_slice(&decode(header, "header is not base64url")?)
            .map_err(|_| TokenError::Malformed("header is not a JOSE header"))?;
        let claims: Map<String, Value> =
            serde_json::from_slice(&decode(payload, "payload is not base64url")?)
                .map_err(|_| TokenError::Malformed("payload is not a JSON object"))?;
        if header.crit.is_some() || header.cty.is_some() {
            // RFC 7515 §4.1.11: a `crit` we do not understand must be rejected; nested JWTs
            // (`cty`) are not supported.
            return Err(TokenError::Malformed("critical or nested header fields"));
        }
        Ok(Self {
            text,
            header,
            claims,
        })
    }

    /// RFC 9068 §2.1: access tokens say `at+jwt` (media type `application/at+jwt`).
    pub fn kind(&self) -> TokenKind {
        let typ = self
            .header
            .typ
            .as_deref()
            .unwrap_or("")
            .to_ascii_lowercase();
        if typ == "at+jwt" || typ == "application/at+jwt" {
            TokenKind::AccessToken
        } else {
            TokenKind::IdToken
        }
    }

    pub fn issuer(&self) -> Option<&str> {
        self.claims.get("iss").and_then(Value::as_str)
    }

    /// The signing algorithm, if it is one we accept at all: asymmetric only.
    pub fn algorithm(&self) -> Result<Algorithm, TokenError> {
        let alg = match self.header.alg.as_str() {
            "RS256" => Algorithm::RS256,
            "RS384" => Algorithm::RS384,
            "RS512" => Algorithm::RS512,
            "PS256" => Algorithm::PS256,
            "PS384" => Algorithm::PS384,
            "PS512" => Algorithm::PS512,
            "ES256" => Algorithm::ES256,
            "ES384" => Algorithm::ES384,
            "EdDSA" => Algorithm::EdDSA,
            other => return Err(TokenError::AlgorithmNotAllowed(truncate(other))),
        };
        Ok(alg)
    }

    fn time_claim(&self, name: &str) -> Result<Option<SystemTime>, TokenError> {
        match self.claims.get(name) {
            None => Ok(None),
            Some(value) => value
                .as_f64()
                .filter(|secs| secs.is_finite() && *secs >= 0.0)
                .map(|secs| Some(UNIX_EPOCH + Duration::from_secs_f64(secs.min(1e11))))
                .ok_or(TokenError::Malformed("a time claim is not a number")),
        }
    }

    /// `exp`, required for every token we accept.
    pub fn expires_at(&self) -> Result<SystemTime, TokenError> {
        self.time_claim("exp")?
            .ok_or_else(|| TokenError::MissingClaim("exp".into()))
    }

    /// Verify signature and standard claims with the issuer's keys.
    pub fn verify(&self, settings: &IssuerSettings, keys: &KeySet) -> Result<(), TokenError> {
        let alg = self.algorithm()?;
        let jwk = keys.find(self.header.kid.as_deref(), alg)?;
        if !jwk_allows(jwk, alg) {
            return Err(TokenError::AlgorithmNotAllowed(self.header.alg.clone()));
        }
        match self.kind() {
            TokenKind::IdToken => self.verify_id_token(settings, keys, alg)?,
            TokenKind::AccessToken => self.verify_access_token(settings, jwk, alg)?,
        }
        // Neither library applies leeway to these two the way we want (DESIGN §6).
        let now = SystemTime::now();
        let leeway = settings.leeway;
        if self
            .time_claim("nbf")?
            .is_some_and(|nbf| nbf > now + leeway)
        {
            return Err(TokenError::NotYetValid);
        }
        if self
            .time_claim("iat")?
            .is_some_and(|iat| iat > now + leeway)
        {
            return Err(TokenError::NotYetValid);
        }
        if self.expires_at()? + leeway < now {
            return Err(TokenError::Expired);
        }
        Ok(())
    }

    fn verify_id_token(
        &self,
        settings: &IssuerSettings,
        keys: &KeySet,
        alg: Algorithm,
    ) -> Result<(), TokenError> {
        // openidconnect checks that `aud` contains its client id: use the configured audience
        // this token names, and trust the token's other audiences.
        let audience = audiences(&self.claims)
            .into_iter()
            .find(|aud| settings.audiences.iter().any(|a| a == aud))
            .ok_or(TokenError::WrongAudience)?;
        // The claims every ID token has, named when missing or of the wrong type, rather
        // than "not an ID token" from the parser below.
        for (claim, is_number) in [("sub", false), ("exp", true), ("iat", true)] {
            match self.claims.get(claim) {
                None => return Err(TokenError::MissingClaim(claim.into())),
                Some(value) if is_number && !value.is_number() => {
                    return Err(TokenError::Malformed(
                        "a time claim (exp, iat) is not a number",
                    ))
                }
                Some(value) if !is_number && !value.is_string() => {
                    return Err(TokenError::Malformed("the sub claim is not a string"))
                }
                Some(_) => {}
            }
        }
        if self
            .claims
            .get("email_verified")
            .is_some_and(|v| !v.is_boolean())
        {
            return Err(TokenError::Malformed("email_verified is not true or false"));
        }
        let token: CoreIdToken = self
            .text
            .parse()
            .map_err(|_| TokenError::Malformed("not an ID token"))?;
        let issuer = IssuerUrl::new(settings.issuer.clone())
            .map_err(|_| TokenError::Malformed("issuer is not a URL"))?;
        let leeway = chrono::Duration::from_std(settings.leeway).unwrap_or_default();
        let verifier = CoreIdTokenVerifier::new_public_client(
            ClientId::new(audience.to_owned()),
            issuer,
            keys.oidc.clone(),
        )
        .set_allowed_algs([oidc_algorithm(alg)])
        .set_other_audience_verifier_fn(|_| true)
        .set_time_fn(move || chrono::Utc::now() - leeway);
        token
            .claims(&verifier, |_: Option<&Nonce>| Ok(()))
            .map(|_| ())
            .map_err(|e| match e {
                ClaimsVerificationError::Expired(_) => TokenError::Expired,
                ClaimsVerificationError::InvalidAudience(_) => TokenError::WrongAudience,
                ClaimsVerificationError::InvalidIssuer(_) => TokenError::UnknownIssuer,
                ClaimsVerificationError::SignatureVerification(
                    SignatureVerificationError::DisallowedAlg(_)
                    | SignatureVerificationError::UnsupportedAlg(_),
                ) => TokenError::AlgorithmNotAllowed(self.header.alg.clone()),
                ClaimsVerificationError::SignatureVerification(
                    SignatureVerificationError::NoMatchingKey
                    | SignatureVerificationError::AmbiguousKeyId(_),
                ) => TokenError::UnknownKey,
                ClaimsVerificationError::SignatureVerification(_) => TokenError::BadSignature,
                _ => TokenError::Malformed("rejected by ID token validation"),
            })
    }

    fn verify_access_token(
        &self,
        settings: &IssuerSettings,
        jwk: &Jwk,
        alg: Algorithm,
    ) -> Result<(), TokenError> {
        use jsonwebtoken::errors::ErrorKind;
        let key = jsonwebtoken::DecodingKey::from_jwk(jwk).map_err(|_| TokenError::UnknownKey)?;
        let mut validation = jsonwebtoken::Validation::new(alg);
        validation.leeway = settings.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_issuer(&[&settings.issuer]);
        validation.set_audience(&settings.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        jsonwebtoken::decode::<Value>(self.text, &key, &validation)
            .map(|_| ())
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                ErrorKind::InvalidAudience => TokenError::WrongAudience,
                ErrorKind::InvalidIssuer => TokenError::UnknownIssuer,
                ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
                    TokenError::AlgorithmNotAllowed(self.header.alg.clone())
                }
                ErrorKind::MissingRequiredClaim(claim) => TokenError::MissingClaim(claim.clone()),
                ErrorKind::InvalidSignature
                | ErrorKind::InvalidEcdsaKey
                | ErrorKind::InvalidEddsaKey
                | ErrorKind::InvalidRsaKey(_) => TokenError::BadSignature,
                _ => TokenError::Malformed("rejected by access token validation"),
            })
    }
}

/// `aud` as a list (it may be one string).
pub fn audiences(claims: &Map<String, Value>) -> Vec<&str> {
    match claims.get("aud") {
        Some(Value::String(aud)) => vec![aud.as_str()],
        Some(Value::Array(auds)) => auds.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// Whether this key may verify `alg`: the key type (and curve) must fit, and a key that names
/// its algorithm or use allows only that.
pub fn jwk_allows(jwk: &Jwk, alg: Algorithm) -> bool {
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != PublicKeyUse::Signature)
    {
        return false;
    }
    if let Some(named) = jwk.common.key_algorithm {
        if key_algorithm(alg) != Some(named) {
            return false;
        }
    }
    match (&jwk.algorithm, alg) {
        (
            AlgorithmParameters::RSA(_),
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512,
        ) => true,
        (AlgorithmParameters::EllipticCurve(ec), Algorithm::ES256) => {
            ec.curve == EllipticCurve::P256
        }
        (AlgorithmParameters::EllipticCurve(ec), Algorithm::ES384) => {
            ec.curve == EllipticCurve::P384
        }
        (AlgorithmParameters::OctetKeyPair(okp), Algorithm::EdDSA) => {
            okp.curve == EllipticCurve::Ed25519
        }
        _ => false,
    }
}

fn key_algorithm(alg: Algorithm) -> Option<KeyAlgorithm> {
    Some(match alg {
        Algorithm::RS256 => KeyAlgorithm::RS256,
        Algorithm::RS384 => KeyAlgorithm::RS384,
        Algorithm::RS512 => KeyAlgorithm::RS512,
        Algorithm::PS256 => KeyAlgorithm::PS256,
        Algorithm::PS384 => KeyAlgorithm::PS384,
        Algorithm::PS512 => KeyAlgorithm::PS512,
        Algorithm::ES256 => KeyAlgorithm::ES256,
        Algorithm::ES384 => KeyAlgorithm::ES384,
        Algorithm::EdDSA => KeyAlgorithm::EdDSA,
        _ => return None,
    })
}

fn oidc_algorithm(alg: Algorithm) -> CoreJwsSigningAlgorithm {
    match alg {
        Algorithm::RS384 => CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
        Algorithm::RS512 => CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
        Algorithm::PS256 => CoreJwsSigningAlgorithm::RsaSsaPssSha256,
        Algorithm::PS384 => CoreJwsSigningAlgorithm::RsaSsaPssSha384,
        Algorithm::PS512 => CoreJwsSigningAlgorithm::RsaSsaPssSha512,
        Algorithm::ES256 => CoreJwsSigningAlgorithm::EcdsaP256Sha256,
        Algorithm::ES384 => CoreJwsSigningAlgorithm::EcdsaP384Sha384,
        Algorithm::EdDSA => CoreJwsSigningAlgorithm::EdDsa,
        _ => CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
    }
}

/// Peer text in an error message: bounded.
fn truncate(text: &str) -> String {
    text.chars().take(32).collect()
}
