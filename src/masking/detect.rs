//! Content detectors: sensitive values found by their shape in any text, whatever column
//! (or expression) they come from — the net under the configured rules.
//!
//! Each detector is a hand-written scanner over bytes with a cheap trigger (an `@`, a digit,
//! a key prefix), validated where a checksum exists (Luhn for card numbers, mod 97 for
//! IBANs), so ordinary numbers and words are left alone. [`Detectors::mask`] returns `None`
//! when nothing was found: the caller passes the original bytes through without a copy.

use serde::Deserialize;

use super::strategy::{mask_text, Strategy};

/// The kinds of value the detectors find.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Email,
    CreditCard,
    UsSsn,
    Phone,
    Iban,
    /// Cloud access keys, JWTs, private-key blocks.
    Secret,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Email,
        Kind::CreditCard,
        Kind::UsSsn,
        Kind::Phone,
        Kind::Iban,
        Kind::Secret,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::CreditCard => "credit_card",
            Self::UsSsn => "us_ssn",
            Self::Phone => "phone",
            Self::Iban => "iban",
            Self::Secret => "secret",
        }
    }

    /// The strategy a detector uses unless configured otherwise.
    pub fn default_strategy(&self) -> Strategy {
        match self {
            Self::Email => Strategy::Email,
            Self::CreditCard | Self::Phone | Self::Iban => Strategy::Partial { keep: 4 },
            Self::UsSsn | Self::Secret => Strategy::Redact,
        }
    }
}

/// The enabled detectors and their strategies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detectors {
    pub enabled: Vec<(Kind, Strategy)>,
}

impl Default for Detectors {
    /// All of them, with their default strategies.
    fn default() -> Self {
        Self {
            enabled: Kind::ALL
                .iter()
                .map(|k| (*k, k.default_strategy()))
                .collect(),
        }
    }
}

/// Counts of what was found, for the audit record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hits(pub Vec<(Kind, u32)>);

impl Hits {
    fn add(&mut self, kind: Kind) {
        match self.0.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => *n += 1,
            None => self.0.push((kind, 1)),
        }
    }
}

/// `text` with what any detector finds masked by its default strategy (`None`: nothing
/// found) — for free text pgwarden itself records, such as intents and sqlcommenter tags.
pub fn scrub(text: &str) -> Option<String> {
    static ALL: std::sync::OnceLock<Detectors> = std::sync::OnceLock::new();
    ALL.get_or_init(Detectors::default)
        .mask(text, &[], &mut Hits::default())
}

impl Detectors {
    pub fn none() -> Self {
        Self {
            enabled: Vec::new(),
        }
    }

