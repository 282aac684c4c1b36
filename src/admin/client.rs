//! `pgwarden approvals …` and `pgwarden sessions …`: the admin API's approvals and sessions
//! endpoints from the command line, with the token from `pgwarden login`.

use std::time::Duration;

use serde_json::{json, Value};

use crate::login::{self, TokenChoice};
use crate::net::http::Fetcher;

/// What to do.
#[derive(Debug, Clone)]
pub enum Call {
    List {
        all: bool,
    },
    Show {
        id: String,
    },
    Approve {
        id: String,
        reason: Option<String>,
        grant: Option<String>,
    },
    Deny {
        id: String,
        reason: String,
    },
    /// The running sessions the caller may see.
    Sessions,
    EndSession {
        id: String,
        reason: Option<String>,
    },
}

/// Where the admin API is and who is calling.
#[derive(Debug, Clone)]
pub struct Target {
    /// e.g. `http://127.0.0.1:9187`.
    pub admin: String,
    /// Which cached sign-in to use (default: the most recent).
    pub issuer: Option<String>,
    pub ca: Option<std::path::PathBuf>,
    pub json: bool,
    /// A token to use instead of the cached sign-in (automation, break-glass scripts).
    pub token: Option<String>,
}

/// The token is a credential for the database too: it goes over plain HTTP only to this
/// machine.
fn refuse_cleartext(base: &str) -> Result<(), String> {
    let Ok(url) = url::Url::parse(base) else {
        return Err(format!(
            "`{base}` is not a URL like https://pgwarden.internal:9187"
        ));
    };
    let loopback = match url.host() {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    if url.scheme() == "https" || (url.scheme() == "http" && loopback) {
        Ok(())
    } else {
        Err(format!(
            "refusing to send your token to {base} in clear: use https:// (the server's [admin.tls]), or http:// only to this machine"
        ))
    }
}

/// Run `call`; the text to print, or an error message.
pub async fn run(target: &Target, call: Call) -> Result<String, String> {
    let token = match &target.token {
        Some(token) => token.trim().to_owned(),
        None => login::token(target.issuer.as_deref(), TokenChoice::Id)
            .await
            .map_err(|e| e.to_string())?,
    };
    let base = target.admin.trim_end_matches('/');
    refuse_cleartext(base)?;
    let (method, path, body) = match &call {
        Call::List { all } => (
            "GET",
            if *all {
                "/approvals".to_owned()
            } else {
                "/approvals?status=pending".to_owned()
            },
            None,
        ),
        Call::Show { id } => ("GET", format!("/approvals/{id}"), None),
        Call::Approve { id, reason, grant } => (
            "POST",
            format!("/approvals/{id}/approve"),
            Some(json!({"reason": reason, "grant": grant})),
        ),
        Call::Deny { id, reason } => (
            "POST",
            format!("/approvals/{id}/deny"),
            Some(json!({"reason": reason})),
        ),
        Call::Sessions => ("GET", "/sessions".to_owned(), None),
        Call::EndSession { id, reason } => (
            "POST",
            format!("/sessions/{id}/end"),
            Some(json!({"reason": reason})),
        ),
    };
    let fetcher = Fetcher::new(target.ca.as_deref(), Duration::from_secs(15), 4 << 20)?;
    let request = openidconnect::http::Request::builder()
        .method(method)
        .uri(format!("{base}{path}"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(
            body.map(|b| without_nulls(b).to_string().into_bytes())
                .unwrap_or_default(),
        )
        .map_err(|e| e.to_string())?;
    let response = fetcher
        .fetch(request)
        .await
        .map_err(|e| format!("cannot reach the admin API: {e}"))?;
    let value: Value = serde_json::from_slice(response.body()).unwrap_or(Value::Null);
    if !response.status().is_success() {
        return Err(value["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| format!("HTTP {}", response.status())));
    }
    if target.json {
        return Ok(serde_json::to_string_pretty(&value).unwrap_or_default());
    }
    Ok(match call {
        Call::List { .. } => list(&value),
        Call::Show { .. } => show(&value),
        Call::Approve { .. } | Call::Deny { .. } => format!(
            "request {} is now {}",
            value["id"].as_str().unwrap_or("?"),
            value["status"].as_str().unwrap_or("?")
        ),
        Call::Sessions => sessions(&value),
        Call::EndSession { .. } => format!("session {} is ending", value["session"]),
    })
}

/// JSON `null`s out of a body (optional fields are left out, not sent as null).
fn without_nulls(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            Value::Object(map.into_iter().filter(|(_, v)| !v.is_null()).collect())
        }
        other => other,
    }
}

/// `text` safe to print on an approver's terminal: control characters (but newlines and
/// tabs where `lines` allows them) and bidirectional overrides, which could erase or reorder
/// what is shown, are written as visible escapes.
fn printable(text: &str, lines: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let hidden = (c.is_control() && !(lines && matches!(c, '\n' | '\t')))
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}');
        if hidden {
            out.push_str(&c.escape_unicode().to_string());
        } else {
            out.push(c);
        }
    }
    out
}

fn list(value: &Value) -> String {
    let requests = value["requests"].as_array().cloned().unwrap_or_default();
    if requests.is_empty() {
        return "no requests".into();
    }
    let header = ["id", "status", "requester", "rule", "expires", "statement"].map(String::from);
    let mut rows = vec![header.to_vec()];
    for r in requests {
        let field = |k: &str| printable(r[k].as_str().unwrap_or(""), false);
        let statement = r["statement"].as_str().unwrap_or("");
        let short: String = statement.split_whitespace().collect::<Vec<_>>().join(" ");
        let short: String = printable(&short, false).chars().take(60).collect();
        rows.push(vec![
            field("id"),
            field("status"),
            field("requester"),
            field("rule"),
            field("expires_at"),
            short,
        ]);
    }
    table(&rows)
}

fn sessions(value: &Value) -> String {
    let sessions = value["sessions"].as_array().cloned().unwrap_or_default();
    if sessions.is_empty() {
        return "no sessions".into();
    }
    let header = [
        "session",
        "user",
        "database",
        "role",
        "from",
        "since",
        "state",
        "statements",
        "application",
    ];
    let mut rows = vec![header.map(String::from).to_vec()];
    for s in sessions {
        let text = |v: &Value| printable(v.as_str().unwrap_or(""), false);
        let since = s["started"]
            .as_u64()
            .map(|ms| crate::approvals::rfc3339(std::time::UNIX_EPOCH + Duration::from_millis(ms)))
            .unwrap_or_default();
        rows.push(vec![
            s["session"].to_string(),
            text(&s["actor"]["user"]["name"]),
            text(&s["database"]),
            text(&s["role"]),
            text(&s["src_endpoint"]["ip"]),
            since,
            text(&s["state"]),
            s["statements"].to_string(),
            text(&s["application_name"]),
        ]);
    }
    table(&rows)
}

/// Rows as columns as wide as their widest cell, so long ids and names stay aligned.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; columns];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.trim_end().to_owned()
}

