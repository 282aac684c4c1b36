use std::borrow::Cow;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use lru::LruCache;
use sha2::{Digest, Sha256};

use super::facts::{facts_of, StatementFacts};
use super::tree::Tree;

/// Statements longer than this are analysed but not cached, so the cache's memory stays
/// bounded (entries × this).
const MAX_CACHED_TEXT: usize = 8 * 1024;

/// Statements one message may hold. Analysing one costs a few kilobytes while the message's
/// analysis is built, so a message of a million `SELECT 1;` would cost gigabytes; schema
/// scripts sent as one Query stay well below this.
pub const MAX_STATEMENTS: usize = 10_000;

/// Stack for analysing a statement not seen before. Decoding and walking a parse tree recurse
/// once per level, and libpg_query hands over trees up to 10 000 levels deep (`a || b || …`
/// with thousands of terms is ordinary generated SQL), so no analysis may run short of stack:
/// with less than [`ANALYSIS_STACK`] left, it runs on a fresh stack of that size (reserved
/// address space, touched only as deep as the tree goes). Switching stacks costs ~20 µs, so
/// pgwarden's runtime gives its threads [`WORKER_STACK`] and analyses in place.
///
/// Measured: a release build needs ~4 KiB per nesting level, an unoptimized (test) build
/// ~50 KiB; the deepest tree libpg_query returns is ~4 000 levels.
pub const ANALYSIS_STACK: usize = 256 * 1024 * 1024;

/// Stack size of pgwarden's runtime threads: room for an analysis in place.
pub const WORKER_STACK: usize = ANALYSIS_STACK + 64 * 1024 * 1024;

/// What one Query or Parse message does, as far as the audit log and policy need to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Analysis {
    /// The text with every literal replaced by a `$n` placeholder.
    pub normalized: Arc<str>,
    /// pgwarden's fingerprint of the text's shape (32 hex digits): equal for statements that
    /// differ only in literal values, spacing, comments or the case of keywords and unquoted
    /// names. Approval grants are keyed on it, so it is a cryptographic hash of the whole
    /// token stream (see `fingerprint` below), not libpg_query's fingerprint (which deliberately
    /// equates different tables and argument orders).
    pub fingerprint: Arc<str>,
    /// One kind per statement, in order (`select`, `insert`, `create table`, …).
    pub kinds: Arc<[&'static str]>,
    /// Tables named anywhere in the message, with how they are used; sorted, no duplicates.
    pub tables: Arc<[TableRef]>,
    /// What each statement does, in order.
    pub statements: Arc<[StatementFacts]>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct TableRef {
    /// As written, schema-qualified when it was (`public.users` or `users`).
    pub name: String,
    pub access: Access,
    /// Qualified with `pg_temp`, the session's own temporary schema (told from the parse
    /// tree, not from `name`: `"pg_temp.x"` is one unqualified name).
    #[serde(skip)]
    pub temporary: bool,
}

/// How a statement uses a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Read,
    Write,
    Ddl,
    Other,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Ddl => "ddl",
            Self::Other => "other",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnalysisError {
    /// PostgreSQL's parser rejects the text. The message is the parser's, which may quote
    /// a fragment of the statement: show it to the client, never write it to the log.
    /// PostgreSQL's parser rejects the text; `position` (1-based, in characters) is where,
    /// when it can be told.
    #[error("{message}")]
    Syntax {
        message: String,
        position: Option<u32>,
    },
    #[error("the statement is not valid UTF-8")]
    Encoding,
    #[error("pgwarden cannot check statements sent in client_encoding {0}")]
    UnsafeEncoding(String),
    /// Nested deeper than PostgreSQL's own parser allows.
    #[error("the statement is nested too deeply to check")]
    TooComplex,
    /// More statements in one message than pgwarden analyses at once.
    #[error("the message holds more than {MAX_STATEMENTS} statements")]
    TooManyStatements,
}

/// Analyses statements, with a bounded cache shared by all sessions.
#[derive(Debug)]
pub struct Analyzer {
    cache: Mutex<LruCache<Box<str>, Arc<Analysis>>>,
}

impl Analyzer {
    pub fn new(capacity: usize) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Self {
            cache: Mutex::new(LruCache::new(capacity)),
        }
    }

    /// Analyse UTF-8 text.
    pub fn analyze(&self, sql: &[u8]) -> Result<Arc<Analysis>, AnalysisError> {
        self.analyze_encoded(sql, b"UTF8")
    }

    /// Analyse text in the session's `client_encoding`.
    pub fn analyze_encoded(
        &self,
        sql: &[u8],
        client_encoding: &[u8],
    ) -> Result<Arc<Analysis>, AnalysisError> {
        let sql = decode(sql, client_encoding)?;
        self.analyze_text(&sql)
    }

    fn analyze_text(&self, sql: &str) -> Result<Arc<Analysis>, AnalysisError> {
        let cacheable = sql.len() <= MAX_CACHED_TEXT;
        if cacheable {
            if let Some(hit) = self.cached(sql) {
                return Ok(hit);
            }
            // The same shape with other values, found without the scanner where the text
            // is plain enough (the key is then the scanner's own).
            if let Some(key) = super::quick_key::quick_key(sql).filter(|key| key != sql) {
                if let Some(hit) = self.cached(&key) {
                    return Ok(hit);
                }
            }
        }
        let Shape {
            normalized,
            key,
            tokens,
        } = shape(sql)?;
        // Every statement but the last ends in a semicolon token (those inside bodies and
        // strings are not tokens of their own): an upper bound, counted before parsing.
        let semicolons = tokens
            .iter()
            .filter(|t| t.token == pg_query::protobuf::Token::Ascii59 as i32)
            .count();
        if semicolons >= MAX_STATEMENTS {
            return Err(AnalysisError::TooManyStatements);
        }
        if cacheable && key != sql {
            if let Some(hit) = self.cached(&key) {
                return Ok(hit);
            }
        }
        let analysis = Arc::new(stacker::maybe_grow(ANALYSIS_STACK, ANALYSIS_STACK, || {
            analyze_uncached(sql, normalized, &tokens)
        })?);
        if cacheable {
            if let Ok(mut cache) = self.cache.lock() {
                // The exact text, so that repeating it costs one lookup; and, unless facts
                // were read from literal values (they then hold for this text only), the
                // shape, so that other literals find it after normalizing.
                cache.put(Box::from(sql), analysis.clone());
                if !analysis.statements.iter().any(|s| s.reads_literals) {
                    cache.put(key.into_boxed_str(), analysis.clone());
                }
            }
        }
        Ok(analysis)
    }

    fn cached(&self, key: &str) -> Option<Arc<Analysis>> {
        self.cache.lock().ok()?.get(key).cloned()
    }
}

