//! OIDC identity: which issuers pgwarden trusts, and turning a token into a person.
//!
//! A token is matched to its issuer by its `iss` claim (byte-exact), verified with that
//! issuer's keys ([`keys`], [`token`]), and mapped to a username and groups ([`claims`]).
//! Every rejection is a [`TokenError`] whose category goes to the audit log; the token itself
//! never does.

pub mod claims;
pub mod keys;
pub mod token;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use keys::IssuerKeys;
pub use keys::IssuerStatus;
use token::Unverified;

/// The two kinds of JWT a client may present.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    /// An OpenID Connect ID token (`aud` is the client id).
    IdToken,
    /// An RFC 9068 JWT access token (`typ: at+jwt`, `aud` is the resource).
    AccessToken,
}

impl TokenKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::IdToken => "id_token",
            Self::AccessToken => "access_token",
        }
    }
}

/// One `[[auth.oidc]]` issuer, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct IssuerSettings {
    /// Compared byte-exactly with the tokens' `iss` and the discovery document's `issuer`.
    pub issuer: String,
    /// A token's `aud` must contain one of these.
    pub audiences: Vec<String>,
    pub username_claim: String,
    pub groups_claim: String,
    /// Put before every user name and group from this issuer, so that with several issuers
    /// one cannot claim the names and groups rules give another's people.
    pub username_prefix: String,
    pub groups_prefix: String,
    pub token_kinds: Vec<TokenKind>,
    pub leeway: Duration,
    /// Claims a token must carry, with these values (or, for array claims, containing them).
    pub required_claims: Vec<(String, serde_json::Value)>,
    /// Besides the audiences, the clients an ID token may have been issued to (`azp`).
    pub authorized_parties: Vec<String>,
    /// Trust only this CA for the issuer's HTTPS.
    pub ca: Option<PathBuf>,
    /// Plain `http://` (loopback issuers only; validated in the config).
    pub allow_http: bool,
    pub jwks_refresh: Duration,
    pub jwks_cooldown: Duration,
    pub fetch_timeout: Duration,
    /// Scope a client should request (advertised to OAUTHBEARER clients).
    pub scope: String,
}

/// Why a token was not accepted. `category()` is what the audit log records.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the password is not a valid token: {0}")]
    Malformed(&'static str),
    #[error("the token is larger than 64 KiB")]
    TooLarge,
    #[error("the token's issuer is not one pgwarden trusts")]
    UnknownIssuer,
    #[error("{0} tokens are not accepted from this issuer")]
    KindNotAccepted(&'static str),
    #[error("the token's signing algorithm \"{0}\" is not allowed")]
    AlgorithmNotAllowed(String),
    #[error("the token was signed with a key the issuer does not publish")]
    UnknownKey,
    #[error("the token's signature is not valid")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token is not meant for pgwarden (wrong audience)")]
    WrongAudience,
    #[error("the token was issued to the client \"{0}\" (its azp claim), which is neither a configured audience nor in authorized_parties")]
    UnauthorizedParty(String),
    #[error("the token lacks the claim \"{0}\"")]
    MissingClaim(String),
    #[error("the token's claim \"{0}\" does not have the required value")]
    ClaimMismatch(String),
    #[error("the identity provider cannot be reached to verify the token")]
    IssuerUnavailable,
    #[error("the token's user name is the name of a local pgwarden user; one cannot stand for the other")]
    LocalNameConflict,
}

impl TokenError {
    /// The audit category: never anything from the token itself.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "token_malformed",
            Self::TooLarge => "token_too_large",
            Self::UnknownIssuer => "unknown_issuer",
            Self::KindNotAccepted(_) => "token_kind_not_accepted",
            Self::AlgorithmNotAllowed(_) => "algorithm_not_allowed",
            Self::UnknownKey => "unknown_key",
            Self::BadSignature => "bad_signature",
            Self::Expired => "token_expired",
            Self::NotYetValid => "token_not_yet_valid",
            Self::WrongAudience | Self::UnauthorizedParty(_) => "wrong_audience",
            Self::MissingClaim(_) => "missing_claim",
            Self::ClaimMismatch(_) => "claim_mismatch",
            Self::IssuerUnavailable => "issuer_unavailable",
            Self::LocalNameConflict => "local_name_conflict",
        }
    }
}

/// A token that passed every check, reduced to what pgwarden needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    pub issuer: String,
    pub subject: String,
    pub username: String,
    pub groups: Vec<String>,
    pub kind: TokenKind,
    /// When pgwarden stops taking this token: its `exp` plus the issuer's leeway, the same
    /// allowance it was given at sign-in.
    pub accepted_until: SystemTime,
}

/// The trusted issuers of one config snapshot.
#[derive(Debug, Default)]
pub struct Issuers {
    issuers: Vec<Arc<IssuerKeys>>,
}

impl Issuers {
    /// Build the HTTP clients; nothing is fetched until [`Issuers::start`].
    pub fn new(settings: &[IssuerSettings]) -> Result<Self, String> {
        let issuers = settings
            .iter()
            .map(|s| {
                IssuerKeys::new(s.clone())
                    .map(Arc::new)
                    .map_err(|e| format!("{}: {e}", s.issuer))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { issuers })
    }

    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    pub fn settings(&self) -> impl Iterator<Item = &IssuerSettings> {
        self.issuers.iter().map(|i| &i.settings)
    }

    /// Fetch every issuer's keys in the background, and keep them fresh while `self` lives.
    pub fn start(&self) {
        for issuer in &self.issuers {
            keys::spawn_refresher(issuer);
        }
    }

    pub fn status(&self) -> Vec<IssuerStatus> {
        self.issuers.iter().map(|i| i.status()).collect()
    }

    /// Verify `text` and map it to a person.
    pub async fn verify(&self, text: &str) -> Result<VerifiedToken, TokenError> {
        let token = Unverified::parse(text)?;
        let iss = token
            .issuer()
            .ok_or(TokenError::MissingClaim("iss".into()))?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.settings.issuer == iss)
            .ok_or(TokenError::UnknownIssuer)?;
        let settings = &issuer.settings;
        let kind = token.kind();
        if !settings.token_kinds.contains(&kind) {
            return Err(TokenError::KindNotAccepted(kind.as_str()));
        }
        token.algorithm()?;
        let keys = issuer.keys_for(token.header.kid.as_deref()).await?;
        token.verify(settings, &keys)?;
        if kind == TokenKind::IdToken {
            claims::check_authorized_party(&token.claims, settings)?;
        }
        claims::check_required(&token.claims, &settings.required_claims)?;
        let subject = claims::string(&token.claims, "sub")
            .ok_or_else(|| TokenError::MissingClaim("sub".into()))?;
        // An address the provider says it has not verified is anyone's to claim.
        if settings.username_claim == "email" && claims::says_false(&token.claims, "email_verified")
        {
            return Err(TokenError::ClaimMismatch("email_verified".into()));
        }
        let username = claims::string(&token.claims, &settings.username_claim)
            .unwrap_or_else(|| subject.clone());
        let mut groups = claims::groups(&token.claims, &settings.groups_claim);
        if !settings.groups_prefix.is_empty() {
            for group in &mut groups {
                group.insert_str(0, &settings.groups_prefix);
            }
        }
        Ok(VerifiedToken {
            issuer: settings.issuer.clone(),
            username: format!("{}{username}", settings.username_prefix),
            subject,
            groups,
            kind,
            accepted_until: token.expires_at()? + settings.leeway,
        })
    }
}
