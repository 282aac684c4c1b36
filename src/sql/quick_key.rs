//! The analysis cache's key for everyday statement text, without PostgreSQL's scanner.
//!
//! The simple protocol sends every statement with its values written in (`… WHERE aid =
//! 4711`), so most texts miss the exact-text cache and are looked up by their shape: the
//! text with each literal replaced by a marker of its kind ([`super::analyze`]). Finding the
//! literals with libpg_query's scanner costs a few microseconds (a C scan plus a protobuf
//! round trip), a large part of a cache hit. [`quick_key`] finds them in one pass over the
//! bytes, for text made only of plain words, decimal integers, `'…'` strings, quoted names,
//! `$n` parameters, punctuation and spacing. Anything else (comments, dollar quotes,
//! escape or bit strings, other numbers, backslashes, non-ASCII) gets `None`, and the caller
//! falls back to the scanner.
//!
//! Where it answers, the key is exactly the scanner's, so a hit is the entry the scanner
//! would have found: a unit test compares both on every statement it is given and on
//! thousands of generated ones.

/// The shape key of `sql` (as `analyze`'s scanner builds it), or `None` when the text holds
/// anything but the plain forms above.
pub fn quick_key(sql: &str) -> Option<String> {
    let bytes = sql.as_bytes();
    let mut key = String::with_capacity(sql.len());
    // Copied verbatim up to here.
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => i += 1,
            b'a'..=b'z' | b'A'..=b'Z' | b'_' => {
                let start = i;
                i += 1;
                while i < bytes.len() && is_word_byte(bytes[i]) {
                    i += 1;
                }
                // E'…', B'…', X'…', N'…', U&'…', U&"…": literal and name forms of their own.
                match bytes.get(i) {
                    Some(b'\'') => return None,
                    Some(b'&') if i - start == 1 && matches!(b, b'u' | b'U') => return None,
                    _ => {}
                }
            }
            b'0'..=b'9' => {
                let start = i;
                while i < bytes.len() && bytes[i].is_ascii_digit() {
                    i += 1;
                }
                // Decimal integers that fit in int4 only: anything longer may be numeric,
                // and `1.5`, `1e3`, `0x1f`, `1_000`, `1abc` are other tokens.
                if i - start > 9
                    || bytes.get(i).is_some_and(|&n| n == b'.' || is_word_byte(n))
                    || (start > 0 && bytes[start - 1] == b'.')
                {
                    return None;
                }
                key.push_str(&sql[copied..start]);
                key.push_str("\0i");
                copied = i;
            }
            b'\'' => {
                let start = i;
                i += 1;
                loop {
                    match bytes.get(i) {
                        None | Some(b'\\') => return None,
                        Some(b'\'') if bytes.get(i + 1) == Some(&b'\'') => i += 2,
                        Some(b'\'') => break,
                        Some(_) => i += 1,
                    }
                }
                i += 1;
                // Strings separated only by spacing with a newline are one literal.
                let next = bytes[i..]
                    .iter()
                    .find(|&&n| !matches!(n, b' ' | b'\t' | b'\n' | b'\r' | b'\x0c'));
                if next == Some(&b'\'') {
                    return None;
                }
                key.push_str(&sql[copied..start]);
                key.push_str("\0s");
                copied = i;
            }
            b'"' => {
                // `""` is no name at all (a syntax error).
                if bytes.get(i + 1) == Some(&b'"') && bytes.get(i + 2) != Some(&b'"') {
                    return None;
                }
                i += 1;
                loop {
                    match bytes.get(i) {
                        None => return None,
                        Some(b'"') if bytes.get(i + 1) == Some(&b'"') => i += 2,
                        Some(b'"') => break,
                        Some(_) => i += 1,
                    }
                }
                i += 1;
            }
            b'$' => {
                // `$n` (a parameter, kept as written); `$tag$` and `$$` quote bodies.
                let start = i;
                i += 1;
                while i < bytes.len() && bytes[i].is_ascii_digit() {
                    i += 1;
                }
                if i == start + 1
                    || i - start > 10
                    || bytes.get(i).is_some_and(|&n| is_word_byte(n))
                {
                    return None;
                }
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => return None,
            b'/' if bytes.get(i + 1) == Some(&b'*') => return None,
            b'(' | b')' | b'[' | b']' | b',' | b';' | b':' | b'.' | b'+' | b'-' | b'*' | b'/'
            | b'%' | b'^' | b'<' | b'>' | b'=' | b'~' | b'!' | b'@' | b'#' | b'&' | b'|' | b'`'
            | b'?' => i += 1,
            _ => return None,
        }
    }
    key.push_str(&sql[copied..]);
    Some(key)
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$'
}
