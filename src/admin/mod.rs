//! The admin HTTP endpoint (`[admin] listen`), on its own port, for orchestrators and
//! operators:
//!
//! - `GET /healthz`: 200 while the process serves HTTP at all (liveness);
//! - `GET /readyz`: 200 when pgwarden should get traffic, else 503; the JSON body says why
//!   (draining, an identity provider whose keys could not be fetched yet, …).
//!
//! - `/approvals…`: held statements, for approvers ([`approvals`]).
//!
//! Health endpoints need no credentials and show nothing secret; the approvals API needs an
//! OIDC token. Metrics and sessions come later.

pub mod approvals;

use std::sync::Arc;

use hyper::{Method, StatusCode};
use serde_json::json;

use crate::net::http::{self, Body};
use crate::session::shutdown::Phase;
use crate::session::Context;

/// Serve the admin endpoints on `listener` until `stop`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    ctx: Arc<Context>,
    stop: tokio_util::sync::CancellationToken,
) {
    http::serve(listener, None, stop, move |request| {
        let ctx = ctx.clone();
        async move {
            if request.uri().path().starts_with("/approvals") {
                if let Some(response) = approvals::handle(&ctx, request).await {
                    return response;
                }
                return http::response(StatusCode::NOT_FOUND, "text/plain", "not found\n".into());
            }
            match (request.method(), request.uri().path()) {
                (&Method::GET, "/healthz") => {
                    http::response(StatusCode::OK, "text/plain", "ok\n".into())
                }
                (&Method::GET, "/readyz") => readiness(&ctx),
                _ => http::response(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
            }
        }
    })
    .await;
}

fn readiness(ctx: &Context) -> hyper::Response<Body> {
    let snapshot = ctx.snapshot.load();
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
    let ready = reasons.is_empty();
    let body = json!({
        "ready": ready,
        "reasons": reasons,
        "accepting": accepting,
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