fn show(r: &Value) -> String {
    let field = |k: &str| printable(r[k].as_str().unwrap_or(""), false);
    let list = |k: &str| {
        printable(
            &r[k]
                .as_array()
                .map(|g| {
                    g.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default(),
            false,
        )
    };
    let mut out = format!(
        "request    {}\nstatus     {}\nintent     {}\nrequester  {} ({})\ndatabase   {} as {}{}\nrule       {}\napprovers  {} (needs {})\ncreated    {}\nexpires    {}\n",
        field("id"),
        field("status"),
        printable(r["intent"].as_str().unwrap_or("(none declared)"), false),
        field("requester"),
        list("requester_groups"),
        field("database"),
        field("role"),
        r["current_role"]
            .as_str()
            .map(|role| format!(", now SET ROLE {}", printable(role, false)))
            .unwrap_or_default(),
        field("rule"),
        list("approver_groups"),
        r["min_approvals"],
        field("created_at"),
        field("expires_at"),
    );
    for answer in r["answers"].as_array().cloned().unwrap_or_default() {
        out.push_str(&format!(
            "answer     {} by {} at {}{}\n",
            if answer["approve"] == true {
                "approved"
            } else {
                "denied"
            },
            printable(answer["by"].as_str().unwrap_or(""), false),
            printable(answer["at"].as_str().unwrap_or(""), false),
            answer["reason"]
                .as_str()
                .map(|r| format!(": {}", printable(r, false)))
                .unwrap_or_default()
        ));
    }
    out.push_str(&format!(
        "\n{}",
        printable(r["statement"].as_str().unwrap_or(""), true)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_requester_wrote_cannot_rewrite_the_approvers_terminal() {
        let request = serde_json::json!({
            "id": "ABCD-1234",
            "status": "pending",
            "intent": "INC-1\u{1b}[2K",
            "requester": "dev",
            "current_role": "app_admin",
            "statement": "DELETE FROM orders WHERE id = 7 OR id > 0 /*\r\u{1b}[2KDELETE FROM orders WHERE id = 7 */\n-- \u{202e}reversed",
        });
        let shown = show(&request);
        assert!(
            !shown.contains('\u{1b}') && !shown.contains('\r'),
            "{shown:?}"
        );
        assert!(!shown.contains('\u{202e}'), "{shown:?}");
        assert!(
            shown.contains("OR id > 0 /*\\u{d}\\u{1b}[2KDELETE"),
            "{shown}"
        );
        assert!(
            shown.contains("\n-- \\u{202e}reversed"),
            "newlines stay: {shown}"
        );
        assert!(shown.contains(" as , now SET ROLE app_admin"), "{shown}");
        let listed = list(&serde_json::json!({ "requests": [request] }));
        assert!(!listed.contains('\u{1b}'), "{listed:?}");
    }

    #[test]
    fn list_columns_line_up_whatever_the_widths() {
        let request = |id: &str, rule: &str| {
            serde_json::json!({"id": id, "status": "pending", "requester": "dev@example.com",
                "rule": rule, "expires_at": "2026-11-28T10:00:00Z", "statement": "DELETE FROM t"})
        };
        let listed = list(&serde_json::json!({ "requests": [
            request("a1", "short"),
            request("b2", "a-rule-id-much-longer-than-twenty-characters"),
        ] }));
        let starts: Vec<usize> = listed
            .lines()
            .map(|l| l.find("DELETE").unwrap_or(0))
            .collect();
        assert_eq!(starts.len(), 3, "{listed}");
        assert!(
            listed.lines().next().unwrap().contains("statement"),
            "{listed}"
        );
        assert_eq!(starts[1], starts[2], "{listed}");
        let header_statement = listed.lines().next().unwrap().find("statement").unwrap();
        assert_eq!(header_statement, starts[1], "{listed}");
    }
}