    /// `text` with every detected value masked, and what was found; `None` if nothing was.
    pub fn mask(&self, text: &str, key: &[u8], hits: &mut Hits) -> Option<String> {
        let mut spans: Vec<(usize, usize, Kind, Strategy)> = Vec::new();
        let bytes = text.as_bytes();
        for (kind, strategy) in &self.enabled {
            let found = match kind {
                Kind::Email => emails(bytes),
                Kind::CreditCard => digit_runs(bytes, 13, 19, luhn),
                Kind::UsSsn => ssns(bytes),
                Kind::Phone => phones(bytes),
                Kind::Iban => ibans(bytes),
                Kind::Secret => secrets(bytes),
            };
            for (start, end) in found {
                // The first detector to claim bytes keeps them.
                if spans.iter().all(|(s, e, _, _)| end <= *s || start >= *e) {
                    spans.push((start, end, *kind, *strategy));
                }
            }
        }
        if spans.is_empty() {
            return None;
        }
        spans.sort_by_key(|(s, _, _, _)| *s);
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for (start, end, kind, strategy) in spans {
            // Spans are on ASCII boundaries (every detector matches ASCII only).
            out.push_str(text.get(at..start)?);
            out.push_str(&mask_text(strategy, text.get(start..end)?, key));
            hits.add(kind);
            at = end;
        }
        out.push_str(text.get(at..)?);
        Some(out)
    }
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// `local@domain.tld`.
fn emails(text: &[u8]) -> Vec<(usize, usize)> {
    let local = |b: u8| b.is_ascii_alphanumeric() || b"._%+-".contains(&b);
    let host = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'.';
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(offset) = text[from..].iter().position(|&b| b == b'@') {
        let at = from + offset;
        from = at + 1;
        let mut start = at;
        while start > 0 && local(text[start - 1]) {
            start -= 1;
        }
        let mut end = at + 1;
        while end < text.len() && host(text[end]) {
            end += 1;
        }
        // The domain must not end in a dot and needs a TLD of two letters or more.
        while end > at + 1 && text[end - 1] == b'.' {
            end -= 1;
        }
        let domain = &text[at + 1..end];
        let tld_ok = domain.iter().rposition(|&b| b == b'.').is_some_and(|dot| {
            dot > 0
                && domain.len() - dot > 2
                && domain[dot + 1..].iter().all(u8::is_ascii_alphabetic)
        });
        if start < at && tld_ok {
            found.push((start, end));
            from = end;
        }
    }
    found
}

/// Runs of `min..=max` digits, allowing single spaces or dashes between digit groups, not
/// touching other digits or letters, accepted by `valid` (which sees the digits only).
fn digit_runs(
    text: &[u8],
    min: usize,
    max: usize,
    valid: fn(&[u8]) -> bool,
) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    let mut i = 0;
    while i < text.len() {
        if !text[i].is_ascii_digit() || (i > 0 && is_word(text[i - 1])) {
            i += 1;
            continue;
        }
        let start = i;
        let mut buffer = [0u8; 32];
        let mut count = 0;
        let mut end = i;
        let mut j = i;
        while j < text.len() && count <= max && count < buffer.len() {
            let b = text[j];
            if b.is_ascii_digit() {
                buffer[count] = b;
                count += 1;
                j += 1;
                end = j;
            } else if (b == b' ' || b == b'-') && j + 1 < text.len() && text[j + 1].is_ascii_digit()
            {
                j += 1;
            } else {
                break;
            }
        }
        let digits = &buffer[..count];
        let bounded = end >= text.len() || !is_word(text[end]);
        if bounded && (min..=max).contains(&digits.len()) && valid(digits) {
            found.push((start, end));
        }
        i = end.max(start + 1);
    }
    found
}

/// The Luhn checksum of payment card numbers (ASCII digits).
pub fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            let d = u32::from(d - b'0');
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 {
                    doubled - 9
                } else {
                    doubled
                }
            } else {
                d
            }
        })
        .sum();
    // All zeros passes Luhn but is no card.
    sum.is_multiple_of(10) && digits.iter().any(|&d| d != b'0')
}

/// `AAA-GG-SSSS`, with the ranges the SSA never issues excluded.
fn ssns(text: &[u8]) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    let mut from = 0;
    // Anchored on the first dash, at offset 3 of the 11 bytes.
    while let Some(offset) = text
        .get(from..)
        .and_then(|t| t.iter().position(|&b| b == b'-'))
    {
        let dash = from + offset;
        from = dash + 1;
        let Some(start) = dash.checked_sub(3) else {
            continue;
        };
        let Some(s) = text.get(start..start + 11) else {
            break;
        };
        let shape = s.iter().enumerate().all(|(i, b)| match i {
            3 | 6 => *b == b'-',
            _ => b.is_ascii_digit(),
        });
        if !shape
            || (start > 0 && (is_word(text[start - 1]) || text[start - 1] == b'-'))
            || (start + 11 < text.len() && (is_word(text[start + 11]) || text[start + 11] == b'-'))
        {
            continue;
        }
        let area = &s[0..3];
        if area == b"000"
            || area == b"666"
            || area[0] == b'9'
            || &s[4..6] == b"00"
            || &s[7..11] == b"0000"
        {
            continue;
        }
        found.push((start, start + 11));
        from = start + 11;
    }
    found
}

