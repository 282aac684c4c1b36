//! A session's masking: what each result column needs (a [`Plan`], made from the
//! RowDescription that precedes the rows), and the rewriting of the frames that carry
//! values to the client — DataRow, CopyData, ErrorResponse, NoticeResponse and
//! NotificationResponse.
//!
//! Binary results are rewritten type-correctly where a masked value exists for the type
//! (text-like types: the same bytes as text; `json`; `jsonb`: a version byte, then text) and
//! sent as NULL otherwise — as in text format, where a masked number or date is NULL too.
//! A row no column of which needs anything is passed through without a copy.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};

use super::catalog::{Catalog, TableColumn};
use super::detect::{Detectors, Hits};
use super::strategy::{self, Strategy, ValueKind};
use super::{Rule, Settings};
use crate::auth::Identity;
use crate::protocol::{backend, split_cstr, split_i16, split_i32};
use crate::sql::StatementFacts;

/// What happens to one result column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Column {
    Keep,
    /// A masked column (or one derived from it): masked whatever its content.
    Mask {
        strategy: Strategy,
        kind: Kind,
        /// Index into the rules, for the audit record; `None` for computed columns.
        rule: Option<usize>,
    },
    /// Scanned by the detectors.
    Scan(Kind),
}

/// How a value of a column is encoded, as far as masking cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Text, or binary of a type whose binary form is its text (text, varchar, name, json).
    Text(ValueKind),
    /// Binary `jsonb`: a version byte, then JSON text.
    JsonbBinary,
    /// A type with no masked form: NULL.
    Opaque,
    /// A COPY field of a type pgwarden does not know: scanned unless it looks like a number
    /// (a 16-digit id is not a card number; rewriting it would corrupt the export).
    Untyped,
}

/// Types whose text form the detectors scan: text-like, JSON, XML, records, and arrays of
/// text-like and JSON types. Never numbers, dates or enums, whose digits a detector could
/// mistake for a phone number and whose masked text would not parse.
fn scannable(type_oid: u32) -> bool {
    matches!(
        type_oid,
        25 | 1043 | 1042 | 19 | 705 | 114 | 3802 | 142 | 2249 | 1009 | 1015 | 1014 | 199 | 3807
    )
}

/// How a value of the type is masked as a whole: text-like and JSON types have a masked
/// form; anything else (numbers, dates, arrays, records, XML) becomes NULL.
fn kind_of(type_oid: u32, binary: bool) -> Kind {
    match (ValueKind::of_type(type_oid), binary) {
        (ValueKind::Other, _) => Kind::Opaque,
        (ValueKind::Json, true) if type_oid == 3802 => Kind::JsonbBinary,
        (kind, _) => Kind::Text(kind),
    }
}

/// How a value of the type is scanned by the detectors (which mask inside it): also
/// arrays, records and XML in text format, whose syntax a masked substring keeps intact.
fn scan_kind(type_oid: u32, binary: bool) -> Option<Kind> {
    if !scannable(type_oid) {
        return None;
    }
    match kind_of(type_oid, binary) {
        Kind::Opaque if !binary => Some(Kind::Text(ValueKind::Text)),
        Kind::Opaque => None,
        kind => Some(kind),
    }
}

/// A message pgwarden cannot read safely: the session ends rather than pass it unmasked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

/// What was masked for the statement in progress (for its audit record): never values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// `schema.table.column` of the rules applied; `(computed)` for derived columns.
    pub columns: BTreeSet<String>,
    pub values: u64,
    pub detected: Hits,
}

impl Counts {
    pub fn is_empty(&self) -> bool {
        self.values == 0 && self.detected.0.is_empty()
    }

    pub fn merge(&mut self, other: Counts) {
        self.columns.extend(other.columns);
        self.values += other.values;
        for (kind, n) in other.detected.0 {
            match self.detected.0.iter_mut().find(|(k, _)| *k == kind) {
                Some((_, total)) => *total += n,
                None => self.detected.0.push((kind, n)),
            }
        }
    }
}

/// The statement a result belongs to, as far as masking cares.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    /// Analysed: its facts (lineage, tables).
    Statement(&'a StatementFacts),
    /// Not known (a FETCH from a cursor, an EXECUTE of a prepared statement, a result with
    /// no analysis): every computed column is treated as derived from masked ones.
    Unknown,
}

/// One session's masking state.
pub struct Masking {
    catalog: Arc<Catalog>,
    rules: Arc<[Rule]>,
    /// Per rule: whether it masks for this identity.
    active: Vec<bool>,
    /// Some rule masks something for this identity in this database.
    rules_apply: bool,
    detectors: Detectors,
    key: Arc<[u8]>,
    /// The plan of the result in progress.
    plan: Option<Vec<Column>>,
    copy: Option<CopyPlan>,
    /// The statement in progress may read masked data through code pgwarden cannot see
    /// (DO, CALL, EXECUTE): its messages are withheld.
    opaque: bool,
    /// The statement in progress reads a relation with masked columns.
    touches: bool,
    pub counts: Counts,
}

