//! `pgwarden policy test`: what the gate would do with some SQL, and why — the analysis of
//! each statement, its decision and the rule that made it.
//!
//! The SQL is judged as the first thing a fresh session of that person sends: the rules, then
//! the session's own limits (settings `[[policy.session]]` locks, SET ROLE within
//! `[[access]]`, EXECUTE only of names PREPAREd earlier in the same text). What needs a live
//! session is not simulated: its search_path (the default is assumed), masking's catalog
//! (derived writes), other sessions (every signalled backend is someone else's).

use serde::Serialize;

use std::collections::HashMap;

use super::{Action, Decision, Policy, Subject};
use crate::auth::{authorize, AuthMethod, Identity};
use crate::config::AccessRule;
use crate::sql::{Analyzer, StatementFacts};

/// Who the SQL is tested for.
#[derive(Debug, Clone)]
pub struct TestSubject {
    pub user: String,
    pub groups: Vec<String>,
    pub database: String,
    /// `None`: the default role `[[access]]` gives this person on this database.
    pub role: Option<String>,
    /// The session's declared intent (`pgwarden.intent`), if any.
    pub intent: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub user: String,
    pub groups: Vec<String>,
    pub database: String,
    pub role: String,
    /// The session settings `[[policy.session]]` gives this person: "name = value", with
    /// " (locked)" when they may not change it.
    pub session_settings: Vec<String>,
    pub statements: Vec<StatementReport>,
    /// The decision for the message as a whole (the strictest).
    pub decision: &'static str,
    pub rule: Option<String>,
    pub message: Option<String>,
    /// Set when PostgreSQL's parser rejects the text.
    pub parse_error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct StatementReport {
    pub text: String,
    pub normalized: String,
    #[serde(flatten)]
    pub facts: StatementFacts,
    pub decision: &'static str,
    pub rule: Option<String>,
    /// Allow rules that name only part of the statement (an allow rule must name all of
    /// it), so they did not decide it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub passed_over: Vec<String>,
}

pub fn explain(policy: &Policy, access: &[AccessRule], who: &TestSubject, sql: &str) -> Report {
    let person = Identity {
        name: who.user.clone(),
        groups: who.groups.clone(),
        method: AuthMethod::LocalScram,
        oidc: None,
    };
    // Someone `[[access]]` keeps out never gets to send the SQL: refused at login (28000).
    let (role, refused_at_login) =
        match authorize(&person, &who.database, who.role.as_deref(), access) {
            Ok(grant) => (grant.role, None),
            Err(e) => (who.role.clone().unwrap_or_default(), Some(e.to_string())),
        };
    let subject = Subject {
        user: &who.user,
        groups: &who.groups,
        database: &who.database,
        role: &role,
        search_path: &[],
        has_intent: who.intent.is_some()
            || crate::sql::comments::sqlcommenter(sql.as_bytes())
                .is_some_and(|tags| tags.contains_key("intent")),
        // No live sessions here: every signalled backend counts as another session's.
        own_backends: &[],
    };
    let settings = policy.session_settings(&subject);
    let mut report = Report {
        user: who.user.clone(),
        groups: who.groups.clone(),
        database: who.database.clone(),
        role: role.clone(),
        session_settings: settings
            .values
            .iter()
            .map(|(name, value)| {
                let locked = if settings.is_locked(name) {
                    " (locked)"
                } else {
                    ""
                };
                format!("{name} = {value}{locked}")
            })
            .collect(),
        statements: Vec::new(),
        decision: policy.on_parse_error.as_str(),
        rule: None,
        message: None,
        parse_error: None,
    };
    if let Some(why) = refused_at_login {
        report.decision = Action::Deny.as_str();
        report.rule = Some("access".into());
        report.message = Some(format!(
            "refused at login: {why} (no [[access]] rule allows it)"
        ));
        return report;
    }
    let analyzer = Analyzer::new(16);
    let analysis = match analyzer.analyze(sql.as_bytes()) {
        Ok(analysis) => analysis,
        Err(e) => {
            report.rule = Some("policy.on_parse_error".into());
            report.parse_error = Some(e.to_string());
            return report;
        }
    };
    let texts: Vec<String> = pg_query::split_with_parser(sql)
        .map(|parts| parts.into_iter().map(|s| s.trim().to_owned()).collect())
        .unwrap_or_default();
    let may_use_role = |role: &str| authorize(&person, &who.database, Some(role), access).is_ok();
    let mut prepared: HashMap<&str, &StatementFacts> = HashMap::new();
    let mut strictest: Option<Decision> = None;
    for (index, facts) in analysis.statements.iter().enumerate() {
        let executed = facts.executes.as_deref().map(|name| {
            prepared
                .get(name)
                .map(|body| body.as_executed(name).with_arguments_of(facts))
        });
        let decision = match &executed {
            Some(None) => refusal(
                "policy.unknown-prepared-statement",
                "the prepared statement is not PREPAREd earlier in this text (a live session would have to know it)",
            ),
            Some(Some(body)) => decide_with_limits(policy, &subject, body, &settings, &may_use_role),
            None => decide_with_limits(policy, &subject, facts, &settings, &may_use_role),
        };
        if let Some(name) = &facts.prepares {
            prepared.insert(name, facts);
        }
        let text = texts.get(index).cloned().unwrap_or_default();
        let normalized = pg_query::normalize(&text).unwrap_or_default();
        let judged = match &executed {
            Some(Some(body)) => body,
            _ => facts,
        };
        report.statements.push(StatementReport {
            text,
            normalized,
            facts: facts.clone(),
            decision: decision.action.as_str(),
            rule: decision.rule.clone(),
            passed_over: policy.partial_allow_rules(&subject, judged),
        });
        // The strictest decision, the first among equals, as for a message in a session.
        if strictest
            .as_ref()
            .is_none_or(|s| decision.action > s.action)
        {
            strictest = Some(Decision {
                statement: index,
                ..decision
            });
        }
    }
    let Decision {
        action,
        rule,
        message,
        ..
    } = strictest.unwrap_or_else(Decision::allow);
    report.decision = action.as_str();
    report.rule = rule;
    report.message = message;
    report
}

/// The rules' decision, then the session's limits on setting changes.
fn decide_with_limits(
    policy: &Policy,
    subject: &Subject<'_>,
    facts: &StatementFacts,
    settings: &super::SessionSettings,
    may_use_role: &dyn Fn(&str) -> bool,
) -> Decision {
    let decision = policy.decide_statement(subject, facts);
    if decision.action == Action::Deny {
        return decision;
    }
    match super::session::setting_refusal(facts, settings, may_use_role) {
        Some((rule, message)) => refusal(rule, &message),
        None => decision,
    }
}

fn refusal(rule: &str, message: &str) -> Decision {
    Decision {
        action: Action::Deny,
        rule: Some(rule.to_owned()),
        message: Some(message.to_owned()),
        statement: 0,
    }
}

impl Report {
    pub fn allowed(&self) -> bool {
        self.decision == Action::Allow.as_str()
    }

