//! `pgwarden audit verify`: prove the log in a directory is complete and unaltered.
//!
//! Checks, in file-name order: each record's hash over its own bytes; `seq` increasing by
//! exactly one; each `prev_hash` equal to the hash of the record before (so no record was
//! removed, inserted or reordered, across file boundaries too); each file starting with a
//! `file.start` that names the file before it; the first record starting the chain; no
//! partial last line; and that records known from outside the log ([`Anchor`]s) are still
//! there, unchanged. The first record of each break is reported as `file:line` with the
//! reason.
//!
//! With signed checkpoints, it also warns about records no signature vouches for although
//! a later checkpoint covers them: pgwarden signs a checkpoint when it stops, so records
//! between a run's last checkpoint and the next start were either written just before a
//! crash or kill, or added while pgwarden was stopped, and the next run chained onto them
//! without being able to tell.

use std::path::Path;

use serde::Deserialize;

use super::checkpoint::PublicKey;
use super::record::{self, GENESIS};
use super::{list_files, AuditError};

/// One finding, at a 1-based line of a file (line 0: the file as a whole).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub file: String,
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.file.as_str(), self.line) {
            ("", _) => write!(f, "{}", self.message),
            // About the file as a whole, not one line of it.
            (file, 0) => write!(f, "{file}: {}", self.message),
            (file, line) => write!(f, "{file}:{line}: {}", self.message),
        }
    }
}

/// A record known from outside the log: its seq and hash, as pgwarden logs them at every
/// signed checkpoint and `audit verify` prints them. Kept elsewhere (a log collector, a
/// ticket, an earlier review), it proves the log once reached that far: removing the newest
/// files together with their checkpoints leaves a log that is consistent in itself, but no
/// longer holds the anchored record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    pub seq: u64,
    pub hash: String,
}

impl std::fmt::Display for Anchor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.seq, self.hash)
    }
}

impl std::str::FromStr for Anchor {
    type Err = String;

    /// `SEQ:HASH`, the hash as 64 hex digits.
    fn from_str(text: &str) -> Result<Self, String> {
        let (seq, hash) = text
            .split_once(':')
            .ok_or_else(|| format!("anchor {text:?} is not SEQ:HASH"))?;
        let seq = seq
            .parse()
            .map_err(|_| format!("anchor {text:?}: {seq:?} is not a sequence number"))?;
        let hash = hash.to_ascii_lowercase();
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "anchor {text:?}: the hash must be 64 hex digits (a record's \"hash\")"
            ));
        }
        Ok(Self { seq, hash })
    }
}

/// The outcome of a verification.
#[derive(Debug, Default)]
pub struct Report {
    pub files: usize,
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub last_hash: Option<String>,
    /// Evidence of tampering or loss: the log cannot be trusted as a whole.
    pub problems: Vec<Finding>,
    /// Things a reviewer should know that are not tampering (a crash's sealed partial line).
    pub notes: Vec<Finding>,
    /// What no signature vouches for, although the chain holds: records a run wrote after
    /// its last checkpoint (a crash, a kill, or records added while pgwarden was stopped),
    /// a stop without its final checkpoint.
    pub warnings: Vec<Finding>,
    /// Checkpoint records found (and, with a public key, whose signatures verified).
    pub checkpoints: u64,
    /// Seq of the record the last valid checkpoint covers.
    pub last_checkpoint: Option<u64>,
    /// The last valid checkpoint record itself: an [`Anchor`] to keep for later reviews.
    pub last_checkpoint_record: Option<Anchor>,
    /// Records after the last valid checkpoint: not covered by any signature, so their
    /// truncation could not be detected.
    pub unsigned_tail: u64,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// The chain fields of a record.
#[derive(Deserialize)]
struct Chain<'a> {
    seq: u64,
    prev_hash: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(default)]
    previous_file: Option<String>,
    #[serde(default)]
    file: Option<String>,
    #[serde(default)]
    torn_bytes: Option<u64>,
    #[serde(default)]
    covers_seq: Option<u64>,
    #[serde(default)]
    covers_hash: Option<&'a str>,
    #[serde(default)]
    key_id: Option<&'a str>,
    #[serde(default)]
    signature: Option<&'a str>,
}

/// How far around a break verify looks to tell reordered and repeated records from missing
/// ones.
const REORDER_WINDOW: usize = 64;