#[derive(Debug)]
struct CopyPlan {
    columns: Vec<Column>,
    csv: bool,
    /// The next line is the header.
    header: bool,
    /// Binary, or options pgwarden does not parse: sensitive output is withheld.
    refused: bool,
    /// Some column is masked by a rule (else only the detectors scan it).
    masks: bool,
}

impl Masking {
    /// Masking for `identity` in a database resolved as `catalog`; `None` when it sees
    /// everything (exempt from every rule and from the detectors).
    pub fn for_session(
        settings: &Settings,
        catalog: Arc<Catalog>,
        identity: &Identity,
    ) -> Option<Self> {
        let active: Vec<bool> = settings
            .rules
            .iter()
            .map(|r| !settings.exempt_from_rule(identity, r))
            .collect();
        let detectors = settings.detectors_for(identity);
        // A rule whose table does not exist yet still counts: it may be created later in
        // the session, which then reloads the catalog.
        let any_rule = settings
            .rules
            .iter()
            .zip(&active)
            .any(|(rule, active)| *active && catalog.covers(rule));
        if !any_rule && detectors.enabled.is_empty() {
            return None;
        }
        let rules_apply = rules_apply(&catalog, &active);
        Some(Self {
            catalog,
            rules: settings.rules.clone().into(),
            active,
            rules_apply,
            detectors,
            key: settings.hash_key.clone().into(),
            plan: None,
            copy: None,
            opaque: false,
            touches: false,
            counts: Counts::default(),
        })
    }

