//! Per-identity session settings (`[[policy.session]]`): values pgwarden gives a session when
//! it logs in upstream, and settings the person may not change afterwards.
//!
//! The values go in the upstream startup packet, which makes them the session's *reset*
//! values: `RESET`, `SET … TO DEFAULT`, `RESET ALL` and `DISCARD ALL` return to them, so
//! only attempts to set another value need refusing.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::rule::Who;
use super::Subject;
use crate::sql::facts::SettingValue;
use crate::sql::StatementFacts;

/// Settings that are always locked, for everyone: with `standard_conforming_strings = off` the
/// server would read backslashes in strings differently from the parser pgwarden checks
/// statements with, and a statement could hide another.
pub const ALWAYS_LOCKED: &[&str] = &["standard_conforming_strings"];

/// `[[policy.session]]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionSpec {
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub databases: Vec<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    /// Setting name → value, e.g. `{ statement_timeout = "30s" }`.
    pub settings: BTreeMap<String, toml::Value>,
    /// Refuse changes to these settings (default true).
    #[serde(default = "yes")]
    pub lock: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone)]
pub struct SessionRule {
    who: Who,
    settings: Vec<(String, String)>,
    lock: bool,
}

/// What a session starts with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionSettings {
    /// Name → value, sent upstream at login.
    pub values: Vec<(String, String)>,
    /// Names the person may not change (lower case).
    pub locked: Vec<String>,
}

impl SessionSettings {
    pub fn is_locked(&self, name: &str) -> bool {
        ALWAYS_LOCKED.contains(&name) || self.locked.iter().any(|l| l == name)
    }

    /// Whether setting `name` to `value` keeps the value it is locked at (`SET
    /// default_transaction_read_only = on` in a session locked read-only changes nothing).
    fn keeps(&self, name: &str, value: &SettingValue) -> bool {
        let SettingValue::Value(value) = value else {
            return false;
        };
        let locked = match self.values.iter().find(|(n, _)| n == name) {
            Some((_, locked)) => locked.as_str(),
            None if name == "standard_conforming_strings" => "on",
            None => return false,
        };
        match (as_bool(locked), as_bool(value)) {
            (Some(a), Some(b)) => a == b,
            _ => locked.trim().eq_ignore_ascii_case(value.trim()),
        }
    }
}

/// A setting value PostgreSQL reads as a boolean.
fn as_bool(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" | "t" | "y" => Some(true),
        "off" | "false" | "no" | "0" | "f" | "n" => Some(false),
        _ => None,
    }
}

impl SessionRule {
    pub fn compile(spec: SessionSpec, index: usize) -> Result<Self, (usize, String)> {
        let mut settings = Vec::new();
        for (name, value) in spec.settings {
            let valid = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
            if !valid {
                return Err((index, format!("`{name}` is not a setting name")));
            }
            let value = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => if b { "on" } else { "off" }.to_owned(),
                toml::Value::Float(f) => f.to_string(),
                other => {
                    return Err((
                        index,
                        format!(
                            "`{name}`: use a string, number or boolean, not {}",
                            other.type_str()
                        ),
                    ))
                }
            };
            if value.contains('\0') {
                return Err((index, format!("`{name}`: the value contains a NUL byte")));
            }
            settings.push((name.to_lowercase(), value));
        }
        Ok(Self {
            who: Who {
                users: spec.users,
                groups: spec.groups,
                exempt_groups: Vec::new(),
                databases: spec.databases,
                roles: spec.roles,
            },
            settings,
            lock: spec.lock,
        })
    }
}

/// The settings of every matching entry, in file order; a later entry's value for the same
/// setting wins, and a setting is locked if any matching entry locks it.
pub fn settings_for(rules: &[SessionRule], subject: &Subject<'_>) -> SessionSettings {
    let mut out = SessionSettings::default();
    for rule in rules.iter().filter(|r| r.who.matches(subject)) {
        for (name, value) in &rule.settings {
            match out.values.iter_mut().find(|(n, _)| n == name) {
                Some(slot) => slot.1 = value.clone(),
                None => out.values.push((name.clone(), value.clone())),
            }
            if rule.lock && !out.locked.contains(name) {
                out.locked.push(name.clone());
            }
        }
    }
    out
}

