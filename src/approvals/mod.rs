//! Statements held for a person's approval while the client waits.
//!
//! When the policy decides `approve`, the session opens a [`Request`] here and waits on it
//! (see `session/relay.rs`); approvers answer through the admin API (`admin/approvals.rs`).
//! A request ends approved, denied, expired (nobody answered within `approvals.timeout`) or
//! withdrawn (the client cancelled or went away). An approver may also grant "this statement
//! shape, for this person, for N minutes", so the same fingerprint runs without waiting again.
//!
//! Rules an approval must satisfy: the approver is not the requester, belongs to one of the
//! rule's approver groups (or `approvals.approver_groups`), and `min_approvals` different
//! approvers said yes before the statement runs; one denial ends the request.
//!
//! State lives behind [`store::ApprovalStore`]; [`store::MemoryStore`] serves one instance. `pgwarden approvals …` is
//! [`crate::admin::client`].

pub mod store;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio::sync::watch;

pub use store::{ApprovalStore, MemoryStore};

/// `[approvals]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// How long a held statement waits for an answer.
    pub timeout: Duration,
    /// Who may approve, unless a rule names its own `approver_groups`.
    pub approver_groups: Vec<String>,
    /// Different approvers needed before a statement runs.
    pub min_approvals: u32,
    /// The longest grant an approver may give.
    pub max_grant: Duration,
    /// Where the admin API can be reached, for the client's notice and notifications.
    pub public_url: Option<String>,
    /// Where new requests are announced.
    pub notify: Option<Notify>,
}

/// `approvals.notify_webhook` and its format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notify {
    pub url: String,
    pub format: NotifyFormat,
}

/// The body of a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NotifyFormat {
    /// `{"event": "approval.request", "request": {…}, "approve": "…"}`.
    #[default]
    Json,
    /// `{"text": "…"}`, which Slack and compatible chat hooks post as a message.
    Slack,
}

/// Announce a new request on the webhook, in the background: a slow or failing hook never
/// delays the session (the client already has its notice); failures are logged.
pub fn notify(settings: &Settings, request: &Request) {
    let Some(notify) = settings.notify.clone() else {
        return;
    };
    let approve = format!("pgwarden approvals approve {}", request.id);
    let api = settings
        .public_url
        .as_deref()
        .map(|url| format!("{url}/approvals/{}", request.id));
    let body = match notify.format {
        NotifyFormat::Json => serde_json::json!({
            "event": "approval.request",
            "request": request,
            "approve": approve,
            "url": api,
        }),
        NotifyFormat::Slack => serde_json::json!({
            "text": format!(
                "{} wants to run on {} (as {}), held by rule {} — request {} (expires {}){}:\n```{}```\nApprove: `{approve}`{}",
                request.requester,
                request.database,
                request.role,
                request.rule,
                request.id,
                request.expires_at,
                request
                    .intent
                    .as_deref()
                    .map(|i| format!(", because: {i}"))
                    .unwrap_or_default(),
                request.statement.chars().take(2000).collect::<String>(),
                api.map(|u| format!(" or {u}")).unwrap_or_default(),
            )
        }),
    };
    let id = request.id.clone();
    tokio::spawn(async move {
        let result = async {
            let fetcher = crate::net::http::Fetcher::new(None, Duration::from_secs(5), 64 * 1024)?;
            let request = openidconnect::http::Request::builder()
                .method("POST")
                .uri(&notify.url)
                .header("content-type", "application/json")
                .body(body.to_string().into_bytes())
                .map_err(|e| e.to_string())?;
            let response = fetcher.fetch(request).await.map_err(|e| e.to_string())?;
            if response.status().is_success() {
                Ok(())
            } else {
                Err(format!("HTTP {}", response.status()))
            }
        };
        match result.await {
            Ok(()) => tracing::info!(request = %id, "approval request announced on the webhook"),
            Err(e) => {
                tracing::warn!(request = %id, error = %e, "could not announce the approval request on the webhook")
            }
        }
    });
}

/// Where a request stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Approved,
    Denied,
    Expired,
    Withdrawn,
}

