//! One rule: who it applies to, which statements it matches, and what it decides.

use serde::Deserialize;

use super::{Action, Subject};
use crate::sql::facts::KINDS;
use crate::sql::{Flags, StatementFacts};

/// A rule as written in `[[policy.rules]]`. Every criterion that is given must match; a
/// list matches when any of its entries does; an empty or absent list matches anything.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub id: String,
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub databases: Vec<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    /// Statement kinds: `drop` matches every `drop …`, `drop table` only that.
    #[serde(default)]
    pub statements: Vec<String>,
    /// Table globs (`public.*`, `audit_*`).
    #[serde(default)]
    pub tables: Vec<String>,
    /// Function globs (`pg_read_*`, `dblink*`).
    #[serde(default)]
    pub functions: Vec<String>,
    /// Statement flags (`no_where`, `copy_program`, …).
    #[serde(default)]
    pub flags: Vec<String>,
    pub action: Action,
    /// Shown to the client when the rule refuses or holds a statement.
    #[serde(default)]
    pub message: Option<String>,
    /// With `action = "approve"`: who may approve, instead of `approvals.approver_groups`.
    #[serde(default)]
    pub approver_groups: Option<Vec<String>>,
    /// Statements this rule matches are refused unless they come with a declared intent.
    #[serde(default)]
    pub require_intent: bool,
}

/// A problem with a rule, naming it by position and key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy.rules[{rule}].{key}: {message}")]
pub struct RuleError {
    pub rule: usize,
    pub key: &'static str,
    pub message: String,
}

/// Who a rule applies to: every list given must match (empty = anyone).
#[derive(Debug, Clone, Default)]
pub struct Who {
    pub users: Vec<String>,
    pub groups: Vec<String>,
    /// Groups the rule does not apply to (the guardrails' exemptions).
    pub exempt_groups: Vec<String>,
    pub databases: Vec<String>,
    pub roles: Vec<String>,
}

impl Who {
    pub fn matches(&self, subject: &Subject<'_>) -> bool {
        let listed =
            |list: &[String], value: &str| list.is_empty() || list.iter().any(|v| v == value);
        listed(&self.users, subject.user)
            && (self.groups.is_empty() || subject.groups.iter().any(|g| self.groups.contains(g)))
            && !subject
                .groups
                .iter()
                .any(|g| self.exempt_groups.contains(g))
            && listed(&self.databases, subject.database)
            && listed(&self.roles, subject.role)
    }
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub id: String,
    pub priority: i32,
    pub(super) who: Who,
    statements: Vec<String>,
    tables: Vec<Glob>,
    functions: Vec<Glob>,
    flags: Vec<String>,
    pub action: Action,
    pub message: Option<String>,
    pub approver_groups: Option<Vec<String>>,
    pub require_intent: bool,
    /// Built-in guardrails only: the rule does not apply to a statement whose tables are all
    /// in `pg_temp` ([`Self::matches`]).
    pub(super) spares_temporary_tables: bool,
}

impl Rule {
    /// Whether a table glob of this rule has a schema part.
    pub fn names_schemas(&self) -> bool {
        self.tables.iter().any(Glob::has_schema)
    }

    pub fn compile(spec: RuleSpec, index: usize) -> Result<Self, RuleError> {
        if spec.id.starts_with("guardrail.") {
            return Err(RuleError {
                rule: index,
                key: "id",
                message: "`guardrail.` ids belong to the built-in guardrails".into(),
            });
        }
        Self::compile_any(spec, index)
    }

