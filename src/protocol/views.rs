//! Borrowed views of the messages the session inspects. Each is decoded from an exact-length
//! body; every inner length is checked and the body must be consumed exactly (pgwire's
//! decoders trust inner lengths, see DESIGN §6).

use super::{split_cstr, split_i16, split_i32, ProtocolError};

fn malformed(what: &'static str, detail: &'static str) -> ProtocolError {
    ProtocolError::Malformed { what, detail }
}

/// Query ('Q'): one string holding one or more statements.
pub fn query(body: &[u8]) -> Result<&[u8], ProtocolError> {
    match split_cstr(body) {
        Some((sql, [])) => Ok(sql),
        _ => Err(malformed(
            "Query message",
            "the query string must end exactly at the message end",
        )),
    }
}

/// Parse ('P').
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parse<'a> {
    pub statement: &'a [u8],
    pub sql: &'a [u8],
    pub param_type_count: usize,
}

pub fn parse(body: &[u8]) -> Result<Parse<'_>, ProtocolError> {
    const WHAT: &str = "Parse message";
    let (statement, rest) = split_cstr(body).ok_or(malformed(WHAT, "no statement name"))?;
    let (sql, rest) = split_cstr(rest).ok_or(malformed(WHAT, "no query string"))?;
    let (count, rest) = split_i16(rest).ok_or(malformed(WHAT, "no parameter count"))?;
    let count = usize::try_from(count).map_err(|_| malformed(WHAT, "negative parameter count"))?;
    if rest.len() != count * 4 {
        return Err(malformed(WHAT, "parameter types do not match the count"));
    }
    Ok(Parse {
        statement,
        sql,
        param_type_count: count,
    })
}

/// Bind ('B'): the parts the session keeps (names and result formats). Parameter values are
/// walked to validate their lengths, not copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bind<'a> {
    pub portal: &'a [u8],
    pub statement: &'a [u8],
    pub param_count: usize,
    /// The parameter values as sent (length-prefixed), already validated.
    parameters: &'a [u8],
    /// Result-column format codes as sent (big-endian i16 pairs): none = all text, one =
    /// applies to all columns. Kept raw so that decoding a Bind allocates nothing.
    result_formats: &'a [u8],
}

impl<'a> Bind<'a> {
    /// Each parameter's value, `None` for NULL.
    pub fn parameter_values(&self) -> impl Iterator<Item = Option<&'a [u8]>> + 'a {
        let mut rest = self.parameters;
        (0..self.param_count).map(move |_| {
            // Lengths were checked when the view was made; a short slice yields nothing.
            let (len, after) = split_i32(rest)?;
            let len = usize::try_from(len).ok();
            let value = len.and_then(|len| after.get(..len));
            rest = after.get(len.unwrap_or(0)..).unwrap_or_default();
            value
        })
    }

    pub fn result_formats(&self) -> impl Iterator<Item = i16> + '_ {
        self.result_formats
            .chunks_exact(2)
            .map(|pair| i16::from_be_bytes([pair[0], pair[1]]))
    }
}

pub fn bind(body: &[u8]) -> Result<Bind<'_>, ProtocolError> {
    const WHAT: &str = "Bind message";
    let (portal, rest) = split_cstr(body).ok_or(malformed(WHAT, "no portal name"))?;
    let (statement, rest) = split_cstr(rest).ok_or(malformed(WHAT, "no statement name"))?;
    let (format_count, rest) = split_count(rest, WHAT)?;
    let rest = rest
        .get(format_count * 2..)
        .ok_or(malformed(WHAT, "parameter formats truncated"))?;
    let (param_count, mut rest) = split_count(rest, WHAT)?;
    let parameters_start = rest;
    for _ in 0..param_count {
        let (len, after) = split_i32(rest).ok_or(malformed(WHAT, "parameter length truncated"))?;
        rest = match len {
            -1 => after,
            len => {
                let len = usize::try_from(len)
                    .map_err(|_| malformed(WHAT, "negative parameter length"))?;
                after
                    .get(len..)
                    .ok_or(malformed(WHAT, "parameter value runs past the message end"))?
            }
        };
    }
    let parameters = &parameters_start[..parameters_start.len() - rest.len()];
    let (result_count, rest) = split_count(rest, WHAT)?;
    if rest.len() != result_count * 2 {
        return Err(malformed(WHAT, "result formats do not match the count"));
    }
    Ok(Bind {
        portal,
        statement,
        param_count,
        parameters,
        result_formats: rest,
    })
}

fn split_count<'a>(buf: &'a [u8], what: &'static str) -> Result<(usize, &'a [u8]), ProtocolError> {
    let (count, rest) = split_i16(buf).ok_or(malformed(what, "count truncated"))?;
    let count = usize::try_from(count).map_err(|_| malformed(what, "negative count"))?;
    Ok((count, rest))
}

/// Which kind of object a Describe or Close names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Statement,
    Portal,
}

/// Describe ('D') and Close ('C') share a shape: a kind byte and a name.
pub fn target<'a>(body: &'a [u8], what: &'static str) -> Result<(Target, &'a [u8]), ProtocolError> {
    let (&kind, rest) = body.split_first().ok_or(malformed(what, "empty"))?;
    let target = match kind {
        b'S' => Target::Statement,
        b'P' => Target::Portal,
        _ => return Err(malformed(what, "kind must be 'S' or 'P'")),
    };
    match split_cstr(rest) {
        Some((name, [])) => Ok((target, name)),
        _ => Err(malformed(what, "name must end exactly at the message end")),
    }
}

