//! [`ThrowawayPostgres`]: initdb, start, psql, stop, and the watchdog that
//! cleans up after a process that never dropped its server.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use super::binaries::PgBinaries;
use super::conf::{render_conf, validate_options};
use super::runner::{running_as_root, shell_quote, Runner, Unprivileged};
use super::{io_err, random_token, PostgresOptions, TestbedError, HOST};

/// One first try plus three retries when a picked port was taken meanwhile.
const MAX_START_ATTEMPTS: u32 = 4;
/// Seconds `pg_ctl` waits for start and stop; a cold start on a loaded CI box
/// can take tens of seconds.
const PG_CTL_TIMEOUT_SECS: &str = "60";
/// Enough of postgres.log to show the FATAL line and what led to it.
const LOG_TAIL_LINES: usize = 40;
/// `sockaddr_un.sun_path` holds 108 bytes on Linux, including the final NUL.
const MAX_SOCKET_PATH: usize = 107;

/// Quotes a libpq connection-string value. psql treats any `-d` argument with
/// an `=` as a connection string, so even the database name goes through here.
fn conninfo_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testbed::SAMPLE_SCHEMA;

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
