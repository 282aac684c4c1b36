//! Who is connecting, and what they may use.
//!
//! The front door turns a client's credentials into an [`Identity`]; [`authorize`] then decides
//! which database and upstream role that identity may use, from the `[[access]]` rules.
//! Methods: local users with SCRAM-SHA-256 ([`scram`]); OIDC tokens ([`oidc`]) presented as
//! the password over TLS or through SASL OAUTHBEARER. All produce the same `Identity`.

pub mod front_door;
pub mod oidc;
pub mod rate_limit;
pub mod scram;

use std::time::SystemTime;

use crate::config::AccessRule;
use crate::error::{ClientError, SqlState};

/// How an identity proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// A `[[auth.local]]` user with SCRAM-SHA-256.
    LocalScram,
    /// An OIDC token sent as the password (over TLS).
    OidcPassword,
    /// An OIDC token through SASL OAUTHBEARER (PostgreSQL 18 clients).
    OauthBearer,
}

impl AuthMethod {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::LocalScram => "local-scram",
            Self::OidcPassword => "oidc-password",
            Self::OauthBearer => "oauthbearer",
        }
    }
}

/// A person or service account, as established by authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub groups: Vec<String>,
    pub method: AuthMethod,
    /// For OIDC identities: who vouched for them, and until when.
    pub oidc: Option<OidcIdentity>,
}

/// What an OIDC token adds to an identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcIdentity {
    pub issuer: String,
    pub subject: String,
    pub token_kind: oidc::TokenKind,
    /// When the token stops being accepted (`exp` plus leeway): the session ends then.
    pub accepted_until: SystemTime,
}

/// [`Identity::owner`] of an OIDC person.
pub fn oidc_owner(issuer: &str, subject: &str) -> String {
    format!("oidc {issuer} {subject}")
}

impl Identity {
    /// Who this is across sessions: the issuer and subject of an OIDC person (their name
    /// may change), the name of a local user. Sessions with the same owner belong to the
    /// same person, e.g. for cancelling one from another.
    pub fn owner(&self) -> String {
        match &self.oidc {
            Some(oidc) => oidc_owner(&oidc.issuer, &oidc.subject),
            None => format!("local {}", self.name),
        }
    }

    pub fn from_token(token: oidc::VerifiedToken, method: AuthMethod) -> Self {
        Self {
            name: token.username,
            groups: token.groups,
            method,
            oidc: Some(OidcIdentity {
                issuer: token.issuer,
                subject: token.subject,
                token_kind: token.kind,
                accepted_until: token.accepted_until,
            }),
        }
    }
}

/// Why authentication or authorization failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Wrong password or unknown user: deliberately indistinguishable to the client.
    #[error("password authentication failed for user \"{user}\"")]
    Failed {
        user: String,
        reason: scram::ScramError,
        /// Whether `user` is an `[[auth.local]]` user (the log says; the client is not told).
        known: bool,
    },
    /// An OIDC token that was not accepted.
    #[error("token authentication failed for \"{user}\": {error}")]
    Token {
        user: String,
        error: oidc::TokenError,
    },
    /// An OAUTHBEARER client without a token yet (the discovery round).
    #[error("sign-in required: the client asked where to sign in (OAUTHBEARER discovery)")]
    TokenRequired,
    /// A token would have crossed the network in clear.
    #[error("pgwarden accepts sign-in tokens only over an encrypted connection")]
    TokenNeedsTls,
    #[error("too many failed sign-in attempts from your address; try again in {retry_after_s} s")]
    RateLimited { retry_after_s: u64 },
    #[error("user \"{user}\" may not connect to database \"{database}\"")]
    DatabaseNotAllowed { user: String, database: String },
    #[error("user \"{user}\" may not use role \"{role}\" on database \"{database}\"")]
    RoleNotAllowed {
        user: String,
        role: String,
        database: String,
    },
    #[error("expected {expected} from the client, got message type {}", crate::protocol::describe_tag(*got))]
    UnexpectedMessage { expected: &'static str, got: u8 },
    #[error("SASL mechanism \"{0}\" is not supported; use SCRAM-SHA-256")]
    UnsupportedMechanism(String),
    #[error("malformed authentication message: {0}")]
    Malformed(&'static str),
    #[error("client I/O during authentication: {0}")]
    Io(std::io::Error),
    #[error(transparent)]
    Protocol(crate::protocol::ProtocolError),
}

impl AuthError {
    /// For pgwarden's own log: the client's message, with the reason the client is not told
    /// (which part of a SCRAM exchange failed).
    pub fn for_operator(&self) -> String {
        match self {
            Self::Failed {
                user, known: false, ..
            } => format!("user \"{user}\" is not an [[auth.local]] user"),
            Self::Failed { user, reason, .. } => format!("user \"{user}\": {reason}"),
            other => other.to_string(),
        }
    }

    /// An authorization refusal (`[[access]]`), as opposed to a failed sign-in.
    pub fn is_access_refusal(&self) -> bool {
        matches!(
            self,
            Self::DatabaseNotAllowed { .. } | Self::RoleNotAllowed { .. }
        )
    }

    pub fn to_client(&self) -> ClientError {
        let sqlstate = match self {
            Self::Failed { .. } | Self::TokenNeedsTls => SqlState::INVALID_PASSWORD,
            Self::Token { error, .. } => match error {
                oidc::TokenError::IssuerUnavailable => SqlState::CANNOT_CONNECT_NOW,
                _ => SqlState::INVALID_PASSWORD,
            },
            Self::RateLimited { .. } | Self::TokenRequired => {
                SqlState::INVALID_AUTHORIZATION_SPECIFICATION
            }
            Self::DatabaseNotAllowed { .. } | Self::RoleNotAllowed { .. } => {
                SqlState::INVALID_AUTHORIZATION_SPECIFICATION
            }
            Self::UnexpectedMessage { .. } | Self::Malformed(_) | Self::Io(_) => {
                SqlState::PROTOCOL_VIOLATION
            }
            Self::Protocol(e) => e.sqlstate(),
            Self::UnsupportedMechanism(_) => SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
        };
        let error = ClientError::fatal(sqlstate, self.to_string());
        match self {
            Self::TokenNeedsTls => error.with_hint(
                "connect with sslmode=require (or verify-full), e.g. psql \"host=… sslmode=require\". If another error came just before this one, that is why the sign-in failed: with sslmode=prefer (libpq's default) a client refused over TLS tries again without it",
            ),
            Self::Token { error: e, .. } => match e {
                oidc::TokenError::Expired | oidc::TokenError::NotYetValid => {
                    error.with_hint("sign in again: pgwarden login, then PGPASSWORD=\"$(pgwarden token)\"")
                }
                oidc::TokenError::IssuerUnavailable => {
                    error.with_hint("this is temporary; try again shortly")
                }
                oidc::TokenError::Malformed(_) => error.with_hint(
                    "the password must be an OIDC token: PGPASSWORD=\"$(pgwarden token)\" psql …",
                ),
                _ => error,
            },
            _ => error,
        }
    }
}

/// What an authorized session may do upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub database: String,
    pub role: String,
}

