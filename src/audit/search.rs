//! `pgwarden audit search`: find records across rotated files by who, when, what.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use serde_json::Value;

use super::{list_files, AuditError};

/// What to look for; every given criterion must match.
#[derive(Debug, Default, Clone)]
pub struct Query {
    /// The person: `actor.user.name`, a failed login's claimed `user`, and every record of
    /// a session that person started.
    pub user: Option<String>,
    /// Milliseconds since the epoch, inclusive.
    pub since: Option<u64>,
    /// Milliseconds since the epoch, exclusive.
    pub until: Option<u64>,
    /// Record `type`, e.g. `session.start`, `auth.failure`.
    pub kind: Option<String>,
    pub session: Option<u64>,
    /// A statement's decision (`allow`, `deny`, …).
    pub decision: Option<String>,
    /// A table a statement touched.
    pub table: Option<String>,
    /// Case-insensitive substring of a statement's declared intent.
    pub intent: Option<String>,
    /// Case-insensitive substring of the whole record.
    pub text: Option<String>,
}

/// One match: the file, and the record as written.
#[derive(Debug, Clone)]
pub struct Hit {
    pub file: String,
    pub line: usize,
    pub record: Value,
    pub raw: String,
    /// For a `statement` record: its `statement.result`, wherever it is in the log, and
    /// that record as written.
    pub result: Option<Value>,
    pub result_raw: Option<String>,
    /// The result is a match of its own too (listed in its place).
    pub result_also_matched: bool,
    /// Who the record is about: its own actor, a failed login's claimed user, an approver,
    /// an admin API caller, or the person who started its session.
    pub user: Option<String>,
}

/// What a search found, and how far the log it read can be trusted.
#[derive(Debug, Default)]
pub struct Found {
    pub hits: Vec<Hit>,
    /// Lines that are not a record whose own hash holds (an edit, or a crash's sealed
    /// partial line): not searched.
    pub unchecked_lines: usize,
    /// Places where a record does not follow the one before it (seq or prev_hash):
    /// records were removed, inserted or reordered there.
    pub chain_breaks: usize,
}