    /// Whether any rule masks something for this identity here (and so the gate's derived
    /// write and filter checks apply).
    pub fn has_rules(&self) -> bool {
        self.rules_apply
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// The catalog was refreshed.
    pub fn set_catalog(&mut self, catalog: Arc<Catalog>) {
        self.rules_apply = rules_apply(&catalog, &self.active);
        self.catalog = catalog;
    }

    /// Whether `facts` reads a relation with masked columns.
    pub fn touches(&self, facts: &StatementFacts) -> bool {
        self.has_rules()
            && facts
                .tables
                .iter()
                .any(|t| self.catalog.is_sensitive_relation(&t.name))
    }

    /// A statement starts producing results.
    pub fn begin(&mut self, source: Source<'_>) {
        self.plan = None;
        self.copy = None;
        self.observe(source);
    }

    /// Which statement the next messages come from (for errors and notices).
    pub fn observe(&mut self, source: Source<'_>) {
        let (touches, opaque) = match source {
            Source::Statement(facts) => (self.touches(facts), facts.flags.dynamic_sql),
            Source::Unknown => (self.has_rules(), false),
        };
        self.touches = touches;
        self.opaque = opaque && self.has_rules();
    }

    /// The next messages come from a step that reads no table data (a Parse's analysis):
    /// only the detectors apply to them.
    pub fn observe_without_data(&mut self) {
        self.touches = false;
        self.opaque = false;
    }

    /// A RowDescription: plan the rows that follow.
    pub fn on_row_description(&mut self, body: &[u8], source: Source<'_>) -> Result<(), Malformed> {
        self.begin(source);
        let fields = row_fields(body).ok_or(Malformed("RowDescription"))?;
        let computed = self.computed_taint(source, fields.len());
        let mut plan = Vec::with_capacity(fields.len());
        for (i, field) in fields.iter().enumerate() {
            let kind = kind_of(field.type_oid, field.binary);
            let masked = (field.table_oid != 0)
                .then(|| self.catalog.columns.get(&(field.table_oid, field.attnum)))
                .flatten()
                .filter(|m| self.active.get(m.rule).copied().unwrap_or(true));
            let column = if let Some(m) = masked {
                Column::Mask {
                    strategy: self
                        .rules
                        .get(m.rule)
                        .map_or(Strategy::Redact, |r| r.strategy),
                    kind,
                    rule: Some(m.rule),
                }
            } else if (field.table_oid == 0 && computed.get(i).copied().unwrap_or(true))
                || (field.attnum == 0
                    && self.has_rules()
                    && self.catalog.oids.contains(&field.table_oid))
            {
                // Derived from a masked column, or a whole row of a relation with one.
                Column::Mask {
                    strategy: Strategy::Redact,
                    kind,
                    rule: None,
                }
            } else if let Some(scan) = scan_kind(field.type_oid, field.binary)
                .filter(|_| !self.detectors.enabled.is_empty())
            {
                Column::Scan(scan)
            } else {
                Column::Keep
            };
            plan.push(column);
        }
        self.plan = plan.iter().any(|c| *c != Column::Keep).then_some(plan);
        Ok(())
    }

    /// Per result column (of `count`), whether a computed one is derived from a masked
    /// column.
    fn computed_taint(&self, source: Source<'_>, count: usize) -> Vec<bool> {
        if !self.touches {
            return vec![false; count];
        }
        let Source::Statement(facts) = source else {
            return vec![true; count];
        };
        if facts.kind() == "explain" {
            // A plan, not rows: it shows expressions, never values.
            return vec![false; count];
        }
        let taint = self.catalog.taint(&facts.lineage);
        if taint.star || taint.outputs.len() != count {
            // Positions do not line up: any derived output masks every computed column.
            let any = taint.outputs.iter().any(|t| *t) || taint.outputs.len() != count;
            vec![any; count]
        } else {
            taint.outputs
        }
    }

    /// The result ended (CommandComplete, an error, ReadyForQuery).
    pub fn end(&mut self) {
        self.plan = None;
        self.copy = None;
    }

    /// A DataRow: writes the masked frame to send instead and says so, if anything changes.
    pub fn data_row(&mut self, body: &[u8], out: &mut BytesMut) -> Result<bool, Malformed> {
        let Some(plan) = &self.plan else {
            return Ok(false);
        };
        let malformed = Malformed("DataRow");
        let (count, mut rest) = split_i16(body).ok_or(malformed)?;
        if count < 0 || count as usize != plan.len() {
            return Err(malformed);
        }
        let mut replaced: Vec<(usize, usize, Option<Vec<u8>>)> = Vec::new();
        let mut offset = 2;
        for column in plan.iter().copied() {
            let (len, after) = split_i32(rest).ok_or(malformed)?;
            let start = offset;
            if len < 0 {
                rest = after;
                offset += 4;
                continue;
            }
            let value_len = len as usize;
            let value = after.get(..value_len).ok_or(malformed)?;
            rest = &after[value_len..];
            offset += 4 + value_len;
            if let Some(new) = mask_value(
                column,
                value,
                &self.rules,
                &self.detectors,
                &self.key,
                &mut self.counts,
            ) {
                replaced.push((start, offset, new));
            }
        }
        if !rest.is_empty() {
            return Err(malformed);
        }
        if replaced.is_empty() {
            return Ok(false);
        }
        backend::message(out, b'D', |out| {
            let mut at = 0;
            for (from, to, value) in replaced {
                out.extend_from_slice(&body[at..from]);
                match value {
                    // A masked value is never longer than the limits allow a message to be.
                    Some(v) => {
                        out.put_i32(i32::try_from(v.len()).unwrap_or(i32::MAX));
                        out.extend_from_slice(&v);
                    }
                    None => out.put_i32(-1),
                }
                at = to;
            }
            out.extend_from_slice(&body[at..]);
        });
        Ok(true)
    }

    /// A CopyOutResponse: plan the CopyData lines of `COPY … TO STDOUT`.
    pub fn on_copy_out(&mut self, body: &[u8], source: Source<'_>) {
        self.begin(source);
        let columns_count = body
            .get(1..3)
            .map_or(0, |b| i16::from_be_bytes([b[0], b[1]]).max(0) as usize);
        let Source::Statement(facts) = source else {
            // Not knowing what it copies, pgwarden can neither mask nor scan it.
            let scanning = !self.detectors.enabled.is_empty();
            self.copy = (self.has_rules() || scanning).then(|| CopyPlan {
                columns: Vec::new(),
                csv: false,
                header: false,
                refused: true,
                masks: self.has_rules(),
            });
            return;
        };
        let shape = facts.lineage.copy.clone().unwrap_or_default();
        let table = facts
            .tables
            .first()
            .filter(|_| facts.lineage.outputs.is_empty())
            .and_then(|t| self.catalog.table(&t.name).cloned());
        // COPY (SELECT a, b FROM one_table): the columns bare references name.
        let queried = facts
            .tables
            .first()
            // The positions line up only if nothing expanded into several columns.
            .filter(|_| facts.tables.len() == 1 && shape.query_columns.len() == columns_count)
            .and_then(|t| self.catalog.table(&t.name).cloned());
        let known = |c: &TableColumn| match c.masked {
            Some(m) if self.active.get(m.rule).copied().unwrap_or(true) => Column::Mask {
                strategy: self
                    .rules
                    .get(m.rule)
                    .map_or(Strategy::Redact, |r| r.strategy),
                kind: kind_of(c.type_oid, false),
                rule: Some(m.rule),
            },
            _ if scannable(c.type_oid) => Column::Scan(Kind::Text(ValueKind::Text)),
            _ => Column::Keep,
        };
        let columns: Vec<Column> = if let Some(table) = table {
            // COPY table [(columns)]: the catalog knows each column.
            let chosen: Vec<&TableColumn> = if shape.columns.is_empty() {
                table.iter().collect()
            } else {
                shape
                    .columns
                    .iter()
                    .map(|name| table.iter().find(|c| c.name.eq_ignore_ascii_case(name)))
                    .collect::<Option<Vec<_>>>()
                    .unwrap_or_default()
            };
            chosen.into_iter().map(known).collect()
        } else {
            // COPY (query): a bare column of its one table is known like the table's own;
            // for anything else types are unknown, so derived columns become NULL and every
            // other field is scanned.
            self.computed_taint(source, columns_count)
                .into_iter()
                .enumerate()
                .map(|(i, derived)| {
                    let column = shape
                        .query_columns
                        .get(i)
                        .cloned()
                        .flatten()
                        .and_then(|name| {
                            queried
                                .as_ref()?
                                .iter()
                                .find(|c| c.name.eq_ignore_ascii_case(&name))
                        });
                    if let Some(column) = column {
                        known(column)
                    } else if derived {
                        Column::Mask {
                            strategy: Strategy::Null,
                            kind: Kind::Opaque,
                            rule: None,
                        }
                    } else {
                        Column::Scan(Kind::Untyped)
                    }
                })
                .collect()
        };
        let masks = columns.iter().any(|c| matches!(c, Column::Mask { .. }));
        let needed = masks
            || (!self.detectors.enabled.is_empty() && columns.iter().any(|c| *c != Column::Keep));
        if !needed {
            return;
        }
        // The detectors cannot scan what pgwarden does not parse either.
        self.copy = Some(CopyPlan {
            columns,
            csv: shape.csv,
            header: shape.header,
            refused: shape.binary || !shape.plain,
            masks,
        });
    }

    /// Whether the COPY in progress is withheld (binary or unparsed options, with masked
    /// columns or columns the detectors scan): its data is dropped and its completion
    /// replaced by an error.
    pub fn copy_refused(&self) -> bool {
        self.copy.as_ref().is_some_and(|c| c.refused)
    }

    /// Why the COPY in progress is withheld, for the client.
    pub fn copy_refusal(&self) -> &'static str {
        if self.copy.as_ref().is_some_and(|c| c.masks) {
            "pgwarden cannot mask this COPY's format, and it includes masked columns"
        } else {
            "pgwarden cannot scan this COPY's format for sensitive values (emails, card numbers, …), and its columns may hold them"
        }
    }

