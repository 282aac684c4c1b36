//! The client side of signing in: `pgwarden login`, `pgwarden token`, `pgwarden psql`.
//!
//! `login` runs the OAuth 2.0 device authorization grant (RFC 8628) against the company's
//! identity provider with openidconnect: it prints a code and a URL, the person approves in
//! a browser (or, with `--browser`, the authorization code flow with PKCE on a loopback
//! redirect), and the tokens land in the user's config dir (`tokens.json`, mode 0600, in a
//! 0700 directory). `token` prints a token that is valid for at least another minute,
//! refreshing it with the refresh token when needed, for `PGPASSWORD="$(pgwarden token)"`.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthenticationFlow, CoreClaimName, CoreClaimType, CoreClient,
    CoreClientAuthMethod, CoreDeviceAuthorizationResponse, CoreGrantType, CoreJsonWebKey,
    CoreJsonWebKeySet, CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm,
    CoreResponseMode, CoreResponseType, CoreSubjectIdentifierType, CoreTokenResponse,
};
use openidconnect::{
    AdditionalProviderMetadata, AuthorizationCode, ClientId, CsrfToken, DeviceAuthorizationUrl,
    IssuerUrl, Nonce, OAuth2TokenResponse, PkceCodeChallenge, ProviderMetadata, RedirectUrl,
    RefreshToken, Scope, TokenResponse, TokenUrl,
};
use serde::{Deserialize, Serialize};

use crate::error::error_chain;
use crate::net::http::Fetcher;

/// Refresh a token that expires within this long.
const MIN_VALIDITY: Duration = Duration::from_secs(60);
const FETCH_TIMEOUT: Duration = Duration::from_secs(15);
const MAX_RESPONSE: usize = 1 << 20;
const CACHE_FILE: &str = "tokens.json";
/// How long the browser flow waits for the redirect.
const BROWSER_WAIT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("{0}")]
    Setup(String),
    #[error("cannot reach the identity provider: {0}")]
    Provider(String),
    #[error("sign-in did not complete: {0}")]
    Denied(String),
    #[error("no sign-in cached{0}; run `pgwarden login --issuer URL --client-id ID` first")]
    NotLoggedIn(String),
    #[error(
        "the cached sign-in has expired and cannot be refreshed ({0}); run `pgwarden login` again"
    )]
    Expired(String),
    #[error("token cache {path}: {detail}")]
    Cache { path: PathBuf, detail: String },
}

/// Which token `pgwarden token` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenChoice {
    /// The ID token (pgwarden's `audience` is then the client id).
    Id,
    /// The access token (when the provider issues JWT access tokens for pgwarden).
    Access,
}

/// One cached sign-in.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredLogin {
    issuer: String,
    client_id: String,
    token_endpoint: String,
    ca: Option<PathBuf>,
    id_token: Option<String>,
    access_token: String,
    refresh_token: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Cache {
    /// Most recent first.
    logins: Vec<StoredLogin>,
}

/// Where the token cache lives: `$PGWARDEN_CONFIG_DIR`, else `$XDG_CONFIG_HOME/pgwarden`,
/// else `~/.config/pgwarden`.
pub fn config_dir() -> Result<PathBuf, LoginError> {
    if let Some(dir) = std::env::var_os("PGWARDEN_CONFIG_DIR") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("pgwarden"));
    }
    match std::env::var_os("HOME") {
        Some(home) => Ok(PathBuf::from(home).join(".config").join("pgwarden")),
        None => Err(LoginError::Setup(
            "cannot find a config directory: set HOME or PGWARDEN_CONFIG_DIR".into(),
        )),
    }
}

/// The provider metadata we need beyond openidconnect's core fields.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DeviceEndpoint {
    device_authorization_endpoint: Option<DeviceAuthorizationUrl>,
}
impl AdditionalProviderMetadata for DeviceEndpoint {}

type DeviceProviderMetadata = ProviderMetadata<
    DeviceEndpoint,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

/// How `pgwarden login` gets the person's consent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginFlow {
    /// Device authorization grant: a URL and a code, confirmed in any browser.
    Device,
    /// Authorization code with PKCE, the browser redirected back to a loopback port.
    Browser,
}

