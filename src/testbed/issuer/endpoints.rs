//! The development issuer's HTTP endpoints: discovery, keys, the device authorization grant
//! (RFC 8628) with its approval page, and the token endpoint (device code and refresh token
//! grants).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use jsonwebtoken::jwk::JwkSet;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::{random_code, Shared, State};
use crate::net::http::{self, Body};

/// Largest request body read (forms are tiny).
const MAX_BODY: usize = 16 * 1024;
/// How long a device code waits for its approval, and how often clients may poll.
const DEVICE_CODE_LIFETIME: Duration = Duration::from_secs(600);
const POLL_INTERVAL_SECS: u64 = 1;
const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// An authorization code (code flow with PKCE) waiting to be exchanged.
pub struct CodeGrant {
    person: String,
    client_id: String,
    redirect_uri: String,
    code_challenge: String,
    nonce: Option<String>,
    expires: Instant,
}

/// A device authorization waiting for (or holding) a person's approval.
pub struct DeviceGrant {
    user_code: String,
    client_id: String,
    expires: Instant,
    /// Who approved it, once someone has.
    person: Option<String>,
}

pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    http::serve(listener, tls, stop, move |request| {
        let shared = shared.clone();
        async move { route(&shared, request).await }
    })
    .await;
}

async fn route(shared: &Shared, request: Request<Incoming>) -> Response<Body> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query = form(request.uri().query().unwrap_or("").as_bytes());
    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(body) => form(&body.to_bytes()),
        Err(_) => return json_response(StatusCode::PAYLOAD_TOO_LARGE, json!({})),
    };
    let Ok(mut state) = shared.state.lock() else {
        return json_response(StatusCode::INTERNAL_SERVER_ERROR, json!({}));
    };
    match (method, path.as_str()) {
        (Method::GET, "/.well-known/openid-configuration") => {
            json_response(StatusCode::OK, discovery(&state.issuer))
        }
        (Method::GET, "/jwks") => {
            shared.jwks_fetches.fetch_add(1, Ordering::SeqCst);
            let set = JwkSet {
                keys: vec![state.key.jwk.clone()],
            };
            json_response(
                StatusCode::OK,
                serde_json::to_value(set).unwrap_or_default(),
            )
        }
        (Method::POST, "/device_authorization") => device_authorization(&mut state, &body),
        (Method::GET, "/device") => html_response(
            StatusCode::OK,
            &approval_page(&state, query.get("user_code").map_or("", String::as_str)),
        ),
        (Method::POST, "/device") => approve(&mut state, &body),
        (Method::GET, "/authorize") => authorize_page(&state, &query),
        (Method::POST, "/authorize") => authorize(&mut state, &body),
        (Method::POST, "/token") => token(&mut state, &body),
        _ => json_response(StatusCode::NOT_FOUND, json!({"error": "not_found"})),
    }
}

