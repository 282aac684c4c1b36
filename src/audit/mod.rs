//! The audit log: append-only JSON lines, hash-chained across files, so that a reviewer can
//! prove nothing was altered, removed or reordered ([`verify`]).
//!
//! * [`event`]: what is recorded (OCSF-aligned field names);
//! * [`record`]: how an event becomes a hash-chained line;
//! * [`writer`]: the thread that owns the files (group commit, rotation, crash recovery);
//! * [`verify`]: `pgwarden audit verify`.

pub mod checkpoint;
pub mod event;
pub mod record;
pub mod search;
pub mod verify;
pub mod writer;

use std::path::{Path, PathBuf};

pub use event::Event;
pub use writer::{now_ms, AuditLog};

use crate::error::SqlState;

/// When records become durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FsyncPolicy {
    /// One fsync per group of records written together (group commit).
    Batch,
    /// One fsync per record.
    Always,
    /// Records are sealed into the chain in memory and written and fsynced by the audit
    /// thread within [`writer::BACKGROUND_SYNC_INTERVAL`]: a statement does not wait for a
    /// `write`, and a crash of pgwarden loses what was not written yet (as PostgreSQL's
    /// `synchronous_commit = off` does). Refusals start once a write has failed.
    Buffered,
}

/// What happens to a statement whose record the log cannot take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnFailure {
    /// Refuse the statement (SQLSTATE 58030): nothing runs unaudited. The default.
    Refuse,
    /// Forward it anyway and count the lost record (reported in `log.write_failed`).
    Continue,
}

/// How statement text is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StatementText {
    /// Literals replaced by `$n` placeholders (the default): no values in the log.
    Normalized,
    /// The statement exactly as the client sent it, literals and all.
    Full,
}

/// How Bind parameter values are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ParameterAudit {
    /// Not at all (the default).
    Omit,
    /// As HMAC-SHA256 with `audit.parameter_key`: equal values can be matched across
    /// records without revealing them.
    Hmac,
}

/// Where and how the log is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub dir: PathBuf,
    pub fsync: FsyncPolicy,
    /// With `fsync = "batch"`: how long the writer waits after the first record of a batch
    /// for more to share its fsync. Zero (the default) batches whatever is already waiting.
    pub batch_window: std::time::Duration,
    /// Start a new file before one grows past this many bytes.
    pub rotate_size: u64,
    /// Start a new file when the UTC day changes.
    pub rotate_daily: bool,
    /// Ed25519 key (PKCS#8 PEM) for signed checkpoints, if configured.
    pub signing_key: Option<crate::config::Secret>,
    /// How often a checkpoint is written (also when idle).
    pub checkpoint_interval: std::time::Duration,
    pub on_failure: OnFailure,
    pub statement_text: StatementText,
    /// With `parameters = "hmac"`: the key; `None` omits parameter values.
    pub parameter_key: Option<crate::config::Secret>,
}

impl Settings {
    /// The documented defaults, writing to `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            fsync: FsyncPolicy::Batch,
            batch_window: std::time::Duration::ZERO,
            rotate_size: 64 << 20,
            rotate_daily: true,
            signing_key: None,
            checkpoint_interval: std::time::Duration::from_secs(60),
            on_failure: OnFailure::Refuse,
            statement_text: StatementText::Normalized,
            parameter_key: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot {action}: {source}")]
    Io {
        action: String,
        source: std::io::Error,
    },
    #[error("audit write failed: {0}")]
    Write(String),
    #[error("the audit log is not accepting records")]
    Unavailable,
    #[error("audit signing key: {0}")]
    Key(String),
    #[error("the last record of {0} is damaged; run `pgwarden audit verify` on the directory before starting")]
    CorruptTail(PathBuf),
}

impl AuditError {
    /// What a client is told when its action cannot be audited: PostgreSQL's own code for
    /// "the system cannot do I/O".
    pub fn sqlstate(&self) -> SqlState {
        SqlState::IO_ERROR
    }
}

const FILE_PREFIX: &str = "pgwarden-audit-";
const FILE_SUFFIX: &str = ".jsonl";

/// `pgwarden-audit-<YYYYMMDD>T<HHMMSS>Z-<first seq>.jsonl`: names sort by time, then seq.
pub fn file_name(time_ms: u64, first_seq: u64) -> String {
    let secs = time_ms / 1000;
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{FILE_PREFIX}{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z-{first_seq:012}{FILE_SUFFIX}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Audit files in `dir`, oldest first.
pub fn list_files(dir: &Path) -> Result<Vec<String>, AuditError> {
    let entries = std::fs::read_dir(dir).map_err(|e| AuditError::Io {
        action: format!("list {}", dir.display()),
        source: e,
    })?;
    let mut names: Vec<String> = entries
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with(FILE_PREFIX) && name.ends_with(FILE_SUFFIX))
        .collect();
    names.sort();
    Ok(names)
}

/// The first session id for a new run of pgwarden: one past the highest session id of the
/// last run's logins and failed logins (recorded in any order), and no lower than that run's
/// own `first_session`. So a session id names one session for good, across restarts, in the
/// log and in `audit search --session`. Reads files newest first, back to the last run's
/// `proxy.start`.
pub fn next_session_id(dir: &Path) -> Result<u64, AuditError> {
    let mut next = 1;
    for name in list_files(dir)?.iter().rev() {
        let path = dir.join(name);
        let text = std::fs::read_to_string(&path).map_err(|e| AuditError::Io {
            action: format!("read {}", path.display()),
            source: e,
        })?;
        for line in text.lines().rev() {
            // Failed logins carry their connection's id too.
            let run_start = line.contains(r#""type":"proxy.start""#);
            if !run_start
                && !line.contains(r#""type":"session.start""#)
                && !line.contains(r#""type":"auth.failure""#)
            {
                continue;
            }
            let Ok(record) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if let Some(id) = record["session"].as_u64() {
                next = next.max(id.saturating_add(1));
            }
            if let Some(first) = record["first_session"].as_u64() {
                return Ok(next.max(first));
            }
            // A proxy.start from before runs named their first session: look further back.
        }
    }
    Ok(next)
}

/// The `seq` of a record line (it is always the first field).
pub fn seq_of(line: &str) -> Option<u64> {
    let rest = line.strip_prefix("{\"seq\":")?;
    let end = rest.find(|c: char| !c.is_ascii_digit())?;
    rest.get(..end)?.parse().ok()
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's
/// `civil_from_days`).
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_sort_by_time() {
        assert_eq!(
            file_name(0, 1),
            "pgwarden-audit-19700101T000000Z-000000000001.jsonl"
        );
        // 2026-11-27T06:45:30Z
        assert_eq!(
            file_name(1_795_761_930_000, 42),
            "pgwarden-audit-20261127T064530Z-000000000042.jsonl"
        );
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(seq_of("{\"seq\":123,\"time\":1}"), Some(123));
        assert_eq!(seq_of("{\"time\":1}"), None);
    }
}
