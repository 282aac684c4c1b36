//! The sessions API: who is connected now, and ending a session.
//!
//! - `GET /sessions`: the running sessions the caller may see, oldest first, with what each
//!   is doing ([`crate::session::live::Activity`]): their own (the same person: OIDC issuer
//!   and subject), and every session for members of `admin.operator_groups`;
//! - `GET /sessions/ID`: one of them;
//! - `POST /sessions/ID/end`, with an optional body `{"reason": "…"}`: the session ends as at
//!   pgwarden's shutdown (a statement still running is cancelled on the server, an open
//!   transaction is rolled back) and its client gets FATAL 57P01 saying who ended it and
//!   why. `admin.session_end` is on disk before the session is told; its own
//!   `session.end` follows.
//!
//! Sessions the caller may not see are 404, as if they did not exist.

use hyper::{Method, Response, StatusCode};
use serde::Deserialize;
use serde_json::json;
use tracing::{info, warn};

use super::{error, Call};
use crate::approvals::Approver;
use crate::audit::Event;
use crate::net::http::{self, Body};
use crate::session::live::LiveSession;
use crate::session::Context;

/// Longest reason kept (the client's error message carries it).
const MAX_REASON: usize = 500;

/// `POST /sessions/ID/end`'s body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndBody {
    #[serde(default)]
    reason: Option<String>,
}

/// Answer an authenticated call to `/sessions{rest}`.
pub async fn route(ctx: &Context, caller: &Approver, call: &Call, rest: &str) -> Response<Body> {
    let (method, body) = (&call.method, &call.body[..]);
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let operator = {
        let snapshot = ctx.snapshot.load();
        caller
            .groups
            .iter()
            .any(|g| snapshot.config.operator_groups.contains(g))
    };
    let may_see = |s: &LiveSession| operator || s.owner == caller.owner;
    let visible = |id: &str| {
        id.parse::<u64>()
            .ok()
            .and_then(|id| ctx.sessions.get(id))
            .filter(|s| may_see(s))
    };
    match (method, segments.as_slice()) {
        (&Method::GET, []) => {
            let all = ctx.sessions.list();
            let list: Vec<&LiveSession> = all.iter().filter(|s| may_see(s)).collect();
            http::response(
                StatusCode::OK,
                "application/json",
                json!({ "sessions": list }).to_string(),
            )
        }
        (&Method::GET, [id]) => match visible(id) {
            Some(session) => http::response(
                StatusCode::OK,
                "application/json",
                json!(session).to_string(),
            ),
            None => not_found(id),
        },
        (&Method::POST, [id, "end"]) => {
            let end: EndBody = if body.iter().all(u8::is_ascii_whitespace) {
                EndBody::default()
            } else {
                match serde_json::from_slice(body) {
                    Ok(end) => end,
                    Err(e) => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            "bad_request",
                            format!("the body must be JSON like {{\"reason\": \"…\"}}: {e}"),
                        )
                    }
                }
            };
            let reason = end
                .reason
                .map(|r| r.trim().to_owned())
                .filter(|r| !r.is_empty());
            if reason
                .as_ref()
                .is_some_and(|r| r.chars().count() > MAX_REASON)
            {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("the reason is longer than {MAX_REASON} characters"),
                );
            }
            let Some(session) = visible(id) else {
                return not_found(id);
            };
            if let Some(audit) = &ctx.audit {
                // What happens to a session is on record before it happens.
                let event = Event::AdminSessionEnd {
                    session: session.session,
                    by: caller.name.clone(),
                    by_groups: caller.groups.clone(),
                    reason: reason.clone(),
                };
                if let Err(e) = audit.record_durable(event).await {
                    warn!(error = %e, session = session.session, "cannot record the end of a session; not ending it");
                    return error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "audit_unavailable",
                        "the audit log cannot record this; the session was not ended".into(),
                    );
                }
            }
            let why = match &reason {
                Some(reason) => format!(
                    "ended by {} through pgwarden's admin API: {reason}",
                    caller.name
                ),
                None => format!("ended by {} through pgwarden's admin API", caller.name),
            };
            if !ctx.sessions.end(session.session, &ctx.shutdown, why) {
                return error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("session {} has ended already", session.session),
                );
            }
            info!(session = session.session, by = %caller.name, "session ended through the admin API");
            http::response(
                StatusCode::OK,
                "application/json",
                json!({ "session": session.session, "status": "ending" }).to_string(),
            )
        }
        _ => error(
            StatusCode::NOT_FOUND,
            "not_found",
            "GET /sessions, GET /sessions/ID, POST /sessions/ID/end".into(),
        ),
    }
}

fn not_found(id: &str) -> Response<Body> {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no running session {id} that you may see"),
    )
}
