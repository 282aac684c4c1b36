//! Throwaway PostgreSQL servers for `pgwarden demo`, integration tests and
//! benchmarks.
//!
//! [`ThrowawayPostgres::start`] runs `initdb` into a fresh directory under the
//! system temp dir, starts the server with `pg_ctl` on 127.0.0.1 (a free port
//! unless one is given) with a private unix socket directory, and
//! [`ThrowawayPostgres::stop`] (or drop) removes everything again. Tests keep
//! one server per test binary in a static, which is never dropped, so `start`
//! also spawns a small watchdog process that cleans up once this process is
//! gone, whether it exited, panicked or was killed.
//!
//! `initdb` and `postgres` refuse to run as root. When we are root (containers,
//! CI) every server command runs as an unprivileged user (`postgres`, else
//! `nobody`) through `runuser`, or `su` where `runuser` is missing, and the
//! temp dir is chowned to that user.
//!
//! Everything here is blocking `std::process` code: starting a server takes
//! seconds anyway, and tests call it from plain `#[test]` functions. Async
//! callers should wrap it in `tokio::task::spawn_blocking`.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;

use rand::distr::{Alphanumeric, SampleString};

mod binaries;
mod certs;
mod conf;
pub mod issuer;
mod runner;
mod server;

pub use binaries::PgBinaries;
pub use certs::{write_test_certificates, TestCertificates};
pub use issuer::{DevIssuer, KeyAlgorithm};
pub use server::ThrowawayPostgres;

/// The only address the server listens on; tests and the demo never need more.
const HOST: &str = "127.0.0.1";

/// Everything that can go wrong while finding binaries or running a server.
/// Each message says what failed and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    /// No directory with `initdb`, `pg_ctl` and `postgres` was found.
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found; looked in {searched}. \
         Install postgresql (apt-get install postgresql) or set PG_BINDIR to the directory that \
         holds initdb"
    )]
    BinariesNotFound {
        /// The directories tried, comma-separated.
        searched: String,
    },

    /// Generating test certificates failed.
    #[error("cannot generate test certificates: {0}")]
    Certificates(String),

    /// `PG_BINDIR` is set but lacks a server tool.
    #[error(
        "PG_BINDIR={dir} does not contain {missing}; point PG_BINDIR at the server bin directory \
         (e.g. /usr/lib/postgresql/15/bin) or unset it to search the usual places"
    )]
    BadPgBindir {
        /// The value of `PG_BINDIR`.
        dir: PathBuf,
        /// The tools it lacks, comma-separated.
        missing: String,
    },

    /// We are root and found no user to run the server as.
    #[error(
        "running as root, but neither `postgres` nor `nobody` is in /etc/passwd; initdb refuses \
         to run as root, so create one (useradd --system postgres) or run as a normal user"
    )]
    NoUnprivilegedUser,

    /// We are root and found no tool to switch to the server user.
    #[error(
        "running as root, but neither runuser nor su was found to run initdb as {user}; install \
         util-linux or run as a normal user"
    )]
    NoPrivilegeDrop {
        /// The user the server would have run as.
        user: String,
    },

    /// The server user cannot reach the temp dir through its parents.
    #[error(
        "{path} is not reachable by user {user}, who runs the server; set TMPDIR to a directory \
         every user can traverse, such as /tmp"
    )]
    NotTraversable {
        /// The temp dir.
        path: PathBuf,
        /// The user that runs the server.
        user: String,
    },

    /// The unix socket path would exceed what `sockaddr_un` holds.
    #[error(
        "unix socket path {path} is longer than the 107-byte limit; set TMPDIR to a shorter \
         directory such as /tmp"
    )]
    SocketPathTooLong {
        /// The longest socket path the server could create.
        path: PathBuf,
    },

    /// A [`PostgresOptions`] field or setting cannot be used.
    #[error("invalid option {name}: {reason}")]
    InvalidOption {
        /// The option or setting name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A file system or socket operation failed.
    #[error("could not {action}: {source}")]
    Io {
        /// What we were doing, e.g. "create socket dir /tmp/...".
        action: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// A program could not be started at all.
    #[error("could not run {program}: {source}; check that it exists and is executable")]
    Spawn {
        /// The program's path.
        program: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// `initdb` exited with an error.
    #[error("initdb failed ({status}): {stderr}")]
    Initdb {
        /// Its exit status.
        status: ExitStatus,
        /// What it printed (stderr, else stdout).
        stderr: String,
    },

    /// `pg_ctl start` failed, or the server did not come up in time.
    #[error(
        "PostgreSQL did not start after {attempts} attempt(s): {reason}\n\
         --- last lines of {log} ---\n{log_tail}"
    )]
    Start {
        /// How many ports were tried.
        attempts: u32,
        /// What `pg_ctl` printed.
        reason: String,
        /// The server log's path.
        log: PathBuf,
        /// The end of the server log, which holds the server's own reason.
        log_tail: String,
    },

    /// psql exited with an error (connection failure or failed SQL).
    #[error("psql on database {database:?} failed ({status}): {stderr}")]
    Psql {
        /// The database the SQL ran in.
        database: String,
        /// psql's exit status (3 for an SQL error under `ON_ERROR_STOP`).
        status: ExitStatus,
        /// What psql printed on stderr.
        stderr: String,
    },
}