/// What `pgwarden login` needs.
#[derive(Debug, Clone)]
pub struct LoginRequest {
    pub issuer: String,
    pub client_id: String,
    pub scopes: Vec<String>,
    pub ca: Option<PathBuf>,
    pub flow: LoginFlow,
}

fn fetcher(issuer: &str, ca: Option<&Path>) -> Result<Fetcher, LoginError> {
    let url = url::Url::parse(issuer)
        .map_err(|e| LoginError::Setup(format!("`{issuer}` is not a URL: {e}")))?;
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    if url.scheme() != "https" && !(url.scheme() == "http" && loopback) {
        return Err(LoginError::Setup(format!(
            "`{issuer}` must be https (plain http only on loopback, for development)"
        )));
    }
    Fetcher::new(ca, FETCH_TIMEOUT, MAX_RESPONSE).map_err(LoginError::Setup)
}

/// Sign in and cache the tokens; `prompt` receives what the person must do.
pub async fn login(request: &LoginRequest, prompt: &mut dyn Write) -> Result<(), LoginError> {
    let http = fetcher(&request.issuer, request.ca.as_deref())?;
    let issuer = IssuerUrl::new(request.issuer.clone())
        .map_err(|e| LoginError::Setup(format!("`{}`: {e}", request.issuer)))?;
    let metadata = DeviceProviderMetadata::discover_async(issuer, &http)
        .await
        .map_err(|e| LoginError::Provider(error_chain(&e)))?;
    let token_endpoint = metadata
        .token_endpoint()
        .map(|u| u.as_str().to_owned())
        .ok_or_else(|| LoginError::Setup("the provider has no token_endpoint".into()))?;
    let token = match request.flow {
        LoginFlow::Device => device_flow(request, metadata, &http, prompt).await?,
        LoginFlow::Browser => browser_flow(request, metadata, &http, prompt).await?,
    };
    let stored = StoredLogin {
        issuer: request.issuer.clone(),
        client_id: request.client_id.clone(),
        token_endpoint,
        ca: request.ca.clone(),
        id_token: token.id_token().map(|t| t.to_string()),
        access_token: token.access_token().secret().clone(),
        refresh_token: token.refresh_token().map(|t| t.secret().clone()),
    };
    let dir = config_dir()?;
    let mut cache = read_cache(&dir)?;
    cache
        .logins
        .retain(|l| !(l.issuer == stored.issuer && l.client_id == stored.client_id));
    cache.logins.insert(0, stored);
    write_cache(&dir, &cache)?;
    let _ = writeln!(
        prompt,
        "Signed in. Use it with: PGPASSWORD=\"$(pgwarden token)\" psql \"host=… sslmode=require\""
    );
    Ok(())
}

/// The device authorization grant (RFC 8628): a URL and a code to confirm in any browser.
async fn device_flow(
    request: &LoginRequest,
    metadata: DeviceProviderMetadata,
    http: &Fetcher,
    prompt: &mut dyn Write,
) -> Result<CoreTokenResponse, LoginError> {
    let device_url = metadata
        .additional_metadata()
        .device_authorization_endpoint
        .clone()
        .ok_or_else(|| {
            LoginError::Setup(format!(
                "{} does not offer the device authorization grant (no device_authorization_endpoint); try --browser",
                request.issuer
            ))
        })?;
    let client = CoreClient::from_provider_metadata(
        metadata,
        ClientId::new(request.client_id.clone()),
        None,
    )
    .set_device_authorization_url(device_url);
    let mut exchange = client.exchange_device_code();
    for scope in &request.scopes {
        exchange = exchange.add_scope(Scope::new(scope.clone()));
    }
    let details: CoreDeviceAuthorizationResponse = exchange
        .request_async(http)
        .await
        .map_err(|e| LoginError::Provider(error_chain(&e)))?;
    let url = details
        .verification_uri_complete()
        .map(|u| u.secret().clone())
        .unwrap_or_else(|| details.verification_uri().to_string());
    let _ = writeln!(
        prompt,
        "To sign in, open {url}\nand confirm the code {code}\n(waiting up to {mins} minutes…)",
        code = details.user_code().secret(),
        mins = details.expires_in().as_secs() / 60,
    );
    let _ = prompt.flush();
    client
        .exchange_device_access_token(&details)
        .map_err(|e| LoginError::Setup(e.to_string()))?
        .request_async(http, tokio::time::sleep, None)
        .await
        .map_err(|e| LoginError::Denied(error_chain(&e)))
}