/// Client encodings in which a byte of a multi-byte character can look like an ASCII quote
/// or backslash (with every alias PostgreSQL accepts for them, in its cleaned form: lower
/// case, letters and digits only): text in them cannot be checked without a full
/// conversion.
const UNSAFE_ENCODINGS: &[&str] = &[
    "sjis",
    "shiftjis",
    "mskanji",
    "win932",
    "windows932",
    "shiftjis2004",
    "big5",
    "win950",
    "windows950",
    "gbk",
    "win936",
    "windows936",
    "uhc",
    "win949",
    "windows949",
    "gb18030",
    "johab",
];

/// Whether `name` is (an alias of) a client encoding pgwarden cannot check statements in.
pub fn is_unsafe_encoding(name: &str) -> bool {
    let cleaned: String = name
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    UNSAFE_ENCODINGS.contains(&cleaned.as_str())
}

/// The text to analyse. PostgreSQL's syntax is ASCII; in every server-safe encoding bytes
/// above 0x7F only occur inside identifiers, strings and comments, so mapping each of them
/// to one non-ASCII character keeps the statement's structure exactly. (Names with such
/// characters are then shown as Latin-1, which is exact for LATIN1 itself.)
fn decode<'a>(sql: &'a [u8], client_encoding: &[u8]) -> Result<Cow<'a, str>, AnalysisError> {
    if sql.is_ascii() {
        return std::str::from_utf8(sql)
            .map(Cow::Borrowed)
            .map_err(|_| AnalysisError::Encoding);
    }
    let encoding = String::from_utf8_lossy(client_encoding).to_ascii_uppercase();
    let encoding = encoding.replace(['-', '_'], "");
    if matches!(encoding.as_str(), "UTF8" | "UNICODE") {
        return std::str::from_utf8(sql)
            .map(Cow::Borrowed)
            .map_err(|_| AnalysisError::Encoding);
    }
    if is_unsafe_encoding(&encoding) {
        return Err(AnalysisError::UnsafeEncoding(
            String::from_utf8_lossy(client_encoding).into_owned(),
        ));
    }
    Ok(Cow::Owned(sql.iter().map(|&b| b as char).collect()))
}

