//! The admin HTTP endpoint (`[admin] listen`), on its own port, for orchestrators and
//! operators:
//!
//! - `GET /healthz`: 200 while the process serves HTTP at all (liveness);
//! - `GET /readyz`: 200 when pgwarden should get traffic, else 503; the JSON body says why
//!   (draining, an identity provider whose keys could not be fetched yet, …).
//!
//! - `GET /metrics`: Prometheus (OpenMetrics text) — connections, sessions, sign-in failures,
//!   statements by decision, statement latency, approvals, masking, the audit log, the
//!   database server, reloads (the list: README, Deploying it);
//! - `/approvals…`: held statements, for approvers ([`approvals`]);
//! - `/sessions…`: the sessions running now, and ending one ([`sessions`]).
//!
//! Health and metrics need no credentials and show nothing secret (bind the port where only
//! operators reach it); the approvals and sessions APIs need a bearer token (`accept` below).

pub mod approvals;
pub mod client;
pub mod sessions;

use std::sync::Arc;

use http_body_util::{BodyExt, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use tracing::{info, warn};

use crate::approvals::Approver;
use crate::audit::Event;
use crate::net::http::{self, Body};
use crate::session::shutdown::Phase;
use crate::session::Context;

/// Largest request body accepted.
const MAX_BODY: usize = 16 * 1024;

/// Serve the admin endpoints on `listener` until `stop`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    ctx: Arc<Context>,
    stop: tokio_util::sync::CancellationToken,
) {
    http::serve(listener, tls, stop, move |request| {
        let ctx = ctx.clone();
        async move {
            let path = request.uri().path();
            let api = [("/approvals", Api::Approvals), ("/sessions", Api::Sessions)]
                .into_iter()
                .find_map(|(prefix, api)| {
                    let rest = path.strip_prefix(prefix)?;
                    (rest.is_empty() || rest.starts_with('/')).then(|| (api, rest.to_owned()))
                });
            if let Some((api, rest)) = api {
                return api_call(&ctx, request, api, &rest).await;
            }
            match (request.method(), request.uri().path()) {
                (&Method::GET, "/healthz") => {
                    http::response(StatusCode::OK, "text/plain", "ok\n".into())
                }
                (&Method::GET, "/readyz") => readiness(&ctx).await,
                (&Method::GET, "/metrics") => metrics(&ctx).await,
                _ => http::response(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
            }
        }
    })
    .await;
}

async fn readiness(ctx: &Context) -> hyper::Response<Body> {
    let snapshot = ctx.snapshot.load_full();
    let accepting = ctx.shutdown.phase() == Phase::Running;
    let issuers = snapshot.issuers.status();
    let mut reasons = Vec::new();
    if !accepting {
        reasons.push("shutting down".to_owned());
    }
    for issuer in issuers.iter().filter(|i| !i.ready) {
        reasons.push(format!(
            "no signing keys yet from identity provider {}",
            issuer.issuer
        ));
    }
    let upstream = upstream_unreachable(ctx).await;
    if let Some(e) = &upstream {
        reasons.push(format!("the database server is unreachable: {e}"));
    }
    // Reachable is not enough: the server may refuse pgwarden's own credentials.
    let login_problem = ctx.upstream_logins.problem();
    if let Some(problem) = &login_problem {
        reasons.push(format!(
            "the database server refuses pgwarden's login: {problem}"
        ));
    }
    let audit_writable = ctx.audit.as_ref().map(|log| log.is_healthy());
    if audit_writable == Some(false) {
        reasons.push("the audit log cannot be written".to_owned());
    }
    let ready = reasons.is_empty();
    let body = json!({
        "ready": ready,
        "reasons": reasons,
        "accepting": accepting,
        "upstream": {
            "reachable": upstream.is_none(),
            "error": upstream,
            "login_error": login_problem,
        },
        "audit": audit_writable.map(|w| json!({"writable": w})),
        "identity_providers": issuers.iter().map(|i| json!({
            "issuer": i.issuer,
            "ready": i.ready,
            "last_error": i.last_error,
        })).collect::<Vec<_>>(),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    http::response(status, "application/json", format!("{body}\n"))
}

async fn metrics(ctx: &Context) -> hyper::Response<Body> {
    let m = &ctx.metrics;
    let upstream_up =
        upstream_unreachable(ctx).await.is_none() && ctx.upstream_logins.problem().is_none();
    m.upstream_up.set(i64::from(upstream_up));
    m.approvals_pending
        .set(ctx.approvals.list(true).len() as i64);
    m.audit_writable.set(i64::from(
        ctx.audit.as_ref().is_none_or(|log| log.is_healthy()),
    ));
    m.audit_pending.set(
        ctx.audit
            .as_ref()
            .map_or(0, |log| log.pending_records() as i64),
    );
    http::response(
        StatusCode::OK,
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
        m.encode(),
    )
}

/// Why the database server cannot be reached, if it cannot: can a connection be opened (TCP,
/// and TLS when configured)? At most one probe a second, whoever asks how often (the
/// endpoint needs no credentials). A change is logged once, so the log shows when the server
/// went away and when it came back.
async fn upstream_unreachable(ctx: &Context) -> Option<String> {
    let snapshot = ctx.snapshot.load();
    let mut last = ctx.upstream_probe.lock().await;
    if let Some((at, result)) = &*last {
        if at.elapsed() < PROBE_REUSE {
            return result.clone();
        }
    }
    let result = match tokio::time::timeout(UPSTREAM_PROBE, snapshot.upstream.connect()).await {
        Ok(Ok(stream)) => {
            close_probe(stream).await;
            None
        }
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!("no answer within {}s", UPSTREAM_PROBE.as_secs())),
    };
    let reachable_before = last.as_ref().map(|(_, before)| before.is_none());
    match (&result, reachable_before) {
        (Some(e), Some(true) | None) => {
            warn!(error = %e, "the database server is unreachable");
        }
        (None, Some(false)) => info!("the database server is reachable again"),
        _ => {}
    }
    *last = Some((std::time::Instant::now(), result.clone()));
    result
}

/// End a readiness probe's connection the way a client that changed its mind does: TLS
/// close_notify and FIN, then read what the server still sends (TLS 1.3 session tickets)
/// until it closes. Dropping the socket with those unread makes the kernel reset the
/// connection, and PostgreSQL logs "could not receive data from client: Connection reset
/// by peer" for every probe; a connection that ends before its startup packet it does not log.
async fn close_probe(mut stream: crate::net::MaybeTls) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tokio::time::timeout(UPSTREAM_PROBE, async {
        let _ = stream.shutdown().await;
        let mut sink = [0u8; 1024];
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// How long a /readyz probe of the database server answers later requests too.
const PROBE_REUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// How long /readyz waits for the database server.
const UPSTREAM_PROBE: std::time::Duration = std::time::Duration::from_secs(2);

/// The APIs that need a caller.
#[derive(Debug, Clone, Copy)]
enum Api {
    Approvals,
    Sessions,
}

/// A call to one of the APIs that need a caller: authenticated, answered, audited.
async fn api_call(
    ctx: &Context,
    request: Request<Incoming>,
    api: Api,
    rest: &str,
) -> Response<Body> {
    let (call, caller) = accept(ctx, request).await;
    let (response, caller) = match caller {
        Err(rejected) => (rejected.response, rejected.caller),
        Ok(caller) => {
            let response = match api {
                Api::Approvals => approvals::route(ctx, &caller, &call, rest).await,
                Api::Sessions => sessions::route(ctx, &caller, &call, rest).await,
            };
            (response, Some(caller))
        }
    };
    finish(ctx, &call, caller.as_ref(), response).await
}

/// One call to the APIs that need a caller: what was asked.
#[derive(Debug)]
pub struct Call {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub body: Bytes,
}

/// Read a call and find out who makes it. Callers present an OIDC token from the same
/// issuers as database sign-ins (`Authorization: Bearer …`, e.g. from `pgwarden token`), or,
/// when the identity provider is down, a break-glass token from `[[admin.break_glass]]`
/// (acting as `break-glass:NAME`). Every call then goes through [`finish`].
async fn accept(ctx: &Context, request: Request<Incoming>) -> (Call, Result<Approver, Rejected>) {
    let bearer = request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|t| t.trim().to_owned());
    // A token that crossed the network in clear is not taken (whoever saw it could sign
    // in to the database with it): TLS, or a caller on this machine.
    let private = request
        .extensions()
        .get::<crate::net::http::Transport>()
        .is_some_and(|t| t.is_private());
    let caller = match bearer {
        Some(_) if !private => Err(error(
            StatusCode::FORBIDDEN,
            "insecure_transport",
            "bearer tokens are accepted only over HTTPS ([admin.tls]) or from this machine".into(),
        )),
        None => Err(error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send an OIDC token: Authorization: Bearer $(pgwarden token)".into(),
        )),
        Some(token) => {
            let snapshot = ctx.snapshot.load_full();
            // Break-glass tokens first (compared in constant time), then OIDC.
            let glass = snapshot
                .config
                .break_glass
                .iter()
                .find(|b| same_secret(b.token.expose(), &token));
            match glass {
                Some(glass) => Ok(Approver {
                    name: format!("break-glass:{}", glass.name),
                    owner: format!("break-glass {}", glass.name),
                    groups: glass.groups.clone(),
                }),
                None => snapshot
                    .issuers
                    .verify(&token)
                    .await
                    .map(|t| Approver {
                        owner: crate::auth::oidc_owner(&t.issuer, &t.subject),
                        name: t.username,
                        groups: t.groups,
                    })
                    .map_err(|e| {
                        // The token errors speak of a password, as a client at the database
                        // port sends one; here it is the bearer token.
                        let why =
                            e.to_string()
                                .replacen("the password is", "the bearer token is", 1);
                        error(StatusCode::UNAUTHORIZED, "unauthorized", why)
                    }),
            }
        }
    };
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or("").to_owned();
    let caller = caller.map_err(|response| Rejected {
        response,
        caller: None,
    });
    let (body, caller) = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(body) => (body.to_bytes(), caller),
        Err(_) => (
            Bytes::new(),
            Err(Rejected {
                response: error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    format!("the body is larger than {MAX_BODY} bytes"),
                ),
                caller: caller.ok(),
            }),
        ),
    };
    (
        Call {
            method,
            path,
            query,
            body,
        },
        caller,
    )
}

