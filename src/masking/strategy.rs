//! How a sensitive value is masked. Every strategy is a pure function of the value (and, for
//! `hash`, a secret key), and its result is valid for the column's type or NULL, so clients
//! and ORMs that parse the value keep working.

/// A masking strategy (`strategy = "…"` in rules and detectors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// A fixed mask: `****`.
    Redact,
    /// Keep the last `keep` characters, star the rest: `************4242`.
    Partial { keep: usize },
    /// Keep the first character and the domain: `j***@example.com`.
    Email,
    /// Keyed HMAC-SHA256, hex, stable across sessions (so masked values still join and group).
    Hash,
    /// NULL.
    Null,
}

/// The fixed mask of `redact`.
pub const REDACTED: &str = "****";

/// What kind of value a column holds, as far as masking cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// text, varchar, bpchar, name, citext, unknown: any string is valid.
    Text,
    /// json / jsonb: a masked value must be a JSON string.
    Json,
    /// Anything else (numbers, dates, uuid, bytea, arrays, …): only NULL is always valid.
    Other,
}

impl ValueKind {
    /// From a type OID in a RowDescription.
    pub fn of_type(oid: u32) -> Self {
        match oid {
            // text, varchar, bpchar, name, unknown
            25 | 1043 | 1042 | 19 | 705 => Self::Text,
            // json, jsonb
            114 | 3802 => Self::Json,
            _ => Self::Other,
        }
    }
}

/// Mask `value` (its text form) with `strategy` for a column of `kind`; `None` means NULL.
/// `key` is the `hash` strategy's secret.
pub fn apply(strategy: Strategy, value: &str, kind: ValueKind, key: &[u8]) -> Option<String> {
    if kind == ValueKind::Other || strategy == Strategy::Null {
        return None;
    }
    let masked = mask_text(strategy, value, key);
    Some(match kind {
        ValueKind::Json => serde_json::Value::String(masked).to_string(),
        _ => masked,
    })
}

/// A string strategy on text (used for whole values and for detector hits inside text).
pub fn mask_text(strategy: Strategy, value: &str, key: &[u8]) -> String {
    match strategy {
        Strategy::Redact | Strategy::Null => REDACTED.to_owned(),
        Strategy::Partial { keep } => {
            let count = value.chars().count();
            let keep = keep.min(count / 2);
            let stars = count - keep;
            let mut out = "*".repeat(stars);
            out.extend(value.chars().skip(stars));
            out
        }
        Strategy::Email => match value.rsplit_once('@') {
            Some((local, domain)) if !local.is_empty() => {
                let first: String = local.chars().take(1).collect();
                format!("{first}***@{domain}")
            }
            _ => REDACTED.to_owned(),
        },
        Strategy::Hash => {
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
            let tag = ring::hmac::sign(&key, value.as_bytes());
            // 16 bytes are plenty to join and group on, and keep values short.
            crate::audit::record::hex(&tag.as_ref()[..16])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategies_keep_values_valid_for_their_type() {
        let key = b"0123456789abcdef";
        let t = ValueKind::Text;
        let cases: &[(Strategy, &str, ValueKind, Option<&str>)] = &[
            (Strategy::Redact, "secret", t, Some("****")),
            (
                Strategy::Partial { keep: 4 },
                "4242424242424242",
                t,
                Some("************4242"),
            ),
            // Never reveal more than half.
            (Strategy::Partial { keep: 4 }, "abc", t, Some("**c")),
            (
                Strategy::Email,
                "jane.doe@example.com",
                t,
                Some("j***@example.com"),
            ),
            (Strategy::Email, "not an email", t, Some("****")),
            (Strategy::Null, "x", t, None),
            (Strategy::Redact, "42", ValueKind::Other, None),
            (Strategy::Redact, "\"x\"", ValueKind::Json, Some("\"****\"")),
        ];
        for (strategy, value, kind, expected) in cases {
            assert_eq!(
                apply(*strategy, value, *kind, key).as_deref(),
                *expected,
                "{strategy:?} {value}"
            );
        }
        let a = apply(Strategy::Hash, "jane@example.com", t, key).unwrap();
        assert_eq!(
            a,
            apply(Strategy::Hash, "jane@example.com", t, key).unwrap(),
            "stable"
        );
        assert_ne!(
            a,
            apply(Strategy::Hash, "john@example.com", t, key).unwrap()
        );
        assert_ne!(
            a,
            apply(Strategy::Hash, "jane@example.com", t, b"another key!!!!!").unwrap()
        );
        assert_eq!(a.len(), 32);
        assert!(!a.contains("jane"));
    }
}