/// Execute ('E'): portal name and row limit.
pub fn execute(body: &[u8]) -> Result<(&[u8], i32), ProtocolError> {
    const WHAT: &str = "Execute message";
    let (portal, rest) = split_cstr(body).ok_or(malformed(WHAT, "no portal name"))?;
    match split_i32(rest) {
        Some((max_rows, [])) => Ok((portal, max_rows)),
        _ => Err(malformed(WHAT, "bad row limit")),
    }
}

/// ParameterStatus ('S' from the server): name and value.
pub fn parameter_status(body: &[u8]) -> Result<(&[u8], &[u8]), ProtocolError> {
    const WHAT: &str = "ParameterStatus message";
    let (name, rest) = split_cstr(body).ok_or(malformed(WHAT, "no name"))?;
    match split_cstr(rest) {
        Some((value, [])) => Ok((name, value)),
        _ => Err(malformed(WHAT, "bad value")),
    }
}

/// DataRow ('D' from the server): each column's value, `None` for NULL.
pub fn data_row(body: &[u8]) -> Result<Vec<Option<&[u8]>>, ProtocolError> {
    const WHAT: &str = "DataRow message";
    let (count, mut rest) = split_i16(body).ok_or(malformed(WHAT, "too short"))?;
    let count = usize::try_from(count).map_err(|_| malformed(WHAT, "negative column count"))?;
    let mut values = Vec::with_capacity(count.min(rest.len() / 4));
    for _ in 0..count {
        let (len, after) = split_i32(rest).ok_or(malformed(WHAT, "too short"))?;
        match usize::try_from(len) {
            Err(_) if len == -1 => {
                values.push(None);
                rest = after;
            }
            Ok(len) if len <= after.len() => {
                values.push(Some(&after[..len]));
                rest = &after[len..];
            }
            _ => return Err(malformed(WHAT, "bad value length")),
        }
    }
    if rest.is_empty() {
        Ok(values)
    } else {
        Err(malformed(WHAT, "bytes after the last column"))
    }
}

/// The fields of an ErrorResponse or NoticeResponse, by field type byte.
pub fn error_fields(body: &[u8]) -> Result<Vec<(u8, &[u8])>, ProtocolError> {
    const WHAT: &str = "ErrorResponse message";
    let mut fields = Vec::new();
    let mut rest = body;
    loop {
        let (&code, after) = rest.split_first().ok_or(malformed(WHAT, "no terminator"))?;
        if code == 0 {
            if !after.is_empty() {
                return Err(malformed(WHAT, "trailing bytes"));
            }
            return Ok(fields);
        }
        let (value, after) = split_cstr(after).ok_or(malformed(WHAT, "unterminated field"))?;
        fields.push((code, value));
        rest = after;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_must_end_at_the_message_end() {
        assert_eq!(query(b"select 1\0").unwrap(), b"select 1");
        assert!(query(b"select 1").is_err());
        assert!(query(b"select 1\0X\0\0\0\x04").is_err());
    }

    #[test]
    fn parse_checks_parameter_types() {
        let p = parse(b"s1\0select $1\0\0\x01\0\0\0\x17").unwrap();
        assert_eq!(
            (p.statement, p.sql, p.param_type_count),
            (&b"s1"[..], &b"select $1"[..], 1)
        );
        assert!(parse(b"s1\0select $1\0\0\x02\0\0\0\x17").is_err());
        assert!(parse(b"s1\0select $1\0\xff\xff").is_err());
    }

    #[test]
    fn bind_validates_every_inner_length() {
        let ok = b"p\0s\0\0\x01\0\x01\0\x02\0\0\0\x02hi\xff\xff\xff\xff\0\x01\0\x01";
        let b = bind(ok).unwrap();
        assert_eq!(
            (b.portal, b.statement, b.param_count),
            (&b"p"[..], &b"s"[..], 2)
        );
        assert_eq!(b.result_formats().collect::<Vec<_>>(), vec![1]);
        assert_eq!(
            b.parameter_values().collect::<Vec<_>>(),
            vec![Some(&b"hi"[..]), None]
        );
        // A parameter length running past the end (pgwire panics on this one).
        assert!(bind(b"p\0s\0\0\0\0\x01\0\0\x10\0hi\0\0").is_err());
        assert!(bind(b"p\0s\0\0\0\0\x01\xff\xff\xff\xfe\0\0").is_err());
        assert!(bind(b"p\0s\0\0\0\0\0\0\0junk").is_err());
    }

    #[test]
    fn describe_close_execute() {
        assert_eq!(
            target(b"Sname\0", "Close").unwrap(),
            (Target::Statement, &b"name"[..])
        );
        assert!(target(b"Xname\0", "Close").is_err());
        assert_eq!(execute(b"\0\0\0\0\0").unwrap(), (&b""[..], 0));
        assert!(execute(b"\0\0\0").is_err());
    }

    #[test]
    fn error_fields_are_split() {
        let f = error_fields(b"SERROR\0C42P01\0Mno such table\0\0").unwrap();
        assert_eq!(f[1], (b'C', &b"42P01"[..]));
        assert!(error_fields(b"SERROR\0").is_err());
    }
}