    /// Compile without reserving the `guardrail.` prefix (the built-in pack).
    pub(super) fn compile_any(spec: RuleSpec, index: usize) -> Result<Self, RuleError> {
        let error = |key, message: String| RuleError {
            rule: index,
            key,
            message,
        };
        if spec.id.trim().is_empty() {
            return Err(error("id", "must not be empty".into()));
        }
        if spec.approver_groups.is_some() && spec.action != Action::Approve {
            return Err(error(
                "approver_groups",
                "only rules with action = \"approve\" have approvers".into(),
            ));
        }
        if spec.approver_groups.as_ref().is_some_and(Vec::is_empty) {
            return Err(error(
                "approver_groups",
                "name at least one group (or leave it out for approvals.approver_groups)".into(),
            ));
        }
        if let Some(flag) = spec
            .flags
            .iter()
            .find(|f| !Flags::NAMES.contains(&f.as_str()) && !SUBJECT_FLAGS.contains(&f.as_str()))
        {
            return Err(error(
                "flags",
                format!(
                    "unknown flag `{flag}` (known: {}, {})",
                    Flags::NAMES.join(", "),
                    SUBJECT_FLAGS.join(", ")
                ),
            ));
        }
        let statements: Vec<String> = spec
            .statements
            .iter()
            .map(|s| {
                s.split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
                    .to_lowercase()
            })
            .collect();
        // A kind no statement has would never match: a deny rule with a typo would let
        // everything through.
        if let Some(unknown) = statements
            .iter()
            .find(|pattern| !KINDS.iter().any(|kind| kind_matches(pattern, kind)))
        {
            return Err(error(
                "statements",
                format!(
                    "unknown statement kind `{unknown}` (a kind, or its first words: {})",
                    KINDS.join(", ")
                ),
            ));
        }
        let globs = |key, list: Vec<String>| {
            list.into_iter()
                .map(|text| Glob::new(&text).map_err(|m| error(key, m)))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Self {
            id: spec.id,
            priority: spec.priority,
            who: Who {
                users: spec.users,
                groups: spec.groups,
                exempt_groups: Vec::new(),
                databases: spec.databases,
                roles: spec.roles,
            },
            statements,
            tables: globs("tables", spec.tables)?,
            functions: globs("functions", spec.functions)?,
            flags: spec.flags,
            action: spec.action,
            message: spec.message,
            approver_groups: spec.approver_groups,
            require_intent: spec.require_intent,
            spares_temporary_tables: false,
        })
    }

    pub fn matches(&self, subject: &Subject<'_>, facts: &StatementFacts) -> bool {
        self.matches_as(subject, facts, self.covers_whole(subject))
    }

    /// An allow rule that names part of a statement but not all of it, so it passes it over
    /// (for `policy test`, which says so).
    pub fn names_part_of(&self, subject: &Subject<'_>, facts: &StatementFacts) -> bool {
        self.covers_whole(subject)
            && self.matches_as(subject, facts, false)
            && !self.matches_as(subject, facts, true)
    }

    fn covers_whole(&self, subject: &Subject<'_>) -> bool {
        // A deny or approve rule applies when any part of the statement is one it names. An
        // allow rule lets the statement through only if it names every part: otherwise
        // `DROP TABLE pgbench_accounts, customers` would pass a rule allowing drops of
        // pgbench_*, and `WITH d AS (DELETE …) SELECT …` a rule allowing selects. One that
        // requires an intent also restricts: without one, any part brings it in (to ask for
        // the intent); with one, it allows only what it names, like any allow rule.
        self.action == Action::Allow && (!self.require_intent || subject.has_intent)
    }

    fn matches_as(&self, subject: &Subject<'_>, facts: &StatementFacts, whole: bool) -> bool {
        self.who.matches(subject)
            && covers(
                !self.statements.is_empty(),
                whole,
                facts
                    .kinds
                    .iter()
                    .map(|kind| self.statements.iter().any(|s| kind_matches(s, kind))),
            )
            && covers(
                !self.tables.is_empty(),
                whole,
                facts.tables.iter().map(|t| {
                    self.tables
                        .iter()
                        .any(|g| g.matches_name_in(&t.name, subject.search_path))
                }),
            )
            && covers(
                !self.functions.is_empty(),
                whole,
                facts
                    .functions
                    .iter()
                    .map(|f| self.functions.iter().any(|g| g.matches_name(f))),
            )
            && (self.flags.is_empty() || self.flags.iter().any(|f| flag_holds(f, subject, facts)))
            && !(self.spares_temporary_tables && only_temporary_tables(facts))
    }
}

