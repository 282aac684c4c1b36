//! `pgwarden policy test`: what the gate would do with some SQL, and why — the analysis of
//! each statement, its decision and the rule that made it.

use serde::Serialize;

use super::{Action, Decision, Policy, Subject};
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
}

pub fn explain(policy: &Policy, access: &[AccessRule], who: &TestSubject, sql: &str) -> Report {
    let role = who.role.clone().unwrap_or_else(|| {
        access
            .iter()
            .find(|rule| {
                (rule.users.contains(&who.user)
                    || rule.groups.iter().any(|g| who.groups.contains(g)))
                    && rule
                        .databases
                        .iter()
                        .any(|d| d == &who.database || d == "*")
            })
            .and_then(|rule| rule.roles.first().cloned())
            .unwrap_or_default()
    });
    let subject = Subject {
        user: &who.user,
        groups: &who.groups,
        database: &who.database,
        role: &role,
        search_path: &[],
        has_intent: who.intent.is_some()
            || crate::sql::comments::sqlcommenter(sql.as_bytes())
                .is_some_and(|tags| tags.contains_key("intent")),
    };
    let mut report = Report {
        user: who.user.clone(),
        groups: who.groups.clone(),
        database: who.database.clone(),
        role: role.clone(),
        statements: Vec::new(),
        decision: policy.on_parse_error.as_str(),
        rule: None,
        message: None,
        parse_error: None,
    };
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
    for (index, facts) in analysis.statements.iter().enumerate() {
        let decision = policy.decide_statement(&subject, facts);
        let text = texts.get(index).cloned().unwrap_or_default();
        let normalized = pg_query::normalize(&text).unwrap_or_default();
        report.statements.push(StatementReport {
            text,
            normalized,
            facts: facts.clone(),
            decision: decision.action.as_str(),
            rule: decision.rule,
        });
    }
    let Decision {
        action,
        rule,
        message,
        ..
    } = policy.decide(&subject, &analysis.statements);
    report.decision = action.as_str();
    report.rule = rule;
    report.message = message;
    report
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