impl Status {
    /// The ways a request ends.
    pub const FINISHED: [Self; 4] = [Self::Approved, Self::Denied, Self::Expired, Self::Withdrawn];

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Denied => "denied",
            Self::Expired => "expired",
            Self::Withdrawn => "withdrawn",
        }
    }
}

/// A person's answer to a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Answer {
    pub by: String,
    /// Who answered across names ([`Approver::owner`]).
    #[serde(skip)]
    pub by_owner: String,
    pub approve: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The grant this approver asked for with the approval.
    #[serde(skip)]
    pub grant: Option<Duration>,
    pub at: String,
}

/// One held statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Request {
    /// Short and typable: `ABCD-1234`.
    pub id: String,
    pub requester: String,
    /// Who the requester is across sessions ([`crate::auth::Identity::owner`]), whom a
    /// grant is for.
    #[serde(skip)]
    pub requester_owner: String,
    pub requester_groups: Vec<String>,
    pub session: u64,
    pub database: String,
    pub role: String,
    /// The role it would run as, when SET ROLE made it another.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_role: Option<String>,
    /// Exactly as sent (approvers must see what would run).
    pub statement: String,
    pub normalized: Option<String>,
    pub fingerprint: Option<String>,
    /// What a grant given with the approval covers ([`GrantScope::shape`]); `None`: no grant
    /// can cover it.
    #[serde(skip)]
    pub grant_scope: Option<String>,
    pub rule: String,
    /// The requester's declared intent, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intent: Option<String>,
    pub approver_groups: Vec<String>,
    pub min_approvals: u32,
    pub created_at: String,
    pub expires_at: String,
    pub status: Status,
    pub answers: Vec<Answer>,
    /// Why it was withdrawn, when it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub withdrawn_because: Option<String>,
}

impl Request {
    /// The approvers who said yes.
    pub fn approvers(&self) -> Vec<String> {
        self.answers
            .iter()
            .filter(|a| a.approve)
            .map(|a| a.by.clone())
            .collect()
    }
}

/// What a grant covers: one statement shape, for one person, in one database as one role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GrantScope {
    /// [`crate::auth::Identity::owner`]: the OIDC issuer and subject, or the local user (a
    /// display name can be shared or change).
    pub owner: String,
    pub database: String,
    pub role: String,
    /// The message's [`crate::sql::Analysis::fingerprint`] under the search_path and roles
    /// it ran with (hashed together by the session).
    pub shape: String,
}

/// "This statement shape, for this person, there, until then."
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Grant {
    pub scope: GrantScope,
    pub granted_by: String,
    pub request: String,
    #[serde(skip)]
    pub until: Option<Instant>,
    pub expires_at: String,
}

/// Why an approver's call was refused. Each maps to an HTTP status in the admin API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApprovalError {
    #[error("no approval request {0}")]
    NotFound(String),
    #[error("request {id} is already {status}")]
    NotPending { id: String, status: &'static str },
    #[error("you cannot approve or deny your own request")]
    OwnRequest,
    #[error("approving needs membership in one of: {0}")]
    NotAnApprover(String),
    #[error("you already answered request {0}")]
    AlreadyAnswered(String),
}

/// Who is answering: a verified identity from the admin API.
#[derive(Debug, Clone)]
pub struct Approver {
    pub name: String,
    /// Who this is whatever their display name ([`crate::auth::Identity::owner`]): the
    /// OIDC issuer and subject, or the break-glass entry. Separation of duties compares
    /// this, since an identity provider may let people change the claim names come from.
    pub owner: String,
    pub groups: Vec<String>,
}

/// What a new request needs from the session.
#[derive(Debug, Clone)]
pub struct NewRequest {
    pub requester: String,
    pub requester_owner: String,
    pub requester_groups: Vec<String>,
    pub session: u64,
    pub database: String,
    pub role: String,
    pub current_role: Option<String>,
    pub statement: String,
    pub normalized: Option<String>,
    pub fingerprint: Option<String>,
    pub grant_scope: Option<String>,
    pub rule: String,
    pub intent: Option<String>,
    /// The rule's approver groups, if it names its own.
    pub rule_approver_groups: Option<Vec<String>>,
}

