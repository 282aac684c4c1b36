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

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};

use rand::distr::{Alphanumeric, SampleString};

mod certs;
pub use certs::{write_test_certificates, TestCertificates};

/// The only address the server listens on; tests and the demo never need more.
const HOST: &str = "127.0.0.1";
/// One first try plus three retries when a picked port was taken meanwhile.
const MAX_START_ATTEMPTS: u32 = 4;
/// Seconds `pg_ctl` waits for start and stop; a cold start on a loaded CI box
/// can take tens of seconds.
const PG_CTL_TIMEOUT_SECS: &str = "60";
/// Enough of postgres.log to show the FATAL line and what led to it.
const LOG_TAIL_LINES: usize = 40;
/// `sockaddr_un.sun_path` holds 108 bytes on Linux, including the final NUL.
const MAX_SOCKET_PATH: usize = 107;
/// Tools that must come from one directory: a mismatched `postgres` and
/// `initdb` produce a data directory the server refuses.
const SERVER_TOOLS: [&str; 3] = ["initdb", "pg_ctl", "postgres"];
/// Client tools that are version-tolerant, so PATH may supply them when the
/// server bin directory lacks them (Debian splits client and server packages).
const CLIENT_TOOLS: [&str; 2] = ["psql", "pgbench"];
/// Settings this module owns: letting a caller override them would make
/// [`ThrowawayPostgres::port`] and [`ThrowawayPostgres::socket_dir`] lie.
const MANAGED_SETTINGS: [&str; 2] = ["port", "unix_socket_directories"];
/// libpq variables that would silently redirect or alter our psql sessions.
const LIBPQ_ENV_VARS: [&str; 12] = [
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGOPTIONS",
    "PGSSLMODE",
    "PGTARGETSESSIONATTRS",
];

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

/// Where the PostgreSQL server binaries live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgBinaries {
    bindir: PathBuf,
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
fn find_program(name: &str) -> Option<PathBuf> {
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

fn validate_options(opts: &PostgresOptions) -> Result<(), TestbedError> {
    let invalid = |name: &str, reason: &str| TestbedError::InvalidOption {
        name: name.to_owned(),
        reason: reason.to_owned(),
    };
    if opts.superuser.is_empty() || opts.superuser.contains('\0') {
        return Err(invalid("superuser", "must be non-empty and contain no NUL"));
    }
    // initdb reads only the first line of the password file.
    if opts.superuser_password.is_empty() || opts.superuser_password.contains(['\n', '\r', '\0']) {
        return Err(invalid(
            "superuser_password",
            "must be non-empty and a single line",
        ));
    }
    if opts.port == Some(0) {
        return Err(invalid("port", "use None to pick a free port"));
    }
    Ok(())
}

/// Quotes a postgresql.conf value. Every value is quoted (the server parses
/// quoted integers and booleans too), so no caller value can end the line
/// early or smuggle in another setting.
fn conf_quote(value: &str) -> Option<String> {
    if value.chars().any(char::is_control) {
        return None;
    }
    Some(format!(
        "'{}'",
        value.replace('\\', "\\\\").replace('\'', "''")
    ))
}

/// The settings file included from postgresql.conf. It is rewritten for each
/// start attempt, because only the port changes between them.
fn render_conf(
    port: u16,
    socket_dir: &Path,
    extra: &[(String, String)],
) -> Result<String, TestbedError> {
    let socket_dir = socket_dir
        .to_str()
        .ok_or_else(|| TestbedError::InvalidOption {
            name: "TMPDIR".to_owned(),
            reason: format!("{} is not valid UTF-8", socket_dir.display()),
        })?;
    let quote = |name: &str, value: &str| {
        conf_quote(value).ok_or_else(|| TestbedError::InvalidOption {
            name: name.to_owned(),
            reason: "value contains a control character (newline?)".to_owned(),
        })
    };
    let mut lines = vec![
        "# Written by pgwarden's testbed: a throwaway server tuned for speed, not durability."
            .to_owned(),
        format!("listen_addresses = {}", quote("listen_addresses", HOST)?),
        format!("port = {port}"),
        format!(
            "unix_socket_directories = {}",
            quote("unix_socket_directories", socket_dir)?
        ),
        "password_encryption = 'scram-sha-256'".to_owned(),
        "fsync = off".to_owned(),
        "synchronous_commit = off".to_owned(),
        "full_page_writes = off".to_owned(),
        "max_connections = 200".to_owned(),
        // English server messages, so a port conflict is recognisable in the log.
        "lc_messages = 'C'".to_owned(),
    ];
    for (name, value) in extra {
        let valid_name = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
        if !valid_name {
            return Err(TestbedError::InvalidOption {
                name: name.clone(),
                reason: "setting names are letters, digits, '_' and '.'".to_owned(),
            });
        }
        if MANAGED_SETTINGS
            .iter()
            .any(|managed| managed.eq_ignore_ascii_case(name))
        {
            return Err(TestbedError::InvalidOption {
                name: name.clone(),
                reason: "managed by the testbed; use PostgresOptions::port instead".to_owned(),
            });
        }
        lines.push(format!("{name} = {}", quote(name, value)?));
    }
    let mut text = lines.join("\n");
    text.push('\n');
    Ok(text)
}

/// POSIX shell quoting for the watchdog script and `su -c`: plain words stay
/// as they are, anything else is single-quoted.
fn shell_quote(word: &[u8]) -> Vec<u8> {
    let plain = !word.is_empty()
        && word
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"_-./=:,+@%".contains(b));
    if plain {
        return word.to_vec();
    }
    let mut quoted = Vec::with_capacity(word.len() + 2);
    quoted.push(b'\'');
    for &b in word {
        if b == b'\'' {
            quoted.extend_from_slice(b"'\\''");
        } else {
            quoted.push(b);
        }
    }
    quoted.push(b'\'');
    quoted
}

