//! The TOML model (what operators write) and its validation into [`super::Config`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::units::{ByteSize, HumanDuration};
use super::{Config, ConfigError, LocalUser, Secret, Server, Upstream, UpstreamAddr};
use crate::audit::{
    FsyncPolicy, OnFailure, ParameterAudit, Settings as AuditSettings, StatementText,
};
use crate::auth::oidc::{IssuerSettings, TokenKind};
use crate::auth::rate_limit::RateLimitSettings;
use crate::auth::scram::ScramVerifier;
use crate::policy::{Action, Policy, RuleSpec, SessionRule, SessionSpec};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    server: ServerSection,
    upstream: UpstreamSection,
    #[serde(default)]
    auth: AuthSection,
    #[serde(default)]
    access: Vec<AccessRule>,
    audit: Option<AuditSection>,
    #[serde(default)]
    policy: PolicySection,
    admin: Option<AdminSection>,
    approvals: Option<ApprovalsSection>,
    #[serde(default)]
    masking: MaskingSection,
}

/// `[masking]`, its `[[masking.rules]]` and `[masking.detectors]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct MaskingSection {
    /// Secret reference to the `hash` strategy's key.
    hash_key: Option<String>,
    exempt_groups: Vec<String>,
    exempt_users: Vec<String>,
    derived_writes: Option<Action>,
    masked_filters: Option<Action>,
    schema_changes: Option<Action>,
    catalog_refresh: Option<HumanDuration>,
    rules: Vec<MaskingRuleSection>,
    detectors: DetectorsSection,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MaskingRuleSection {
    /// `schema.table` (`public` when unqualified).
    table: String,
    column: String,
    strategy: StrategyName,
    /// For `partial`: how many trailing characters stay visible.
    keep: Option<usize>,
    #[serde(default)]
    exempt_groups: Vec<String>,
    #[serde(default)]
    exempt_users: Vec<String>,
    #[serde(default)]
    databases: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct DetectorsSection {
    /// Default: every detector.
    enabled: Option<Vec<crate::masking::Kind>>,
    exempt_groups: Vec<String>,
    /// Per detector, a strategy other than its default.
    strategies: HashMap<crate::masking::Kind, StrategyName>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum StrategyName {
    Redact,
    Partial,
    Email,
    Hash,
    Null,
}

impl StrategyName {
    fn strategy(self, keep: Option<usize>) -> crate::masking::Strategy {
        use crate::masking::Strategy;
        match self {
            Self::Redact => Strategy::Redact,
            Self::Partial => Strategy::Partial {
                keep: keep.unwrap_or(4),
            },
            Self::Email => Strategy::Email,
            Self::Hash => Strategy::Hash,
            Self::Null => Strategy::Null,
        }
    }
}

/// `[approvals]`: who answers statements the policy holds, and how long they wait.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApprovalsSection {
    timeout: Option<HumanDuration>,
    approver_groups: Vec<String>,
    min_approvals: Option<u32>,
    max_grant: Option<HumanDuration>,
    public_url: Option<String>,
    /// POSTed a JSON description of each new request (a chat or paging hook).
    notify_webhook: Option<String>,
    /// `"json"` (default) or `"slack"` (a Slack-compatible `{"text": …}` body).
    notify_format: Option<crate::approvals::NotifyFormat>,
}

/// `[admin]`: the HTTP endpoint for health checks (and, later, operations).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminSection {
    listen: String,
    /// Serve the admin API over TLS: without it, bearer tokens are accepted only from
    /// loopback peers.
    tls: Option<AdminTlsSection>,
    /// Break-glass callers of the approvals API, for when the identity provider is down.
    #[serde(default)]
    break_glass: Vec<BreakGlassSection>,
    /// Groups that may see every running session and end any (`/sessions`).
    #[serde(default)]
    operator_groups: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminTlsSection {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BreakGlassSection {
    name: String,
    /// A secret reference (`env:` / `file:`) to the bearer token.
    token: String,
    groups: Vec<String>,
}

/// `[policy]` and its `[[policy.rules]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct PolicySection {
    default: Action,
    on_parse_error: Action,
    guardrails: bool,
    guardrail_exempt_groups: Vec<String>,
    rules: Vec<RuleSpec>,
    session: Vec<SessionSpec>,
}

impl Default for PolicySection {
    fn default() -> Self {
        Self {
            default: Action::Allow,
            on_parse_error: Action::Deny,
            guardrails: true,
            guardrail_exempt_groups: Vec::new(),
            rules: Vec::new(),
            session: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditSection {
    /// Directory of the log files (relative to the config file).
    dir: PathBuf,
    #[serde(default)]
    fsync: Option<FsyncPolicy>,
    #[serde(default)]
    batch_window: Option<HumanDuration>,
    #[serde(default)]
    rotate_size: Option<ByteSize>,
    #[serde(default)]
    rotate_daily: Option<bool>,
    /// Secret reference to an Ed25519 PKCS#8 PEM key (`pgwarden audit keygen`).
    signing_key: Option<String>,
    checkpoint_interval: Option<HumanDuration>,
    #[serde(default)]
    on_failure: Option<OnFailure>,
    #[serde(default)]
    statement_text: Option<StatementText>,
    #[serde(default)]
    parameters: Option<ParameterAudit>,
    /// Secret reference to the HMAC key for `parameters = "hmac"`.
    parameter_key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ServerSection {
    listen: String,
    /// A second listener where people signing in with a token always get OAUTHBEARER.
    oauthbearer_listen: Option<String>,
    max_connections: usize,
    auth_timeout: HumanDuration,
    shutdown_grace: HumanDuration,
    /// Where `serve` writes its process id (for `pgwarden reload`), relative to the file.
    pid_file: Option<PathBuf>,
    tls: Option<TlsSection>,
    limits: LimitsSection,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:6432".into(),
            oauthbearer_listen: None,
            max_connections: 1000,
            auth_timeout: HumanDuration(std::time::Duration::from_secs(15)),
            shutdown_grace: HumanDuration(std::time::Duration::from_secs(30)),
            pid_file: None,
            tls: None,
            limits: LimitsSection::default(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsSection {
    #[serde(default)]
    mode: Option<TlsMode>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

/// Whether clients must, may or cannot use TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// Plaintext connections are refused with a FATAL that says to use `sslmode=require`.
    Required,
    /// TLS when the client asks for it.
    Optional,
    /// SSLRequest is answered `N`.
    Disabled,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct LimitsSection {
    max_client_message: ByteSize,
    max_server_message: ByteSize,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            max_client_message: ByteSize(64 << 20),
            max_server_message: ByteSize(256 << 20),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpstreamSection {
    host: String,
    #[serde(default = "default_pg_port")]
    port: u16,
    sslmode: Option<SslMode>,
    ca: Option<PathBuf>,
    server_name: Option<String>,
    #[serde(default = "default_connect_timeout")]
    connect_timeout: HumanDuration,
    auth_methods: Option<Vec<UpstreamAuth>>,
    #[serde(default)]
    roles: Vec<UpstreamRole>,
}

fn default_pg_port() -> u16 {
    5432
}

fn default_connect_timeout() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(10))
}

/// TLS towards the upstream server, with libpq's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    /// Encrypt, do not verify the certificate.
    Require,
    /// Encrypt, verify the certificate chain against `ca` and the host name.
    VerifyFull,
}

/// How the upstream server may ask pgwarden to prove a role's password (libpq's
/// `require_auth` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamAuth {
    /// SCRAM-SHA-256: the password never crosses the wire, and the server proves it knows it.
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// MD5: a replayable hash of the password crosses the wire.
    Md5,
    /// The password itself crosses the wire.
    Password,
    /// No authentication at all.
    None,
}

impl UpstreamAuth {
    pub const ALL: [UpstreamAuth; 4] = [Self::ScramSha256, Self::Md5, Self::Password, Self::None];

    pub fn name(self) -> &'static str {
        match self {
            Self::ScramSha256 => "scram-sha-256",
            Self::Md5 => "md5",
            Self::Password => "password",
            Self::None => "none",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpstreamRole {
    name: String,
    password: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthSection {
    #[serde(default)]
    local: Vec<LocalUserSection>,
    #[serde(default)]
    oidc: Vec<OidcSection>,
    /// `"refuse"` (default) or `"loopback"`: tokens as passwords over plaintext TCP.
    #[serde(default)]
    plaintext_tokens: Option<PlaintextTokens>,
    #[serde(default)]
    rate_limit: Option<RateLimitSection>,
    /// What happens to a session when the person's token expires.
    #[serde(default)]
    on_token_expiry: TokenExpiry,
    /// When SASL OAUTHBEARER is offered instead of asking for the token as a password.
    #[serde(default)]
    oauthbearer: OauthBearer,
}

/// `auth.oauthbearer`: PostgreSQL 18's libpq runs the sign-in itself through OAUTHBEARER, but
/// older libpq cannot fall back from it, so it is offered only where it is safe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OauthBearer {
    /// Never; tokens come as passwords.
    Off,
    /// When the client asks: `options='-c pgwarden.auth=oauthbearer'` (the default).
    #[default]
    OnRequest,
    /// To every client signing in with a token (all clients are PostgreSQL 18+).
    Always,
}

/// `auth.on_token_expiry`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TokenExpiry {
    /// End the session with a FATAL between statements (the default).
    #[default]
    Terminate,
    /// Let it run on; only new sessions need a fresh token.
    Allow,
}

/// Whether an OIDC token may be sent as a password without TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PlaintextTokens {
    /// Never: the client is told to use `sslmode=require` before it sends anything.
    #[default]
    Refuse,
    /// From loopback addresses only (development).
    Loopback,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitSection {
    max_failures: Option<u32>,
    backoff: Option<HumanDuration>,
    max_backoff: Option<HumanDuration>,
}

/// One string or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OidcSection {
    issuer: String,
    audience: OneOrMany,
    username_claim: Option<String>,
    groups_claim: Option<String>,
    #[serde(default)]
    username_prefix: String,
    #[serde(default)]
    groups_prefix: String,
    token_types: Option<Vec<TokenKind>>,
    leeway: Option<HumanDuration>,
    #[serde(default)]
    required_claims: toml::Table,
    #[serde(default)]
    authorized_parties: Vec<String>,
    ca: Option<PathBuf>,
    #[serde(default)]
    allow_http: bool,
    jwks_refresh: Option<HumanDuration>,
    jwks_cooldown: Option<HumanDuration>,
    fetch_timeout: Option<HumanDuration>,
    scope: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LocalUserSection {
    name: String,
    scram: String,
    #[serde(default)]
    groups: Vec<String>,
}

/// Who may connect to which databases as which upstream roles. A rule applies to an identity
/// named in `users` or belonging to one of `groups`; `"*"` in `databases` means any.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessRule {
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    pub databases: Vec<String>,
    /// Upstream roles, the first being the default.
    pub roles: Vec<String>,
}

/// Check everything that can be checked without touching the network. `invalid(key, message)`
/// builds the error for a key path.
pub fn validate(
    path: &Path,
    file: ConfigFile,
    invalid: impl Fn(String, String) -> ConfigError,
) -> Result<Config, ConfigError> {
    let base_dir = path.parent().unwrap_or(Path::new(".")).to_owned();
    let mut warnings = Vec::new();
    let resolve_path = |p: PathBuf| if p.is_absolute() { p } else { base_dir.join(p) };

    let s = file.server;
    let listen: SocketAddr = s.listen.parse().map_err(|_| {
        invalid(
            "server.listen".into(),
            format!("`{}` is not an address like \"127.0.0.1:6432\"", s.listen),
        )
    })?;
    let oauthbearer_listen = match &s.oauthbearer_listen {
        None => None,
        Some(text) => Some(text.parse::<SocketAddr>().map_err(|_| {
            invalid(
                "server.oauthbearer_listen".into(),
                format!("`{text}` is not an address like \"127.0.0.1:6433\""),
            )
        })?),
    };
    if s.max_connections == 0 {
        return Err(invalid(
            "server.max_connections".into(),
            "must be at least 1".into(),
        ));
    }
    if s.auth_timeout.0.is_zero() {
        return Err(invalid(
            "server.auth_timeout".into(),
            "must be more than 0".into(),
        ));
    }
    let (tls_mode, tls_cert, tls_key) = match s.tls {
        None => {
            warnings.push("no [server.tls]: clients connect in plaintext".to_owned());
            (TlsMode::Disabled, None, None)
        }
        Some(tls) => {
            let mode = tls.mode.unwrap_or(TlsMode::Required);
            if mode != TlsMode::Disabled && (tls.cert.is_none() || tls.key.is_none()) {
                return Err(invalid(
                    "server.tls".into(),
                    "`cert` and `key` are required unless mode = \"disabled\"".into(),
                ));
            }
            if mode == TlsMode::Disabled {
                warnings
                    .push("server.tls.mode = \"disabled\": clients connect in plaintext".into());
            }
            (mode, tls.cert.map(resolve_path), tls.key.map(resolve_path))
        }
    };
    for (key, size) in [
        (
            "server.limits.max_client_message",
            s.limits.max_client_message,
        ),
        (
            "server.limits.max_server_message",
            s.limits.max_server_message,
        ),
    ] {
        if !(1024..=(1 << 30)).contains(&size.0) {
            return Err(invalid(key.into(), "must be between 1KiB and 1GiB".into()));
        }
    }
    let server = Server {
        listen,
        oauthbearer_listen,
        max_connections: s.max_connections,
        auth_timeout: s.auth_timeout.0,
        shutdown_grace: s.shutdown_grace.0,
        pid_file: s.pid_file.map(resolve_path),
        tls_mode,
        tls_cert,
        tls_key,
        max_client_message: s.limits.max_client_message.0,
        max_server_message: s.limits.max_server_message.0,
    };

    let u = file.upstream;
    let addr = if u.host.starts_with('/') {
        UpstreamAddr::Unix {
            dir: PathBuf::from(&u.host),
            port: u.port,
        }
    } else if u.host.is_empty() {
        return Err(invalid("upstream.host".into(), "must not be empty".into()));
    } else {
        UpstreamAddr::Tcp {
            host: u.host.clone(),
            port: u.port,
        }
    };
    let local_upstream = match &addr {
        UpstreamAddr::Unix { .. } => true,
        UpstreamAddr::Tcp { host, .. } => {
            host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
        }
    };
    // Encrypt by default unless the server is on this machine.
    let sslmode = u.sslmode.unwrap_or(if local_upstream {
        SslMode::Disable
    } else {
        SslMode::Require
    });
    if matches!(addr, UpstreamAddr::Unix { .. }) && sslmode != SslMode::Disable {
        return Err(invalid(
            "upstream.sslmode".into(),
            "Unix socket connections cannot use TLS".into(),
        ));
    }
    if sslmode == SslMode::VerifyFull && u.ca.is_none() {
        return Err(invalid(
            "upstream.ca".into(),
            "sslmode = \"verify-full\" needs `ca` (a PEM file)".into(),
        ));
    }
    // A server nobody can impersonate (on this machine, or with its certificate verified)
    // may use any method; otherwise only SCRAM, so that whoever sits in the middle of an
    // unverified connection cannot ask for the password itself (`password`, `md5`) or
    // skip authentication (`none`).
    let auth_methods = match u.auth_methods {
        Some(methods) if methods.is_empty() => {
            return Err(invalid(
                "upstream.auth_methods".into(),
                "must name at least one method".into(),
            ))
        }
        Some(methods) => methods,
        None if local_upstream || sslmode == SslMode::VerifyFull => UpstreamAuth::ALL.to_vec(),
        None => vec![UpstreamAuth::ScramSha256],
    };
    let mut roles = HashMap::new();
    for (i, role) in u.roles.into_iter().enumerate() {
        if roles.contains_key(&role.name) {
            return Err(invalid(
                format!("upstream.roles[{i}].name"),
                format!("role `{}` is listed twice", role.name),
            ));
        }
        let password = match role.password {
            None => None,
            Some(reference) => {
                let (secret, inline) = Secret::resolve(&reference, &base_dir)
                    .map_err(|m| invalid(format!("upstream.roles[{i}].password"), m))?;
                if inline {
                    warnings.push(format!(
                        "upstream.roles[{i}].password is written inline; prefer \"env:NAME\" or \"file:PATH\""
                    ));
                }
                Some(secret)
            }
        };
        roles.insert(role.name, password);
    }
    let upstream = Upstream {
        addr,
        sslmode,
        ca: u.ca.map(resolve_path),
        server_name: u.server_name,
        connect_timeout: u.connect_timeout.0,
        auth_methods,
        roles,
    };

    let mut local_users = HashMap::new();
    for (i, user) in file.auth.local.into_iter().enumerate() {
        let verifier = ScramVerifier::parse(&user.scram).map_err(|m| {
            invalid(
                format!("auth.local[{i}].scram"),
                format!("{m} (generate one with `pgwarden hash-password`)"),
            )
        })?;
        if local_users.contains_key(&user.name) {
            return Err(invalid(
                format!("auth.local[{i}].name"),
                format!("user `{}` is listed twice", user.name),
            ));
        }
        local_users.insert(
            user.name.clone(),
            LocalUser {
                name: user.name,
                verifier,
                groups: user.groups,
            },
        );
    }

    let mut oidc = Vec::new();
    for (i, section) in file.auth.oidc.into_iter().enumerate() {
        let settings = oidc_issuer(section, &resolve_path)
            .map_err(|(key, message)| invalid(format!("auth.oidc[{i}].{key}"), message))?;
        if oidc
            .iter()
            .any(|o: &IssuerSettings| o.issuer == settings.issuer)
        {
            return Err(invalid(
                format!("auth.oidc[{i}].issuer"),
                format!("issuer `{}` is listed twice", settings.issuer),
            ));
        }
        oidc.push(settings);
    }
    if let Some(user) = local_users
        .keys()
        .find(|u| !oidc.is_empty() && upstream.roles.contains_key(*u))
    {
        warnings.push(format!(
            "local user `{user}` has the name of an upstream role: a person signing in with a token who asks for that role gets the local user's SCRAM exchange instead"
        ));
    }
    let plaintext_tokens = file.auth.plaintext_tokens.unwrap_or_default();
    if plaintext_tokens == PlaintextTokens::Loopback {
        warnings.push(
            "auth.plaintext_tokens = \"loopback\": tokens from loopback clients may arrive unencrypted".into(),
        );
    }
    let defaults = RateLimitSettings::default();
    let rate_limit = match file.auth.rate_limit {
        None => defaults,
        Some(r) => RateLimitSettings {
            max_failures: r.max_failures.unwrap_or(defaults.max_failures),
            first_backoff: r.backoff.map_or(defaults.first_backoff, |d| d.0),
            max_backoff: r.max_backoff.map_or(defaults.max_backoff, |d| d.0),
        },
    };
    if rate_limit.max_failures > 0 && rate_limit.first_backoff.is_zero() {
        return Err(invalid(
            "auth.rate_limit.backoff".into(),
            "must be more than 0 (set max_failures = 0 to turn rate limiting off)".into(),
        ));
    }

    for (i, rule) in file.access.iter().enumerate() {
        if rule.users.is_empty() && rule.groups.is_empty() {
            return Err(invalid(
                format!("access[{i}]"),
                "a rule needs `users` or `groups`".into(),
            ));
        }
        if rule.databases.is_empty() {
            return Err(invalid(
                format!("access[{i}].databases"),
                "list at least one database (or \"*\")".into(),
            ));
        }
        if rule.roles.is_empty() {
            return Err(invalid(
                format!("access[{i}].roles"),
                "list at least one upstream role".into(),
            ));
        }
        if let Some(role) = rule.roles.iter().find(|r| !upstream.roles.contains_key(*r)) {
            return Err(invalid(
                format!("access[{i}].roles"),
                format!("role `{role}` has no [[upstream.roles]] entry, so pgwarden cannot log in as it"),
            ));
        }
    }
    let audit = match file.audit {
        None => {
            warnings.push("no [audit] section: sessions and logins are not audited".into());
            None
        }
        Some(a) => {
            let rotate_size = a.rotate_size.map_or(64 << 20, |s| s.0 as u64);
            if rotate_size < 4096 {
                return Err(invalid(
                    "audit.rotate_size".into(),
                    "must be at least 4KiB".into(),
                ));
            }
            let signing_key = match a.signing_key {
                None => {
                    warnings.push(
                        "no audit.signing_key: the audit log has no signed checkpoints".into(),
                    );
                    None
                }
                Some(reference) => {
                    let (pem, inline) = Secret::resolve(&reference, &base_dir)
                        .map_err(|m| invalid("audit.signing_key".into(), m))?;
                    if inline {
                        return Err(invalid(
                            "audit.signing_key".into(),
                            "must be a reference: \"file:PATH\" or \"env:NAME\"".into(),
                        ));
                    }
                    crate::audit::checkpoint::SigningKey::from_pem(pem.expose()).map_err(|m| {
                        invalid(
                            "audit.signing_key".into(),
                            format!("{m} (create one with `pgwarden audit keygen`)"),
                        )
                    })?;
                    Some(pem)
                }
            };
            let batch_window = a.batch_window.map_or(std::time::Duration::ZERO, |d| d.0);
            if batch_window > std::time::Duration::from_secs(1) {
                return Err(invalid(
                    "audit.batch_window".into(),
                    "at most 1s: every login waits for it".into(),
                ));
            }
            let checkpoint_interval = a
                .checkpoint_interval
                .map_or(std::time::Duration::from_secs(60), |d| d.0);
            if checkpoint_interval.is_zero() {
                return Err(invalid(
                    "audit.checkpoint_interval".into(),
                    "must be more than 0".into(),
                ));
            }
            let parameter_key = match (a.parameters, a.parameter_key) {
                (Some(ParameterAudit::Hmac), None) => {
                    return Err(invalid(
                        "audit.parameters".into(),
                        "\"hmac\" needs audit.parameter_key (\"file:PATH\" or \"env:NAME\")".into(),
                    ))
                }
                (Some(ParameterAudit::Hmac), Some(reference)) => {
                    let (key, inline) = Secret::resolve(&reference, &base_dir)
                        .map_err(|m| invalid("audit.parameter_key".into(), m))?;
                    if inline {
                        return Err(invalid(
                            "audit.parameter_key".into(),
                            "must be a reference: \"file:PATH\" or \"env:NAME\"".into(),
                        ));
                    }
                    if key.expose().trim().len() < 16 {
                        return Err(invalid(
                            "audit.parameter_key".into(),
                            "must be at least 16 characters".into(),
                        ));
                    }
                    Some(key)
                }
                (_, Some(_)) => {
                    return Err(invalid(
                        "audit.parameter_key".into(),
                        "is only used with audit.parameters = \"hmac\"".into(),
                    ))
                }
                (_, None) => None,
            };
            Some(AuditSettings {
                on_failure: a.on_failure.unwrap_or(OnFailure::Refuse),
                statement_text: a.statement_text.unwrap_or(StatementText::Normalized),
                parameter_key,
                dir: resolve_path(a.dir),
                fsync: a.fsync.unwrap_or(FsyncPolicy::Batch),
                batch_window,
                rotate_size,
                rotate_daily: a.rotate_daily.unwrap_or(true),
                signing_key,
                checkpoint_interval,
            })
        }
    };
    if file.access.is_empty() {
        warnings.push("no [[access]] rules: every login will be refused".into());
    }
    let p = file.policy;
    if p.on_parse_error == Action::Allow {
        warnings.push(
            "policy.on_parse_error = \"allow\": statements PostgreSQL's parser rejects are forwarded unchecked".into(),
        );
    }
    if !p.guardrails {
        warnings.push("policy.guardrails = false: the built-in guardrails are off".into());
    }
    let sessions = p
        .session
        .into_iter()
        .enumerate()
        .map(|(i, spec)| SessionRule::compile(spec, i))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|(i, message)| invalid(format!("policy.session[{i}].settings"), message))?;
    let mut policy = Policy::new(
        p.rules,
        p.default,
        p.on_parse_error,
        p.guardrails,
        &p.guardrail_exempt_groups,
    )
    .map_err(|e| invalid(format!("policy.rules[{}].{}", e.rule, e.key), e.message))?;
    policy.sessions = sessions;

    let mut break_glass = Vec::new();
    let mut admin_tls = None;
    let mut operator_groups = Vec::new();
    let admin_listen = match file.admin {
        None => None,
        Some(admin) => {
            operator_groups = admin.operator_groups;
            admin_tls = admin
                .tls
                .map(|tls| (resolve_path(tls.cert), resolve_path(tls.key)));
            for (i, user) in admin.break_glass.into_iter().enumerate() {
                let (token, inline) = Secret::resolve(&user.token, &base_dir)
                    .map_err(|m| invalid(format!("admin.break_glass[{i}].token"), m))?;
                if inline {
                    return Err(invalid(
                        format!("admin.break_glass[{i}].token"),
                        "must be a reference: \"file:PATH\" or \"env:NAME\"".into(),
                    ));
                }
                if token.expose().len() < 32 {
                    return Err(invalid(
                        format!("admin.break_glass[{i}].token"),
                        "must be at least 32 characters (e.g. openssl rand -hex 32)".into(),
                    ));
                }
                warnings.push(format!(
                    "admin.break_glass[{i}] (`{}`) can answer approvals without the identity provider; keep its token sealed",
                    user.name
                ));
                break_glass.push(crate::config::BreakGlass {
                    name: user.name,
                    token,
                    groups: user.groups,
                });
            }
            Some(admin.listen.parse::<SocketAddr>().map_err(|_| {
                invalid(
                    "admin.listen".into(),
                    format!(
                        "`{}` is not an address like \"127.0.0.1:9187\"",
                        admin.listen
                    ),
                )
            })?)
        }
    };

    let approvals = match file.approvals {
        None => None,
        Some(a) => {
            if a.approver_groups.is_empty() {
                return Err(invalid(
                    "approvals.approver_groups".into(),
                    "name at least one group whose members may approve".into(),
                ));
            }
            let timeout = a
                .timeout
                .map_or(std::time::Duration::from_secs(300), |d| d.0);
            if timeout.is_zero() || timeout > std::time::Duration::from_secs(24 * 3600) {
                return Err(invalid(
                    "approvals.timeout".into(),
                    "must be more than 0 and at most 24h".into(),
                ));
            }
            let min_approvals = a.min_approvals.unwrap_or(1);
            if min_approvals == 0 {
                return Err(invalid(
                    "approvals.min_approvals".into(),
                    "must be at least 1".into(),
                ));
            }
            Some(crate::approvals::Settings {
                timeout,
                approver_groups: a.approver_groups,
                min_approvals,
                max_grant: a
                    .max_grant
                    .map_or(std::time::Duration::from_secs(8 * 3600), |d| d.0),
                public_url: a.public_url.map(|u| u.trim_end_matches('/').to_owned()),
                notify: match a.notify_webhook {
                    None => None,
                    Some(url) => {
                        let parsed = url::Url::parse(&url).map_err(|e| {
                            invalid(
                                "approvals.notify_webhook".into(),
                                format!("`{url}` is not a URL: {e}"),
                            )
                        })?;
                        if !matches!(parsed.scheme(), "https" | "http") {
                            return Err(invalid(
                                "approvals.notify_webhook".into(),
                                "must be an http(s) URL".into(),
                            ));
                        }
                        Some(crate::approvals::Notify {
                            url,
                            format: a.notify_format.unwrap_or_default(),
                        })
                    }
                },
            })
        }
    };
    if approvals.is_none() && policy.holds_for_approval() {
        warnings.push(
            "rules say \"approve\" but there is no [approvals] section: those statements are refused".into(),
        );
    }

    let masking = masking_settings(file.masking, &base_dir, &invalid, &mut warnings)?;

    Ok(Config {
        masking,
        path: path.to_owned(),
        admin_listen,
        admin_tls,
        operator_groups,
        break_glass,
        approvals,
        server,
        upstream,
        local_users,
        oidc,
        plaintext_tokens,
        rate_limit,
        on_token_expiry: file.auth.on_token_expiry,
        oauthbearer: file.auth.oauthbearer,
        access: file.access,
        audit,
        policy,
        warnings,
    })
}

/// Validate `[masking]`.
fn masking_settings(
    m: MaskingSection,
    base_dir: &Path,
    invalid: &impl Fn(String, String) -> ConfigError,
    warnings: &mut Vec<String>,
) -> Result<crate::masking::Settings, ConfigError> {
    use crate::masking::{Detectors, Kind, Rule, Settings, Strategy};
    let defaults = Settings::default();
    let mut rules = Vec::with_capacity(m.rules.len());
    for (i, r) in m.rules.into_iter().enumerate() {
        let key = |k: &str| format!("masking.rules[{i}].{k}");
        let (schema, table) = match r.table.split_once('.') {
            Some((schema, table)) => (schema.to_owned(), table.to_owned()),
            None => ("public".to_owned(), r.table.clone()),
        };
        // The names go into catalog queries as literals: keep them plain.
        for (k, name) in [("table", &schema), ("table", &table), ("column", &r.column)] {
            if name.is_empty() || name.contains(['\'', '\\', '\0', '.']) {
                return Err(invalid(
                    key(k),
                    format!("`{name}` is not a plain name (`schema.table` and a column name, without quotes, backslashes or extra dots)"),
                ));
            }
        }
        if r.keep.is_some() && !matches!(r.strategy, StrategyName::Partial) {
            return Err(invalid(
                key("keep"),
                "only the \"partial\" strategy keeps characters".into(),
            ));
        }
        rules.push(Rule {
            schema,
            table,
            column: r.column,
            strategy: r.strategy.strategy(r.keep),
            exempt_groups: r.exempt_groups,
            exempt_users: r.exempt_users,
            databases: r.databases,
        });
    }
    let enabled = m.detectors.enabled.unwrap_or_else(|| Kind::ALL.to_vec());
    for kind in m.detectors.strategies.keys() {
        if !enabled.contains(kind) {
            warnings.push(format!(
                "masking.detectors.strategies names `{}`, which is not enabled",
                kind.as_str()
            ));
        }
    }
    let detectors = Detectors {
        enabled: enabled
            .iter()
            .map(|k| {
                let strategy = m
                    .detectors
                    .strategies
                    .get(k)
                    .map_or(k.default_strategy(), |s| s.strategy(None));
                (*k, strategy)
            })
            .collect(),
    };
    let uses_hash = rules.iter().any(|r| r.strategy == Strategy::Hash)
        || detectors.enabled.iter().any(|(_, s)| *s == Strategy::Hash);
    let hash_key = match m.hash_key {
        Some(reference) => {
            let (secret, inline) = Secret::resolve(&reference, base_dir)
                .map_err(|message| invalid("masking.hash_key".into(), message))?;
            if secret.expose().len() < 16 {
                return Err(invalid(
                    "masking.hash_key".into(),
                    "must be at least 16 characters".into(),
                ));
            }
            if inline {
                warnings.push("masking.hash_key is written inline; use \"file:PATH\" or \"env:NAME\"".into());
            }
            secret.expose().as_bytes().to_vec()
        }
        None if uses_hash => {
            return Err(invalid(
                "masking.hash_key".into(),
                "the \"hash\" strategy needs a key (\"file:PATH\" or \"env:NAME\"), so masked values stay stable across restarts".into(),
            ))
        }
        None => Vec::new(),
    };
    let catalog_refresh = m.catalog_refresh.map_or(defaults.catalog_refresh, |d| d.0);
    if catalog_refresh < std::time::Duration::from_secs(1) {
        return Err(invalid(
            "masking.catalog_refresh".into(),
            "must be at least 1s".into(),
        ));
    }
    Ok(Settings {
        rules,
        detectors,
        exempt_groups: m.exempt_groups,
        exempt_users: m.exempt_users,
        detector_exempt_groups: m.detectors.exempt_groups,
        hash_key,
        derived_writes: m.derived_writes.unwrap_or(defaults.derived_writes),
        masked_filters: m.masked_filters.unwrap_or(defaults.masked_filters),
        schema_changes: m.schema_changes.unwrap_or(defaults.schema_changes),
        catalog_refresh,
    })
}

/// Validate one `[[auth.oidc]]` entry. Errors name the key within the entry.
fn oidc_issuer(
    s: OidcSection,
    resolve_path: &impl Fn(PathBuf) -> PathBuf,
) -> Result<IssuerSettings, (&'static str, String)> {
    let url = url::Url::parse(&s.issuer)
        .map_err(|e| ("issuer", format!("`{}` is not a URL: {e}", s.issuer)))?;
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match url.scheme() {
        "https" => {}
        "http" if s.allow_http && loopback => {}
        "http" if s.allow_http => {
            return Err((
                "allow_http",
                "plain http is only allowed for loopback issuers (development)".into(),
            ))
        }
        "http" => {
            return Err((
                "issuer",
                "must be https (for a loopback development issuer, set allow_http = true)".into(),
            ))
        }
        other => return Err(("issuer", format!("unsupported scheme `{other}`"))),
    }
    let audiences = match s.audience {
        OneOrMany::One(a) => vec![a],
        OneOrMany::Many(list) => list,
    };
    if audiences.is_empty() || audiences.iter().any(String::is_empty) {
        return Err(("audience", "name at least one non-empty audience".into()));
    }
    let token_kinds = s
        .token_types
        .unwrap_or_else(|| vec![TokenKind::IdToken, TokenKind::AccessToken]);
    if token_kinds.is_empty() {
        return Err(("token_types", "accept at least one token type".into()));
    }
    let leeway = s.leeway.map_or(std::time::Duration::from_secs(60), |d| d.0);
    if leeway > std::time::Duration::from_secs(600) {
        return Err(("leeway", "at most 10m".into()));
    }
    let required_claims = s
        .required_claims
        .into_iter()
        .map(|(name, value)| {
            serde_json::to_value(value)
                .map(|v| (name, v))
                .map_err(|e| ("required_claims", e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let fetch_timeout = s
        .fetch_timeout
        .map_or(std::time::Duration::from_secs(5), |d| d.0);
    let jwks_refresh = s
        .jwks_refresh
        .map_or(std::time::Duration::from_secs(900), |d| d.0);
    let jwks_cooldown = s
        .jwks_cooldown
        .map_or(std::time::Duration::from_secs(5), |d| d.0);
    for (key, value) in [
        ("fetch_timeout", fetch_timeout),
        ("jwks_refresh", jwks_refresh),
    ] {
        if value.is_zero() {
            return Err((key, "must be more than 0".into()));
        }
    }
    Ok(IssuerSettings {
        issuer: s.issuer,
        audiences,
        username_claim: s.username_claim.unwrap_or_else(|| "email".into()),
        username_prefix: s.username_prefix,
        groups_prefix: s.groups_prefix,
        groups_claim: s.groups_claim.unwrap_or_else(|| "groups".into()),
        token_kinds,
        leeway,
        required_claims,
        authorized_parties: s.authorized_parties,
        ca: s.ca.map(resolve_path),
        allow_http: s.allow_http,
        jwks_refresh,
        jwks_cooldown,
        fetch_timeout,
        scope: s.scope.unwrap_or_else(|| "openid email profile".into()),
    })
}