/// The approvals of one pgwarden: the store, shared by every session and the admin API.
#[derive(Debug, Clone)]
pub struct Approvals {
    store: Arc<dyn ApprovalStore>,
}

impl Default for Approvals {
    fn default() -> Self {
        Self::new(Arc::new(MemoryStore::default()))
    }
}

/// How a waiting session learns the outcome.
#[derive(Debug)]
pub struct Waiter {
    pub id: String,
    status: watch::Receiver<Status>,
    expires: Instant,
}

impl Waiter {
    /// The request's final status: approved, denied or withdrawn as decided elsewhere, or
    /// `Expired` once the timeout passes.
    ///
    /// # Cancel safety
    /// Cancel-safe: the status lives in the watch channel; calling again picks it up.
    pub async fn outcome(&mut self) -> Status {
        loop {
            let current = self.status.borrow_and_update().clone();
            if current != Status::Pending {
                return current;
            }
            tokio::select! {
                changed = self.status.changed() => if changed.is_err() {
                    return Status::Withdrawn;
                },
                _ = tokio::time::sleep_until(self.expires.into()) => return Status::Expired,
            }
        }
    }
}

impl Approvals {
    pub fn new(store: Arc<dyn ApprovalStore>) -> Self {
        Self { store }
    }

    /// Open a request and start waiting on it.
    pub fn open(&self, settings: &Settings, new: NewRequest) -> (Request, Waiter) {
        let now = SystemTime::now();
        let expires = Instant::now() + settings.timeout;
        let request = Request {
            id: self.store.new_id(),
            requester: new.requester,
            requester_owner: new.requester_owner,
            requester_groups: new.requester_groups,
            session: new.session,
            database: new.database,
            role: new.role,
            current_role: new.current_role,
            statement: new.statement,
            normalized: new.normalized,
            fingerprint: new.fingerprint,
            grant_scope: new.grant_scope,
            rule: new.rule,
            intent: new.intent,
            approver_groups: new
                .rule_approver_groups
                .unwrap_or_else(|| settings.approver_groups.clone()),
            min_approvals: settings.min_approvals.max(1),
            created_at: rfc3339(now),
            expires_at: rfc3339(now + settings.timeout),
            status: Status::Pending,
            answers: Vec::new(),
            withdrawn_because: None,
        };
        let status = self.store.insert(request.clone());
        let waiter = Waiter {
            id: request.id.clone(),
            status,
            expires,
        };
        (request, waiter)
    }

    pub fn get(&self, id: &str) -> Option<Request> {
        self.store.get(&normalize_id(id))
    }

    /// Pending requests, then the most recent others.
    pub fn list(&self, pending_only: bool) -> Vec<Request> {
        self.store.list(pending_only)
    }