/// A statement's text with its literals taken out, from PostgreSQL's own scanner (lexing
/// only: no parse, which is what makes a cache hit for a new literal cheap).
struct Shape {
    /// Every literal (number, string, bit string) replaced by `$n`, numbered after the
    /// highest parameter already in the text; everything else exactly as written.
    normalized: String,
    /// The cache key of the shape: like `normalized`, but each literal is marked with its
    /// token kind, so that texts the grammar could read differently (`FETCH 5` and `FETCH
    /// 5.5`) never share an analysis.
    key: String,
    /// The scanner's tokens, for the fingerprint (computed only when the shape is new).
    tokens: Vec<pg_query::protobuf::ScanToken>,
}

/// The fingerprint of a scanned text: the first 128 bits of SHA-256 over its token stream,
/// in hex. Literals count by their kind only (or, `with_literals`, also by their text: for
/// statements whose facts were read from literals, or whose code is one, such as a DO
/// body), keywords and unquoted names lowercased (as PostgreSQL folds them), everything else
/// as written; comments and spacing not at all.
/// 128 bits, so that no one can craft two statements with one fingerprint (a harmless one
/// to get approved with a grant, another to run under it) in any feasible time.
fn fingerprint(sql: &str, tokens: &[pg_query::protobuf::ScanToken], with_literals: bool) -> String {
    use pg_query::protobuf::{KeywordKind, Token};
    let mut hash = Sha256::new();
    for token in tokens {
        let text = usize::try_from(token.start)
            .ok()
            .zip(usize::try_from(token.end).ok())
            .and_then(|(s, e)| sql.get(s..e))
            .unwrap_or_default();
        let word = token.token == Token::Ident as i32
            || token.keyword_kind != KeywordKind::NoKeyword as i32;
        // Each token is a tag byte, its text, and NUL (which statement text never holds):
        // no two token streams hash the same bytes.
        let literal = match Token::try_from(token.token) {
            Ok(Token::SqlComment | Token::CComment) => continue,
            Ok(Token::Iconst) => Some(b"Li"),
            Ok(Token::Fconst) => Some(b"Lf"),
            Ok(Token::Sconst) => Some(b"Ls"),
            Ok(Token::Usconst) => Some(b"Lu"),
            Ok(Token::Bconst) => Some(b"Lb"),
            Ok(Token::Xconst) => Some(b"Lx"),
            _ => None,
        };
        match literal {
            Some(tag) => {
                hash.update(tag);
                if with_literals {
                    hash.update(text.as_bytes());
                }
            }
            // Quoted names (`"Name"`, `U&"…"`) count as written.
            _ if word && !text.contains('"') => {
                hash.update(b"W");
                hash.update(text.to_ascii_lowercase().as_bytes());
            }
            _ => {
                hash.update(b"T");
                hash.update(text.as_bytes());
            }
        }
        hash.update([0]);
    }
    crate::audit::record::hex(&hash.finalize()[..16])
}