/// `+<country> …` international numbers (8–15 digits), and North American `(555) 123-4567`
/// / `555-123-4567`: separators required, so bare numbers are not taken for phones.
fn phones(text: &[u8]) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    let mut i = 0;
    while i < text.len() {
        let b = text[i];
        let boundary = i == 0 || !is_word(text[i - 1]);
        if boundary && (b == b'+' || b == b'(' || b.is_ascii_digit()) {
            let mut j = i + usize::from(b == b'+');
            let mut digits = 0;
            let mut separators = 0;
            while j < text.len() {
                match text[j] {
                    d if d.is_ascii_digit() => digits += 1,
                    b' ' | b'-' | b'.' | b'(' | b')' if digits < 15 => separators += 1,
                    _ => break,
                }
                j += 1;
            }
            // Trailing separators are not part of the number.
            while j > i && !text[j - 1].is_ascii_digit() {
                j -= 1;
            }
            let bounded = j >= text.len() || !is_word(text[j]);
            let international = b == b'+' && (8..=15).contains(&digits);
            let nanp = b != b'+' && digits == 10 && separators >= 2 && nanp_shape(&text[i..j]);
            if bounded && (international || nanp) {
                found.push((i, j));
                i = j;
                continue;
            }
        }
        i += 1;
    }
    found
}

/// `(ddd) ddd-dddd`, `ddd-ddd-dddd`, `ddd.ddd.dddd`, `ddd ddd dddd`.
fn nanp_shape(s: &[u8]) -> bool {
    let groups: Vec<&[u8]> = s
        .split(|b| !b.is_ascii_digit())
        .filter(|g| !g.is_empty())
        .collect();
    groups.len() == 3 && groups[0].len() == 3 && groups[1].len() == 3 && groups[2].len() == 4
}

/// IBANs: country letters, check digits, 11–30 alphanumerics (spaces every four allowed),
/// accepted by the mod-97 check.
fn ibans(text: &[u8]) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    let mut i = 0;
    while i + 15 <= text.len() {
        let start_ok = (i == 0 || !is_word(text[i - 1]))
            && text[i].is_ascii_uppercase()
            && text[i + 1].is_ascii_uppercase()
            && text[i + 2].is_ascii_digit()
            && text[i + 3].is_ascii_digit();
        if !start_ok {
            i += 1;
            continue;
        }
        let mut chars = Vec::with_capacity(34);
        let mut j = i;
        let mut end = i;
        while j < text.len() && chars.len() < 34 {
            let b = text[j];
            if b.is_ascii_uppercase() || b.is_ascii_digit() {
                chars.push(b);
                j += 1;
                end = j;
            } else if b == b' '
                && j + 1 < text.len()
                && text[j + 1].is_ascii_alphanumeric()
                && (chars.len() % 4 == 0)
            {
                j += 1;
            } else {
                break;
            }
        }
        let bounded = end >= text.len() || !is_word(text[end]);
        if bounded && (15..=34).contains(&chars.len()) && mod97(&chars) {
            found.push((i, end));
            i = end;
        } else {
            i += 1;
        }
    }
    found
}

fn mod97(chars: &[u8]) -> bool {
    let rearranged = chars[4..].iter().chain(&chars[..4]);
    let mut remainder: u32 = 0;
    for &c in rearranged {
        let value = if c.is_ascii_digit() {
            u32::from(c - b'0')
        } else {
            u32::from(c - b'A') + 10
        };
        remainder = if value >= 10 {
            (remainder * 100 + value) % 97
        } else {
            (remainder * 10 + value) % 97
        };
    }
    remainder == 1
}

/// AWS access key ids, JWTs and PEM private-key blocks.
fn secrets(text: &[u8]) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    // AKIA / ASIA + 16 uppercase letters or digits.
    for prefix in [&b"AKIA"[..], b"ASIA"] {
        let mut from = 0;
        while let Some(offset) = find(&text[from..], prefix) {
            let start = from + offset;
            let end = start + 20;
            from = start + 1;
            if end <= text.len()
                && text[start + 4..end]
                    .iter()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
                && (start == 0 || !is_word(text[start - 1]))
                && (end == text.len() || !is_word(text[end]))
            {
                found.push((start, end));
            }
        }
    }
    // JWT: eyJ… . … . …
    let b64 = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    let mut from = 0;
    while let Some(offset) = find(&text[from..], b"eyJ") {
        let start = from + offset;
        from = start + 3;
        let mut end = start;
        let mut dots = 0;
        while end < text.len() && (b64(text[end]) || (text[end] == b'.' && dots < 2)) {
            dots += usize::from(text[end] == b'.');
            end += 1;
        }
        if dots == 2 && end - start >= 20 && text[end - 1] != b'.' {
            found.push((start, end));
            from = end;
        }
    }
    // -----BEGIN … PRIVATE KEY----- … -----END … PRIVATE KEY-----
    let mut from = 0;
    while let Some(offset) = find(&text[from..], b"-----BEGIN ") {
        let start = from + offset;
        from = start + 1;
        let Some(header_end) = find(&text[start..], b"-----\n")
            .or_else(|| find(&text[start + 11..], b"-----").map(|p| p + 11))
        else {
            break;
        };
        let header = &text[start..start + header_end];
        if find(header, b"PRIVATE KEY").is_none() {
            continue;
        }
        if let Some(end_offset) = find(&text[start..], b"-----END ") {
            let tail_start = start + end_offset + 9;
            if let Some(close) = find(&text[tail_start..], b"-----") {
                let end = tail_start + close + 5;
                found.push((start, end));
                from = end;
            }
        }
    }
    found
}

