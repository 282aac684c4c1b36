//! The policy: which statements run, which are refused, which wait for a person.
//!
//! [`Policy::decide`] is a pure function of who is asking (a [`Subject`]) and what the
//! statements do ([`StatementFacts`]). Rules are tried in a fixed, documented order —
//! higher `priority` first, then the order they are written in, the built-in guardrails
//! (priority 100) among them — and the first rule that matches a statement decides it;
//! `default` decides statements no rule matches. A message with several statements gets
//! the strictest of their decisions (deny over approve over allow), naming the statement
//! and the rule.

pub mod explain;
mod guardrails;
mod rule;
pub mod session;

use serde::Deserialize;

pub use guardrails::{guardrails, GUARDRAIL_PRIORITY};
pub use rule::{Glob, Rule, RuleError, RuleSpec};
pub use session::{SessionRule, SessionSettings, SessionSpec};

use crate::sql::StatementFacts;

/// What happens to a statement.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    #[default]
    Allow,
    /// Held until a person approves it.
    Approve,
    Deny,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Approve => "approve",
            Self::Deny => "deny",
        }
    }
}

/// Who is asking, for rule matching.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub user: &'a str,
    pub groups: &'a [String],
    pub database: &'a str,
    pub role: &'a str,
    /// The session's search_path, resolved (`$user` replaced by the role); unqualified table
    /// names match rules for any of these schemas. Empty: the default, `public`. `*`: not
    /// known (set from an expression), so any schema.
    pub search_path: &'a [String],
    /// The upstream process ids of this identity's own sessions through pgwarden (this one
    /// included): `pg_cancel_backend`/`pg_terminate_backend` of these are not "other
    /// sessions". Filled only when a statement signals a backend.
    pub own_backends: &'a [i32],
    /// Whether the statement comes with a declared intent (`pgwarden.intent` or a
    /// sqlcommenter `intent` tag).
    pub has_intent: bool,
}

/// The decision for a whole message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    /// The rule that decided (for the strictest statement); `None` = the default.
    pub rule: Option<String>,
    /// The rule's message for the client, if it has one.
    pub message: Option<String>,
    /// Which statement of the message (0-based) the decision is about.
    pub statement: usize,
}

impl Decision {
    pub fn allow() -> Self {
        Self {
            action: Action::Allow,
            rule: None,
            message: None,
            statement: 0,
        }
    }
}

/// A compiled, validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// In evaluation order.
    rules: Vec<Rule>,
    pub default: Action,
    /// What happens to text PostgreSQL's parser rejects.
    pub on_parse_error: Action,
    /// `[[policy.session]]`, in file order.
    pub sessions: Vec<SessionRule>,
}

impl Default for Policy {
    /// Guardrails on, everything else allowed.
    fn default() -> Self {
        Self::new(Vec::new(), Action::Allow, Action::Deny, true, &[]).unwrap_or(Self {
            rules: Vec::new(),
            default: Action::Allow,
            on_parse_error: Action::Deny,
            sessions: Vec::new(),
        })
    }
}

impl Policy {
    /// Compile rules (as written in the file) plus, when enabled, the guardrails.
    pub fn new(
        specs: Vec<RuleSpec>,
        default: Action,
        on_parse_error: Action,
        with_guardrails: bool,
        guardrail_exempt_groups: &[String],
    ) -> Result<Self, RuleError> {
        let mut rules = Vec::with_capacity(specs.len() + 16);
        let mut ids = std::collections::HashSet::new();
        for (index, spec) in specs.into_iter().enumerate() {
            let rule = Rule::compile(spec, index)?;
            if !ids.insert(rule.id.clone()) {
                return Err(RuleError {
                    rule: index,
                    key: "id",
                    message: format!("`{}` is used by another rule", rule.id),
                });
            }
            rules.push(rule);
        }
        if with_guardrails {
            rules.extend(guardrails(guardrail_exempt_groups));
        }
        // Stable: equal priorities keep their written order (guardrails after user rules).
        rules.sort_by_key(|r| std::cmp::Reverse(r.priority));
        Ok(Self {
            rules,
            default,
            on_parse_error,
            sessions: Vec::new(),
        })
    }

    /// Whether some rule names tables with a schema (`payroll.*`): only then does the
    /// search_path matter to a decision.
    pub fn names_schemas(&self) -> bool {
        self.rules.iter().any(Rule::names_schemas)
    }

    /// The session settings (values and locks) for someone logging in.
    /// The approver groups a rule names for itself, if it does.
    pub fn approver_groups(&self, rule_id: &str) -> Option<Vec<String>> {
        self.rules
            .iter()
            .find(|r| r.id == rule_id)
            .and_then(|r| r.approver_groups.clone())
    }

    /// Whether the configured rules (or the default) can hold a statement for approval.
    pub fn holds_for_approval(&self) -> bool {
        self.default == Action::Approve
            || self
                .rules
                .iter()
                .any(|r| r.action == Action::Approve && !r.id.starts_with("guardrail."))
    }

    pub fn session_settings(&self, subject: &Subject<'_>) -> SessionSettings {
        session::settings_for(&self.sessions, subject)
    }

    /// Ids of the allow rules that name only part of a statement and so pass it over.
    pub fn partial_allow_rules(
        &self,
        subject: &Subject<'_>,
        facts: &StatementFacts,
    ) -> Vec<String> {
        self.rules
            .iter()
            .filter(|r| r.names_part_of(subject, facts))
            .map(|r| r.id.clone())
            .collect()
    }

    /// Decide one statement: the first matching rule, or the default.
    pub fn decide_statement(&self, subject: &Subject<'_>, facts: &StatementFacts) -> Decision {
        match self.rules.iter().find(|r| r.matches(subject, facts)) {
            Some(rule) if rule.require_intent && !subject.has_intent => Decision {
                action: Action::Deny,
                rule: Some(rule.id.clone()),
                message: Some(format!(
                    "this statement needs a declared intent{}; declare it first with SET pgwarden.intent = 'TICKET-123: why', or append /*intent='TICKET-123%3A%20why'*/ to the statement",
                    rule.message
                        .as_deref()
                        .map(|m| format!(" ({m})"))
                        .unwrap_or_default()
                )),
                statement: 0,
            },
            Some(rule) => Decision {
                action: rule.action,
                rule: Some(rule.id.clone()),
                message: rule.message.clone(),
                statement: 0,
            },
            None => Decision {
                action: self.default,
                rule: None,
                message: None,
                statement: 0,
            },
        }
    }

    /// Decide a message: the strictest decision among its statements (the first one, among
    /// equals).
    pub fn decide(&self, subject: &Subject<'_>, statements: &[StatementFacts]) -> Decision {
        let mut strictest: Option<Decision> = None;
        for (index, facts) in statements.iter().enumerate() {
            let mut decision = self.decide_statement(subject, facts);
            decision.statement = index;
            if strictest
                .as_ref()
                .is_none_or(|s| decision.action > s.action)
            {
                let deny = decision.action == Action::Deny;
                strictest = Some(decision);
                if deny {
                    break;
                }
            }
        }
        // No statement at all (an empty query): nothing runs.
        strictest.unwrap_or_else(Decision::allow)
    }
}

#[cfg(test)]
mod tests;
