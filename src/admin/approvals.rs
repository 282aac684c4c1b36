//! The approvals API: list, show, approve and deny held statements.
//!
//! Callers authenticate as `admin::accept` says. Requests are visible to the approvers they
//! name and to their requester; answers follow the separation-of-duties rules in
//! [`crate::approvals`]. Every answer is audited (`approval.answer`).

use std::time::Duration;

use hyper::{Method, Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::info;

use super::{error, Call};
use crate::approvals::{self, ApprovalError, Approver};
use crate::audit::Event;
use crate::config::units::HumanDuration;
use crate::net::http::{self, Body};
use crate::session::Context;

/// An answer's body: `{"reason": "...", "grant": "30m"}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AnswerBody {
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    grant: Option<HumanDuration>,
}

/// Answer an authenticated call to `/approvals{rest}`.
pub async fn route(ctx: &Context, caller: &Approver, call: &Call, rest: &str) -> Response<Body> {
    let (method, query, body) = (&call.method, call.query.as_str(), &call.body[..]);
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

fn error_code(e: &ApprovalError) -> &'static str {
    match e {
        ApprovalError::NotFound(_) => "not_found",
        ApprovalError::NotPending { .. } => "not_pending",
        ApprovalError::AlreadyAnswered(_) => "already_answered",
        ApprovalError::OwnRequest => "own_request",
        ApprovalError::NotAnApprover(_) => "not_an_approver",
    }
}
