//! The configuration: one TOML file, parsed strictly (`deny_unknown_fields`), validated as a
//! whole before any socket is bound, and then shared as an immutable snapshot (an `ArcSwap`
//! in [`crate::session::Context`], together with what is derived from it such as the TLS
//! acceptor) that each session reads once. A reload that fails validation keeps the old
//! snapshot.
//!
//! Secrets are never written inline in examples: `env:NAME` and `file:PATH` references are
//! resolved at load time, so `check-config` catches a missing variable or file.

mod locate;
mod model;
mod secret;
pub mod units;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use model::{
    AccessRule, OauthBearer, PlaintextTokens, SslMode, TlsMode, TokenExpiry, UpstreamAuth,
};
pub use secret::Secret;

use crate::auth::scram::ScramVerifier;

/// A loaded, validated configuration.
#[derive(Debug)]
pub struct Config {
    pub path: PathBuf,
    pub server: Server,
    /// `[admin] listen`: health and readiness endpoints, when configured.
    pub admin_listen: Option<SocketAddr>,
    /// `[admin.tls]` certificate and key (PEM): the admin API over HTTPS.
    pub admin_tls: Option<(PathBuf, PathBuf)>,
    /// `[[admin.break_glass]]`: callers of the approvals API with a static token.
    pub break_glass: Vec<BreakGlass>,
    /// `[admin] operator_groups`: who may see every running session and end any.
    pub operator_groups: Vec<String>,
    /// `[approvals]`: without it, statements the policy holds are refused.
    pub approvals: Option<crate::approvals::Settings>,
    pub upstream: Upstream,
    pub local_users: HashMap<String, LocalUser>,
    /// Trusted OIDC issuers (`[[auth.oidc]]`).
    pub oidc: Vec<crate::auth::oidc::IssuerSettings>,
    pub plaintext_tokens: PlaintextTokens,
    pub rate_limit: crate::auth::rate_limit::RateLimitSettings,
    pub on_token_expiry: TokenExpiry,
    pub oauthbearer: OauthBearer,
    pub access: Vec<AccessRule>,
    /// The audit log, when configured.
    pub audit: Option<crate::audit::Settings>,
    /// Which statements run.
    pub policy: crate::policy::Policy,
    /// `[masking]`: rules, detectors (on by default), exemptions.
    pub masking: crate::masking::Settings,
    /// Things that are allowed but deserve the operator's attention (logged at start).
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Server {
    pub listen: SocketAddr,
    /// A listener where token sign-ins always use SASL OAUTHBEARER.
    pub oauthbearer_listen: Option<SocketAddr>,
    pub max_connections: usize,
    pub auth_timeout: Duration,
    pub shutdown_grace: Duration,
    /// Written by `serve`, read by `pgwarden reload`.
    pub pid_file: Option<PathBuf>,
    pub tls_mode: TlsMode,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub max_client_message: usize,
    pub max_server_message: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamAddr {
    Tcp {
        host: String,
        port: u16,
    },
    /// A Unix socket directory, as libpq's `host=/dir`: the socket is `dir/.s.PGSQL.<port>`.
    Unix {
        dir: PathBuf,
        port: u16,
    },
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub addr: UpstreamAddr,
    pub sslmode: SslMode,
    pub ca: Option<PathBuf>,
    /// Name checked against the server certificate with `verify-full` (default: host).
    pub server_name: Option<String>,
    pub connect_timeout: Duration,
    /// The authentication methods the server may ask for.
    pub auth_methods: Vec<UpstreamAuth>,
    /// Upstream role name → password (none for trust authentication).
    pub roles: HashMap<String, Option<Secret>>,
}

/// A break-glass caller of the admin API: a name, groups and a static bearer token.
#[derive(Debug, Clone)]
pub struct BreakGlass {
    pub name: String,
    pub token: Secret,
    pub groups: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct LocalUser {
    pub name: String,
    pub verifier: ScramVerifier,
    pub groups: Vec<String>,
}

/// Why a configuration could not be used. Always names the file, and where possible the key
/// and line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Syntax {
        path: PathBuf,
        line: Option<usize>,
        message: String,
    },
    #[error("{path}{}: `{key}`: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Invalid {
        path: PathBuf,
        key: String,
        line: Option<usize>,
        message: String,
    },
}

/// A TOML error as `file:line: \`key\`: message`, like the validation errors, in words a
/// person reads ("a whole number", not "u16").
fn syntax_error(path: &Path, text: &str, error: &toml::de::Error) -> ConfigError {
    let mut message = error.message().trim_end().to_owned();
    for (rust, plain) in [
        ("expected u8", "expected a whole number"),
        ("expected u16", "expected a whole number"),
        ("expected u32", "expected a whole number"),
        ("expected u64", "expected a whole number"),
        ("expected usize", "expected a whole number"),
        ("expected i32", "expected a whole number"),
        ("expected i64", "expected a whole number"),
        ("expected f64", "expected a number"),
        ("expected a sequence", "expected a list [ … ]"),
        ("expected a map", "expected a table"),
    ] {
        if let Some(at) = message.find(rust) {
            let end = at + rust.len();
            if !message[end..].starts_with(|c: char| c.is_ascii_alphanumeric()) {
                message.replace_range(at..end, plain);
            }
        }
    }
    // A span over the whole file (a missing section) has no key or line to show.
    let span = error
        .span()
        .filter(|span| span.start > 0 || (!span.is_empty() && span.end < text.trim_end().len()));
    let key = span.clone().and_then(|span| locate::key_at(text, span));
    let line = span
        .and_then(|span| text.get(..span.start))
        .map(|before| before.matches('\n').count() + 1);
    match key {
        Some(key) => ConfigError::Invalid {
            path: path.to_owned(),
            key,
            line,
            message,
        },
        None => ConfigError::Syntax {
            path: path.to_owned(),
            line,
            message,
        },
    }
}

impl Config {
    /// Read, parse and validate a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(path, &text)
    }

    /// Parse and validate configuration text (`path` is used in messages and to resolve
    /// relative paths).
    pub fn from_toml(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let file: model::ConfigFile =
            toml::from_str(text).map_err(|e| syntax_error(path, text, &e))?;
        let invalid = |key: String, message: String| {
            let line = locate::line_of(text, &key);
            ConfigError::Invalid {
                path: path.to_owned(),
                key,
                line,
                message,
            }
        };
        model::validate(path, file, invalid)
    }
}