    /// The human-readable form.
    pub fn render(&self) -> String {
        let mut out = format!(
            "as {} (groups: {}) on database {} as role {}\n",
            self.user,
            if self.groups.is_empty() {
                "none".to_owned()
            } else {
                self.groups.join(", ")
            },
            self.database,
            if self.role.is_empty() {
                "(none)"
            } else {
                &self.role
            }
        );
        if !self.session_settings.is_empty() {
            out.push_str(&format!(
                "session settings: {}\n",
                self.session_settings.join(", ")
            ));
        }
        if let Some(error) = &self.parse_error {
            out.push_str(&format!(
                "\nPostgreSQL's parser rejects the text: {error}\n\n=> {} (policy.on_parse_error)\n",
                self.decision
            ));
            return out;
        }
        let none = |list: Vec<String>| {
            if list.is_empty() {
                "-".to_owned()
            } else {
                list.join(", ")
            }
        };
        for (index, s) in self.statements.iter().enumerate() {
            out.push_str(&format!("\nstatement {}: {}\n", index + 1, s.text));
            out.push_str(&format!("  normalized: {}\n", s.normalized));
            out.push_str(&format!("  kinds:      {}\n", s.facts.kinds.join(", ")));
            out.push_str(&format!(
                "  tables:     {}\n",
                none(
                    s.facts
                        .tables
                        .iter()
                        .map(|t| format!("{} ({})", t.name, t.access.as_str()))
                        .collect()
                )
            ));
            out.push_str(&format!(
                "  functions:  {}\n",
                none(s.facts.functions.clone())
            ));
            out.push_str(&format!(
                "  settings:   {}\n",
                none(s.facts.settings.clone())
            ));
            out.push_str(&format!(
                "  flags:      {}\n",
                none(s.facts.flags.names().map(str::to_owned).collect())
            ));
            out.push_str(&format!(
                "  decision:   {} ({})\n",
                s.decision,
                s.rule.as_deref().unwrap_or("policy.default")
            ));
            if !s.passed_over.is_empty() {
                out.push_str(&format!(
                    "  not allowed by {}: an allow rule must name every kind, table and function of the statement\n",
                    s.passed_over.join(", ")
                ));
            }
        }
        out.push_str(&format!(
            "\n=> {} ({}){}\n",
            self.decision,
            self.rule.as_deref().unwrap_or("policy.default"),
            self.message
                .as_ref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        ));
        out
    }
}