fn shell_join<'a>(words: impl IntoIterator<Item = &'a OsStr>) -> Vec<u8> {
    let mut line = Vec::new();
    for word in words {
        if !line.is_empty() {
            line.push(b' ');
        }
        line.extend(shell_quote(word.as_bytes()));
    }
    line
}

/// Quotes a libpq connection-string value. psql treats any `-d` argument with
/// an `=` as a connection string, so even the database name goes through here.
fn conninfo_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Finds `name`'s uid and gid in /etc/passwd content.
fn passwd_ids(passwd: &str, name: &str) -> Option<(u32, u32)> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != name {
            return None;
        }
        let uid = fields.nth(1)?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        Some((uid, gid))
    })
}

/// Whether we run with euid 0. /proc/self is owned by the effective uid;
/// `id -u` covers systems without /proc.
fn running_as_root() -> bool {
    if let Ok(meta) = fs::metadata("/proc/self") {
        return meta.uid() == 0;
    }
    Command::new("id")
        .arg("-u")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|out| out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// How root hands a command to the unprivileged user.
#[derive(Debug, Clone)]
enum PrivDrop {
    Runuser(PathBuf),
    Su(PathBuf),
}

/// The user that owns and runs the server when we are root.
#[derive(Debug, Clone)]
struct Unprivileged {
    name: String,
    uid: u32,
    gid: u32,
    via: PrivDrop,
}

impl Unprivileged {
    fn find() -> Result<Self, TestbedError> {
        let passwd = fs::read_to_string("/etc/passwd").map_err(io_err("read /etc/passwd"))?;
        let (name, (uid, gid)) = ["postgres", "nobody"]
            .into_iter()
            .find_map(|name| passwd_ids(&passwd, name).map(|ids| (name, ids)))
            .ok_or(TestbedError::NoUnprivilegedUser)?;
        let via = if let Some(runuser) = find_program("runuser") {
            PrivDrop::Runuser(runuser)
        } else if let Some(su) = find_program("su") {
            PrivDrop::Su(su)
        } else {
            return Err(TestbedError::NoPrivilegeDrop {
                user: name.to_owned(),
            });
        };
        Ok(Self {
            name: name.to_owned(),
            uid,
            gid,
            via,
        })
    }
}

/// Builds the commands that touch the server, as the unprivileged user when
/// we are root.
#[derive(Debug, Clone)]
struct Runner {
    user: Option<Unprivileged>,
    /// Our temp dir: the caller's cwd may be unreadable for the server user,
    /// and initdb and postgres complain when they cannot resolve it.
    cwd: PathBuf,
}

impl Runner {
    /// The program and arguments to execute `program args` as the right user.
    fn argv(&self, program: &Path, args: &[&OsStr]) -> (OsString, Vec<OsString>) {
        let direct = || args.iter().map(|a| a.to_os_string());
        match &self.user {
            None => (program.as_os_str().to_os_string(), direct().collect()),
            Some(user) => match &user.via {
                PrivDrop::Runuser(runuser) => {
                    let mut argv: Vec<OsString> =
                        vec!["-u".into(), user.name.clone().into(), "--".into()];
                    argv.push(program.as_os_str().to_os_string());
                    argv.extend(direct());
                    (runuser.as_os_str().to_os_string(), argv)
                }
                PrivDrop::Su(su) => {
                    // su hands one string to a shell, so quote every word;
                    // -s overrides a nologin shell (nobody's).
                    let inner = shell_join(
                        std::iter::once(program.as_os_str()).chain(args.iter().copied()),
                    );
                    let argv = vec![
                        user.name.clone().into(),
                        "-s".into(),
                        "/bin/sh".into(),
                        "-c".into(),
                        OsString::from_vec(inner),
                    ];
                    (su.as_os_str().to_os_string(), argv)
                }
            },
        }
    }

    fn command(&self, program: &Path, args: &[&OsStr]) -> Command {
        let (program, args) = self.argv(program, args);
        let mut cmd = Command::new(program);
        cmd.args(args).current_dir(&self.cwd).stdin(Stdio::null());
        for var in LIBPQ_ENV_VARS {
            cmd.env_remove(var);
        }
        cmd
    }

    /// The same command as one shell line, for the watchdog script.
    fn shell_line(&self, program: &Path, args: &[&OsStr]) -> Vec<u8> {
        let (program, args) = self.argv(program, args);
        shell_join(std::iter::once(program.as_os_str()).chain(args.iter().map(OsString::as_os_str)))
    }

    /// Runs a command to completion, capturing its output.
    fn run(&self, program: &Path, args: &[&OsStr]) -> Result<Output, TestbedError> {
        self.command(program, args)
            .output()
            .map_err(|source| TestbedError::Spawn {
                program: program.display().to_string(),
                source,
            })
    }

    /// Gives `path` to the server user, so it can write there.
    fn chown(&self, path: &Path) -> Result<(), TestbedError> {
        match &self.user {
            Some(user) => std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
                .map_err(io_err(format!("chown {} to {}", path.display(), user.name))),
            None => Ok(()),
        }
    }
}

/// Creates `<base>/pgwarden-pg-<pid>-<random>`, private to its owner.
fn create_temp_dir(base: &Path) -> Result<PathBuf, TestbedError> {
    let mut last_err = None;
    for _ in 0..8 {
        let dir = base.join(format!(
            "pgwarden-pg-{}-{}",
            std::process::id(),
            random_token(8).to_ascii_lowercase()
        ));
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_err = Some(e),
            Err(e) => return Err(io_err(format!("create temp dir {}", dir.display()))(e)),
        }
    }
    Err(io_err(format!(
        "create a unique temp dir in {}",
        base.display()
    ))(
        last_err.unwrap_or_else(|| io::Error::other("name collisions")),
    ))
}