/// The authorization code flow with PKCE (RFC 7636) on a loopback redirect (RFC 8252): the
/// browser comes back to a one-shot HTTP listener on 127.0.0.1.
async fn browser_flow(
    request: &LoginRequest,
    metadata: DeviceProviderMetadata,
    http: &Fetcher,
    prompt: &mut dyn Write,
) -> Result<CoreTokenResponse, LoginError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| LoginError::Setup(format!("cannot listen on loopback: {e}")))?;
    let port = listener
        .local_addr()
        .map_err(|e| LoginError::Setup(e.to_string()))?
        .port();
    let redirect = RedirectUrl::new(format!("http://127.0.0.1:{port}/callback"))
        .map_err(|e| LoginError::Setup(e.to_string()))?;
    let client = CoreClient::from_provider_metadata(
        metadata,
        ClientId::new(request.client_id.clone()),
        None,
    )
    .set_redirect_uri(redirect);
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let mut authorize = client
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .set_pkce_challenge(challenge);
    for scope in request.scopes.iter().filter(|s| *s != "openid") {
        authorize = authorize.add_scope(Scope::new(scope.clone()));
    }
    let (url, csrf, _nonce) = authorize.url();
    let _ = writeln!(
        prompt,
        "To sign in, open this URL in your browser:\n{url}\n(waiting up to {} minutes…)",
        BROWSER_WAIT.as_secs() / 60
    );
    let _ = prompt.flush();

    let (sender, mut receiver) = tokio::sync::mpsc::channel::<HashMap<String, String>>(1);
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(crate::net::http::serve(
        listener,
        None,
        stop.clone(),
        move |req: hyper::Request<hyper::body::Incoming>| {
            let sender = sender.clone();
            async move {
                if req.uri().path() != "/callback" {
                    return crate::net::http::response(
                        hyper::StatusCode::NOT_FOUND,
                        "text/plain",
                        "not found\n".into(),
                    );
                }
                let params: HashMap<String, String> =
                    url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
                        .into_owned()
                        .collect();
                let _ = sender.try_send(params);
                crate::net::http::response(
                    hyper::StatusCode::OK,
                    "text/html; charset=utf-8",
                    "<!doctype html><meta charset=utf-8><title>pgwarden</title>\
                     <p>pgwarden: you can close this page and return to your terminal.</p>"
                        .into(),
                )
            }
        },
    ));
    let params = tokio::time::timeout(BROWSER_WAIT, receiver.recv()).await;
    stop.cancel();
    let _ = server.await;
    let params = params
        .ok()
        .flatten()
        .ok_or_else(|| LoginError::Denied("no answer from the browser in time".into()))?;
    if let Some(error) = params.get("error") {
        return Err(LoginError::Denied(format!(
            "the provider said {error}: {}",
            params.get("error_description").map_or("", String::as_str)
        )));
    }
    if params.get("state") != Some(csrf.secret()) {
        return Err(LoginError::Denied(
            "the browser came back with a different state (possible CSRF); try again".into(),
        ));
    }
    let code = params
        .get("code")
        .ok_or_else(|| LoginError::Denied("the browser came back without a code".into()))?;
    client
        .exchange_code(AuthorizationCode::new(code.clone()))
        .map_err(|e| LoginError::Setup(e.to_string()))?
        .set_pkce_verifier(verifier)
        .request_async(http)
        .await
        .map_err(|e| LoginError::Denied(error_chain(&e)))
}