/// All matching records, oldest first. Lines that are not a record whose own hash holds are
/// skipped, and they and breaks in the chain are counted: `audit verify` is the tool that
/// says where and why.
pub fn search(dir: &Path, query: &Query) -> Result<Found, AuditError> {
    let files = list_files(dir)?;
    let read = |name: &String| {
        std::fs::read_to_string(dir.join(name)).map_err(|e| AuditError::Io {
            action: format!("read {name}"),
            source: e,
        })
    };
    // Each run's session ids go on from the last run's (`first_session` of proxy.start), but
    // older logs started again at 1: a session is (run, id), the run counted by the
    // proxy.start records before it, which holds for both.
    let mut run = 0u64;
    let mut next_run = |record: &Value| {
        if record["type"] == "proxy.start" {
            run += 1;
        }
        run
    };
    // People are found whatever the case they were written in (dev@Example.com).
    let wanted_user = query.user.as_deref().map(str::to_lowercase);
    let is_user =
        |value: &Value, user: &str| value.as_str().is_some_and(|v| v.to_lowercase() == user);
    // Sessions of the user, so their session.end (which carries no identity) matches too.
    let mut sessions = HashSet::new();
    if let Some(user) = &wanted_user {
        for name in &files {
            for line in read(name)?.lines() {
                let Some(record) = checked(line) else {
                    continue;
                };
                let run = next_run(&record);
                if record["type"] == "session.start"
                    && is_user(&record["actor"]["user"]["name"], user)
                {
                    if let Some(id) = record["session"].as_u64() {
                        sessions.insert((run, id));
                    }
                }
            }
        }
    }
    let mut run = 0u64;
    let text = query.text.as_ref().map(|t| t.to_lowercase());
    let intent = query.intent.as_ref().map(|t| t.to_lowercase());
    // Who started each session: (run, session) → user.
    let mut session_users: HashMap<(u64, u64), String> = HashMap::new();
    // Approval requests whose intent matched: their answers and closing match too.
    let mut requests_with_intent: HashSet<String> = HashSet::new();
    let mut found = Found::default();
    let mut hits = Vec::new();
    // Outcomes, to show next to their statements: (run, session, statement) → result.
    let mut results: HashMap<(u64, u64, u64), (Value, String, bool)> = HashMap::new();
    let mut runs = Vec::new();
    // The seq and hash the next record must follow.
    let mut chain: Option<(u64, String)> = None;
    let table = query.table.as_deref().map(table_name);
    for name in &files {
        for (index, line) in read(name)?.lines().enumerate() {
            let Some(record) = checked(line) else {
                found.unchecked_lines += 1;
                chain = None;
                continue;
            };
            let seq = record["seq"].as_u64().unwrap_or(0);
            if let Some((previous_seq, previous_hash)) = &chain {
                if seq != previous_seq + 1 || record["prev_hash"] != previous_hash.as_str() {
                    found.chain_breaks += 1;
                }
            }
            chain = Some((seq, record["hash"].as_str().unwrap_or("").to_owned()));
            if record["type"] == "proxy.start" {
                run += 1;
            }
            let time = record["time"].as_u64().unwrap_or(0);
            let session = record["session"].as_u64();
            let user = ["actor", "user", "by", "caller"]
                .iter()
                .find_map(|field| {
                    let value = &record[*field];
                    value["user"]["name"].as_str().or_else(|| value.as_str())
                })
                .map(str::to_owned)
                .or_else(|| session.and_then(|id| session_users.get(&(run, id)).cloned()));
            if record["type"] == "session.start" {
                if let (Some(id), Some(user)) = (session, &user) {
                    session_users.insert((run, id), user.clone());
                }
            }
            // Before the other filters: an approval request with the intent must be known
            // for its answers to match, whatever else is asked.
            let intent_matches = intent.as_ref().is_none_or(|wanted| {
                let request = record["request"].as_str();
                if record["intent"]
                    .as_str()
                    .is_some_and(|i| i.to_lowercase().contains(wanted))
                {
                    if let Some(request) = request {
                        requests_with_intent.insert(request.to_owned());
                    }
                    true
                } else {
                    request.is_some_and(|r| requests_with_intent.contains(r))
                }
            });
            let matches = intent_matches
                && query.since.is_none_or(|since| time >= since)
                && query.until.is_none_or(|until| time < until)
                && query
                    .kind
                    .as_ref()
                    .is_none_or(|kind| record["type"] == kind.as_str())
                && query.session.is_none_or(|id| session == Some(id))
                && query
                    .decision
                    .as_ref()
                    .is_none_or(|d| record["decision"] == d.as_str())
                && table.as_ref().is_none_or(|table| {
                    record["tables"].as_array().is_some_and(|tables| {
                        tables.iter().any(|t| {
                            t.as_str()
                                .or_else(|| t["name"].as_str())
                                .is_some_and(|name| same_table(name, table))
                        })
                    })
                })
                && wanted_user.as_ref().is_none_or(|user| {
                    is_user(&record["actor"]["user"]["name"], user)
                        || is_user(&record["user"], user)
                        // Approvers: their answers and their calls to the admin API.
                        || is_user(&record["by"], user)
                        || is_user(&record["caller"], user)
                        || session.is_some_and(|id| sessions.contains(&(run, id)))
                })
                && text
                    .as_ref()
                    .is_none_or(|t| line.to_lowercase().contains(t));
            if record["type"] == "statement.result" {
                if let (Some(session), Some(statement)) = (session, record["statement"].as_u64()) {
                    let result = (record.clone(), line.to_owned(), matches);
                    results.insert((run, session, statement), result);
                }
            }
            if matches {
                runs.push(run);
                hits.push(Hit {
                    file: name.clone(),
                    line: index + 1,
                    record,
                    raw: line.to_owned(),
                    result: None,
                    result_raw: None,
                    result_also_matched: false,
                    user,
                });
            }
        }
    }
    for (hit, run) in hits.iter_mut().zip(runs) {
        if hit.record["type"] == "statement" {
            if let (Some(session), Some(statement)) = (
                hit.record["session"].as_u64(),
                hit.record["statement"].as_u64(),
            ) {
                if let Some((result, raw, matched)) = results.remove(&(run, session, statement)) {
                    hit.result = Some(result);
                    hit.result_raw = Some(raw);
                    hit.result_also_matched = matched;
                }
            }
        }
    }
    found.hits = hits;
    Ok(found)
}

