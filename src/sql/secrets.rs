//! Passwords written into statements (`CREATE ROLE … PASSWORD '…'`, `ALTER USER … PASSWORD
//! '…'`) are blanked wherever pgwarden shows a statement's own text to people: approval
//! requests (and their webhooks) and `audit.statement_text = "full"`.

use std::borrow::Cow;

use pg_query::protobuf::Token;

/// `sql` with the string after each `PASSWORD` keyword replaced by `'…'`. Found with
/// PostgreSQL's own scanner, so a "password" inside a string, identifier or comment is left
/// alone; text the scanner rejects is returned as it is (it is refused anyway).
pub fn without_passwords(sql: &str) -> Cow<'_, str> {
    if !sql.to_ascii_lowercase().contains("password") {
        return Cow::Borrowed(sql);
    }
    let Ok(tokens) = pg_query::scan_tokens(sql) else {
        return Cow::Borrowed(sql);
    };
    let mut out = String::with_capacity(sql.len());
    let mut at = 0;
    let mut after_password = false;
    for token in &tokens {
        let kind = Token::try_from(token.token);
        if matches!(kind, Ok(Token::CComment | Token::SqlComment)) {
            continue;
        }
        let literal = matches!(kind, Ok(Token::Sconst | Token::Usconst));
        if after_password && literal {
            let range = usize::try_from(token.start)
                .ok()
                .zip(usize::try_from(token.end).ok());
            if let Some((start, end)) = range.filter(|(s, e)| at <= *s && s <= e && *e <= sql.len())
            {
                out.push_str(&sql[at..start]);
                out.push_str("'…'");
                at = end;
            }
        }
        after_password = matches!(kind, Ok(Token::Password));
    }
    if at == 0 {
        return Cow::Borrowed(sql);
    }
    out.push_str(&sql[at..]);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::without_passwords;

    #[test]
    fn the_string_after_password_is_blanked_and_nothing_else() {
        for (sql, shown) in [
            (
                "ALTER ROLE app PASSWORD 'Hunter2'",
                "ALTER ROLE app PASSWORD '…'",
            ),
            (
                "create user bob with encrypted password E'It''s\\\\x' valid until 'infinity'",
                "create user bob with encrypted password '…' valid until 'infinity'",
            ),
            (
                "ALTER ROLE app PASSWORD /* new */ $$Hunter2$$",
                "ALTER ROLE app PASSWORD /* new */ '…'",
            ),
            (
                "SELECT 'my password is Hunter2' AS password",
                "SELECT 'my password is Hunter2' AS password",
            ),
            (
                "ALTER ROLE app PASSWORD NULL",
                "ALTER ROLE app PASSWORD NULL",
            ),
        ] {
            assert_eq!(without_passwords(sql), shown, "{sql}");
        }
    }
}