/// Verify every audit file in `dir` (checkpoint signatures are not checked; see
/// [`verify_dir_with`]).
pub fn verify_dir(dir: &Path) -> Result<Report, AuditError> {
    verify_dir_with(dir, &[], &[])
}

/// Records since the last checkpoint, to warn about at the next start (or the end of the
/// log) if no checkpoint comes first.
#[derive(Debug, Default)]
struct Unsigned {
    /// The first record after the checkpoint that is not a file's or a recovery's
    /// bookkeeping: where, and its seq.
    first: Option<(String, usize, u64)>,
    /// A `proxy.stop` among them: where, and its seq.
    stop: Option<(String, usize, u64)>,
}

/// Verify every audit file in `dir`, checkpoint signatures with `public_keys` (any of them:
/// keys are rotated; none given, signatures are not checked), and that every one of
/// `anchors` is in the log.
pub fn verify_dir_with(
    dir: &Path,
    public_keys: &[PublicKey],
    anchors: &[Anchor],
) -> Result<Report, AuditError> {
    let mut report = Report::default();
    let mut anchors_found = vec![false; anchors.len()];
    // What the next record must carry; `None` right after a break (resynchronize there).
    let mut expected: Option<(u64, String)> = None;
    let mut previous_file: Option<String> = None;
    // Files with nothing in them: pgwarden leaves one only when it crashes creating it.
    let mut empty_files: Vec<String> = Vec::new();
    // Whether checkpoints are in use (one was seen), and what came after the last one.
    let mut signing = false;
    let mut unsigned = Unsigned::default();
    // The last records read (seq, where, hash): to tell a repeated record from a moved one.
    let mut recent: std::collections::VecDeque<(u64, String, String)> =
        std::collections::VecDeque::with_capacity(REORDER_WINDOW);
    let files = list_files(dir)?;
    report.files = files.len();
    if files.is_empty() {
        report.problems.push(Finding {
            file: String::new(),
            line: 0,
            message: format!(
                "no audit files (pgwarden-audit-*.jsonl) in {}: wrong directory, or the log was removed",
                dir.display()
            ),
        });
    }
    for name in &files {
        let path = dir.join(name);
        let bytes = std::fs::read(&path).map_err(|e| AuditError::Io {
            action: format!("read {}", path.display()),
            source: e,
        })?;
        let problem = |line: usize, message: String| Finding {
            file: name.clone(),
            line,
            message,
        };
        if bytes.is_empty() {
            report.notes.push(problem(
                0,
                "empty file: pgwarden leaves one only if it fails or crashes while creating it; the next file's start says whether records were removed from it".into(),
            ));
            empty_files.push(name.clone());
            continue;
        }
        let text = String::from_utf8_lossy(&bytes);
        let mut lines: Vec<&str> = text.split('\n').collect();
        match lines.pop() {
            Some("") => {}
            Some(partial) => report.problems.push(problem(
                lines.len() + 1,
                format!("partial record at the end ({} bytes): the file was truncated or a write was cut short", partial.len()),
            )),
            None => {}
        }
        let raw_lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
        let mut excused_in_file = false;
        for (index, line) in lines.iter().enumerate() {
            let number = index + 1;
            let hash = match record::check(line) {
                Ok(hash) => hash,
                Err(e) => {
                    // A crash's partial line, sealed at start-up, is followed by a genuine
                    // `log.recovered` record naming this file and the line's length: right
                    // after it, or first in the next file when it ends this one. Once per
                    // file, so that no run of unchecked lines can pass as crashes.
                    // In bytes as written (a crash can cut a character in two).
                    let torn = raw_lines.get(index).map_or(line.len(), |raw| raw.len());
                    let sealed = lines
                        .get(index + 1)
                        .is_some_and(|next| recovers(next, name, torn));
                    let sealed_elsewhere =
                        index + 1 == lines.len() && recovered_later(dir, &files, name, torn);
                    if (sealed || sealed_elsewhere) && !excused_in_file {
                        excused_in_file = true;
                        report.notes.push(problem(
                            number,
                            "partial record from a crash, sealed at restart".into(),
                        ));
                    } else {
                        report.problems.push(problem(number, e.to_string()));
                        expected = None;
                    }
                    continue;
                }
            };
            let Ok(chain) = serde_json::from_str::<Chain>(line) else {
                report.problems.push(problem(
                    number,
                    "not a record (missing seq, prev_hash or type)".into(),
                ));
                expected = None;
                continue;
            };
            report.records += 1;
            report.first_seq.get_or_insert(chain.seq);
            match &expected {
                Some((seq, prev)) => {
                    if chain.seq != *seq {
                        let earlier = recent.iter().find(|(s, _, _)| *s == chain.seq);
                        // Where the expected record is, if it comes a little later.
                        let later = lines
                            .iter()
                            .enumerate()
                            .skip(index + 1)
                            .take(REORDER_WINDOW)
                            .find(|(_, l)| super::seq_of(l) == Some(*seq))
                            .map(|(i, _)| i + 1);
                        let what = match (earlier, later) {
                            (Some((_, at, earlier_hash)), _) if *earlier_hash == hash => {
                                format!("a copy of the record at {at}")
                            }
                            (Some((_, at, _)), _) => {
                                format!("seq {} was already at {at}: records were replaced or reordered", chain.seq)
                            }
                            (None, Some(line)) if chain.seq > *seq => {
                                format!(
                                    "records were reordered: seq {seq} comes later, at line {line}"
                                )
                            }
                            _ if chain.seq > *seq => {
                                format!("{} record(s) missing before it", chain.seq - seq)
                            }
                            _ => "records out of order".to_owned(),
                        };
                        report.problems.push(problem(
                            number,
                            format!("seq {} where {} was expected: {what}", chain.seq, seq),
                        ));
                    } else if chain.prev_hash != prev {
                        report.problems.push(problem(
                            number,
                            "prev_hash does not match the record before it: records were removed, inserted or reordered".into(),
                        ));
                    }
                }
                None if report.records == 1 && chain.prev_hash != GENESIS => {
                    report.problems.push(problem(
                        number,
                        format!("the log starts in the middle of the chain (seq {}): earlier files are missing", chain.seq),
                    ));
                }
                None => {}
            }
            if index == 0 {
                if chain.kind != "file.start" {
                    report.problems.push(problem(
                        number,
                        "the file does not begin with a file.start record".into(),
                    ));
                } else if chain.previous_file != previous_file {
                    let follows = chain.previous_file.as_deref().unwrap_or("nothing");
                    let why = if empty_files
                        .iter()
                        .any(|f| Some(f.as_str()) == chain.previous_file.as_deref())
                    {
                        format!("{follows} is empty: its records were removed")
                    } else {
                        format!(
                            "the file before it is {}: a file is missing or was renamed",
                            previous_file.as_deref().unwrap_or("nothing")
                        )
                    };
                    report.problems.push(problem(
                        number,
                        format!("the file says it follows {follows}, but {why}"),
                    ));
                }
            }
            for (anchor, found) in anchors.iter().zip(&mut anchors_found) {
                if anchor.seq != chain.seq {
                    continue;
                }
                *found = true;
                if anchor.hash != hash {
                    report.problems.push(problem(
                        number,
                        format!("seq {} is not the record anchored as {anchor}: the log was rewritten from here on", chain.seq),
                    ));
                }
            }
            if chain.kind == "proxy.start" && signing {
                if let Some(finding) = unsigned.warning(chain.seq - 1, true) {
                    report.warnings.push(finding);
                }
                unsigned = Unsigned::default();
            } else if !matches!(chain.kind, "checkpoint" | "file.start" | "log.recovered") {
                unsigned
                    .first
                    .get_or_insert((name.clone(), number, chain.seq));
                if chain.kind == "proxy.stop" {
                    unsigned.stop = Some((name.clone(), number, chain.seq));
                }
            }
            if chain.kind == "checkpoint" {
                signing = true;
                match check_checkpoint(&chain, expected.as_ref(), public_keys) {
                    Ok(()) => {
                        unsigned = Unsigned::default();
                        report.checkpoints += 1;
                        report.last_checkpoint = chain.covers_seq;
                        report.last_checkpoint_record = Some(Anchor {
                            seq: chain.seq,
                            hash: hash.clone(),
                        });
                    }
                    Err(message) => report.problems.push(problem(number, message)),
                }
            }
            if recent.len() == REORDER_WINDOW {
                recent.pop_front();
            }
            recent.push_back((chain.seq, format!("{name}:{number}"), hash.clone()));
            expected = Some((chain.seq + 1, hash.clone()));
            report.last_seq = Some(chain.seq);
            report.last_hash = Some(hash);
        }
        previous_file = Some(name.clone());
    }
    if let Some(last) = report.last_seq {
        // The checkpoint record carries the signature; what follows it is unsigned.
        report.unsigned_tail = last - report.last_checkpoint_record.as_ref().map_or(0, |a| a.seq);
        // A running pgwarden's newest records wait for the next checkpoint; a stopped one
        // signed its last.
        if signing {
            if let Some(finding) = unsigned.warning(last, false) {
                report.warnings.push(finding);
            }
        }
    }
    for (anchor, _) in anchors
        .iter()
        .zip(anchors_found)
        .filter(|(_, found)| !found)
    {
        let (file, why) = match report.last_seq {
            Some(last) if anchor.seq > last => (
                files.last().cloned().unwrap_or_default(),
                format!("the log ends at seq {last}: the newest records were removed"),
            ),
            Some(_) => (
                files.first().cloned().unwrap_or_default(),
                "that part of the chain is missing".to_owned(),
            ),
            None => (String::new(), "the log is empty".to_owned()),
        };
        report.problems.push(Finding {
            file,
            line: 0,
            message: format!("anchored record {anchor} is not in the log: {why}"),
        });
    }
    Ok(report)
}