    /// A CopyData line of COPY TO: the masked frame to send instead, if anything changes.
    pub fn copy_data(&mut self, body: &[u8], out: &mut BytesMut) -> bool {
        let Some(copy) = &mut self.copy else {
            return false;
        };
        if copy.refused || copy.header {
            copy.header = false;
            return false;
        }
        // Bytes, not text: a session in another client_encoding gets its other fields back
        // exactly as the server sent them.
        let (line, ending) = match body.strip_suffix(b"\n") {
            Some(line) => (line, &b"\n"[..]),
            None => (body, &b""[..]),
        };
        let fields: Vec<(&[u8], Option<Vec<u8>>)> = if copy.csv {
            split_csv(line)
        } else {
            line.split(|&b| b == b'\t')
                .map(|f| (f, (f != b"\\N").then(|| unescape_text(f))))
                .collect()
        };
        let mut changed = false;
        let mut rebuilt = Vec::with_capacity(body.len() + 16);
        for (i, (raw, value)) in fields.iter().enumerate() {
            if i > 0 {
                rebuilt.push(if copy.csv { b',' } else { b'\t' });
            }
            let column = copy
                .columns
                .get(i)
                .copied()
                .unwrap_or(Column::Scan(Kind::Untyped));
            let new = value.as_deref().and_then(|value| {
                mask_value(
                    column,
                    value,
                    &self.rules,
                    &self.detectors,
                    &self.key,
                    &mut self.counts,
                )
            });
            match new {
                None => rebuilt.extend_from_slice(raw),
                Some(None) => {
                    changed = true;
                    if !copy.csv {
                        rebuilt.extend_from_slice(b"\\N");
                    }
                }
                Some(Some(v)) => {
                    changed = true;
                    if copy.csv {
                        quote_csv(&v, &mut rebuilt);
                    } else {
                        escape_text(&v, &mut rebuilt);
                    }
                }
            }
        }
        if !changed {
            return false;
        }
        rebuilt.extend_from_slice(ending);
        backend::message(out, b'd', |out| out.extend_from_slice(&rebuilt));
        true
    }