/// Decide whether `identity` may use `database`, and as which upstream role.
///
/// `requested_role` is `None` for local users (they get the first role of the first rule that
/// lets them into the database). A requested role must be listed by a matching rule.
pub fn authorize(
    identity: &Identity,
    database: &str,
    requested_role: Option<&str>,
    rules: &[AccessRule],
) -> Result<Grant, AuthError> {
    let applies = |rule: &&AccessRule| {
        rule.users.iter().any(|u| u == &identity.name)
            || rule.groups.iter().any(|g| identity.groups.contains(g))
    };
    let allows_db = |rule: &&AccessRule| rule.databases.iter().any(|d| d == "*" || d == database);
    let mut matching = rules.iter().filter(applies).filter(allows_db).peekable();
    if matching.peek().is_none() {
        return Err(AuthError::DatabaseNotAllowed {
            user: identity.name.clone(),
            database: database.to_owned(),
        });
    }
    let role = match requested_role {
        None => matching.next().and_then(|rule| rule.roles.first()).cloned(),
        Some(wanted) => matching
            .flat_map(|rule| rule.roles.iter())
            .find(|r| *r == wanted)
            .cloned(),
    };
    role.map(|role| Grant {
        database: database.to_owned(),
        role,
    })
    .ok_or_else(|| AuthError::RoleNotAllowed {
        user: identity.name.clone(),
        role: requested_role.unwrap_or_default().to_owned(),
        database: database.to_owned(),
    })
}

/// Whether a live session may go on under a reloaded configuration: its person is still
/// known (a local user still in `[[auth.local]]`, with the groups listed there now; an OIDC
/// person's issuer still trusted) and `[[access]]` still lets them use `database` as each of
/// `roles`. The reason, in words for the log and the client, when not.
pub fn still_authorized<'a>(
    identity: &Identity,
    database: &str,
    mut roles: impl Iterator<Item = &'a str>,
    config: &crate::config::Config,
) -> Result<(), String> {
    let current = match &identity.oidc {
        None => match config.local_users.get(&identity.name) {
            None => {
                return Err(format!(
                    "user \"{}\" is no longer an [[auth.local]] user",
                    identity.name
                ))
            }
            Some(user) => Identity {
                groups: user.groups.clone(),
                ..identity.clone()
            },
        },
        Some(oidc) => {
            if !config
                .oidc
                .iter()
                .any(|issuer| issuer.issuer == oidc.issuer)
            {
                return Err(format!(
                    "identity provider {} is no longer trusted",
                    oidc.issuer
                ));
            }
            identity.clone()
        }
    };
    roles.try_for_each(|role| {
        authorize(&current, database, Some(role), &config.access)
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(users: &[&str], groups: &[&str], dbs: &[&str], roles: &[&str]) -> AccessRule {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect();
        AccessRule {
            users: v(users),
            groups: v(groups),
            databases: v(dbs),
            roles: v(roles),
        }
    }

    fn ident(name: &str, groups: &[&str]) -> Identity {
        Identity {
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            method: AuthMethod::LocalScram,
            oidc: None,
        }
    }

    #[test]
    fn access_rules() {
        let rules = vec![
            rule(&["ci-bot"], &[], &["app"], &["app_ro", "app_rw"]),
            rule(&[], &["dev"], &["*"], &["dev_rw"]),
        ];
        let grant = authorize(&ident("ci-bot", &[]), "app", None, &rules).unwrap();
        assert_eq!(grant.role, "app_ro");
        assert!(matches!(
            authorize(&ident("ci-bot", &[]), "other", None, &rules),
            Err(AuthError::DatabaseNotAllowed { .. })
        ));
        assert_eq!(
            authorize(&ident("ann", &["dev"]), "x", None, &rules)
                .unwrap()
                .role,
            "dev_rw"
        );
        assert_eq!(
            authorize(&ident("ci-bot", &[]), "app", Some("app_rw"), &rules)
                .unwrap()
                .role,
            "app_rw"
        );
        assert!(matches!(
            authorize(&ident("ci-bot", &[]), "app", Some("postgres"), &rules),
            Err(AuthError::RoleNotAllowed { .. })
        ));
        assert!(authorize(&ident("eve", &["ops"]), "app", None, &rules).is_err());
    }
}