/// The first setting change in `facts` a session with `settings` may not make: the rule id
/// and the message for the client. `may_use_role` says whether `[[access]]` grants the
/// person a role on this database (SET ROLE stays within those).
pub fn setting_refusal(
    facts: &StatementFacts,
    settings: &SessionSettings,
    may_use_role: &dyn Fn(&str) -> bool,
) -> Option<(&'static str, String)> {
    for change in &facts.changes {
        let name = change.name.as_str();
        let reset = change.value == SettingValue::Reset;
        match name {
            "role" => {
                let granted = match &change.value {
                    SettingValue::Reset => true,
                    SettingValue::Value(role) => role == "none" || may_use_role(role),
                    SettingValue::Unknown | SettingValue::List(_) => false,
                };
                if !granted {
                    return Some((
                        "policy.set-role",
                        "SET ROLE is allowed only to roles [[access]] grants you on this database"
                            .into(),
                    ));
                }
            }
            // pgwarden reads the statements that follow in the encoding the server last
            // reported, and in these encodings a multi-byte character can end in an ASCII
            // quote or backslash: a statement sent right after the SET (in a pipeline,
            // before the server's ParameterStatus) could hide another from the gate.
            "client_encoding" => {
                let checkable = match &change.value {
                    SettingValue::Reset => true,
                    SettingValue::Value(name) => !crate::sql::is_unsafe_encoding(name),
                    SettingValue::Unknown | SettingValue::List(_) => false,
                };
                if !checkable {
                    return Some((
                        "policy.client-encoding",
                        "pgwarden cannot check statements in that client_encoding (SJIS, BIG5, GBK, UHC, GB18030 and JOHAB are refused; use UTF8)".into(),
                    ));
                }
            }
            "session_authorization" if !reset => {
                return Some((
                    "policy.set-role",
                    "SET SESSION AUTHORIZATION is not allowed through pgwarden".into(),
                ));
            }
            // set_config with a name that is not a constant, or a write to pg_settings,
            // could change anything.
            "*" => {
                return Some((
                    "policy.locked-setting",
                    "pgwarden cannot tell which setting this changes: use SET, or set_config with a constant setting name".into(),
                ));
            }
            name if !reset => {
                if let Some(locked) = settings_changed_by(name)
                    .iter()
                    .find(|n| settings.is_locked(n) && !settings.keeps(n, &change.value))
                {
                    return Some((
                        "policy.locked-setting",
                        format!("the setting \"{locked}\" is locked for you"),
                    ));
                }
            }
            _ => {}
        }
    }
    None
}

/// The settings a SET of `name` changes: itself, or what an old alias or a statement of
/// its own stands for.
fn settings_changed_by(name: &str) -> Vec<&str> {
    match name {
        "sort_mem" => vec!["work_mem"],
        "vacuum_mem" => vec!["maintenance_work_mem"],
        // SET SESSION CHARACTERISTICS AS TRANSACTION … or SET TRANSACTION … whose modes
        // were not read one by one.
        "session characteristics" | "session_characteristics" | "transaction" => vec![
            "default_transaction_isolation",
            "default_transaction_read_only",
            "default_transaction_deferrable",
        ],
        // A transaction's own mode (BEGIN READ WRITE, SET TRANSACTION …, SET
        // transaction_read_only): it overrides the session's default for that transaction.
        "transaction_isolation" => vec!["default_transaction_isolation"],
        "transaction_read_only" => vec!["default_transaction_read_only"],
        "transaction_deferrable" => vec!["default_transaction_deferrable"],
        name => vec![name],
    }
}