    /// Record `approver`'s answer. Approving with `grant` also lets the same fingerprint run
    /// for the requester until the grant ends.
    pub fn answer(
        &self,
        id: &str,
        approver: &Approver,
        approve: bool,
        reason: Option<String>,
        grant: Option<Duration>,
    ) -> Result<Request, ApprovalError> {
        let id = normalize_id(id);
        let updated = self.store.update(&id, &mut |request| {
            if request.status != Status::Pending {
                return Err(ApprovalError::NotPending {
                    id: request.id.clone(),
                    status: request.status.as_str(),
                });
            }
            if request.requester_owner == approver.owner || request.requester == approver.name {
                return Err(ApprovalError::OwnRequest);
            }
            if !approver
                .groups
                .iter()
                .any(|g| request.approver_groups.contains(g))
            {
                return Err(ApprovalError::NotAnApprover(
                    request.approver_groups.join(", "),
                ));
            }
            if request
                .answers
                .iter()
                .any(|a| a.by_owner == approver.owner || a.by == approver.name)
            {
                return Err(ApprovalError::AlreadyAnswered(request.id.clone()));
            }
            request.answers.push(Answer {
                by: approver.name.clone(),
                by_owner: approver.owner.clone(),
                approve,
                reason: reason.clone(),
                grant,
                at: rfc3339(SystemTime::now()),
            });
            if !approve {
                request.status = Status::Denied;
            } else if request.approvers().len() as u32 >= request.min_approvals {
                request.status = Status::Approved;
            }
            Ok(())
        })?;
        // A grant lets the shape run without anyone looking again: with several approvals
        // needed, each approver must have asked for one, and the shortest applies.
        let granted = updated
            .answers
            .iter()
            .filter(|a| a.approve)
            .map(|a| a.grant)
            .collect::<Option<Vec<Duration>>>()
            .and_then(|grants| grants.into_iter().min());
        if let (Some(duration), Status::Approved, Some(shape)) =
            (granted, &updated.status, &updated.grant_scope)
        {
            self.store.add_grant(Grant {
                scope: GrantScope {
                    owner: updated.requester_owner.clone(),
                    database: updated.database.clone(),
                    role: updated.role.clone(),
                    shape: shape.clone(),
                },
                granted_by: approver.name.clone(),
                request: updated.id.clone(),
                until: Some(Instant::now() + duration),
                expires_at: rfc3339(SystemTime::now() + duration),
            });
        }
        Ok(updated)
    }

    /// The session gave up on the request (cancel, disconnect, shutdown) or it timed out.
    pub fn close(&self, id: &str, status: Status, because: &str) -> Option<Request> {
        self.store
            .update(id, &mut |request| {
                if request.status == Status::Pending {
                    request.status = status.clone();
                    if status == Status::Withdrawn {
                        request.withdrawn_because = Some(because.to_owned());
                    }
                }
                Ok(())
            })
            .ok()
    }

    /// A grant that covers exactly `scope` now, if there is one.
    pub fn grant_for(&self, scope: &GrantScope) -> Option<Grant> {
        self.store.find_grant(scope)
    }
}

/// A duration as people write it: `5m`, `90s`.
pub fn human(duration: Duration) -> String {
    let secs = duration.as_secs();
    if secs >= 3600 && secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else if secs >= 60 && secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

/// Ids are shown as `ABCD-1234`; accept them in any case, with or without the dash.
fn normalize_id(id: &str) -> String {
    let compact: String = id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_uppercase())
        .collect();
    if compact.len() == 8 {
        format!("{}-{}", &compact[..4], &compact[4..])
    } else {
        compact
    }
}

