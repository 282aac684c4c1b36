//! Find the line of a key path such as `upstream.roles[1].password` in the TOML text, so a
//! validation error can point at the line to fix.

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
}