fn discovery(base: &str) -> Value {
    json!({
        "issuer": base,
        "authorization_endpoint": format!("{base}/authorize"),
        "device_authorization_endpoint": format!("{base}/device_authorization"),
        "token_endpoint": format!("{base}/token"),
        "jwks_uri": format!("{base}/jwks"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256", "EdDSA"],
        "grant_types_supported": [DEVICE_CODE_GRANT, "authorization_code", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "scopes_supported": ["openid", "email", "profile", "groups", "offline_access"],
        "token_endpoint_auth_methods_supported": ["none"],
    })
}

fn device_authorization(state: &mut State, body: &HashMap<String, String>) -> Response<Body> {
    let Some(client_id) = body.get("client_id").filter(|c| !c.is_empty()) else {
        return oauth_error("invalid_client", "client_id is required");
    };
    state
        .devices
        .retain(|_, grant| grant.expires > Instant::now());
    let device_code = random_code(32);
    let user_code = user_code();
    state.devices.insert(
        device_code.clone(),
        DeviceGrant {
            user_code: user_code.clone(),
            client_id: client_id.clone(),
            expires: Instant::now() + DEVICE_CODE_LIFETIME,
            person: None,
        },
    );
    let base = &state.issuer;
    json_response(
        StatusCode::OK,
        json!({
            "device_code": device_code,
            "user_code": user_code,
            "verification_uri": format!("{base}/device"),
            "verification_uri_complete": format!("{base}/device?user_code={user_code}"),
            "expires_in": DEVICE_CODE_LIFETIME.as_secs(),
            "interval": POLL_INTERVAL_SECS,
        }),
    )
}

/// `XXXX-XXXX` from letters people do not confuse.
fn user_code() -> String {
    const LETTERS: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";
    let pick = |_| char::from(LETTERS[rand::random_range(0..LETTERS.len())]);
    let half = || (0..4).map(pick).collect::<String>();
    format!("{}-{}", half(), half())
}

fn normalize_user_code(code: &str) -> String {
    code.chars()
        .filter(char::is_ascii_alphabetic)
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

fn approve(state: &mut State, body: &HashMap<String, String>) -> Response<Body> {
    let code = normalize_user_code(body.get("user_code").map_or("", String::as_str));
    let Some(person) = body.get("person").filter(|p| state.people.contains_key(*p)) else {
        return html_response(StatusCode::BAD_REQUEST, "<p>Choose who you are.</p>");
    };
    let grant = state
        .devices
        .values_mut()
        .find(|g| normalize_user_code(&g.user_code) == code && g.expires > Instant::now());
    match grant {
        Some(grant) => {
            grant.person = Some(person.clone());
            html_response(
                StatusCode::OK,
                &format!(
                    "<p>Signed in as {}. You can close this page and return to your terminal.</p>",
                    escape(person)
                ),
            )
        }
        None => html_response(
            StatusCode::BAD_REQUEST,
            "<p>That code is unknown or has expired. Run <code>pgwarden login</code> again.</p>",
        ),
    }
}

fn token(state: &mut State, body: &HashMap<String, String>) -> Response<Body> {
    let grant_type = body.get("grant_type").map_or("", String::as_str);
    let mut nonce = None;
    let (person_id, client_id) = match grant_type {
        DEVICE_CODE_GRANT => {
            let Some(code) = body.get("device_code") else {
                return oauth_error("invalid_request", "device_code is required");
            };
            let Some(grant) = state.devices.get(code) else {
                return oauth_error("invalid_grant", "unknown device code");
            };
            if grant.expires <= Instant::now() {
                state.devices.remove(code);
                return oauth_error("expired_token", "the device code has expired");
            }
            let Some(person) = grant.person.clone() else {
                return oauth_error("authorization_pending", "waiting for approval");
            };
            let client_id = grant.client_id.clone();
            state.devices.remove(code);
            (person, client_id)
        }
        "authorization_code" => match redeem_code(state, body) {
            Ok(grant) => {
                nonce = grant.nonce;
                (grant.person, grant.client_id)
            }
            Err(description) => return oauth_error("invalid_grant", description),
        },
        "refresh_token" => {
            let Some(entry) = body
                .get("refresh_token")
                .and_then(|t| state.refresh_tokens.remove(t))
            else {
                return oauth_error("invalid_grant", "unknown refresh token");
            };
            entry
        }
        _ => return oauth_error("unsupported_grant_type", "use the device code grant"),
    };
    let Some(person) = state.people.get(&person_id).cloned() else {
        return oauth_error("invalid_grant", "that person no longer exists");
    };
    let ttl = state.token_ttl_secs;
    let mut id_claims = person.clone();
    if let (Some(nonce), Some(map)) = (nonce, id_claims.as_object_mut()) {
        map.insert("nonce".into(), json!(nonce));
    }
    let refresh_token = random_code(40);
    state
        .refresh_tokens
        .insert(refresh_token.clone(), (person_id, client_id.clone()));
    json_response(
        StatusCode::OK,
        json!({
            "access_token": state.access_token(&client_id, &person, ttl),
            "id_token": state.id_token(&client_id, &id_claims, ttl),
            "refresh_token": refresh_token,
            "token_type": "Bearer",
            "expires_in": ttl,
            "scope": "openid email profile groups",
        }),
    )
}

/// The sign-in page of the code flow: choose a person; the request's parameters ride along.
fn authorize_page(state: &State, query: &HashMap<String, String>) -> Response<Body> {
    let hidden: String = [
        "client_id",
        "redirect_uri",
        "state",
        "code_challenge",
        "code_challenge_method",
        "nonce",
    ]
    .iter()
    .filter_map(|k| query.get(*k).map(|v| (k, v)))
    .map(|(k, v)| format!("<input type=hidden name={k} value=\"{}\">", escape(v)))
    .collect();
    html_response(
        StatusCode::OK,
        &format!(
            "<h1>pgwarden development sign-in</h1><form method=post action=/authorize>{hidden}\
             <p>Sign in as:<br>{}</p><p><button type=submit>Sign in</button></p></form>",
            people_choices(state)
        ),
    )
}

/// Issue a code and send the browser back to the client's loopback redirect URI.
fn authorize(state: &mut State, body: &HashMap<String, String>) -> Response<Body> {
    let field = |k: &str| body.get(k).filter(|v| !v.is_empty()).cloned();
    let Some(person) = field("person").filter(|p| state.people.contains_key(p)) else {
        return html_response(StatusCode::BAD_REQUEST, "<p>Choose who you are.</p>");
    };
    let (Some(client_id), Some(redirect_uri), Some(code_challenge)) = (
        field("client_id"),
        field("redirect_uri"),
        field("code_challenge"),
    ) else {
        return html_response(
            StatusCode::BAD_REQUEST,
            "<p>client_id, redirect_uri and a PKCE code_challenge are required.</p>",
        );
    };
    // Only loopback redirects (RFC 8252 §7.3) and only S256 (RFC 7636 §4.2).
    let loopback = url::Url::parse(&redirect_uri).is_ok_and(|u| {
        u.scheme() == "http" && matches!(u.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"))
    });
    if !loopback || field("code_challenge_method").as_deref() != Some("S256") {
        return html_response(
            StatusCode::BAD_REQUEST,
            "<p>Only loopback redirect URIs with S256 PKCE are accepted.</p>",
        );
    }
    state
        .codes
        .retain(|_, grant| grant.expires > Instant::now());
    let code = random_code(32);
    state.codes.insert(
        code.clone(),
        CodeGrant {
            person,
            client_id,
            redirect_uri: redirect_uri.clone(),
            code_challenge,
            nonce: field("nonce"),
            expires: Instant::now() + Duration::from_secs(120),
        },
    );
    let mut location = url::Url::parse(&redirect_uri).map_or(redirect_uri, |mut url| {
        url.query_pairs_mut().append_pair("code", &code);
        if let Some(csrf) = field("state") {
            url.query_pairs_mut().append_pair("state", &csrf);
        }
        url.to_string()
    });
    location.retain(|c| c != '\r' && c != '\n');
    let mut response = html_response(StatusCode::FOUND, "<p>Redirecting…</p>");
    if let Ok(value) = hyper::header::HeaderValue::from_str(&location) {
        response
            .headers_mut()
            .insert(hyper::header::LOCATION, value);
    }
    response
}

/// Check an authorization code against its redirect URI, client and PKCE verifier.
fn redeem_code(
    state: &mut State,
    body: &HashMap<String, String>,
) -> Result<CodeGrant, &'static str> {
    use base64::Engine;
    use sha2::Digest;
    let code = body.get("code").map_or("", String::as_str);
    let Some(grant) = state.codes.remove(code) else {
        return Err("unknown or used authorization code");
    };
    let verifier = body.get("code_verifier").map_or("", String::as_str);
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()));
    if grant.expires <= Instant::now()
        || body.get("redirect_uri") != Some(&grant.redirect_uri)
        || body.get("client_id") != Some(&grant.client_id)
        || challenge != grant.code_challenge
    {
        return Err("the code, redirect URI, client or PKCE verifier does not match");
    }
    Ok(grant)
}

fn people_choices(state: &State) -> String {
    state
        .people
        .iter()
        .map(|(id, claims)| {
            let email = claims["email"].as_str().unwrap_or("");
            let groups = claims["groups"]
                .as_array()
                .map(|g| {
                    g.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            format!(
                "<label><input type=radio name=person value=\"{id}\"> {id} &lt;{email}&gt; ({groups})</label><br>",
                id = escape(id),
                email = escape(email),
                groups = escape(&groups)
            )
        })
        .collect()
}

fn approval_page(state: &State, user_code: &str) -> String {
    format!(
        "<h1>pgwarden development sign-in</h1>\
         <form method=post action=/device>\
         <p>Code: <input name=user_code value=\"{code}\"></p>\
         <p>Sign in as:<br>{people}</p>\
         <p><button type=submit>Approve</button></p></form>",
        code = escape(user_code),
        people = people_choices(state),
    )
}

fn form(bytes: &[u8]) -> HashMap<String, String> {
    url::form_urlencoded::parse(bytes).into_owned().collect()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn oauth_error(error: &str, description: &str) -> Response<Body> {
    json_response(
        StatusCode::BAD_REQUEST,
        json!({"error": error, "error_description": description}),
    )
}

fn json_response(status: StatusCode, body: Value) -> Response<Body> {
    http::response(status, "application/json", body.to_string())
}

fn html_response(status: StatusCode, body: &str) -> Response<Body> {
    http::response(
        status,
        "text/html; charset=utf-8",
        format!("<!doctype html><meta charset=utf-8><title>pgwarden sign-in</title>{body}"),
    )
}