/// Wraps an I/O error with the step that failed, so messages read
/// "could not create socket dir /tmp/...: Permission denied".
fn io_err(action: impl Into<String>) -> impl FnOnce(io::Error) -> TestbedError {
    let action = action.into();
    move |source| TestbedError::Io { action, source }
}

/// How to start the throwaway server.
#[derive(Clone)]
pub struct PostgresOptions {
    /// Database superuser created by initdb.
    pub superuser: String,
    /// Its password, checked (SCRAM) on TCP connections; the unix socket
    /// trusts every local connection.
    pub superuser_password: String,
    /// `None` picks a free port on 127.0.0.1.
    pub port: Option<u16>,
    /// Extra postgresql.conf settings, e.g. `("max_connections", "300")`.
    /// Values are quoted for you.
    pub settings: Vec<(String, String)>,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            superuser: "postgres".to_owned(),
            superuser_password: random_token(24),
            port: None,
            settings: Vec::new(),
        }
    }
}

// Hand-written so a password never reaches a log line or a test failure.
impl fmt::Debug for PostgresOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresOptions")
            .field("superuser", &self.superuser)
            .field("superuser_password", &"<redacted>")
            .field("port", &self.port)
            .field("settings", &self.settings)
            .finish()
    }
}

fn random_token(len: usize) -> String {
    Alphanumeric.sample_string(&mut rand::rng(), len)
}

/// A random 24-character alphanumeric password (safe inside SQL string literals).
pub fn random_password() -> String {
    random_token(24)
}

/// A small demo schema with FAKE personal data: card numbers are the
/// networks' published test numbers (they pass the Luhn check), SSNs use the
/// never-issued 9xx area or famous void numbers, phones use the 555-01xx
/// fiction range, and emails use the reserved example.* domains.
/// Deterministic, so tests can assert on exact values.
pub const SAMPLE_SCHEMA: &str = include_str!("sample_schema.sql");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_options_have_a_fresh_password_that_debug_hides() {
        let a = PostgresOptions::default();
        let b = PostgresOptions::default();
        assert_eq!(a.superuser, "postgres");
        assert_eq!(a.superuser_password.len(), 24);
        assert_ne!(a.superuser_password, b.superuser_password);
        assert!(!format!("{a:?}").contains(&a.superuser_password));
    }

    fn luhn_valid(digits: &str) -> bool {
        crate::masking::detect::luhn(digits.as_bytes())
    }

    #[test]
    fn sample_schema_cards_pass_luhn() {
        let cards: Vec<&str> = SAMPLE_SCHEMA
            .split('\'')
            .filter(|s| (13..=19).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit()))
            .collect();
        assert_eq!(cards.len(), 20);
        for card in cards {
            assert!(luhn_valid(card), "{card} fails Luhn");
        }
        assert!(!SAMPLE_SCHEMA.contains("random("));
    }
}