impl Unsigned {
    /// The warning for the unsigned records up to `last`: at a restart (`restarted`), or
    /// at the end of the log (only after a stop: a running pgwarden signs them later).
    fn warning(&self, last: u64, restarted: bool) -> Option<Finding> {
        let finding = |(file, line, _): &(String, usize, u64), message: String| Finding {
            file: file.clone(),
            line: *line,
            message,
        };
        match (&self.stop, &self.first) {
            (Some(stop), _) => Some(finding(
                stop,
                format!(
                    "pgwarden stopped here (seq {}) but no checkpoint follows: it signs one when it stops, so the records at the end of that run were removed or rewritten, or that checkpoint could not be written",
                    stop.2
                ),
            )),
            (None, Some(first)) if restarted => Some(finding(
                first,
                format!(
                    "records seq {}..={last} were never signed: the run that wrote them ended without a stop or a final checkpoint (pgwarden was killed or crashed, or they were added while it was stopped); the checkpoints after the restart do not vouch for them",
                    first.2
                ),
            )),
            _ => None,
        }
    }
}

/// A checkpoint must sign exactly the record before it, with one of the given keys.
fn check_checkpoint(
    chain: &Chain<'_>,
    expected: Option<&(u64, String)>,
    public_keys: &[PublicKey],
) -> Result<(), String> {
    let (Some(covers_seq), Some(covers_hash), Some(key_id), Some(signature)) = (
        chain.covers_seq,
        chain.covers_hash,
        chain.key_id,
        chain.signature,
    ) else {
        return Err("checkpoint without covers_seq, covers_hash, key_id or signature".into());
    };
    if let Some((next_seq, prev_hash)) = expected {
        if covers_seq + 1 != *next_seq || covers_hash != prev_hash {
            return Err("checkpoint does not cover the record before it".into());
        }
    }
    if public_keys.is_empty() {
        return Ok(());
    }
    let Some(key) = public_keys.iter().find(|key| key.key_id() == key_id) else {
        let given: Vec<String> = public_keys.iter().map(PublicKey::key_id).collect();
        return Err(format!(
            "checkpoint signed by another key ({key_id}; the keys given are {})",
            given.join(", ")
        ));
    };
    if !key.verify(covers_seq, covers_hash, signature) {
        return Err("checkpoint signature is invalid: forged or altered".into());
    }
    Ok(())
}

/// Whether `line` is a genuine (hash-valid) `log.recovered` record for a partial line of
/// `torn` bytes in file `name`.
fn recovers(line: &str, name: &str, torn: usize) -> bool {
    record::check(line).is_ok()
        && serde_json::from_str::<Chain>(line).is_ok_and(|c| {
            c.kind == "log.recovered"
                && c.file.as_deref() == Some(name)
                && c.torn_bytes == Some(torn as u64)
        })
}

/// Whether the next file starts with the `log.recovered` record for a partial line of
/// `torn` bytes at the end of `name` (the writer starts a new file after sealing).
fn recovered_later(dir: &Path, files: &[String], name: &str, torn: usize) -> bool {
    let Some(position) = files.iter().position(|f| f == name) else {
        return false;
    };
    let Some(next) = files.get(position + 1) else {
        return false;
    };
    let Ok(text) = std::fs::read_to_string(dir.join(next)) else {
        return false;
    };
    text.lines().take(2).any(|line| recovers(line, name, torn))
}