/// Whether a statement names tables and each is written `pg_temp.<name>`: the session's
/// own temporary schema, whatever its search_path. (A schema merely spelled like it, such as
/// `"PG_TEMP"`, is another schema, and `"pg_temp.x"` an unqualified name.)
fn only_temporary_tables(facts: &StatementFacts) -> bool {
    !facts.tables.is_empty() && facts.tables.iter().all(|t| t.temporary)
}

/// Whether a rule's list covers a statement's parts (each `true` when the list names it): an
/// empty list covers anything; otherwise some part must be named or, for a `whole` rule,
/// every part (and there must be one).
fn covers(listed: bool, whole: bool, mut parts: impl Iterator<Item = bool>) -> bool {
    if !listed {
        return true;
    }
    if !whole {
        return parts.any(|named| named);
    }
    let mut seen = false;
    parts.all(|named| {
        seen = true;
        named
    }) && seen
}

/// Flags that depend on who is asking as well as on the statement.
pub const SUBJECT_FLAGS: [&str; 1] = ["signals_other_sessions"];

/// Whether `flag` holds for a statement: the statement's own flags, and
/// `signals_other_sessions` (`pg_cancel_backend`/`pg_terminate_backend` of a backend that is
/// not one of the asker's sessions through pgwarden, or of a process id not written as a
/// constant).
fn flag_holds(flag: &str, subject: &Subject<'_>, facts: &StatementFacts) -> bool {
    match flag {
        "signals_other_sessions" => facts
            .signals
            .iter()
            .any(|pid| pid.is_none_or(|pid| !subject.own_backends.contains(&pid))),
        _ => facts.flags.has(flag),
    }
}

/// `drop` matches `drop table`; `drop table` matches only itself.
fn kind_matches(pattern: &str, kind: &str) -> bool {
    kind == pattern
        || kind
            .strip_prefix(pattern)
            .is_some_and(|rest| rest.starts_with(' '))
}

/// A name pattern: `*` matches any run of characters, `?` one; case-insensitive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    pattern: Vec<char>,
}

impl Glob {
    pub fn new(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("an empty pattern matches nothing".into());
        }
        Ok(Self {
            pattern: text.to_lowercase().chars().collect(),
        })
    }

    fn has_schema(&self) -> bool {
        self.pattern.contains(&'.')
    }

    /// Match a name as written in a statement. A pattern without a schema also matches the
    /// unqualified part of a qualified name (`users` matches `public.users`); an unqualified
    /// name is also tried in each schema of `schemas` (the session's search_path; `public`
    /// when empty; any schema for `*`): `public.users` matches `users`.
    pub fn matches_name_in(&self, name: &str, schemas: &[String]) -> bool {
        let name = name.to_lowercase();
        if self.matches(&name) {
            return true;
        }
        match name.rsplit_once('.') {
            Some((_, last)) => !self.has_schema() && self.matches(last),
            None if !self.has_schema() => false,
            None if schemas.is_empty() => self.matches(&format!("public.{name}")),
            None if schemas.iter().any(|s| s == "*") => {
                let last = self.pattern.iter().rposition(|&c| c == '.').map(|i| Glob {
                    pattern: self.pattern[i + 1..].to_vec(),
                });
                last.is_some_and(|g| g.matches(&name))
            }
            None => schemas
                .iter()
                .any(|schema| self.matches(&format!("{schema}.{name}"))),
        }
    }

    /// [`Self::matches_name_in`] with the default search_path.
    pub fn matches_name(&self, name: &str) -> bool {
        self.matches_name_in(name, &[])
    }

    fn matches(&self, text: &str) -> bool {
        let text: Vec<char> = text.chars().collect();
        // Iterative wildcard matching with backtracking to the last `*`.
        let (mut p, mut t) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while t < text.len() {
            match self.pattern.get(p) {
                Some('*') => {
                    star = Some((p, t));
                    p += 1;
                }
                Some(&c) if c == '?' || c == text[t] => {
                    p += 1;
                    t += 1;
                }
                _ => match star {
                    Some((sp, st)) => {
                        p = sp + 1;
                        t = st + 1;
                        star = Some((sp, st + 1));
                    }
                    None => return false,
                },
            }
        }
        self.pattern[p..].iter().all(|&c| c == '*')
    }
}