fn shape(sql: &str) -> Result<Shape, AnalysisError> {
    use pg_query::protobuf::Token;
    // Nothing to scan. (pg_query builds a slice from a null pointer for zero tokens: never
    // let it.)
    if sql.trim().is_empty() {
        return Ok(Shape {
            normalized: sql.to_owned(),
            key: sql.to_owned(),
            tokens: Vec::new(),
        });
    }
    let tokens = pg_query::scan_tokens(sql).map_err(|e| syntax_error(e, sql))?;
    let text = |start: i32, end: i32| {
        usize::try_from(start)
            .ok()
            .zip(usize::try_from(end).ok())
            .and_then(|(s, e)| sql.get(s..e))
            .ok_or_else(|| AnalysisError::syntax("the statement could not be scanned"))
    };
    let mut number = 0u32;
    for token in tokens.iter().filter(|t| t.token == Token::Param as i32) {
        let param = text(token.start, token.end)?;
        if let Ok(n) = param.trim_start_matches('$').parse::<u32>() {
            number = number.max(n);
        }
    }
    let mut normalized = String::with_capacity(sql.len() + 8);
    let mut key = String::with_capacity(sql.len() + 8);
    let mut at = 0;
    for token in &tokens {
        // A comment is free text that may hold anything (a password, someone's address):
        // the normalized text keeps only that one was there. (sqlcommenter tags are read
        // from the statement itself and recorded on their own, masked.)
        let comment = match Token::try_from(token.token) {
            Ok(Token::CComment) => Some("/* … */"),
            Ok(Token::SqlComment) => Some("-- …"),
            _ => None,
        };
        if let Some(placeholder) = comment {
            let gap = text(i32::try_from(at).unwrap_or(i32::MAX), token.start)?;
            normalized.push_str(gap);
            normalized.push_str(placeholder);
            key.push_str(text(i32::try_from(at).unwrap_or(i32::MAX), token.end)?);
            at = usize::try_from(token.end).unwrap_or(at);
            continue;
        }
        let kind = match Token::try_from(token.token) {
            Ok(Token::Iconst) => 'i',
            Ok(Token::Fconst) => 'f',
            Ok(Token::Sconst) => 's',
            Ok(Token::Usconst) => 'u',
            Ok(Token::Bconst) => 'b',
            Ok(Token::Xconst) => 'x',
            _ => continue,
        };
        let start = usize::try_from(token.start).unwrap_or(usize::MAX);
        let gap = text(i32::try_from(at).unwrap_or(i32::MAX), token.start)?;
        normalized.push_str(gap);
        key.push_str(gap);
        number += 1;
        normalized.push('$');
        normalized.push_str(&number.to_string());
        // NUL never occurs in statement text (the protocol ends strings with it).
        key.push('\0');
        key.push(kind);
        at = usize::try_from(token.end).unwrap_or(start);
    }
    let rest = sql
        .get(at..)
        .ok_or_else(|| AnalysisError::syntax("the statement could not be scanned"))?;
    normalized.push_str(rest);
    key.push_str(rest);
    Ok(Shape {
        normalized,
        key,
        tokens,
    })
}

fn syntax_error(e: pg_query::Error, sql: &str) -> AnalysisError {
    let message = match e {
        // The server's own words, without the library's prefix.
        pg_query::Error::Parse(message) | pg_query::Error::Scan(message) => message,
        other => other.to_string(),
    };
    // libpg_query's limits on nesting (the server has the same stack depth limit).
    if message.contains("stack depth limit exceeded") || message.contains("nested too deeply") {
        return AnalysisError::TooComplex;
    }
    let position = error_position(sql, &message);
    AnalysisError::Syntax { message, position }
}

impl AnalysisError {
    fn syntax(message: &str) -> Self {
        Self::Syntax {
            message: message.to_owned(),
            position: None,
        }
    }
}

/// Most occurrences of the quoted text an error position is looked for among.
const MAX_POSITION_CANDIDATES: usize = 16;

/// Where in `sql` the parser stopped, for the client's `LINE n:` and caret, as PostgreSQL
/// reports it (1-based, in characters): the end for `… at end of input`; for `… at or near
/// "X"`, the first occurrence of X that the text up to and including it cannot be parsed
/// with (libpg_query keeps the position to itself, so it is found again by parsing
/// prefixes). `None` when it cannot be told.
fn error_position(sql: &str, message: &str) -> Option<u32> {
    let chars = |bytes: usize| sql.get(..bytes).map(|s| s.chars().count() as u32 + 1);
    if message.ends_with("at end of input") {
        return chars(sql.len());
    }
    let near = message.split_once(" at or near \"")?.1.strip_suffix('"')?;
    if near.is_empty() {
        return None;
    }
    let starts: Vec<usize> = sql
        .match_indices(near)
        .map(|(at, _)| at)
        .take(MAX_POSITION_CANDIDATES + 1)
        .collect();
    match starts.as_slice() {
        [] => None,
        [only] => chars(*only),
        many if many.len() > MAX_POSITION_CANDIDATES => None,
        many => many.iter().copied().find_map(|at| {
            let through = sql.get(..at + near.len())?;
            let fails_here = match pg_query::parse(through, 0) {
                Err(pg_query::Error::Parse(m) | pg_query::Error::Scan(m)) => {
                    m.ends_with(&format!("at or near \"{near}\""))
                }
                _ => false,
            };
            if fails_here {
                chars(at)
            } else {
                None
            }
        }),
    }
}