    /// An ErrorResponse or NoticeResponse: the rewritten frame, if anything changes. Values
    /// the detectors find are masked; for a statement that reads masked relations, quoted
    /// values and key values are masked and the context dropped; for one that runs code
    /// pgwarden cannot see (DO, CALL), the message itself is withheld.
    pub fn error_or_notice(&mut self, tag: u8, body: &[u8], out: &mut BytesMut) -> bool {
        let Some(fields) = error_fields(body) else {
            return false;
        };
        let mut changed = false;
        // A notice, or a PL/pgSQL error (RAISE EXCEPTION is P0001), raised while the
        // statement reads masked data says whatever the code put in it, quoted or not.
        let fields_code: Vec<u8> = fields
            .iter()
            .find(|(code, _)| *code == b'C')
            .map(|(_, value)| value.to_vec())
            .unwrap_or_default();
        let raised = self.touches
            && (tag == b'N'
                || fields
                    .iter()
                    .any(|(code, value)| *code == b'C' && value.starts_with(b"P0")));
        // Fields nothing changes keep their bytes (a session's own client_encoding).
        let mut rewritten: Vec<(u8, std::borrow::Cow<'_, [u8]>)> = Vec::with_capacity(fields.len());
        for (code, value) in fields {
            if !matches!(code, b'M' | b'D' | b'H' | b'W' | b'q' | b'p') {
                rewritten.push((code, value.into()));
                continue;
            }
            let text = String::from_utf8_lossy(value);
            let mut new = if (self.opaque || raised) && code != b'p' {
                match code {
                    b'M' if self.opaque => "(message withheld by pgwarden: the statement runs code that can read masked data)".into(),
                    b'M' => "(message withheld by pgwarden: raised by code while the statement reads masked data)".into(),
                    _ => String::new(),
                }
            } else if self.touches {
                match code {
                    b'W' | b'q' => String::new(),
                    // A detail quotes values in shapes of its own (an XML parser's line with
                    // the input, `Failing row contains (…)`): only the key clause of a
                    // constraint error is known well enough to keep.
                    b'D' if !text.starts_with("Key (") => WITHHELD_DETAIL.into(),
                    // Input functions of reg* types name the value without quotes
                    // (`operator does not exist: x`, 42883; `more than one operator named
                    // x`, 42725): what follows the colon or the name goes.
                    b'M' if unquoted_value_error(&fields_code)
                        || (!text.contains('"') && text.contains(": ")) =>
                    {
                        scrub_numbers(&scrub_unquoted(&text))
                    }
                    // Messages print numbers they were given bare (`transaction ID … is in
                    // the future`, `large object … does not exist`), and a number can carry
                    // eight bytes of a masked value.
                    b'M' => scrub_numbers(&scrub_quoted(&text)),
                    _ => scrub_quoted(&text),
                }
            } else {
                text.to_string()
            };
            if let Some(masked) = self
                .detectors
                .mask(&new, &self.key, &mut self.counts.detected)
            {
                new = masked;
            }
            if new == text {
                rewritten.push((code, value.into()));
                continue;
            }
            changed = true;
            if new.is_empty() && code != b'M' {
                continue;
            }
            rewritten.push((code, new.into_bytes().into()));
        }
        if !changed {
            return false;
        }
        backend::message(out, tag, |out| {
            for (code, value) in &rewritten {
                out.put_u8(*code);
                backend::put_cstr(out, value);
            }
            out.put_u8(0);
        });
        true
    }

    /// A NotificationResponse: the payload with what the detectors find masked.
    pub fn notification(&mut self, body: &[u8], out: &mut BytesMut) -> bool {
        let Some((pid, rest)) = split_i32(body) else {
            return false;
        };
        let Some((channel, rest)) = split_cstr(rest) else {
            return false;
        };
        let Some((payload, _)) = split_cstr(rest) else {
            return false;
        };
        let text = String::from_utf8_lossy(payload);
        let Some(masked) = self
            .detectors
            .mask(&text, &self.key, &mut self.counts.detected)
        else {
            return false;
        };
        backend::message(out, b'A', |out| {
            out.put_i32(pid);
            backend::put_cstr(out, channel);
            backend::put_cstr(out, masked.as_bytes());
        });
        true
    }
}

/// Whether a masked column of `catalog` is masked by a rule active for the identity.
fn rules_apply(catalog: &Catalog, active: &[bool]) -> bool {
    catalog
        .columns
        .values()
        .any(|m| active.get(m.rule).copied().unwrap_or(true))
}

/// The masked form of one non-NULL value: `None` when it stays as it is, `Some(None)` for
/// NULL.
fn mask_value(
    column: Column,
    value: &[u8],
    rules: &[Rule],
    detectors: &Detectors,
    key: &[u8],
    counts: &mut Counts,
) -> Option<Option<Vec<u8>>> {
    match column {
        Column::Keep => None,
        Column::Mask {
            strategy,
            kind,
            rule,
        } => {
            counts.values += 1;
            counts.columns.insert(
                rule.and_then(|r| rules.get(r))
                    .map_or_else(|| "(computed)".to_owned(), Rule::column_name),
            );
            Some(match kind {
                Kind::Opaque | Kind::Untyped => None,
                Kind::Text(value_kind) => {
                    let text = String::from_utf8_lossy(value);
                    strategy::apply(strategy, &text, value_kind, key).map(String::into_bytes)
                }
                Kind::JsonbBinary => {
                    let text = String::from_utf8_lossy(value.get(1..).unwrap_or_default());
                    strategy::apply(strategy, &text, ValueKind::Json, key).map(|masked| {
                        let mut v = Vec::with_capacity(masked.len() + 1);
                        v.push(1);
                        v.extend_from_slice(masked.as_bytes());
                        v
                    })
                }
            })
        }
        Column::Scan(kind) => {
            let (prefix, text) = match kind {
                Kind::JsonbBinary => (
                    value.get(..1).unwrap_or_default(),
                    value.get(1..).unwrap_or_default(),
                ),
                Kind::Text(_) => (&[][..], value),
                Kind::Untyped if looks_numeric(value) => return None,
                Kind::Untyped => (&[][..], value),
                Kind::Opaque => return None,
            };
            let text = std::str::from_utf8(text).ok()?;
            let masked = detectors.mask(text, key, &mut counts.detected)?;
            let mut v = Vec::with_capacity(prefix.len() + masked.len());
            v.extend_from_slice(prefix);
            v.extend_from_slice(masked.as_bytes());
            Some(Some(v))
        }
    }
}

/// `-12`, `3.5`, `1e9`: how numbers look in COPY text.
fn looks_numeric(value: &[u8]) -> bool {
    !value.is_empty()
        && value
            .iter()
            .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'))
}

struct Field {
    table_oid: u32,
    attnum: i16,
    type_oid: u32,
    binary: bool,
}

/// The fields of a RowDescription; `None` if it is malformed.
fn row_fields(body: &[u8]) -> Option<Vec<Field>> {
    let (count, mut rest) = split_i16(body)?;
    let mut fields = Vec::with_capacity(count.max(0) as usize);
    for _ in 0..count.max(0) {
        let (_, after) = split_cstr(rest)?;
        let (table_oid, after) = split_i32(after)?;
        let (attnum, after) = split_i16(after)?;
        let (type_oid, after) = split_i32(after)?;
        let (_, after) = split_i16(after)?;
        let (_, after) = split_i32(after)?;
        let (format, after) = split_i16(after)?;
        fields.push(Field {
            table_oid: table_oid as u32,
            attnum,
            type_oid: type_oid as u32,
            binary: format == 1,
        });
        rest = after;
    }
    Some(fields)
}

/// The fields of an ErrorResponse / NoticeResponse.
fn error_fields(body: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    let mut fields = Vec::new();
    let mut rest = body;
    loop {
        let (&code, after) = rest.split_first()?;
        if code == 0 {
            return Some(fields);
        }
        let (value, after) = split_cstr(after)?;
        fields.push((code, value));
        rest = after;
    }
}

/// What an error's DETAIL becomes when its statement reads masked columns.
pub const WITHHELD_DETAIL: &str = "(detail withheld by pgwarden: the statement reads masked data)";

/// Mask the values PostgreSQL quotes in its messages: `"…"` (invalid input syntax for type
/// integer: "…") and the value part of `Key (email)=(…)`.
/// SQLSTATEs whose messages can carry an input value unquoted: undefined_function and
/// ambiguous_function, raised by the reg* input functions (`'x'::regoper`).
fn unquoted_value_error(sqlstate: &[u8]) -> bool {
    matches!(sqlstate, b"42883" | b"42725")
}

/// `operator does not exist: <value>` / `more than one operator named <value>` / any
/// `<what went wrong>: <value>` without quotes (`cross-database references are not
/// implemented: a.b.c`): the text up to the value, then the redaction mark; other messages
/// get [`scrub_quoted`].
pub fn scrub_unquoted(text: &str) -> String {
    for lead in ["more than one operator named ", ": "] {
        if let Some(at) = text.find(lead) {
            return format!("{}{}", &text[..at + lead.len()], strategy::REDACTED);
        }
    }
    scrub_quoted(text)
}

pub fn scrub_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let quote = rest.find('"');
        let key = rest.find(")=(");
        match (quote, key) {
            (Some(q), k) if k.is_none_or(|k| q < k) => {
                out.push_str(&rest[..=q]);
                let after = &rest[q + 1..];
                // PostgreSQL does not escape a `"` inside the value it quotes: everything to
                // the last quote may be the value.
                match after.rfind('"') {
                    Some(end) => {
                        out.push_str(strategy::REDACTED);
                        out.push('"');
                        rest = &after[end + 1..];
                    }
                    None => {
                        out.push_str(strategy::REDACTED);
                        return out;
                    }
                }
            }
            (_, Some(k)) => {
                out.push_str(&rest[..k + 3]);
                let after = &rest[k + 3..];
                // The values run to the last `)` of the key clause.
                match after.rfind(')') {
                    Some(end) => {
                        out.push_str(strategy::REDACTED);
                        rest = &after[end..];
                    }
                    None => {
                        out.push_str(strategy::REDACTED);
                        return out;
                    }
                }
            }
            _ => {
                out.push_str(rest);
                return out;
            }
        }
    }
}

