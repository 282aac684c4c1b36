//! Finding the PostgreSQL server binaries: `PG_BINDIR`, `pg_config`, the
//! Debian version directories and PATH.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::TestbedError;

/// Tools that must come from one directory: a mismatched `postgres` and
/// `initdb` produce a data directory the server refuses.
const SERVER_TOOLS: [&str; 3] = ["initdb", "pg_ctl", "postgres"];
/// Client tools that are version-tolerant, so PATH may supply them when the
/// server bin directory lacks them (Debian splits client and server packages).
const CLIENT_TOOLS: [&str; 2] = ["psql", "pgbench"];

/// Where the PostgreSQL server binaries live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgBinaries {
    pub(super) bindir: PathBuf,
}

impl PgBinaries {
    /// Search order: env `PG_BINDIR`, `pg_config --bindir`,
    /// `/usr/lib/postgresql/*/bin` (highest version number first), then PATH
    /// (the directory containing `initdb`). The directory must contain
    /// `initdb`, `pg_ctl` and `postgres`; `psql` may come from PATH.
    ///
    /// A `PG_BINDIR` that lacks a tool is an error rather than a reason to look
    /// elsewhere: whoever set it wants that version, and silently testing
    /// against another would hide the mistake.
    ///
    /// # Errors
    ///
    /// [`TestbedError::BadPgBindir`] or [`TestbedError::BinariesNotFound`].
    pub fn discover() -> Result<Self, TestbedError> {
        if let Some(dir) = std::env::var_os("PG_BINDIR").filter(|d| !d.is_empty()) {
            let dir = PathBuf::from(dir);
            let missing = missing_server_tools(&dir);
            if missing.is_empty() {
                return Ok(Self { bindir: dir });
            }
            return Err(TestbedError::BadPgBindir {
                dir,
                missing: missing.join(", "),
            });
        }

        let candidates = pg_config_bindir()
            .into_iter()
            .chain(versioned_bindirs(Path::new("/usr/lib/postgresql")))
            .chain(find_in_path("initdb").and_then(|p| p.parent().map(Path::to_path_buf)));
        let mut searched = Vec::new();
        for dir in candidates {
            if missing_server_tools(&dir).is_empty() {
                tracing::debug!(bindir = %dir.display(), "found PostgreSQL server binaries");
                return Ok(Self { bindir: dir });
            }
            searched.push(dir.display().to_string());
        }
        searched.push("$PATH".to_owned());
        Err(TestbedError::BinariesNotFound {
            searched: searched.join(", "),
        })
    }

    /// The directory holding `initdb`, `pg_ctl` and `postgres`.
    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    /// Path of a tool in [`Self::bindir`]. `psql` and `pgbench` fall back to a
    /// PATH lookup when the bin directory lacks them. When nothing is found the
    /// bin directory path is returned, so running it fails with a clear name.
    pub fn tool(&self, name: &str) -> PathBuf {
        let in_bindir = self.bindir.join(name);
        if is_executable_file(&in_bindir) {
            return in_bindir;
        }
        if CLIENT_TOOLS.contains(&name) {
            if let Some(found) = find_in_path(name) {
                return found;
            }
        }
        in_bindir
    }
}

fn is_executable_file(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
}

fn missing_server_tools(dir: &Path) -> Vec<&'static str> {
    SERVER_TOOLS
        .into_iter()
        .filter(|tool| !is_executable_file(&dir.join(tool)))
        .collect()
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable_file(candidate))
}

/// Like [`find_in_path`], then the sbin directories a non-login root PATH
/// sometimes lacks (runuser lives in /usr/sbin on Debian).
pub(super) fn find_program(name: &str) -> Option<PathBuf> {
    find_in_path(name).or_else(|| {
        ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .into_iter()
            .map(|dir| Path::new(dir).join(name))
            .find(|candidate| is_executable_file(candidate))
    })
}

fn pg_config_bindir() -> Option<PathBuf> {
    let out = Command::new("pg_config")
        .arg("--bindir")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let dir = text.trim();
    (!dir.is_empty()).then(|| PathBuf::from(dir))
}

/// Parses a Debian-style version directory name ("15", "9.6") into its
/// numeric components; anything else (e.g. "15beta1", "common") is `None`.
fn parse_version(name: &str) -> Option<Vec<u32>> {
    name.split('.')
        .map(|part| {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                None
            } else {
                part.parse().ok()
            }
        })
        .collect()
}

/// Orders directory names by version, highest first, dropping names that are
/// not versions. Components compare numerically, so "10" beats "9.6".
fn highest_versions_first<S: AsRef<str>>(names: &[S]) -> Vec<&str> {
    let mut versions: Vec<(Vec<u32>, &str)> = names
        .iter()
        .filter_map(|name| parse_version(name.as_ref()).map(|v| (v, name.as_ref())))
        .collect();
    versions.sort_by(|a, b| b.0.cmp(&a.0));
    versions.into_iter().map(|(_, name)| name).collect()
}

/// `<base>/<version>/bin` for every version directory under `base`, highest
/// version first.
fn versioned_bindirs(base: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(base) else {
        return Vec::new();
    };
    let names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().into_string().ok())
        .collect();
    highest_versions_first(&names)
        .into_iter()
        .map(|name| base.join(name).join("bin"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testbed::random_token;

    #[test]
    fn parses_version_dir_names() {
        assert_eq!(parse_version("15"), Some(vec![15]));
        assert_eq!(parse_version("9.6"), Some(vec![9, 6]));
        assert_eq!(parse_version("16.1"), Some(vec![16, 1]));
        assert_eq!(parse_version("15beta1"), None);
        assert_eq!(parse_version("common"), None);
        assert_eq!(parse_version(""), None);
        assert_eq!(parse_version("9."), None);
        assert_eq!(parse_version("+9"), None);
    }

    #[test]
    fn orders_versions_numerically_highest_first() {
        let names = ["9.6", "15", "common", "10", "16", "9.5", "16beta2"];
        assert_eq!(
            highest_versions_first(&names),
            vec!["16", "15", "10", "9.6", "9.5"]
        );
    }

    #[test]
    fn lists_versioned_bindirs_in_order() {
        let base = std::env::temp_dir().join(format!(
            "pgwarden-testbed-unit-{}-{}",
            std::process::id(),
            random_token(6)
        ));
        for name in ["14", "16", "9.6", "common"] {
            fs::create_dir_all(base.join(name).join("bin")).unwrap();
        }
        let dirs = versioned_bindirs(&base);
        fs::remove_dir_all(&base).unwrap();
        assert_eq!(
            dirs,
            vec![
                base.join("16/bin"),
                base.join("14/bin"),
                base.join("9.6/bin")
            ]
        );
        assert!(versioned_bindirs(Path::new("/nonexistent/pgwarden")).is_empty());
    }
}