fn analyze_uncached(
    sql: &str,
    normalized: String,
    tokens: &[pg_query::protobuf::ScanToken],
) -> Result<Analysis, AnalysisError> {
    let parsed = pg_query::parse(sql, 0).map_err(|e| syntax_error(e, sql))?;
    let mut statements = Vec::with_capacity(parsed.protobuf.stmts.len());
    for raw in &parsed.protobuf.stmts {
        let tree = Tree::of(&raw.stmt).map_err(|e| AnalysisError::syntax(&e.to_string()))?;
        let mut facts = facts_of(&tree);
        facts.lineage = super::lineage::Lineage::of(&tree);
        statements.push(facts);
    }
    let kinds: Vec<&'static str> = statements.iter().map(StatementFacts::kind).collect();
    let mut tables: Vec<TableRef> = statements
        .iter()
        .flat_map(|s| s.tables.iter().cloned())
        .collect();
    tables.sort();
    tables.dedup();
    // A decision that depends on literal values (a setting's value, a DO body) must not
    // carry over, through an approval grant, to other values of the same shape.
    let with_literals = statements.iter().any(|s| s.reads_literals);
    Ok(Analysis {
        normalized: normalized.into(),
        fingerprint: fingerprint(sql, tokens, with_literals).into(),
        kinds: kinds.into(),
        tables: tables.into(),
        statements: statements.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tables(analysis: &Analysis) -> Vec<(&str, Access)> {
        analysis
            .tables
            .iter()
            .map(|t| (t.name.as_str(), t.access))
            .collect()
    }

    /// Every key `quick_key` gives must be the scanner's: statements as clients send them,
    /// texts built to trip it, and thousands generated from pieces of both.
    #[test]
    fn quick_keys_are_the_scanners_keys() {
        use super::super::quick_key::quick_key;
        let check = |sql: &str| {
            if let Some(quick) = quick_key(sql) {
                let scanned = shape(sql).map(|shape| shape.key);
                assert_eq!(Ok(quick), scanned, "{sql:?}");
            }
        };
        let statements = [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 4711;",
            "UPDATE pgbench_accounts SET abalance = abalance + -1234 WHERE aid = 99;",
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (3, 1, 5, 77, CURRENT_TIMESTAMP);",
            r#"SELECT * FROM "User" WHERE "e""q" = 'it''s' AND id IN (1, 2,3)"#,
            "select 'a'::text || 'b', interval '1 day', $1, $12::int4[]",
            "SELECT 1; SELECT 2;",
            "SELECT x FROM t WHERE a >= 10 AND b <> 3 OR c != 4 ORDER BY 1 LIMIT 10 OFFSET 20",
            "SET statement_timeout = 5000",
            r#"SET search_path TO public, "My Schema""#,
            "SELECT '' , ''''",
            "SELECT 'line one'\n'line two'",
            "SELECT 'a' 'b'",
            "SELECT 'a'\t\n  'b'",
            r#"SELECT E'\n', B'101', X'ff', N'n', U&'d\0061t', U&"x""#,
            "SELECT e'x', b'1', x'1', n'x', u&'x'",
            "SELECT 1.5, .5, 5., 1e3, 1E-3, 0x1f, 0o17, 0b101, 1_000, 1abc, 12345678901, 123456789",
            "SELECT 2147483647, 2147483648, 999999999, 1000000000",
            "SELECT $$body$$, $tag$x$tag$, $1abc, $ 1",
            "SELECT 1 -- comment",
            "SELECT /* c */ 1",
            "SELECT 1--2",
            "SELECT 'unterminated",
            r#"SELECT "unterminated"#,
            r#"SELECT a.b.c, t."Col", t.1, x.5"#,
            "SELECT 1'a', 'a'1, 'x'::int, -1, +2, 3-4, 5--6",
            "SELECT ARRAY[1,2][1:2], a[1], point(1,2) <-> point(3,4), 'a' ~* 'b', 1 # 2, @ -5",
            "SELECT 'é'",
            r"SELECT 1 \ 2",
            "",
            "   ",
            "SELECT _a1$b, a$1, foo(1)",
            "COPY t (a, b) FROM STDIN WITH (FORMAT csv, DELIMITER ',')",
            "VALUES (1, 'x'), (2, 'y')",
            "SELECT 'a''''b', 'it''s'''",
            r#"SELECT "a""b""", '"', "'""#,
        ];
        for sql in statements {
            check(sql);
        }
        // Generated: random sequences of pieces, with and without spacing between them.
        let pieces = [
            "SELECT",
            "select",
            "x",
            "_y",
            "t1",
            "a$b",
            "E",
            "e",
            "B",
            "X",
            "N",
            "U",
            "u",
            "&",
            "1",
            "42",
            "007",
            "1234567890",
            ".",
            "5.",
            ".5",
            "1e5",
            "'s'",
            "'it''s'",
            "''",
            "'",
            r#""Q""#,
            r#""a""b""#,
            "\"",
            "$1",
            "$2",
            "$",
            "$$",
            "$a$",
            "--",
            "-",
            "/*",
            "*/",
            "/",
            "*",
            "+",
            "=",
            "<>",
            "::",
            ":",
            ";",
            ",",
            "(",
            ")",
            "[",
            "]",
            "\\",
            "\n",
            " ",
            "\t",
            "é",
            "\u{1}",
            "?",
            "#",
            "%",
            "0x1",
            "_1",
        ];
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |bound: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % bound as u64) as usize
        };
        let mut answered = 0;
        for _ in 0..20_000 {
            let len = 1 + next(12);
            let spaced = next(2) == 0;
            let mut sql = String::new();
            for _ in 0..len {
                sql.push_str(pieces[next(pieces.len())]);
                if spaced {
                    sql.push(' ');
                }
            }
            answered += usize::from(quick_key(&sql).is_some());
            check(&sql);
        }
        // The generator must reach texts it answers for, or it tests nothing.
        assert!(answered > 2_000, "{answered}");
    }

    #[test]
    fn shapes_come_from_the_scanner() {
        let shaped = shape("SELECT 'a', 1, -1.5, B'1', X'ff', E'\\n', $1 /* 7 */").unwrap();
        assert_eq!(
            shaped.normalized,
            "SELECT $2, $3, -$4, $5, $6, $7, $1 /* … */"
        );
        // Comments are free text: the normalized text shows only where they were.
        assert_eq!(
            shape("SELECT 1 -- pw=Hunter2\n, 2 /* jane@example.com */")
                .unwrap()
                .normalized,
            "SELECT $1 -- …\n, $2 /* … */"
        );
        // Different literal kinds are different shapes; equal kinds, one shape.
        assert_ne!(
            shape("FETCH 5 FROM c").unwrap().key,
            shape("FETCH 5.5 FROM c").unwrap().key
        );
        assert_eq!(
            shape("FETCH 5 FROM c").unwrap().key,
            shape("FETCH 6 FROM c").unwrap().key
        );
        // Comments and spacing are kept in the key (each spelling has its own normalized text).
        assert_ne!(
            shape("SELECT 1 /*a*/").unwrap().key,
            shape("SELECT 1 /*b*/").unwrap().key
        );
        for blank in ["", "  \n"] {
            assert_eq!(shape(blank).unwrap().normalized, blank);
            assert!(Analyzer::new(4).analyze(blank.as_bytes()).is_ok());
        }
        assert!(shape("SELECT 'unterminated").is_err());
    }

    #[test]
    fn literals_never_survive_normalization() {
        let analyzer = Analyzer::new(16);
        let a = analyzer
            .analyze(b"ALTER ROLE app PASSWORD 'hunter2'; SELECT * FROM users WHERE email = 'a@b.c' AND id = 42")
            .unwrap();
        assert!(!a.normalized.contains("hunter2"), "{}", a.normalized);
        assert!(!a.normalized.contains("a@b.c"), "{}", a.normalized);
        assert!(!a.normalized.contains("42"), "{}", a.normalized);
        assert_eq!(*a.kinds, ["alter role", "select"]);
        assert_eq!(tables(&a), [("users", Access::Read)]);
    }

    fn fingerprint_of(analyzer: &Analyzer, sql: &str) -> Arc<str> {
        analyzer
            .analyze(sql.as_bytes())
            .unwrap()
            .fingerprint
            .clone()
    }

    /// Where the facts (and so the decision) depend on a literal, or the literal is code,
    /// other values are other statements: an approval grant must not cover them.
    #[test]
    fn fingerprints_keep_literals_that_decide() {
        let analyzer = Analyzer::new(16);
        let print = |sql: &str| fingerprint_of(&analyzer, sql);
        assert_ne!(
            print("DO $$ BEGIN PERFORM 1; END $$"),
            print("DO $$ BEGIN DROP TABLE t; END $$")
        );
        assert_ne!(
            print("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'"),
            print("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 2'")
        );
        assert_ne!(
            print("SET statement_timeout = '5s'"),
            print("SET statement_timeout = '0'")
        );
        assert_ne!(
            print("SELECT pg_cancel_backend(42)"),
            print("SELECT pg_cancel_backend(43)")
        );
        // Elsewhere literals still do not count.
        assert_eq!(
            print("DELETE FROM t WHERE id = 5"),
            print("DELETE FROM t WHERE id = 6")
        );
    }

    #[test]
    fn statements_of_one_shape_share_fingerprint_and_cache_entry() {
        let analyzer = Analyzer::new(16);
        let a = analyzer
            .analyze(b"UPDATE accounts SET balance = 1 WHERE id = 7")
            .unwrap();
        let b = analyzer
            .analyze(b"update accounts  set balance = 99 where id = 8")
            .unwrap();
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_eq!(a.fingerprint.len(), 32);
        assert!(Arc::ptr_eq(&a, &b) || a.normalized != b.normalized);
        let c = analyzer
            .analyze(b"UPDATE accounts SET balance = 2 WHERE id = 9")
            .unwrap();
        assert!(Arc::ptr_eq(&a, &c), "same normalized text: one cache entry");
        assert_eq!(tables(&a), [("accounts", Access::Write)]);
        let other = analyzer.analyze(b"DELETE FROM accounts").unwrap();
        assert_ne!(a.fingerprint, other.fingerprint);
    }

    /// An approval grant lets every statement with the approved fingerprint run without
    /// asking again: two statements may share one only if they differ in literal values,
    /// spacing, comments or the case of keywords and unquoted names, nothing else.
    #[test]
    fn a_fingerprint_covers_everything_but_literals_spacing_comments_and_case() {
        let analyzer = Analyzer::new(64);
        let print = |sql: &str| fingerprint_of(&analyzer, sql);
        let same = [
            (
                "DELETE FROM orders o WHERE o.id = 5",
                "delete  from ORDERS o\n where O.ID = 77 -- cleanup",
            ),
            (
                "SELECT * FROM t WHERE name = 'x' /* why */",
                "SELECT * FROM t WHERE name = E'y'",
            ),
            ("SELECT $1, 2.5", "select $1,3.75"),
            ("SELECT 1; SELECT 2", "SELECT 3;SELECT 4"),
        ];
        for (a, b) in same {
            assert_eq!(print(a), print(b), "{a} | {b}");
        }
        // libpg_query's fingerprint gives each of these pairs one value (it mirrors
        // pg_stat_statements' query jumbling: aliased relations hashed by alias, schemas
        // dropped in DML, digit runs dropped from table names, some lists sorted, nodes
        // deeper than 100 ignored); a grant must not stretch from one to the other.
        let deep = |leaf: &str| format!("SELECT {}{leaf}{}", "(".repeat(120), ")".repeat(120));
        let different = [
            (
                "DELETE FROM orders o WHERE o.id = 5".to_owned(),
                "DELETE FROM customers o WHERE o.id = 5".to_owned(),
            ),
            (
                "DELETE FROM staging.users WHERE id = 1".to_owned(),
                "DELETE FROM prod.users WHERE id = 1".to_owned(),
            ),
            (
                "DELETE FROM orders_2024 WHERE id = 1".to_owned(),
                "DELETE FROM orders_2025 WHERE id = 1".to_owned(),
            ),
            (
                "INSERT INTO users (name, role) VALUES ($1, $2)".to_owned(),
                "INSERT INTO users (role, name) VALUES ($1, $2)".to_owned(),
            ),
            (
                "SELECT set_config('a', 'b', false)".to_owned(),
                "SELECT set_config('a', 'b', true)".to_owned(),
            ),
            (
                "SELECT f(a, b) FROM t".to_owned(),
                "SELECT f(b, a) FROM t".to_owned(),
            ),
            (
                "SELECT a, a FROM t".to_owned(),
                "SELECT a FROM t".to_owned(),
            ),
            (
                "SELECT \"Name\" FROM t".to_owned(),
                "SELECT name FROM t".to_owned(),
            ),
            (deep("x"), deep("pg_read_file('/etc/passwd')")),
            ("SELECT 1".to_owned(), "SELECT -1".to_owned()),
        ];
        for (a, b) in &different {
            assert_ne!(print(a), print(b), "{a} | {b}");
        }
    }

    /// Facts read from option values that are literals to the scanner hold for that text
    /// only: never shared by shape.
    #[test]
    fn quoted_option_values_are_not_shared_by_shape() {
        let analyzer = Analyzer::new(16);
        let off = analyzer
            .analyze(b"EXPLAIN (ANALYZE 'off') DELETE FROM orders WHERE id = 1")
            .unwrap();
        assert!(!off.statements[0].flags.explain_analyze);
        let on = analyzer
            .analyze(b"EXPLAIN (ANALYZE 'on') DELETE FROM orders WHERE id = 1")
            .unwrap();
        assert!(on.statements[0].flags.explain_analyze);
        assert_eq!(on.statements[0].kinds, ["explain", "delete"]);
        let csv = analyzer
            .analyze(b"COPY t TO STDOUT (FORMAT 'csv')")
            .unwrap();
        let text = analyzer
            .analyze(b"COPY t TO STDOUT (FORMAT 'text')")
            .unwrap();
        assert_ne!(
            csv.statements[0].lineage.copy,
            text.statements[0].lineage.copy
        );
    }

    #[test]
    fn kinds_and_tables_cover_common_statements() {
        let analyzer = Analyzer::new(16);
        type Case<'a> = (&'a str, &'a [&'a str], &'a [(&'a str, Access)]);
        let cases: &[Case<'_>] = &[
            ("BEGIN", &["transaction"], &[]),
            (
                "INSERT INTO shop.orders SELECT * FROM staging",
                &["insert"],
                &[("shop.orders", Access::Write), ("staging", Access::Read)],
            ),
            ("DROP TABLE t", &["drop table"], &[("t", Access::Ddl)]),
            (
                "CREATE TABLE t (id int)",
                &["create table"],
                &[("t", Access::Ddl)],
            ),
            ("SET search_path = app", &["set"], &[]),
            ("COPY t FROM STDIN", &["copy"], &[("t", Access::Write)]),
            ("DO $$ BEGIN END $$", &["do"], &[]),
            (
                "REVOKE ALL ON t FROM bob",
                &["revoke"],
                &[("t", Access::Ddl)],
            ),
            ("", &[], &[]),
        ];
        for (sql, kinds, expected) in cases {
            let a = analyzer.analyze(sql.as_bytes()).unwrap();
            assert_eq!(&*a.kinds, *kinds, "{sql}");
            assert_eq!(&tables(&a), expected, "{sql}");
        }
    }

    #[test]
    fn deep_expressions_are_analysed_and_too_deep_ones_refused_without_crashing() {
        let analyzer = Analyzer::new(16);
        // A few thousand left-nested terms: ordinary generated SQL.
        let deep = format!("SELECT {} FROM t", vec!["x"; 2000].join(" || "));
        let analysis = analyzer.analyze(deep.as_bytes()).unwrap();
        assert_eq!(*analysis.kinds, ["select"]);
        let too_deep = format!("SELECT {}", vec!["1"; 100_000].join("+"));
        assert_eq!(
            analyzer.analyze(too_deep.as_bytes()),
            Err(AnalysisError::TooComplex)
        );
    }

    #[test]
    fn a_message_of_too_many_statements_is_refused_before_parsing() {
        let analyzer = Analyzer::new(16);
        let many = "SELECT 1;".repeat(MAX_STATEMENTS);
        assert_eq!(
            analyzer.analyze(many.as_bytes()),
            Err(AnalysisError::TooManyStatements)
        );
        // Semicolons in strings and bodies are not statements.
        let one = format!("SELECT '{}'", ";".repeat(MAX_STATEMENTS));
        assert_eq!(*analyzer.analyze(one.as_bytes()).unwrap().kinds, ["select"]);
    }

    #[test]
    fn rejects_what_postgres_rejects() {
        let analyzer = Analyzer::new(16);
        assert!(matches!(
            analyzer.analyze(b"SELEC 1"),
            Err(AnalysisError::Syntax { .. })
        ));
        assert!(matches!(
            analyzer.analyze(b"SELECT 'unterminated"),
            Err(AnalysisError::Syntax { .. })
        ));
        assert_eq!(
            analyzer.analyze(b"SELECT '\xff'"),
            Err(AnalysisError::Encoding)
        );
        // LATIN1 'café': analysed with the same structure, the name shown as Latin-1.
        let latin1 = analyzer
            .analyze_encoded(b"SELECT * FROM caf\xe9 WHERE x = 'caf\xe9'", b"LATIN1")
            .unwrap();
        assert_eq!(latin1.tables[0].name, "caf\u{e9}");
        assert!(matches!(
            analyzer.analyze_encoded(b"SELECT '\x83\x5c'", b"SJIS"),
            Err(AnalysisError::UnsafeEncoding(_))
        ));
        assert!(analyzer.analyze_encoded(b"SELECT 1", b"SJIS").is_ok());
    }
}