/// The first `needle` in `haystack`: a scan for its first byte, then a comparison.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, rest) = needle.split_first()?;
    let mut from = 0;
    while let Some(offset) = haystack.get(from..)?.iter().position(|&b| b == first) {
        let at = from + offset;
        if haystack.get(at + 1..at + needle.len()) == Some(rest) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(text: &str) -> (Option<String>, Hits) {
        let mut hits = Hits::default();
        let out = Detectors::default().mask(text, b"key", &mut hits);
        (out, hits)
    }

    #[test]
    fn sensitive_values_are_found_and_masked() {
        let cases: &[(&str, &str, Kind)] = &[
            (
                "mail jane.doe+x@mail.example.com now",
                "mail j***@mail.example.com now",
                Kind::Email,
            ),
            (
                "card 4242 4242 4242 4242.",
                "card ***************4242.",
                Kind::CreditCard,
            ),
            (
                "card 4111-1111-1111-1111",
                "card ***************1111",
                Kind::CreditCard,
            ),
            ("ssn 123-45-6789", "ssn ****", Kind::UsSsn),
            (
                "call +44 20 7946 0958 today",
                "call ************0958 today",
                Kind::Phone,
            ),
            ("call (555) 123-4567", "call **********4567", Kind::Phone),
            (
                "iban DE89 3704 0044 0532 0130 00",
                "iban ***********************0 00",
                Kind::Iban,
            ),
            ("key AKIAIOSFODNN7EXAMPLE ok", "key **** ok", Kind::Secret),
            (
                "token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl end",
                "token **** end",
                Kind::Secret,
            ),
            (
                "-----BEGIN RSA PRIVATE KEY-----\nMIIB\n-----END RSA PRIVATE KEY-----",
                "****",
                Kind::Secret,
            ),
        ];
        for (text, expected, kind) in cases {
            let (out, hits) = masked(text);
            assert_eq!(out.as_deref(), Some(*expected), "{text}");
            assert_eq!(hits.0, vec![(*kind, 1)], "{text}");
        }
    }

    #[test]
    fn ordinary_text_passes_untouched() {
        for text in [
            "",
            "order 12345 shipped on 2026-11-27",
            "4242 4242 4242 4241",         // fails Luhn
            "0000000000000000",            // all zeros
            "id 123456789012",             // too short for a card, no separators for a phone
            "version 1.2.3 @ build",       // an @ without an address
            "user@localhost",              // no TLD
            "000-12-3456 and 123-00-4567", // never-issued SSNs
            "GB00 WEST 1234 5698 7654 32", // bad IBAN check digits
            "AKIA short",
            "eyJ only.one",
            "-----BEGIN CERTIFICATE-----\nMII\n-----END CERTIFICATE-----",
            "1.5 + 2.5 = 4",
            "phone 5551234567", // a bare number is not taken for a phone
        ] {
            let (out, hits) = masked(text);
            assert_eq!(out, None, "{text}: {hits:?}");
        }
    }

    #[test]
    fn several_kinds_in_one_text_and_non_ascii_around_them() {
        let (out, hits) = masked("Zoë <zoe@example.org>, card 5555555555554444 — réglé");
        assert_eq!(
            out.as_deref(),
            Some("Zoë <z***@example.org>, card ************4444 — réglé")
        );
        assert_eq!(hits.0, vec![(Kind::Email, 1), (Kind::CreditCard, 1)]);
    }
}