/// A table name as records hold it, from one as SQL writes it: unquoted parts in lower
/// case, quoted ones as they are without the quotes, and a database in front dropped
/// (`Shop.PUBLIC."Orders"` → `public.Orders`).
fn table_name(sql: &str) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut part = String::new();
    let mut quoted = false;
    let mut chars = sql.trim().chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                part.push('"');
            }
            '"' => quoted = !quoted,
            '.' if !quoted => parts.push(std::mem::take(&mut part)),
            c if quoted => part.push(c),
            c => part.extend(c.to_lowercase()),
        }
    }
    parts.push(part);
    if parts.len() > 2 {
        parts.drain(..parts.len() - 2);
    }
    parts.join(".")
}

/// Whether a table named in a record is the one searched for. Records name tables by schema
/// and name when the statement did, so an unqualified name on either side matches that
/// table in any schema (`orders` finds `public.orders`, and `public.orders` finds `orders`).
fn same_table(recorded: &str, wanted: &str) -> bool {
    let relation = |name: &str| name.rsplit('.').next().unwrap_or(name).to_owned();
    recorded == wanted
        || ((!recorded.contains('.') || !wanted.contains('.'))
            && relation(recorded) == relation(wanted))
}

/// A line as a record, if its hash holds.
fn checked(line: &str) -> Option<Value> {
    super::record::check(line).ok()?;
    serde_json::from_str(line).ok()
}

/// Parse a point in time for `--since`/`--until`: `2026-11-27`, `2026-11-27T06:30`,
/// `2026-11-27T06:30:15[.123]` in UTC, or with `Z` or an offset such as `+01:00` (so the
/// times `audit search` prints can be pasted back), milliseconds since the epoch (a
/// record's `time`), or an age such as `15m`, `2h`, `7d` (that long ago).
pub fn parse_time(text: &str, now_ms: u64) -> Result<u64, String> {
    let text = text.trim();
    if let Some(days) = text.strip_suffix('d').and_then(|d| d.parse::<u64>().ok()) {
        return Ok(now_ms.saturating_sub(days * 86_400_000));
    }
    if let Ok(age) = crate::config::units::HumanDuration::parse(text) {
        return Ok(now_ms.saturating_sub(age.0.as_millis() as u64));
    }
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().map_err(|_| format!("`{text}` is too large"));
    }
    let bad = || {
        format!("`{text}` is not a time: use 2026-11-27, 2026-11-27T06:30[:15[.123]][Z|+01:00], milliseconds since 1970, or an age like 15m, 2h, 7d")
    };
    let (date, clock) = text.split_once('T').unwrap_or((text, ""));
    let mut parts = date.split('-').map(|p| p.parse::<i64>());
    let (Some(Ok(y)), Some(Ok(m)), Some(Ok(d)), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let days = days_from_civil(y, m, d);
    // 2026-02-31 is not a day (it would roll over into March).
    if !(1..=12).contains(&m) || super::civil_from_days(days) != (y, m as u32, d as u32) {
        return Err(bad());
    }
    // An offset from UTC at the end: `Z`, `+hh:mm`, `-hh:mm`.
    let (clock, offset_minutes) = if let Some(clock) = clock.strip_suffix('Z') {
        (clock, 0)
    } else if let Some(at) = clock.rfind(['+', '-']) {
        let (clock, offset) = clock.split_at(at);
        let sign = if offset.starts_with('-') { -1 } else { 1 };
        let (h, m) = offset[1..].split_once(':').unwrap_or((&offset[1..], "0"));
        let (Ok(h), Ok(m)) = (h.parse::<i64>(), m.parse::<i64>()) else {
            return Err(bad());
        };
        if h > 23 || m > 59 {
            return Err(bad());
        }
        (clock, sign * (h * 60 + m))
    } else {
        (clock, 0)
    };
    let mut hms = [0u64; 3];
    let mut millis = 0;
    if !clock.is_empty() {
        let fields: Vec<&str> = clock.split(':').collect();
        if fields.len() < 2 || fields.len() > 3 {
            return Err(bad());
        }
        for (index, (slot, part)) in hms.iter_mut().zip(&fields).enumerate() {
            let (whole, fraction) = part.split_once('.').unwrap_or((part, ""));
            if whole.len() != 2 {
                return Err(bad());
            }
            *slot = whole.parse().map_err(|_| bad())?;
            if part.contains('.') {
                // Only seconds have a fraction; milliseconds are what records keep.
                if index != 2
                    || fraction.is_empty()
                    || !fraction.bytes().all(|b| b.is_ascii_digit())
                {
                    return Err(bad());
                }
                millis = format!("{fraction:0<3}")[..3].parse().map_err(|_| bad())?;
            }
        }
        if hms[0] > 23 || hms[1] > 59 || hms[2] > 60 {
            return Err(bad());
        }
    }
    let local = (days * 86_400 + (hms[0] * 3600 + hms[1] * 60 + hms[2]) as i64) * 1000 + millis;
    u64::try_from(local - offset_minutes * 60_000).map_err(|_| bad())
}

