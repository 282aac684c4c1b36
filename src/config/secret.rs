//! Secret references: `env:NAME`, `file:PATH`, or (discouraged) an inline value.

use std::fmt;
use std::path::Path;

/// A resolved secret. Its `Debug` never shows the value, so it cannot leak through logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Resolve a reference. Returns the secret and whether it was written inline.
    pub fn resolve(reference: &str, base_dir: &Path) -> Result<(Self, bool), String> {
        if let Some(name) = reference.strip_prefix("env:") {
            return std::env::var(name)
                .map(|v| (Self(v), false))
                .map_err(|_| format!("environment variable {name} is not set"));
        }
        if let Some(file) = reference.strip_prefix("file:") {
            let path = base_dir.join(file);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?;
            // Files written with `echo` end in a newline that is not part of the secret.
            let value = text.strip_suffix('\n').unwrap_or(&text);
            let value = value.strip_suffix('\r').unwrap_or(value);
            return Ok((Self(value.to_owned()), false));
        }
        Ok((Self(reference.to_owned()), true))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_resolve_and_never_print() {
        let dir = std::env::temp_dir();
        let file = dir.join(format!("pgwarden-secret-test-{}", std::process::id()));
        std::fs::write(&file, "s3cret\n").unwrap();
        let (s, inline) =
            Secret::resolve(&format!("file:{}", file.display()), Path::new("/")).unwrap();
        assert_eq!((s.expose(), inline), ("s3cret", false));
        assert!(!format!("{s:?}").contains("s3cret"));
        std::fs::remove_file(file).unwrap();
        assert!(Secret::resolve("env:PGWARDEN_SURELY_UNSET_VAR", &dir).is_err());
        assert!(Secret::resolve("plain", &dir).unwrap().1);
    }
}