/// The first locked setting the client's startup packet tries to set to another value,
/// either as a startup parameter of its own or in `options` (`-c name=value`,
/// `--name=value`), old aliases included (`sort_mem` is `work_mem`).
pub fn locked_in_startup(
    parameters: &[(String, Vec<u8>)],
    settings: &SessionSettings,
) -> Option<String> {
    startup_assignments(parameters)
        .into_iter()
        .find_map(|(name, value)| {
            let value = SettingValue::Value(value);
            settings_changed_by(&name)
                .into_iter()
                .find(|n| settings.is_locked(n) && !settings.keeps(n, &value))
                .map(str::to_owned)
        })
}

/// A word in the startup `options` other than `-c name=value` / `--name=value`: the
/// server's other command-line switches set settings too (`-S` is work_mem, `-e` DateStyle,
/// `-f` the planner's methods), under no name pgwarden checks, so they are refused.
pub fn unsupported_option(parameters: &[(String, Vec<u8>)]) -> Option<String> {
    parameters
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("options"))
        .find_map(|(_, value)| {
            let mut words = option_words(&String::from_utf8_lossy(value)).into_iter();
            while let Some(word) = words.next() {
                if word == "-c" {
                    words.next();
                } else if !(word.starts_with("-c") || word.starts_with("--")) {
                    return Some(word);
                }
            }
            None
        })
}

/// Every setting a startup packet assigns, as `(name, value)` with lower-case names: its
/// parameters (other than the connection's own `user`, `database`, `options`, …) and the
/// `-c` assignments in `options`. PostgreSQL applies all of them, later ones winning.
fn startup_assignments(parameters: &[(String, Vec<u8>)]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (name, value) in parameters {
        let value = String::from_utf8_lossy(value);
        if name.eq_ignore_ascii_case("options") {
            out.extend(option_assignments(&value));
        } else {
            out.push((name.to_lowercase(), value.into_owned()));
        }
    }
    out
}

/// A role change the startup packet asks for that the person may not make: the message for
/// the client. `role` is judged as SET ROLE is (only toward roles `[[access]]` grants, via
/// `may_use_role`); `session_authorization` is never allowed. PostgreSQL applies startup
/// settings before the first statement, so the gate would not see them otherwise.
pub fn role_change_in_startup(
    parameters: &[(String, Vec<u8>)],
    may_use_role: &dyn Fn(&str) -> bool,
) -> Option<String> {
    startup_assignments(parameters)
        .into_iter()
        .find_map(|(name, value)| match name.as_str() {
            "role" if value != "none" && !may_use_role(&value) => Some(format!(
                "the startup setting role={value} is not allowed: [[access]] does not grant you that role on this database"
            )),
            "session_authorization" => {
                Some("the startup setting session_authorization is not allowed through pgwarden".into())
            }
            _ => None,
        })
}

/// `(name, value)` of each `-c name=value` / `--name=value` in a libpq `options` string; names
/// lower case with dashes as underscores.
pub fn option_assignments(options: &str) -> Vec<(String, String)> {
    let words = option_words(options);
    let mut assignments = Vec::new();
    let mut iter = words.into_iter().peekable();
    while let Some(word) = iter.next() {
        let assignment = if word == "-c" {
            iter.next()
        } else if let Some(rest) = word.strip_prefix("-c") {
            Some(rest.to_owned())
        } else {
            word.strip_prefix("--").map(str::to_owned)
        };
        if let Some(assignment) = assignment {
            let (name, value) = assignment.split_once('=').unwrap_or((&assignment, ""));
            assignments.push((
                name.trim().replace('-', "_").to_lowercase(),
                value.to_owned(),
            ));
        }
    }
    assignments
}

