//! Reading claims: dotted paths (`realm_access.roles`), groups as an array or a space- or
//! comma-separated string, and the operator's required claims.

use serde_json::{Map, Value};

use super::TokenError;

/// Longest group list and group name kept from a token (a token is peer data).
const MAX_GROUPS: usize = 256;
const MAX_NAME: usize = 256;

/// The claim at `path`: an exact top-level name first (claim names may contain dots, e.g.
/// URLs), then the dotted path through nested objects.
pub fn lookup<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(value) = claims.get(path) {
        return Some(value);
    }
    let mut parts = path.split('.');
    let mut value = claims.get(parts.next()?)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

/// An ID token's `azp` (the client it was issued to), when present, names a configured
/// audience or authorized party: a token another client obtained, with pgwarden among its
/// audiences, is not accepted from that client.
pub fn check_authorized_party(
    claims: &Map<String, Value>,
    settings: &super::IssuerSettings,
) -> Result<(), TokenError> {
    let Some(azp) = claims.get("azp") else {
        return Ok(());
    };
    let azp = azp
        .as_str()
        .filter(|s| s.len() <= MAX_NAME)
        .ok_or(TokenError::Malformed("the azp claim is not a client id"))?;
    let known = |list: &[String]| list.iter().any(|a| a == azp);
    if known(&settings.audiences) || known(&settings.authorized_parties) {
        Ok(())
    } else {
        Err(TokenError::UnauthorizedParty(azp.to_owned()))
    }
}

/// A non-empty string claim.
pub fn string(claims: &Map<String, Value>, path: &str) -> Option<String> {
    lookup(claims, path)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.len() <= MAX_NAME)
        .map(str::to_owned)
}

/// Whether the claim at `path` is present and false (`false`, or the string `"false"` some
/// providers send).
pub fn says_false(claims: &Map<String, Value>, path: &str) -> bool {
    match lookup(claims, path) {
        Some(Value::Bool(b)) => !b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("false"),
        _ => false,
    }
}

/// Groups from an array of strings, or from one string separated by spaces or commas.
pub fn groups(claims: &Map<String, Value>, path: &str) -> Vec<String> {
    let mut groups: Vec<String> = match lookup(claims, path) {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        Some(Value::String(text)) => text
            .split([' ', ','])
            .filter(|g| !g.is_empty())
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    };
    groups.retain(|g| !g.is_empty() && g.len() <= MAX_NAME);
    groups.truncate(MAX_GROUPS);
    groups
}

/// Each required claim must equal its value, or (for an array claim) contain it.
pub fn check_required(
    claims: &Map<String, Value>,
    required: &[(String, Value)],
) -> Result<(), TokenError> {
    for (path, wanted) in required {
        match lookup(claims, path) {
            None => return Err(TokenError::MissingClaim(path.clone())),
            Some(Value::Array(items)) if !matches!(wanted, Value::Array(_)) => {
                if !items.contains(wanted) {
                    return Err(TokenError::ClaimMismatch(path.clone()));
                }
            }
            Some(value) if value != wanted => return Err(TokenError::ClaimMismatch(path.clone())),
            Some(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn paths_and_groups() {
        let c = claims(json!({
            "email": "ann@example.com",
            "https://example.com/groups": ["a"],
            "realm_access": {"roles": ["dba", "dev"]},
            "scope_groups": "one two,three",
            "sub": "",
        }));
        assert_eq!(string(&c, "email").as_deref(), Some("ann@example.com"));
        assert_eq!(string(&c, "sub"), None, "empty strings are absent");
        assert_eq!(groups(&c, "realm_access.roles"), ["dba", "dev"]);
        assert_eq!(groups(&c, "https://example.com/groups"), ["a"]);
        assert_eq!(groups(&c, "scope_groups"), ["one", "two", "three"]);
        assert!(groups(&c, "missing.path").is_empty());
        assert!(groups(&c, "email.x").is_empty());
    }

    #[test]
    fn required_claims() {
        let c = claims(json!({"email_verified": true, "hd": "example.com", "amr": ["pwd", "mfa"]}));
        let req = |k: &str, v: Value| vec![(k.to_owned(), v)];
        assert!(check_required(&c, &req("email_verified", json!(true))).is_ok());
        assert!(check_required(&c, &req("amr", json!("mfa"))).is_ok());
        assert_eq!(
            check_required(&c, &req("hd", json!("evil.com"))),
            Err(TokenError::ClaimMismatch("hd".into()))
        );
        assert_eq!(
            check_required(&c, &req("tenant", json!("x"))),
            Err(TokenError::MissingClaim("tenant".into()))
        );
    }
}