/// A token from the cache, refreshed if it expires within a minute.
pub async fn token(issuer: Option<&str>, choice: TokenChoice) -> Result<String, LoginError> {
    let dir = config_dir()?;
    let mut cache = read_cache(&dir)?;
    let index = cache
        .logins
        .iter()
        .position(|l| issuer.is_none_or(|i| l.issuer == i))
        .ok_or_else(|| {
            LoginError::NotLoggedIn(issuer.map(|i| format!(" for {i}")).unwrap_or_default())
        })?;
    let login = &cache.logins[index];
    if let Some(token) = pick(login, choice).filter(|t| valid_for(t, MIN_VALIDITY)) {
        return Ok(token.to_owned());
    }
    let refreshed = refresh(login).await?;
    let token = pick(&refreshed, choice)
        .map(str::to_owned)
        .ok_or_else(|| LoginError::Expired("the provider returned no such token".into()))?;
    cache.logins[index] = refreshed;
    write_cache(&dir, &cache)?;
    Ok(token)
}

fn pick(login: &StoredLogin, choice: TokenChoice) -> Option<&str> {
    match choice {
        TokenChoice::Id => login.id_token.as_deref(),
        TokenChoice::Access => Some(login.access_token.as_str()),
    }
}

async fn refresh(login: &StoredLogin) -> Result<StoredLogin, LoginError> {
    let refresh_token = login
        .refresh_token
        .clone()
        .ok_or_else(|| LoginError::Expired("no refresh token".into()))?;
    let http = fetcher(&login.issuer, login.ca.as_deref())?;
    let issuer =
        IssuerUrl::new(login.issuer.clone()).map_err(|e| LoginError::Setup(e.to_string()))?;
    let token_url = TokenUrl::new(login.token_endpoint.clone())
        .map_err(|e| LoginError::Setup(e.to_string()))?;
    // No ID token is verified here (pgwarden does that): an empty key set suffices.
    let client = CoreClient::new(
        ClientId::new(login.client_id.clone()),
        issuer,
        CoreJsonWebKeySet::default(),
    )
    .set_token_uri(token_url);
    let token: CoreTokenResponse = client
        .exchange_refresh_token(&RefreshToken::new(refresh_token))
        .request_async(&http)
        .await
        .map_err(|e| LoginError::Expired(error_chain(&e)))?;
    Ok(StoredLogin {
        id_token: token.id_token().map(|t| t.to_string()),
        access_token: token.access_token().secret().clone(),
        refresh_token: token
            .refresh_token()
            .map(|t| t.secret().clone())
            .or_else(|| login.refresh_token.clone()),
        ..login.clone()
    })
}

/// Whether a JWT's `exp` is at least `margin` away. Unverified: this is the client's own
/// token, only read to decide whether to refresh it.
fn valid_for(token: &str, margin: Duration) -> bool {
    let exp = token
        .split('.')
        .nth(1)
        .and_then(|payload| URL_SAFE_NO_PAD.decode(payload).ok())
        .and_then(|json| serde_json::from_slice::<serde_json::Value>(&json).ok())
        .and_then(|claims| claims["exp"].as_f64());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    exp.is_some_and(|exp| exp - margin.as_secs_f64() > now)
}

fn read_cache(dir: &Path) -> Result<Cache, LoginError> {
    let path = dir.join(CACHE_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| LoginError::Cache {
            path,
            detail: format!("not a token cache ({e}); delete it and run `pgwarden login`"),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Cache::default()),
        Err(e) => Err(LoginError::Cache {
            path,
            detail: e.to_string(),
        }),
    }
}

/// Write the cache readable by its owner only, replacing the old file atomically.
fn write_cache(dir: &Path, cache: &Cache) -> Result<(), LoginError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let path = dir.join(CACHE_FILE);
    let err = |detail: String| LoginError::Cache {
        path: path.clone(),
        detail,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| err(e.to_string()))?;
    let tmp = dir.join(format!("{CACHE_FILE}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| err(e.to_string()))?;
    let json = serde_json::to_vec_pretty(cache).map_err(|e| err(e.to_string()))?;
    file.write_all(&json)
        .and_then(|()| file.sync_all())
        .map_err(|e| err(e.to_string()))?;
    // A umask cannot widen 0600, but an existing file's mode could be wider: set it.
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| err(e.to_string()))?;
    std::fs::rename(&tmp, &path).map_err(|e| err(e.to_string()))
}
