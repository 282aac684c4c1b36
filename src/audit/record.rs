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

/// An event serialized ahead of sealing: the costly part (serializing and escaping every
/// field) runs before the writer's lock is taken, so sessions recording at once wait for
/// each other only for the chain fields and the hash.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// OCSF (class_uid, activity_id), if the event has them.
    ocsf: Option<(u32, u32)>,
    /// The event's own JSON object: `{…}`.
    json: String,
}

/// Serialize `event`, whose OCSF (class_uid, activity_id) is `ocsf`, for [`seal`].
pub fn prepare<E: Serialize>(
    ocsf: Option<(u32, u32)>,
    event: &E,
) -> Result<Prepared, serde_json::Error> {
    let json = serde_json::to_string(event)?;
    if !(json.starts_with('{') && json.ends_with('}')) {
        return Err(serde::ser::Error::custom(
            "an audit event must be a JSON object",
        ));
    }
    Ok(Prepared { ocsf, json })
}

/// Build the line for a prepared event (without the trailing newline) and return it with
/// its hash: the chain fields first (`seq`, `time`, `prev_hash`, then `class_uid` and
/// `activity_id` when the event has them), then the event's fields.
pub fn seal(seq: u64, time: u64, prev_hash: &str, event: &Prepared) -> (String, String) {
    use std::fmt::Write as _;
    let mut body = String::with_capacity(event.json.len() + prev_hash.len() + 160);
    // (Writing to a String cannot fail.) `prev_hash` is a hex digest (GENESIS, one this
    // writer computed, or one `check` found to be 64 hex digits): nothing in it to escape.
    let _ = write!(
        body,
        "{{\"seq\":{seq},\"time\":{time},\"prev_hash\":\"{prev_hash}\""
    );
    if let Some((class, activity)) = event.ocsf {
        let _ = write!(body, ",\"class_uid\":{class},\"activity_id\":{activity}");
    }
    // The event's fields, after its opening brace (`{}` adds nothing but the closing one).
    let fields = &event.json[1..];
    if fields != "}" {
        body.push(',');
    }
    body.push_str(fields);
    let hash = hex(&Sha256::digest(body.as_bytes()));
    // `body` is a JSON object, so it ends with '}'.
    body.pop();
    body.push_str(",\"hash\":\"");
    body.push_str(&hash);
    body.push_str("\"}");
    (body, hash)
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
        let prepared = prepare(Some((1, 2)), &event).unwrap();
        let (line, hash) = seal(7, 1_700_000_000_000, GENESIS, &prepared);
        assert!(line.starts_with("{\"seq\":7,\"time\":1700000000000,\"prev_hash\":\"0000"));
        assert!(line.contains("\"class_uid\":1,\"activity_id\":2,\"type\":\"demo\""));
        assert_eq!(check(&line), Ok(hash.clone()));
        let parsed: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!({
                "seq": 7, "time": 1_700_000_000_000u64, "prev_hash": GENESIS,
                "class_uid": 1, "activity_id": 2, "type": "demo", "note": "héllo \"quoted\"",
                "hash": hash,
            })
        );
        let without_ocsf = seal(8, 1, &hash, &prepare(None, &event).unwrap()).0;
        assert!(without_ocsf.contains(&format!("\"prev_hash\":\"{hash}\",\"type\":\"demo\"")));
        let tampered = line.replace("héllo", "hallo");
        assert_eq!(check(&tampered), Err(RecordError::HashMismatch));
        let tampered = line.replace("\"seq\":7", "\"seq\":8");
        assert_eq!(check(&tampered), Err(RecordError::HashMismatch));
        assert_eq!(check("{\"seq\":1}"), Err(RecordError::NoHash));
        assert_eq!(check(""), Err(RecordError::NoHash));
    }
}
