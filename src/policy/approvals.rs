//! Where statements the policy holds for approval go.
//!
//! The approvals issue implements [`Approver`] (a request a person answers while the client
//! waits). Until then [`NoApprovals`] answers every request with a refusal, so an `approve`
//! rule is never a silent pass.

/// A statement waiting for a person's decision.
#[derive(Debug, Clone, Copy)]
pub struct ApprovalRequest<'a> {
    pub user: &'a str,
    pub database: &'a str,
    pub role: &'a str,
    pub rule: &'a str,
    /// The statement's fingerprint, when it could be analysed.
    pub fingerprint: Option<&'a str>,
}

/// The answer to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApprovalAnswer {
    /// Not run; the reason is shown to the client.
    Refused { reason: String },
}

pub trait Approver: Send + Sync + std::fmt::Debug {
    fn request(&self, request: &ApprovalRequest<'_>) -> ApprovalAnswer;
}

/// No approval workflow is configured: refuse, and say how to get the statement run.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoApprovals;

impl Approver for NoApprovals {
    fn request(&self, _request: &ApprovalRequest<'_>) -> ApprovalAnswer {
        ApprovalAnswer::Refused {
            reason: "approvals are not available in this pgwarden yet; ask an administrator to run it, or for a rule that allows it".into(),
        }
    }
}