/// Every run of digits masked.
fn scrub_numbers(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_number = false;
    for c in text.chars() {
        if c.is_ascii_digit() {
            if !in_number {
                out.push_str(strategy::REDACTED);
            }
            in_number = true;
        } else {
            in_number = false;
            out.push(c);
        }
    }
    out
}

/// COPY text format: `\t`, `\n`, `\\` and friends to the bytes they stand for.
fn unescape_text(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut bytes = field.iter().copied();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match bytes.next() {
            Some(b't') => out.push(b'\t'),
            Some(b'n') => out.push(b'\n'),
            Some(b'r') => out.push(b'\r'),
            Some(b'b') => out.push(0x08),
            Some(b'f') => out.push(0x0c),
            Some(b'v') => out.push(0x0b),
            Some(other) => out.push(other),
            None => out.push(b'\\'),
        }
    }
    out
}

fn escape_text(value: &[u8], out: &mut Vec<u8>) {
    for &b in value {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b => out.push(b),
        }
    }
}

/// One CSV line (default quote `"`, delimiter `,`): each field's bytes as sent, and its
/// value (`None`: NULL, an unquoted empty field).
fn split_csv(line: &[u8]) -> Vec<(&[u8], Option<Vec<u8>>)> {
    let mut fields = Vec::new();
    let mut at = 0;
    loop {
        let start = at;
        let mut value = Vec::new();
        let mut quoted = false;
        if line.get(at) == Some(&b'"') {
            quoted = true;
            at += 1;
            while let Some(&b) = line.get(at) {
                at += 1;
                if b == b'"' {
                    if line.get(at) == Some(&b'"') {
                        value.push(b'"');
                        at += 1;
                    } else {
                        break;
                    }
                } else {
                    value.push(b);
                }
            }
        }
        while let Some(&b) = line.get(at) {
            if b == b',' {
                break;
            }
            value.push(b);
            at += 1;
        }
        let raw = &line[start..at];
        fields.push((raw, (quoted || !value.is_empty()).then_some(value)));
        if at >= line.len() {
            return fields;
        }
        // Past the delimiter; a trailing one leaves an empty (NULL) last field.
        at += 1;
        if at == line.len() {
            fields.push((&line[at..], None));
            return fields;
        }
    }
}