pub fn rfc3339(at: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(at).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(min: u32) -> Settings {
        Settings {
            timeout: Duration::from_secs(60),
            approver_groups: vec!["dba".into()],
            min_approvals: min,
            max_grant: Duration::from_secs(3600),
            public_url: None,
            notify: None,
        }
    }

    fn new_request() -> NewRequest {
        NewRequest {
            requester: "dev".into(),
            requester_owner: "local dev".into(),
            requester_groups: vec!["developers".into(), "dba".into()],
            session: 1,
            database: "shop".into(),
            role: "app_rw".into(),
            current_role: None,
            statement: "DELETE FROM orders WHERE id = 1".into(),
            normalized: Some("DELETE FROM orders WHERE id = $1".into()),
            fingerprint: Some("abc".into()),
            grant_scope: Some("abc in public as app_rw".into()),
            rule: "orders-delete".into(),
            intent: None,
            rule_approver_groups: None,
        }
    }

    fn who(name: &str, groups: &[&str]) -> Approver {
        Approver {
            name: name.into(),
            owner: crate::auth::oidc_owner("https://idp", &format!("sub-{name}")),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    /// Separation of duties holds for the person, not the name: someone whose identity
    /// provider lets them rename themselves is still the requester, and still one approver.
    #[test]
    fn a_new_display_name_is_still_the_same_person() {
        let approvals = Approvals::default();
        let requester = crate::auth::oidc_owner("https://idp", "sub-dev");
        let (request, _waiter) = approvals.open(
            &settings(2),
            NewRequest {
                requester_owner: requester.clone(),
                ..new_request()
            },
        );
        let renamed = Approver {
            name: "dev-renamed".into(),
            owner: requester,
            groups: vec!["dba".into()],
        };
        assert_eq!(
            approvals.answer(&request.id, &renamed, true, None, None),
            Err(ApprovalError::OwnRequest)
        );
        let dba = who("dba1", &["dba"]);
        approvals
            .answer(&request.id, &dba, true, None, None)
            .unwrap();
        let dba_renamed = Approver {
            name: "dba1-renamed".into(),
            ..dba
        };
        assert_eq!(
            approvals.answer(&request.id, &dba_renamed, true, None, None),
            Err(ApprovalError::AlreadyAnswered(request.id.clone()))
        );
    }

    #[tokio::test]
    async fn separation_of_duties_and_min_approvals() {
        let approvals = Approvals::default();
        let (request, mut waiter) = approvals.open(&settings(2), new_request());
        let id = request.id.to_lowercase().replace('-', "");
        assert_eq!(
            approvals.answer(&id, &who("dev", &["dba"]), true, None, None),
            Err(ApprovalError::OwnRequest)
        );
        assert!(matches!(
            approvals.answer(&id, &who("eve", &["developers"]), true, None, None),
            Err(ApprovalError::NotAnApprover(_))
        ));
        let once = approvals
            .answer(
                &id,
                &who("dba1", &["dba"]),
                true,
                None,
                Some(Duration::from_secs(120)),
            )
            .unwrap();
        assert_eq!(once.status, Status::Pending, "two approvals are needed");
        assert_eq!(
            approvals.answer(&id, &who("dba1", &["dba"]), true, None, None),
            Err(ApprovalError::AlreadyAnswered(request.id.clone()))
        );
        approvals
            .answer(
                &id,
                &who("dba2", &["dba"]),
                true,
                None,
                Some(Duration::from_secs(60)),
            )
            .unwrap();
        assert_eq!(waiter.outcome().await, Status::Approved);
        let scope = GrantScope {
            owner: "local dev".into(),
            database: "shop".into(),
            role: "app_rw".into(),
            shape: "abc in public as app_rw".into(),
        };
        assert!(approvals.grant_for(&scope).is_some());
        // Only that person, database, role and shape.
        for other in [
            GrantScope {
                owner: "local someone-else".into(),
                ..scope.clone()
            },
            GrantScope {
                database: "other".into(),
                ..scope.clone()
            },
            GrantScope {
                role: "app_admin".into(),
                ..scope.clone()
            },
            GrantScope {
                shape: "abc in tenant_b as app_rw".into(),
                ..scope.clone()
            },
        ] {
            assert!(approvals.grant_for(&other).is_none(), "{other:?}");
        }
        // With two approvals needed, one approver alone cannot grant: both must ask.
        let (second, _waiter) = approvals.open(
            &settings(2),
            NewRequest {
                grant_scope: Some("another shape".into()),
                ..new_request()
            },
        );
        approvals
            .answer(&second.id, &who("dba1", &["dba"]), true, None, None)
            .unwrap();
        let approved = approvals
            .answer(
                &second.id,
                &who("dba2", &["dba"]),
                true,
                None,
                Some(Duration::from_secs(3600)),
            )
            .unwrap();
        assert_eq!(approved.status, Status::Approved);
        assert!(approvals
            .grant_for(&GrantScope {
                shape: "another shape".into(),
                ..scope.clone()
            })
            .is_none());
        assert!(matches!(
            approvals.answer(&id, &who("dba3", &["dba"]), false, None, None),
            Err(ApprovalError::NotPending { .. })
        ));
    }

    #[tokio::test]
    async fn unanswered_requests_expire() {
        let approvals = Approvals::default();
        let short = Settings {
            timeout: Duration::from_millis(50),
            ..settings(1)
        };
        let (_, mut waiter) = approvals.open(&short, new_request());
        assert_eq!(waiter.outcome().await, Status::Expired);
    }
}
