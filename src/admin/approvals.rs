//! The approvals API: list, show, approve and deny held statements.
//!
//! Callers present an OIDC token from the same issuers as database sign-ins
//! (`Authorization: Bearer …`, e.g. from `pgwarden token`), or, when the identity provider is
//! down, a break-glass token from `[[admin.break_glass]]` (recorded as `break-glass:NAME`). Requests are visible to the
//! approvers they name and to their requester; answers follow the separation-of-duties rules
//! in [`crate::approvals`]. Every call is audited (`admin.call`), every answer too
//! (`approval.answer`). Errors are JSON: `{"error": "...", "message": "..."}`.

use std::time::Duration;

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::info;

use crate::approvals::{self, ApprovalError, Approver};
use crate::audit::Event;
use crate::config::units::HumanDuration;
use crate::net::http::{self, Body};
use crate::session::Context;

/// Largest request body accepted.
const MAX_BODY: usize = 16 * 1024;

/// An answer's body: `{"reason": "...", "grant": "30m"}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AnswerBody {
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    grant: Option<HumanDuration>,
}

/// Handle `/approvals…`; `None` if the path is not ours.
pub async fn handle(ctx: &Context, request: Request<Incoming>) -> Option<Response<Body>> {
    let path = request.uri().path().to_owned();
    let rest = path.strip_prefix("/approvals")?;
    let method = request.method().clone();
    let query = request.uri().query().unwrap_or("").to_owned();
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
    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            return Some(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the body is larger than {MAX_BODY} bytes"),
            ))
        }
    };
    let (response, caller) = match caller {
        Err(response) => (response, None),
        Ok(caller) => (
            route(ctx, &caller, &method, rest, &query, &body).await,
            Some(caller.name),
        ),
    };
    if let Some(audit) = &ctx.audit {
        let event = Event::AdminCall {
            caller,
            method: method.to_string(),
            path: path.clone(),
            status: response.status().as_u16(),
        };
        let _ = audit.record(event).await;
    }
    Some(response)
}

async fn route(
    ctx: &Context,
    caller: &Approver,
    method: &Method,
    rest: &str,
    query: &str,
    body: &[u8],
) -> Response<Body> {
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let snapshot = ctx.snapshot.load();
    let global_approvers = snapshot
        .config
        .approvals
        .as_ref()
        .map(|a| a.approver_groups.clone())
        .unwrap_or_default();
    let may_see = |r: &approvals::Request| {
        r.requester_owner == caller.owner
            || caller
                .groups
                .iter()
                .any(|g| r.approver_groups.contains(g) || global_approvers.contains(g))
    };
    match (method, segments.as_slice()) {
        (&Method::GET, []) => {
            let pending_only = query.split('&').any(|p| p == "status=pending");
            let list: Vec<Value> = ctx
                .approvals
                .list(pending_only)
                .iter()
                .filter(|r| may_see(r))
                .map(|r| json!(r))
                .collect();
            http::response(
                StatusCode::OK,
                "application/json",
                json!({ "requests": list }).to_string(),
            )
        }
        (&Method::GET, [id]) => match ctx.approvals.get(id).filter(|r| may_see(r)) {
            Some(request) => http::response(StatusCode::OK, "application/json", json!(request).to_string()),
            None => error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no approval request {id} that you may see"),
            ),
        },
        (&Method::POST, [id, verb @ ("approve" | "deny")]) => {
            let answer: AnswerBody = if body.iter().all(u8::is_ascii_whitespace) {
                AnswerBody::default()
            } else {
                match serde_json::from_slice(body) {
                    Ok(answer) => answer,
                    Err(e) => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            "bad_request",
                            format!("the body must be JSON like {{\"reason\": \"…\", \"grant\": \"30m\"}}: {e}"),
                        )
                    }
                }
            };
            let approve = *verb == "approve";
            if !approve && answer.reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "a denial needs a reason (the requester sees it)".into(),
                );
            }
            let max_grant = snapshot
                .config
                .approvals
                .as_ref()
                .map_or(Duration::ZERO, |a| a.max_grant);
            let grant = answer.grant.map(|g| g.0);
            if grant.is_some_and(|g| g > max_grant || g.is_zero()) || (grant.is_some() && !approve) {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!(
                        "a grant comes with an approval, and lasts at most approvals.max_grant ({})",
                        approvals::human(max_grant)
                    ),
                );
            }
            // Whom a request may not be shown to learns nothing from answering it either.
            if ctx.approvals.get(id).filter(|r| may_see(r)).is_none() {
                return error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("no approval request {id} that you may see"),
                );
            }
            match ctx
                .approvals
                .answer(id, caller, approve, answer.reason.clone(), grant)
            {
                Ok(request) => {
                    info!(request = %request.id, by = %caller.name, approve, status = request.status.as_str(), "approval answered");
                    if let Some(audit) = &ctx.audit {
                        let event = Event::ApprovalAnswer {
                            request: request.id.clone(),
                            by: caller.name.clone(),
                            by_groups: caller.groups.clone(),
                            approve,
                            reason: answer.reason,
                            grant_minutes: grant.map(|g| g.as_secs().div_ceil(60)),
                            request_status: request.status.as_str().to_owned(),
                        };
                        let _ = audit.record_durable(event).await;
                    }
                    http::response(StatusCode::OK, "application/json", json!(request).to_string())
                }
                Err(e) => {
                    let status = match e {
                        ApprovalError::NotFound(_) => StatusCode::NOT_FOUND,
                        ApprovalError::NotPending { .. } | ApprovalError::AlreadyAnswered(_) => {
                            StatusCode::CONFLICT
                        }
                        ApprovalError::OwnRequest | ApprovalError::NotAnApprover(_) => {
                            StatusCode::FORBIDDEN
                        }
                    };
                    error(status, error_code(&e), e.to_string())
                }
            }
        }
        _ => error(
            StatusCode::NOT_FOUND,
            "not_found",
            "GET /approvals, GET /approvals/ID, POST /approvals/ID/approve, POST /approvals/ID/deny".into(),
        ),
    }
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

fn error_code(e: &ApprovalError) -> &'static str {
    match e {
        ApprovalError::NotFound(_) => "not_found",
        ApprovalError::NotPending { .. } => "not_pending",
        ApprovalError::AlreadyAnswered(_) => "already_answered",
        ApprovalError::OwnRequest => "own_request",
        ApprovalError::NotAnApprover(_) => "not_an_approver",
    }
}

fn error(status: StatusCode, code: &str, message: String) -> Response<Body> {
    http::response(
        status,
        "application/json",
        json!({ "error": code, "message": message }).to_string(),
    )
}
