//! Find the line of a key path such as `upstream.roles[1].password` in the TOML text, so a
//! validation error can point at the line to fix.

use std::ops::Range;

use toml::de::{DeTable, DeValue};

/// 1-based line of the value at `path`, or of the deepest existing parent.
pub fn line_of(text: &str, path: &str) -> Option<usize> {
    let root = DeTable::parse(text).ok()?;
    let mut span = None;
    let mut current = DeValue::Table(root.into_inner());
    let mut holder;
    for segment in segments(path) {
        let next = match segment {
            Segment::Key(key) => current.get(key),
            Segment::Index(i) => current.get(i),
        };
        let Some(next) = next else { break };
        span = Some(next.span());
        holder = next.get_ref().clone();
        current = holder;
    }
    let start = span?.start;
    Some(text.get(..start)?.matches('\n').count() + 1)
}

/// The key path (`server.listen`, `upstream.roles[1].password`) of the innermost key or
/// value whose text holds all of `error` (a byte range): where a parse error points.
pub fn key_at(text: &str, error: Range<usize>) -> Option<String> {
    let root = DeTable::parse(text).ok()?;
    let mut best = None;
    visit_table(root.get_ref(), "", &error, &mut best);
    best.map(|(_, path)| path)
}

/// The innermost match so far: (span length, path).
type Best = Option<(usize, String)>;

fn visit_table(table: &DeTable<'_>, prefix: &str, error: &Range<usize>, best: &mut Best) {
    for (key, value) in table.iter() {
        let name = key.get_ref();
        let path = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}.{name}")
        };
        consider(key.span(), &path, error, best);
        consider(value.span(), &path, error, best);
        visit_value(value.get_ref(), &path, error, best);
    }
}

fn visit_value(value: &DeValue<'_>, path: &str, error: &Range<usize>, best: &mut Best) {
    match value {
        DeValue::Table(table) => visit_table(table, path, error, best),
        DeValue::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                let path = format!("{path}[{index}]");
                consider(item.span(), &path, error, best);
                visit_value(item.get_ref(), &path, error, best);
            }
        }
        _ => {}
    }
}

fn consider(span: Range<usize>, path: &str, error: &Range<usize>, best: &mut Best) {
    let holds = !span.is_empty() && span.start <= error.start && error.end <= span.end;
    if holds && best.as_ref().is_none_or(|(len, _)| span.len() < *len) {
        *best = Some((span.len(), path.to_owned()));
    }
}

enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

fn segments(path: &str) -> impl Iterator<Item = Segment<'_>> {
    path.split('.').flat_map(|part| {
        let (key, indexes) = part
            .split_once('[')
            .map_or((part, ""), |(k, rest)| (k, rest));
        let key = (!key.is_empty()).then_some(Segment::Key(key));
        let indexes = indexes
            .split('[')
            .filter_map(|i| i.trim_end_matches(']').parse().ok())
            .map(Segment::Index);
        key.into_iter().chain(indexes).collect::<Vec<_>>()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_keys_and_array_items() {
        let text = "[server]\nlisten = \"x\"\n\n[[upstream.roles]]\nname = \"a\"\n\n[[upstream.roles]]\nname = \"b\"\npassword = \"env:X\"\n";
        assert_eq!(line_of(text, "server.listen"), Some(2));
        assert_eq!(line_of(text, "upstream.roles[1].password"), Some(9));
        assert_eq!(line_of(text, "upstream.roles[0].name"), Some(5));
        // A missing key points at its parent.
        assert_eq!(line_of(text, "upstream.roles[1].nope"), Some(7));
    }

    #[test]
    fn names_the_key_at_an_offset() {
        let text = "[server]\nlisten = \"x\"\n\n[[upstream.roles]]\nname = \"a\"\n\n[[upstream.roles]]\nname = \"b\"\npassword = \"env:X\"\n";
        let at = |needle: &str| {
            let start = text.find(needle).unwrap();
            key_at(text, start..start + needle.len())
        };
        assert_eq!(at("listen").as_deref(), Some("server.listen"));
        assert_eq!(at("\"x\"").as_deref(), Some("server.listen"));
        assert_eq!(at("env:X").as_deref(), Some("upstream.roles[1].password"));
        assert_eq!(at("\"a\"").as_deref(), Some("upstream.roles[0].name"));
        assert_eq!(key_at("[server\n", 1..2), None, "not TOML");
        assert_eq!(key_at(text, 0..text.len() - 1), None, "the whole file");
    }
}