/// (year, month, day) to days since 1970-01-01 (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `2026-11-27T06:30:15.123Z` for a record's `time`.
pub fn format_time(ms: u64) -> String {
    let secs = ms / 1000;
    let (y, m, d) = super::civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_and_format() {
        let now = 1_795_761_930_000; // 2026-11-27T06:45:30Z
        assert_eq!(parse_time("2026-11-27T06:45:30Z", 0).unwrap(), now);
        assert_eq!(parse_time("2026-11-27T06:45:30", 0).unwrap(), now);
        assert_eq!(
            parse_time("2026-11-27", 0).unwrap(),
            now - (6 * 3600 + 45 * 60 + 30) * 1000
        );
        assert_eq!(parse_time("15m", now).unwrap(), now - 900_000);
        assert_eq!(parse_time("2d", now).unwrap(), now - 2 * 86_400_000);
        assert!(parse_time("yesterday", now).is_err());
        assert!(parse_time("2026-13-01", now).is_err());
        assert_eq!(format_time(now + 7), "2026-11-27T06:45:30.007Z");
        // What search prints can be pasted back; offsets and epoch milliseconds work.
        assert_eq!(parse_time(&format_time(now + 7), 0).unwrap(), now + 7);
        assert_eq!(parse_time("2026-11-27T06:45:30.5Z", 0).unwrap(), now + 500);
        assert_eq!(parse_time("2026-11-27T07:45:30+01:00", 0).unwrap(), now);
        assert_eq!(parse_time("2026-11-27T01:15:30-05:30", 0).unwrap(), now);
        assert_eq!(parse_time("1795761930000", 0).unwrap(), now);
        assert_eq!(parse_time("2026-11-27T06:45", 0).unwrap(), now - 30_000);
        for wrong in [
            "2026-02-31",
            "2026-11-27T08:50:33:99",
            "2026-11-27T6:45",
            "2026-11-27T06",
            "2026-11-27T06:45.5:00",
            "2026-11-27T06:45:30+25:00",
        ] {
            assert!(parse_time(wrong, 0).is_err(), "{wrong}");
        }
    }

    #[test]
    fn table_names_are_compared_as_records_hold_them() {
        assert_eq!(table_name("ORDERS"), "orders");
        assert_eq!(table_name("\"orders\""), "orders");
        assert_eq!(table_name("PUBLIC.ORDERS"), "public.orders");
        assert_eq!(table_name("shop.public.orders"), "public.orders");
        assert_eq!(table_name("Shop.PUBLIC.\"Or.ders\""), "public.Or.ders");
        assert_eq!(table_name("\"a\"\"b\""), "a\"b");
    }

    #[test]
    fn an_unqualified_table_name_matches_in_any_schema() {
        assert!(same_table("orders", "public.orders"));
        assert!(same_table("public.orders", "orders"));
        assert!(same_table("public.orders", "public.orders"));
        assert!(!same_table("tenant_b.orders", "public.orders"));
        assert!(!same_table("orders_archive", "orders"));
    }
}