fn quote_csv(value: &[u8], out: &mut Vec<u8>) {
    if value.is_empty()
        || value
            .iter()
            .any(|b| matches!(b, b',' | b'"' | b'\n' | b'\r'))
    {
        out.push(b'"');
        for &b in value {
            if b == b'"' {
                out.push(b'"');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        out.extend_from_slice(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AuthMethod;
    use crate::masking::catalog::Masked;

    const TABLE: u32 = 16_384;

    /// (id int4, email text, profile jsonb binary, tags text[]) with `email` masked.
    fn session(binary: bool) -> Masking {
        let settings = Settings {
            rules: vec![Rule {
                schema: "public".into(),
                table: "customers".into(),
                column: "email".into(),
                strategy: Strategy::Email,
                exempt_groups: vec!["pii".into()],
                exempt_users: Vec::new(),
                databases: Vec::new(),
            }],
            ..Settings::default()
        };
        let mut columns = std::collections::HashMap::new();
        columns.insert(
            (TABLE, 2),
            Masked {
                rule: 0,
                type_oid: 25,
            },
        );
        let identity = Identity {
            name: "dev".into(),
            groups: vec!["dev".into()],
            method: AuthMethod::LocalScram,
            oidc: None,
        };
        let mut masking = Masking::for_session(
            &settings,
            Arc::new(Catalog::with_masked_columns(
                settings.rules.clone(),
                columns,
            )),
            &identity,
        )
        .unwrap();
        let mut body = BytesMut::new();
        body.put_i16(4);
        for (name, attnum, type_oid) in [
            ("id", 1, 23),
            ("email", 2, 25),
            ("profile", 3, 3802),
            ("tags", 4, 1009),
        ] {
            body.put_slice(name.as_bytes());
            body.put_u8(0);
            body.put_u32(TABLE);
            body.put_i16(attnum);
            body.put_u32(type_oid);
            body.put_i16(-1);
            body.put_i32(-1);
            body.put_i16(i16::from(binary));
        }
        masking.on_row_description(&body, Source::Unknown).unwrap();
        masking
    }

    fn row(values: &[Option<&[u8]>]) -> Vec<u8> {
        let mut body = BytesMut::new();
        body.put_i16(values.len() as i16);
        for v in values {
            match v {
                Some(v) => {
                    body.put_i32(v.len() as i32);
                    body.put_slice(v);
                }
                None => body.put_i32(-1),
            }
        }
        body.to_vec()
    }

    #[test]
    fn data_rows_are_masked_type_correctly_in_text_and_binary() {
        let mut text = session(false);
        let mut out = BytesMut::new();
        let original = row(&[
            Some(b"7"),
            Some(b"jane@example.com"),
            Some(br#"{"m": "joe@example.org"}"#),
            Some(b"{a,call +1 202 555 0101}"),
        ]);
        assert_eq!(text.data_row(&original, &mut out), Ok(true));
        assert_eq!(
            &out[5..],
            row(&[
                Some(b"7"),
                Some(b"j***@example.com"),
                Some(br#"{"m": "j***@example.org"}"#),
                Some(b"{a,call ***********0101}"),
            ])
            .as_slice()
        );
        assert_eq!(text.counts.values, 1);

        // Binary: jsonb keeps its version byte; a text array is not scanned.
        let mut binary = session(true);
        out.clear();
        let original = row(&[
            Some(&[0, 0, 0, 7]),
            None,
            Some(b"\x01{\"m\": \"joe@example.org\"}"),
            Some(b"opaque array bytes"),
        ]);
        assert_eq!(binary.data_row(&original, &mut out), Ok(true));
        assert_eq!(
            &out[5..],
            row(&[
                Some(&[0, 0, 0, 7]),
                None,
                Some(b"\x01{\"m\": \"j***@example.org\"}"),
                Some(b"opaque array bytes"),
            ])
            .as_slice()
        );
        // Nothing to mask: no copy.
        out.clear();
        let clean = row(&[Some(&[0, 0, 0, 1]), None, None, None]);
        assert_eq!(binary.data_row(&clean, &mut out), Ok(false));
        assert!(out.is_empty());
    }

    #[test]
    fn malformed_rows_are_refused_not_passed() {
        let mut masking = session(false);
        let mut out = BytesMut::new();
        // Fewer columns than described, a length past the end, trailing bytes.
        let short = row(&[Some(b"1"), Some(b"jane@example.com")]);
        let mut past_end = row(&[Some(b"1"), Some(b"x"), None, None]);
        past_end[2..6].copy_from_slice(&100i32.to_be_bytes());
        let mut trailing = row(&[Some(b"1"), Some(b"x"), None, None]);
        trailing.push(0);
        for bad in [short, past_end, trailing] {
            assert_eq!(masking.data_row(&bad, &mut out), Err(Malformed("DataRow")));
        }
        assert!(masking
            .on_row_description(&[0, 1, b'x'], Source::Unknown)
            .is_err());
    }

    #[test]
    fn quoted_values_and_key_values_are_scrubbed() {
        assert_eq!(
            scrub_quoted("invalid input syntax for type integer: \"jane@x.io\""),
            "invalid input syntax for type integer: \"****\""
        );
        assert_eq!(
            scrub_quoted("Key (email)=(jane@x.io) already exists."),
            "Key (email)=(****) already exists."
        );
        assert_eq!(scrub_quoted("no values here"), "no values here");
        assert_eq!(
            scrub_numbers("transaction ID 8319114120112077434 is in the future"),
            "transaction ID **** is in the future"
        );
    }

    #[test]
    fn copy_fields_round_trip() {
        let fields = split_csv(b"1,\"a,b\",,\"\",x");
        let values: Vec<Option<&[u8]>> = fields.iter().map(|(_, v)| v.as_deref()).collect();
        assert_eq!(
            values,
            [Some(&b"1"[..]), Some(b"a,b"), None, Some(b""), Some(b"x")]
        );
        assert_eq!(fields[1].0, b"\"a,b\"", "the bytes as sent");
        assert_eq!(split_csv(b"1,").len(), 2);
        let mut out = Vec::new();
        quote_csv(b"a\"b", &mut out);
        assert_eq!(out, b"\"a\"\"b\"");
        assert_eq!(unescape_text(b"a\\tb\\\\c"), b"a\tb\\c");
        let mut out = Vec::new();
        escape_text(b"a\tb\\c", &mut out);
        assert_eq!(out, b"a\\tb\\\\c");
    }

    #[test]
    fn errors_on_masked_tables_lose_quoted_values_and_keep_other_bytes() {
        let mut masking = session(false);
        masking.observe(Source::Unknown);
        let body = b"SERROR\0C22P02\0Minvalid input syntax for type integer: \"jane@x.io\"\0Hcaf\xe9\0Dline 1: <jane\0Wcontext\0\0";
        let mut out = BytesMut::new();
        assert!(masking.error_or_notice(b'E', body, &mut out));
        let mut expected =
            b"SERROR\0C22P02\0Minvalid input syntax for type integer: \"****\"\0Hcaf\xe9\0D"
                .to_vec();
        expected.extend_from_slice(WITHHELD_DETAIL.as_bytes());
        expected.extend_from_slice(b"\0\0");
        assert_eq!(
            &out[5..],
            &expected[..],
            "context dropped, detail withheld, LATIN1 hint untouched"
        );
        assert_eq!(
            usize::try_from(i32::from_be_bytes([out[1], out[2], out[3], out[4]])).unwrap(),
            out.len() - 1
        );
    }

    #[test]
    fn copy_lines_in_another_encoding_keep_their_other_bytes() {
        let mut masking = session(false);
        masking.copy = Some(CopyPlan {
            columns: vec![
                Column::Keep,
                Column::Mask {
                    strategy: Strategy::Email,
                    kind: Kind::Text(ValueKind::Text),
                    rule: Some(0),
                },
            ],
            csv: false,
            header: false,
            refused: false,
            masks: true,
        });
        // LATIN1 "é" (0xE9) in the first field; the email is masked, the rest untouched.
        let mut out = BytesMut::new();
        assert!(masking.copy_data(b"caf\xe9\tjane@example.com\n", &mut out));
        assert_eq!(&out[5..], b"caf\xe9\tj***@example.com\n");
    }
}