fn free_port() -> Result<u16, TestbedError> {
    // The port is free when we drop the listener; another process may take it
    // before the server binds, which the start loop retries.
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(io_err("bind 127.0.0.1:0 to find a free port"))?;
    let port = listener
        .local_addr()
        .map_err(io_err("read the free port"))?
        .port();
    Ok(port)
}

/// Whether the server log shows it could not bind its TCP port.
fn is_port_conflict(log: &str) -> bool {
    log.contains("Address already in use") || log.contains("could not create any TCP/IP sockets")
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let skip = lines.len().saturating_sub(n);
    lines.into_iter().skip(skip).collect::<Vec<_>>().join("\n")
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |m| m.len())
}

/// Reads a log from `offset` on; a missing or unreadable log reads as empty
/// because it only ever decorates an error that is already being reported.
fn read_from(path: &Path, offset: u64) -> String {
    let mut bytes = Vec::new();
    let read = fs::File::open(path).and_then(|mut file| {
        file.seek(SeekFrom::Start(offset))?;
        file.read_to_end(&mut bytes)
    });
    match read {
        Ok(_) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(_) => String::new(),
    }
}

fn stderr_text(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let trimmed = stderr.trim();
    if trimmed.is_empty() {
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// The watchdog: waits for `parent` to disappear, then stops the server hard
/// and deletes the temp dir. HUP and INT are ignored so closing or Ctrl-C in
/// the terminal cannot kill it before it has cleaned up.
fn watchdog_script(parent: u32, stop_line: &[u8], temp_dir: &Path) -> Vec<u8> {
    let mut script = Vec::new();
    script.extend_from_slice(b"trap '' HUP INT\n");
    script.extend_from_slice(
        format!("while kill -0 {parent} 2>/dev/null; do sleep 1; done\n").as_bytes(),
    );
    script.extend_from_slice(stop_line);
    script.extend_from_slice(b" >/dev/null 2>&1\nrm -rf -- ");
    script.extend(shell_quote(temp_dir.as_os_str().as_bytes()));
    script.push(b'\n');
    script
}

/// A PostgreSQL server in a temp dir that lives as long as this value (or,
/// when leaked into a static, as long as this process).
pub struct ThrowawayPostgres {
    binaries: PgBinaries,
    runner: Runner,
    temp_dir: PathBuf,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    log_path: PathBuf,
    port: u16,
    superuser: String,
    superuser_password: String,
    watchdog: Option<Child>,
    stopped: bool,
}

// Hand-written so the password never reaches a log line or a test failure.
impl fmt::Debug for ThrowawayPostgres {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThrowawayPostgres")
            .field("bindir", &self.binaries.bindir)
            .field("temp_dir", &self.temp_dir)
            .field("port", &self.port)
            .field("superuser", &self.superuser)
            .field("stopped", &self.stopped)
            .finish_non_exhaustive()
    }
}

impl ThrowawayPostgres {
    /// Finds the binaries, runs initdb, starts the server and waits until it
    /// accepts connections. Anything created is removed again on error.
    ///
    /// # Errors
    ///
    /// Invalid options, missing binaries or privilege-dropping tools, and
    /// failures of initdb or of the server start, each with a hint to fix it.
    pub fn start(opts: PostgresOptions) -> Result<Self, TestbedError> {
        validate_options(&opts)?;
        // Catch bad settings before spending seconds on initdb.
        render_conf(1, Path::new("/"), &opts.settings)?;
        let binaries = PgBinaries::discover()?;
        let user = if running_as_root() {
            Some(Unprivileged::find()?)
        } else {
            None
        };
        let temp_dir = create_temp_dir(&std::env::temp_dir())?;
        let mut pg = Self {
            binaries,
            runner: Runner {
                user,
                cwd: temp_dir.clone(),
            },
            data_dir: temp_dir.join("data"),
            socket_dir: temp_dir.join("sock"),
            log_path: temp_dir.join("postgres.log"),
            temp_dir,
            port: 0,
            superuser: opts.superuser,
            superuser_password: opts.superuser_password,
            watchdog: None,
            stopped: false,
        };
        // From here on an early return drops `pg`, and stop() cleans up.
        pg.prepare_dirs()?;
        pg.watchdog = Some(pg.spawn_watchdog()?);
        pg.initdb()?;
        pg.include_conf()?;
        pg.start_server(opts.port, &opts.settings)?;
        tracing::info!(
            port = pg.port,
            data_dir = %pg.data_dir.display(),
            "throwaway PostgreSQL started"
        );
        Ok(pg)
    }

    /// The TCP host the server listens on: always "127.0.0.1".
    pub fn host(&self) -> &str {
        HOST
    }

    /// The TCP port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The unix socket directory (inside the temp dir). Local connections
    /// through it are trusted without a password.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The data directory (inside the temp dir).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server log, worth reading when a test fails oddly.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The database superuser's name.
    pub fn superuser(&self) -> &str {
        &self.superuser
    }

    /// The superuser's password, required (SCRAM) on TCP connections.
    pub fn superuser_password(&self) -> &str {
        &self.superuser_password
    }

    /// Runs SQL as the superuser through psql over the unix socket
    /// (`-X -v ON_ERROR_STOP=1 -q -At`) and returns its stdout unchanged,
    /// newline included. Multiple statements and psql meta-commands work; the
    /// first error stops the script and is returned with psql's stderr.
    ///
    /// # Errors
    ///
    /// [`TestbedError::Psql`] when psql fails (bad SQL, unknown database),
    /// [`TestbedError::Spawn`] when psql cannot be run.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, TestbedError> {
        let psql = self.binaries.tool("psql");
        let conninfo = format!(
            "host={} port={} user={} dbname={}",
            conninfo_quote(&self.socket_dir.to_string_lossy()),
            self.port,
            conninfo_quote(&self.superuser),
            conninfo_quote(database)
        );
        let args: [&OsStr; 7] = [
            "-X".as_ref(),
            "-v".as_ref(),
            "ON_ERROR_STOP=1".as_ref(),
            "-q".as_ref(),
            "-At".as_ref(),
            "-d".as_ref(),
            conninfo.as_ref(),
        ];
        let mut cmd = self.runner.command(&psql, &args);
        // Without it psql derives the encoding from the locale, which is
        // often C (SQL_ASCII) in containers.
        cmd.env("PGCLIENTENCODING", "UTF8")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| TestbedError::Spawn {
            program: psql.display().to_string(),
            source,
        })?;
        // Feed stdin from another thread: psql may fill its stdout pipe before
        // it has read all of a large script, and we only drain stdout below.
        let writer = child.stdin.take().map(|mut stdin| {
            let sql = sql.to_owned();
            std::thread::spawn(move || stdin.write_all(sql.as_bytes()))
        });
        let out = child.wait_with_output().map_err(io_err("wait for psql"))?;
        let written = match writer {
            Some(handle) => handle
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("stdin writer thread panicked"))),
            None => Ok(()),
        };
        if !out.status.success() {
            // A broken pipe on stdin is just psql stopping at the error.
            return Err(TestbedError::Psql {
                database: database.to_owned(),
                status: out.status,
                stderr: stderr_text(&out),
            });
        }
        written.map_err(io_err("write SQL to psql"))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Stops the server (`pg_ctl stop -m fast`), ends the watchdog and removes
    /// the temp dir. Safe to call more than once; failures are logged, not
    /// returned, because there is nothing a caller could do about them.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        // A running server always has a pid file; without one (initdb or the
        // start failed) pg_ctl would only fail noisily. A start that timed out
        // may still leave a server running, which this catches too.
        if self.data_dir.join("postmaster.pid").exists() {
            let pg_ctl = self.binaries.tool("pg_ctl");
            let stopped_fast = self.pg_ctl_stop(&pg_ctl, "fast");
            if !stopped_fast {
                self.pg_ctl_stop(&pg_ctl, "immediate");
            }
        }
        // The watchdog goes only after the server, so a kill of this process
        // in between still leaves someone to clean up.
        if let Some(mut watchdog) = self.watchdog.take() {
            if let Err(e) = watchdog.kill().and_then(|()| watchdog.wait().map(drop)) {
                tracing::debug!(error = %e, "could not end the testbed watchdog");
            }
        }
        match fs::remove_dir_all(&self.temp_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(
                dir = %self.temp_dir.display(),
                error = %e,
                "could not remove the throwaway PostgreSQL temp dir"
            ),
        }
    }

    fn pg_ctl_stop(&self, pg_ctl: &Path, mode: &str) -> bool {
        let args: [&OsStr; 9] = [
            "-D".as_ref(),
            self.data_dir.as_os_str(),
            "stop".as_ref(),
            "-m".as_ref(),
            mode.as_ref(),
            "-w".as_ref(),
            "-t".as_ref(),
            PG_CTL_TIMEOUT_SECS.as_ref(),
            "-s".as_ref(),
        ];
        match self.runner.run(pg_ctl, &args) {
            Ok(out) if out.status.success() => true,
            Ok(out) => {
                tracing::warn!(mode, stderr = %stderr_text(&out), "pg_ctl stop failed");
                false
            }
            Err(e) => {
                tracing::warn!(mode, error = %e, "pg_ctl stop failed");
                false
            }
        }
    }

    /// Hands the temp dir to the server user, creates the socket dir and
    /// checks the server user can reach both.
    fn prepare_dirs(&self) -> Result<(), TestbedError> {
        self.runner.chown(&self.temp_dir)?;
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&self.socket_dir)
            .map_err(io_err(format!(
                "create socket dir {}",
                self.socket_dir.display()
            )))?;
        self.runner.chown(&self.socket_dir)?;
        let socket = self.socket_dir.join(".s.PGSQL.65535");
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(TestbedError::SocketPathTooLong { path: socket });
        }
        if let Some(user) = &self.runner.user {
            // Asking the user's own shell to cd there checks every parent's
            // permissions exactly, supplementary groups and ACLs included.
            let args: [&OsStr; 4] = [
                "-c".as_ref(),
                "cd \"$1\"".as_ref(),
                "sh".as_ref(),
                self.temp_dir.as_os_str(),
            ];
            let out = self.runner.run(Path::new("/bin/sh"), &args)?;
            if !out.status.success() {
                return Err(TestbedError::NotTraversable {
                    path: self.temp_dir.clone(),
                    user: user.name.clone(),
                });
            }
        }
        Ok(())
    }

    fn spawn_watchdog(&self) -> Result<Child, TestbedError> {
        let stop_args: [&OsStr; 8] = [
            "-D".as_ref(),
            self.data_dir.as_os_str(),
            "stop".as_ref(),
            "-m".as_ref(),
            "immediate".as_ref(),
            "-w".as_ref(),
            "-t".as_ref(),
            PG_CTL_TIMEOUT_SECS.as_ref(),
        ];
        let stop_line = self
            .runner
            .shell_line(&self.binaries.tool("pg_ctl"), &stop_args);
        let script = watchdog_script(std::process::id(), &stop_line, &self.temp_dir);
        Command::new("/bin/sh")
            .arg("-c")
            .arg(OsString::from_vec(script))
            .current_dir("/")
            // Inherited pipes would make `cargo test` wait for the watchdog.
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: Ctrl-C in the terminal signals the test
            // process group, and the watchdog must outlive that to clean up.
            .process_group(0)
            .spawn()
            .map_err(|source| TestbedError::Spawn {
                program: "/bin/sh (testbed watchdog)".to_owned(),
                source,
            })
    }

    fn initdb(&self) -> Result<(), TestbedError> {
        let pwfile = self.temp_dir.join("pwfile");
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&pwfile)
            .map_err(io_err(format!("create {}", pwfile.display())))?;
        writeln!(file, "{}", self.superuser_password)
            .map_err(io_err(format!("write {}", pwfile.display())))?;
        drop(file);
        self.runner.chown(&pwfile)?;

        let result = self.run_initdb(&pwfile, "--locale=C.UTF-8").or_else(|err| {
            // Older or minimal systems lack the C.UTF-8 locale; the plain C
            // locale works everywhere and still allows UTF8 encoding.
            match &err {
                TestbedError::Initdb { stderr, .. } if stderr.contains("locale") => {
                    tracing::debug!(%stderr, "initdb rejected C.UTF-8, retrying with --no-locale");
                    if self.data_dir.exists() {
                        fs::remove_dir_all(&self.data_dir).map_err(io_err(format!(
                            "remove the failed data dir {}",
                            self.data_dir.display()
                        )))?;
                    }
                    self.run_initdb(&pwfile, "--no-locale")
                }
                _ => Err(err),
            }
        });
        // The file holds the password in clear; it has done its job.
        if let Err(e) = fs::remove_file(&pwfile) {
            tracing::debug!(error = %e, "could not remove the initdb password file");
        }
        result
    }

    fn run_initdb(&self, pwfile: &Path, locale_arg: &str) -> Result<(), TestbedError> {
        let mut pwfile_arg = OsString::from("--pwfile=");
        pwfile_arg.push(pwfile);
        let args: [&OsStr; 11] = [
            "-D".as_ref(),
            self.data_dir.as_os_str(),
            "-U".as_ref(),
            self.superuser.as_ref(),
            &pwfile_arg,
            "--auth-local=trust".as_ref(),
            "--auth-host=scram-sha-256".as_ref(),
            "-E".as_ref(),
            "UTF8".as_ref(),
            locale_arg.as_ref(),
            // No fsync: the data is thrown away anyway, and it saves seconds.
            "-N".as_ref(),
        ];
        let out = self.runner.run(&self.binaries.tool("initdb"), &args)?;
        if out.status.success() {
            Ok(())
        } else {
            Err(TestbedError::Initdb {
                status: out.status,
                stderr: stderr_text(&out),
            })
        }
    }

    /// Points postgresql.conf at our settings file, which each start attempt
    /// rewrites with its port.
    fn include_conf(&self) -> Result<(), TestbedError> {
        let conf = self.data_dir.join("postgresql.conf");
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(&conf)
            .map_err(io_err(format!("open {}", conf.display())))?;
        file.write_all(b"\n# Added by pgwarden's testbed.\ninclude 'pgwarden.conf'\n")
            .map_err(io_err(format!("append to {}", conf.display())))
    }

    fn write_conf(&self, port: u16, settings: &[(String, String)]) -> Result<(), TestbedError> {
        let path = self.data_dir.join("pgwarden.conf");
        fs::write(&path, render_conf(port, &self.socket_dir, settings)?)
            .map_err(io_err(format!("write {}", path.display())))?;
        self.runner.chown(&path)
    }

    fn start_server(
        &mut self,
        fixed_port: Option<u16>,
        settings: &[(String, String)],
    ) -> Result<(), TestbedError> {
        let pg_ctl = self.binaries.tool("pg_ctl");
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = match fixed_port {
                Some(port) => port,
                None => free_port()?,
            };
            self.write_conf(port, settings)?;
            let log_offset = file_len(&self.log_path);
            let args: [&OsStr; 8] = [
                "-D".as_ref(),
                self.data_dir.as_os_str(),
                "-l".as_ref(),
                self.log_path.as_os_str(),
                "-w".as_ref(),
                "-t".as_ref(),
                PG_CTL_TIMEOUT_SECS.as_ref(),
                "start".as_ref(),
            ];
            let out = self.runner.run(&pg_ctl, &args)?;
            if out.status.success() {
                self.port = port;
                return Ok(());
            }
            let conflict =
                fixed_port.is_none() && is_port_conflict(&read_from(&self.log_path, log_offset));
            if conflict && attempt < MAX_START_ATTEMPTS {
                tracing::warn!(
                    port,
                    attempt,
                    "port taken before PostgreSQL bound it; retrying"
                );
                continue;
            }
            return Err(TestbedError::Start {
                attempts: attempt,
                reason: stderr_text(&out),
                log: self.log_path.clone(),
                log_tail: last_lines(&read_from(&self.log_path, 0), LOG_TAIL_LINES),
            });
        }
    }
}

