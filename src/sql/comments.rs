//! sqlcommenter tags: `/*intent='INC-4711%3A%20refund',route='%2Forders',traceparent='00-…'*/`,
//! the comment ORMs and tracing libraries append to statements (google.github.io/sqlcommenter).
//!
//! Comments are found with PostgreSQL's own scanner, so a `/* … */` inside a string literal or
//! a quoted identifier is never mistaken for one. Each `key='value'` pair is URL-decoded after
//! unescaping `\'`; a comment that does not follow the format is ignored as a whole (it is an
//! ordinary comment), never half-read.

use std::collections::BTreeMap;

/// Tags from a statement's sqlcommenter comment, keys sorted.
pub type Tags = BTreeMap<String, String>;

/// Most pairs read from one comment, and the longest key and value kept.
const MAX_PAIRS: usize = 32;
const MAX_KEY: usize = 64;
const MAX_VALUE: usize = 4096;

/// The tags of the last sqlcommenter comment in `sql`, if it has one.
pub fn sqlcommenter(sql: &[u8]) -> Option<Tags> {
    // Fast path: no comment end, no comment.
    if !sql.windows(2).any(|w| w == b"*/") {
        return None;
    }
    let text = std::str::from_utf8(sql).ok()?;
    let tokens = pg_query::scan_tokens(text).ok()?;
    let comment = pg_query::protobuf::Token::CComment as i32;
    tokens
        .iter()
        .rev()
        .filter(|t| t.token == comment)
        .filter_map(|t| text.get(usize::try_from(t.start).ok()?..usize::try_from(t.end).ok()?))
        .find_map(|c| parse(c.strip_prefix("/*")?.strip_suffix("*/")?))
}

/// `key='value',…` → tags; `None` unless the whole text follows the format.
pub fn parse(body: &str) -> Option<Tags> {
    let mut tags = Tags::new();
    let mut rest = body.trim();
    if rest.is_empty() {
        return None;
    }
    loop {
        let (key, after) = rest.split_once('=')?;
        let key = percent_decode(key.trim())?;
        if key.is_empty() || key.len() > MAX_KEY {
            return None;
        }
        let mut chars = after.trim_start().char_indices();
        if chars.next()?.1 != '\'' {
            return None;
        }
        // The value runs to the first quote not escaped by a backslash.
        let mut value = String::new();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => value.push(chars.next()?.1),
                '\'' => {
                    end = Some(i);
                    break;
                }
                c => value.push(c),
            }
        }
        let end = end?;
        let value = percent_decode(&value)?;
        if value.len() > MAX_VALUE || tags.len() >= MAX_PAIRS {
            return None;
        }
        // Tags go to the audit log: personal data in them is masked like any other.
        let value = crate::masking::detect::scrub(&value).unwrap_or(value);
        tags.insert(key, value);
        rest = after.trim_start()[end + 1..].trim_start();
        match rest.strip_prefix(',') {
            Some(next) => rest = next.trim_start(),
            None if rest.is_empty() => return Some(tags),
            None => return None,
        }
    }
}

/// `%XX` escapes to bytes; the result must be UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), if well formed.
pub fn trace_id(traceparent: &str) -> Option<String> {
    let parts: Vec<&str> = traceparent.split('-').collect();
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    match parts.as_slice() {
        [version, trace, span, flags]
            if hex(version, 2)
                && hex(trace, 32)
                && hex(span, 16)
                && hex(flags, 2)
                && trace.bytes().any(|b| b != b'0') =>
        {
            Some(trace.to_ascii_lowercase())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(pairs: &[(&str, &str)]) -> Option<Tags> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn reads_sqlcommenter_comments() {
        let sql = b"SELECT * FROM orders /*action='list',intent='INC-4711%3A%20refund%20duplicate',route='%2Forders',traceparent='00-5bd66ef5095369c7b0d1f8f4bd33716a-c532cb4098ac3dd2-01'*/";
        let t = sqlcommenter(sql).unwrap();
        assert_eq!(t["intent"], "INC-4711: refund duplicate");
        assert_eq!(t["route"], "/orders");
        assert_eq!(
            trace_id(&t["traceparent"]).as_deref(),
            Some("5bd66ef5095369c7b0d1f8f4bd33716a")
        );
        // Escaped quotes and spacing.
        assert_eq!(
            parse(r"intent='it\'s fine' , a='b'"),
            tags(&[("a", "b"), ("intent", "it's fine")])
        );
        // The last well-formed comment wins; ordinary comments are ignored.
        assert_eq!(
            sqlcommenter(b"/* just a note */ SELECT 1 /*a='1'*/ -- trailing").unwrap()["a"],
            "1"
        );
    }

    #[test]
    fn string_literals_and_malformed_comments_are_not_tags() {
        for sql in [
            &b"SELECT '/*intent=''fake''*/'"[..],
            b"SELECT \"/*intent='x'*/\" FROM t",
            b"SELECT $$ /*intent='x'*/ $$",
            b"SELECT 1 /*intent='unterminated*/",
            b"SELECT 1 /*intent=no-quotes*/",
            b"SELECT 1 /*intent='a' junk*/",
            b"SELECT 1 /*intent='%zz'*/",
            b"SELECT 1 /*='x'*/",
            b"SELECT 1 /**/",
            b"SELECT 1 /* unterminated",
            b"\xff\xfe /*a='b'*/",
        ] {
            assert_eq!(sqlcommenter(sql), None, "{}", String::from_utf8_lossy(sql));
        }
        assert_eq!(
            trace_id("00-00000000000000000000000000000000-c532cb4098ac3dd2-01"),
            None
        );
        assert_eq!(trace_id("garbage"), None);
    }
}
