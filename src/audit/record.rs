//! The hash chain: how one event becomes one line of the log.
//!
//! A record is one JSON object per line. The writer serializes the record *without* its hash
//! (`{"seq":…,"time":…,"prev_hash":…,<event fields>}`), hashes exactly those bytes with
//! SHA-256, and writes them with `,"hash":"<hex>"}` in place of the closing brace. So the
//! canonical bytes of a record are the line as written minus that fixed-size suffix: a
//! verifier needs no JSON canonicalization, and any changed byte changes the hash.

use serde::Serialize;
use sha2::{Digest, Sha256};

/// `prev_hash` of the very first record of a log.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Length of `,"hash":"` + 64 hex digits + `"}`.
const HASH_SUFFIX_LEN: usize = 9 + 64 + 2;

/// The chain fields every record starts with.
#[derive(Debug, Serialize)]
struct Header<'a, E: Serialize> {
    seq: u64,
    /// Milliseconds since the Unix epoch (OCSF `time`).
    time: u64,
    prev_hash: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    class_uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    activity_id: Option<u32>,
    #[serde(flatten)]
    event: &'a E,
}

/// Build the line for `event` (without the trailing newline) and return it with its hash.
/// `ocsf` is the event's OCSF (class_uid, activity_id), if it has one.
pub fn seal<E: Serialize>(
    seq: u64,
    time: u64,
    prev_hash: &str,
    ocsf: Option<(u32, u32)>,
    event: &E,
) -> Result<(String, String), serde_json::Error> {
    let header = Header {
        seq,
        time,
        prev_hash,
        class_uid: ocsf.map(|(class, _)| class),
        activity_id: ocsf.map(|(_, activity)| activity),
        event,
    };
    let mut body = serde_json::to_string(&header)?;
    let hash = hex(&Sha256::digest(body.as_bytes()));
    // `body` is a JSON object, so it ends with '}'.
    body.pop();
    body.push_str(",\"hash\":\"");
    body.push_str(&hash);
    body.push_str("\"}");
    Ok((body, hash))
}

/// Split a line into its canonical bytes (re-closed with `}`) and the hash it claims, and
/// check that the hash matches. Returns the claimed hash.
pub fn check(line: &str) -> Result<String, RecordError> {
    let split = line
        .len()
        .checked_sub(HASH_SUFFIX_LEN)
        .ok_or(RecordError::NoHash)?;
    let (body, suffix) = (
        line.get(..split).ok_or(RecordError::NoHash)?,
        line.get(split..).ok_or(RecordError::NoHash)?,
    );
    let claimed = suffix
        .strip_prefix(",\"hash\":\"")
        .and_then(|s| s.strip_suffix("\"}"))
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or(RecordError::NoHash)?;
    let mut hasher = Sha256::new();
    hasher.update(body.as_bytes());
    hasher.update(b"}");
    if hex(&hasher.finalize()) != claimed {
        return Err(RecordError::HashMismatch);
    }
    Ok(claimed.to_owned())
}

/// Why a line is not a valid record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("the line does not end with a hash")]
    NoHash,
    #[error("the record's hash does not match its contents (the record was altered)")]
    HashMismatch,
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    #[serde(tag = "type")]
    enum Demo {
        #[serde(rename = "demo")]
        Demo { note: String },
    }

    #[test]
    fn sealed_lines_check_and_any_change_is_detected() {
        let event = Demo::Demo {
            note: "héllo \"quoted\"".into(),
        };
        let (line, hash) = seal(7, 1_700_000_000_000, GENESIS, Some((1, 2)), &event).unwrap();
        assert!(line.starts_with("{\"seq\":7,\"time\":1700000000000,\"prev_hash\":\"0000"));
        assert!(line.contains("\"class_uid\":1,\"activity_id\":2,\"type\":\"demo\""));
        assert_eq!(check(&line), Ok(hash.clone()));
        let tampered = line.replace("héllo", "hallo");
        assert_eq!(check(&tampered), Err(RecordError::HashMismatch));
        let tampered = line.replace("\"seq\":7", "\"seq\":8");
        assert_eq!(check(&tampered), Err(RecordError::HashMismatch));
        assert_eq!(check("{\"seq\":1}"), Err(RecordError::NoHash));
        assert_eq!(check(""), Err(RecordError::NoHash));
    }
}