impl Drop for ThrowawayPostgres {
    fn drop(&mut self) {
        self.stop();
    }
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

    #[test]
    fn finds_users_in_passwd() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n\
                      nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
                      postgres:x:101:104:PostgreSQL administrator,,,:/var/lib/postgresql:/bin/bash\n\
                      broken:x:notanumber:1::/:/bin/sh\n";
        assert_eq!(passwd_ids(passwd, "postgres"), Some((101, 104)));
        assert_eq!(passwd_ids(passwd, "nobody"), Some((65534, 65534)));
        assert_eq!(passwd_ids(passwd, "post"), None);
        assert_eq!(passwd_ids(passwd, "broken"), None);
        assert_eq!(passwd_ids("", "root"), None);
    }

    #[test]
    fn shell_quotes_words() {
        assert_eq!(shell_quote(b"/usr/bin/pg_ctl"), b"/usr/bin/pg_ctl".to_vec());
        assert_eq!(shell_quote(b""), b"''".to_vec());
        assert_eq!(shell_quote(b"a b"), b"'a b'".to_vec());
        assert_eq!(shell_quote(b"it's"), b"'it'\\''s'".to_vec());
        assert_eq!(shell_quote(b"$HOME;rm"), b"'$HOME;rm'".to_vec());
        let line = shell_join([OsStr::new("echo"), OsStr::new("a'b c")]);
        let out = Command::new("/bin/sh")
            .arg("-c")
            .arg(OsString::from_vec(line))
            .output()
            .unwrap();
        assert_eq!(out.stdout, b"a'b c\n");
    }

    #[test]
    fn runner_wraps_commands_for_the_server_user() {
        let user = |via| Unprivileged {
            name: "postgres".to_owned(),
            uid: 101,
            gid: 104,
            via,
        };
        let args = [OsStr::new("-D"), OsStr::new("/tmp/x y")];
        let direct = Runner {
            user: None,
            cwd: PathBuf::from("/tmp"),
        };
        assert_eq!(
            direct.shell_line(Path::new("/bin/pg_ctl"), &args),
            b"/bin/pg_ctl -D '/tmp/x y'".to_vec()
        );
        let runuser = Runner {
            user: Some(user(PrivDrop::Runuser(PathBuf::from("/usr/sbin/runuser")))),
            cwd: PathBuf::from("/tmp"),
        };
        assert_eq!(
            runuser.shell_line(Path::new("/bin/pg_ctl"), &args),
            b"/usr/sbin/runuser -u postgres -- /bin/pg_ctl -D '/tmp/x y'".to_vec()
        );
        let su = Runner {
            user: Some(user(PrivDrop::Su(PathBuf::from("/bin/su")))),
            cwd: PathBuf::from("/tmp"),
        };
        assert_eq!(
            su.shell_line(Path::new("/bin/pg_ctl"), &args),
            b"/bin/su postgres -s /bin/sh -c '/bin/pg_ctl -D '\\''/tmp/x y'\\'''".to_vec()
        );
    }

    #[test]
    fn renders_conf_with_quoted_settings() {
        let extra = vec![
            ("max_connections".to_owned(), "300".to_owned()),
            ("log_line_prefix".to_owned(), "%m [%p] it's".to_owned()),
        ];
        let conf = render_conf(5433, Path::new("/tmp/pg/sock"), &extra).unwrap();
        assert!(conf.contains("\nport = 5433\n"));
        assert!(conf.contains("\nlisten_addresses = '127.0.0.1'\n"));
        assert!(conf.contains("\nunix_socket_directories = '/tmp/pg/sock'\n"));
        assert!(conf.contains("\npassword_encryption = 'scram-sha-256'\n"));
        assert!(conf.contains("\nfsync = off\n"));
        assert!(conf.contains("\nmax_connections = '300'\n"));
        assert!(conf.contains("\nlog_line_prefix = '%m [%p] it''s'\n"));
        // Extra settings come after the defaults, so they win.
        let default_pos = conf.find("max_connections = 200").unwrap();
        let extra_pos = conf.find("max_connections = '300'").unwrap();
        assert!(default_pos < extra_pos);
    }

    #[test]
    fn rejects_unsafe_or_managed_settings() {
        let one = |name: &str, value: &str| {
            render_conf(
                5432,
                Path::new("/tmp"),
                &[(name.to_owned(), value.to_owned())],
            )
        };
        assert!(one("work_mem", "64MB").is_ok());
        assert!(one("work_mem", "1\nport = 1").is_err());
        assert!(one("work mem", "64MB").is_err());
        assert!(one("", "x").is_err());
        assert!(one("PORT", "5555").is_err());
        assert!(one("unix_socket_directories", "/tmp").is_err());
    }

    #[test]
    fn validates_options() {
        assert!(validate_options(&PostgresOptions::default()).is_ok());
        let bad_password = PostgresOptions {
            superuser_password: "a\nb".to_owned(),
            ..PostgresOptions::default()
        };
        assert!(validate_options(&bad_password).is_err());
        let port_zero = PostgresOptions {
            port: Some(0),
            ..PostgresOptions::default()
        };
        assert!(validate_options(&port_zero).is_err());
        let no_user = PostgresOptions {
            superuser: String::new(),
            ..PostgresOptions::default()
        };
        assert!(validate_options(&no_user).is_err());
    }

    #[test]
    fn default_options_have_a_fresh_password_that_debug_hides() {
        let a = PostgresOptions::default();
        let b = PostgresOptions::default();
        assert_eq!(a.superuser, "postgres");
        assert_eq!(a.superuser_password.len(), 24);
        assert_ne!(a.superuser_password, b.superuser_password);
        assert!(!format!("{a:?}").contains(&a.superuser_password));
    }

    #[test]
    fn quotes_conninfo_values() {
        assert_eq!(conninfo_quote("db"), "'db'");
        assert_eq!(conninfo_quote("o'k\\"), "'o\\'k\\\\'");
    }

    #[test]
    fn recognises_port_conflicts() {
        let log = "LOG:  could not bind IPv4 address \"127.0.0.1\": Address already in use\n\
                   HINT:  Is another postmaster already running on port 5432?\n\
                   WARNING:  could not create listen socket for \"127.0.0.1\"\n\
                   FATAL:  could not create any TCP/IP sockets\n";
        assert!(is_port_conflict(log));
        assert!(!is_port_conflict(
            "FATAL:  data directory has invalid permissions"
        ));
    }

    #[test]
    fn keeps_the_last_lines() {
        assert_eq!(last_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(last_lines("a", 5), "a");
        assert_eq!(last_lines("", 5), "");
    }

    #[test]
    fn watchdog_script_waits_then_cleans_up() {
        let script = watchdog_script(42, b"/bin/pg_ctl stop", Path::new("/tmp/pg dir"));
        let script = String::from_utf8(script).unwrap();
        assert!(script.contains("while kill -0 42 2>/dev/null; do sleep 1; done\n"));
        assert!(script.contains("/bin/pg_ctl stop >/dev/null 2>&1\n"));
        assert!(script.ends_with("rm -rf -- '/tmp/pg dir'\n"));
    }

    fn luhn_valid(digits: &str) -> bool {
        let sum: u32 = digits
            .bytes()
            .rev()
            .enumerate()
            .map(|(i, b)| {
                let d = u32::from(b - b'0');
                if i % 2 == 1 {
                    let doubled = d * 2;
                    if doubled > 9 {
                        doubled - 9
                    } else {
                        doubled
                    }
                } else {
                    d
                }
            })
            .sum();
        sum % 10 == 0
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

    #[test]
    fn throwaway_postgres_is_shareable_from_a_static() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<ThrowawayPostgres>();
    }

    /// Connects over TCP with a password, as pgwarden's upstream leg will.
    fn psql_tcp(pg: &ThrowawayPostgres, password: &str) -> Output {
        let bins = PgBinaries::discover().unwrap();
        let mut cmd = pg.runner.command(
            &bins.tool("psql"),
            &[
                OsStr::new("-X"),
                OsStr::new("-At"),
                OsStr::new("-h"),
                OsStr::new(pg.host()),
                OsStr::new("-p"),
                OsStr::new(&pg.port().to_string()),
                OsStr::new("-U"),
                OsStr::new(pg.superuser()),
                OsStr::new("-d"),
                OsStr::new("postgres"),
                OsStr::new("-c"),
                OsStr::new("select current_setting('password_encryption')"),
            ],
        );
        cmd.env("PGPASSWORD", password).output().unwrap()
    }

    #[test]
    fn starts_queries_and_cleans_up_a_real_server() {
        let mut pg = ThrowawayPostgres::start(PostgresOptions {
            settings: vec![("work_mem".to_owned(), "8MB".to_owned())],
            ..PostgresOptions::default()
        })
        .unwrap();
        let temp_dir = pg.temp_dir.clone();
        assert!(pg.data_dir().starts_with(&temp_dir));
        assert!(pg.socket_dir().starts_with(&temp_dir));
        assert!(!temp_dir.join("pwfile").exists());
        assert_eq!(pg.host(), "127.0.0.1");
        assert_ne!(pg.port(), 0);

        assert_eq!(pg.psql("postgres", "select 1").unwrap(), "1\n");
        assert_eq!(pg.psql("postgres", "show work_mem").unwrap().trim(), "8MB");
        let err = pg.psql("postgres", "select nope").unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");

        pg.psql("postgres", SAMPLE_SCHEMA).unwrap();
        let counts = pg
            .psql(
                "postgres",
                "select (select count(*) from customers) || ' ' || (select count(*) from orders)",
            )
            .unwrap();
        assert_eq!(counts.trim(), "20 40");
        let name = pg
            .psql("postgres", "select full_name from customers where id = 7")
            .unwrap();
        assert_eq!(name.trim(), "George O'Brien");
        let accented = pg
            .psql("postgres", "select full_name from customers where id = 12")
            .unwrap();
        assert_eq!(accented.trim(), "Lucía Fernández");

        let ok = psql_tcp(&pg, pg.superuser_password());
        assert!(
            ok.status.success(),
            "{}",
            String::from_utf8_lossy(&ok.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "scram-sha-256");
        let wrong = psql_tcp(&pg, "wrong password");
        assert!(!wrong.status.success());
        assert!(String::from_utf8_lossy(&wrong.stderr).contains("password authentication failed"));

        pg.stop();
        assert!(!temp_dir.exists());
        pg.stop();
    }

    #[test]
    fn a_taken_port_fails_with_the_log_tail_and_cleans_up() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let err = ThrowawayPostgres::start(PostgresOptions {
            port: Some(port),
            ..PostgresOptions::default()
        })
        .unwrap_err();
        let message = err.to_string();
        assert!(
            matches!(err, TestbedError::Start { attempts: 1, .. }),
            "{message}"
        );
        assert!(message.contains("Address already in use"), "{message}");
        if let TestbedError::Start { log, .. } = &err {
            let temp_dir = log.parent().unwrap();
            assert!(!temp_dir.exists(), "{} left behind", temp_dir.display());
        }
        drop(listener);
    }
}