/// A call answered before it reached its API: the response (JSON:
/// `{"error": "...", "message": "..."}`), and who made it when that is known.
#[derive(Debug)]
pub struct Rejected {
    pub response: Response<Body>,
    pub caller: Option<Approver>,
}

/// Audit a call (`admin.call`: who, what, and the status answered) and return its response.
async fn finish(
    ctx: &Context,
    call: &Call,
    caller: Option<&Approver>,
    response: Response<Body>,
) -> Response<Body> {
    if let Some(audit) = &ctx.audit {
        let event = Event::AdminCall {
            caller: caller.map(|c| c.name.clone()),
            method: call.method.to_string(),
            path: call.path.clone(),
            status: response.status().as_u16(),
        };
        let _ = audit.record(event).await;
    }
    response
}

/// Whether two secrets are equal, in time that does not depend on where they differ: both
/// are hashed to 32 bytes, and every byte is compared.
fn same_secret(a: &str, b: &str) -> bool {
    use sha2::Digest;
    let (a, b) = (sha2::Sha256::digest(a), sha2::Sha256::digest(b));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |diff, (x, y)| diff | (x ^ y))
        == 0
}

/// A JSON error: `{"error": code, "message": message}`.
pub fn error(status: StatusCode, code: &str, message: String) -> Response<Body> {
    http::response(
        status,
        "application/json",
        json!({ "error": code, "message": message }).to_string(),
    )
}