/// The words of a libpq `options` string: separated by unescaped whitespace; `\` escapes
/// the next character.
fn option_words(options: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => word.extend(chars.next()),
            c if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// A client_encoding the startup packet asks for (as a parameter or in `options`) that
/// pgwarden cannot check statements in. It is refused at the door, not only on SET: RESET,
/// ROLLBACK and DISCARD ALL return a session to its startup value, and a statement
/// pipelined right behind them would be read in the wrong encoding.
pub fn unsafe_encoding_in_startup(parameters: &[(String, Vec<u8>)]) -> Option<String> {
    for (key, value) in parameters {
        let value = String::from_utf8_lossy(value);
        if key.eq_ignore_ascii_case("client_encoding") && crate::sql::is_unsafe_encoding(&value) {
            return Some(value.into_owned());
        }
        if key.eq_ignore_ascii_case("options") {
            if let Some((_, encoding)) = option_assignments(&value)
                .into_iter()
                .find(|(name, v)| name == "client_encoding" && crate::sql::is_unsafe_encoding(v))
            {
                return Some(encoding);
            }
        }
    }
    None
}

/// The value a startup packet gives setting `name`: as a parameter of its own, or in
/// `options`.
pub fn startup_setting(parameters: &[(String, Vec<u8>)], name: &str) -> Option<String> {
    for (key, value) in parameters {
        if key.eq_ignore_ascii_case(name) {
            return Some(String::from_utf8_lossy(value).into_owned());
        }
        if key.eq_ignore_ascii_case("options") {
            if let Some((_, v)) = option_assignments(&String::from_utf8_lossy(value))
                .into_iter()
                .find(|(n, _)| n == name)
            {
                return Some(v);
            }
        }
    }
    None
}

/// The startup parameters to send upstream: the client's, plus the policy's values for
/// settings the client did not set itself (the values then are the session's reset values).
pub fn startup_parameters(
    parameters: &[(String, Vec<u8>)],
    settings: &SessionSettings,
) -> Vec<(String, Vec<u8>)> {
    let mut out = parameters.to_vec();
    for (name, value) in &settings.values {
        if !out.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
            out.push((name.clone(), value.clone().into_bytes()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locked_settings_are_found_in_startup_parameters_and_options() {
        let settings = SessionSettings {
            values: vec![("statement_timeout".into(), "30s".into())],
            locked: vec!["statement_timeout".into()],
        };
        let param = |n: &str, v: &str| (n.to_owned(), v.as_bytes().to_vec());
        assert_eq!(
            locked_in_startup(&[param("application_name", "x")], &settings),
            None
        );
        assert_eq!(
            locked_in_startup(&[param("Statement_Timeout", "0")], &settings).as_deref(),
            Some("statement_timeout")
        );
        for options in [
            "-c statement_timeout=0",
            "-cstatement_timeout=0",
            "--statement-timeout=0",
            "-c work_mem=64MB -c statement_timeout=0",
            "-c\\ statement_timeout=0",
        ] {
            assert!(
                locked_in_startup(&[param("options", options)], &settings).is_some(),
                "{options}"
            );
        }
        assert_eq!(
            locked_in_startup(&[param("options", "-c work_mem=64MB")], &settings),
            None
        );
        assert!(locked_in_startup(
            &[param("options", "-c standard_conforming_strings=off")],
            &SessionSettings::default()
        )
        .is_some());
        // The locked value itself changes nothing.
        assert_eq!(
            locked_in_startup(&[param("options", "-c statement_timeout=30s")], &settings),
            None
        );
        // Old aliases are the setting.
        let work_mem = SessionSettings {
            values: vec![("work_mem".into(), "4MB".into())],
            locked: vec!["work_mem".into()],
        };
        assert_eq!(
            locked_in_startup(&[param("options", "-c sort_mem=1000000")], &work_mem).as_deref(),
            Some("work_mem")
        );
        // The server's other switches set settings under no name: refused whatever is locked.
        for (options, switch) in [("-S 1000000", Some("-S")), ("-c work_mem=1 -e", Some("-e"))] {
            assert_eq!(
                unsupported_option(&[param("options", options)]).as_deref(),
                switch,
                "{options}"
            );
        }
        assert_eq!(
            unsupported_option(&[param("options", "-c a=1 --b=2 -cc=3 -c\\ d=4")]),
            None
        );
        let sent = startup_parameters(&[param("application_name", "x")], &settings);
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[1], param("statement_timeout", "30s"));
    }
}
