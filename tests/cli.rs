//! The `pgwarden` binary: help and version, `hash-password` (and verifiers from PostgreSQL
//! itself), `check-config` errors with key and line, `serve` and its signals, and the demo.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use common::{harness, sqlstate, Proxy, ProxyOptions, ALICE_PASSWORD};

const BIN: &str = env!("CARGO_BIN_EXE_pgwarden");

/// The binary with a clean environment for the variables it reads.
fn pgwarden() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_remove("PGWARDEN_CONFIG")
        .env_remove("PGWARDEN_LOG_FORMAT")
        .stdin(Stdio::null());
    cmd
}

fn run(args: &[&str]) -> Output {
    pgwarden().args(args).output().expect("run pgwarden")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn describe(output: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    )
}

/// 1-based line of the first occurrence of `needle` in `text`.
fn line_of(text: &str, needle: &str) -> usize {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("`{needle}` not in:\n{text}"));
    text[..at].matches('\n').count() + 1
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The default test config, listening on `port`.
fn config_on_port(options: &ProxyOptions, port: u16) -> String {
    let text = common::config_text(options);
    assert!(text.contains("listen = \"127.0.0.1:0\""), "{text}");
    text.replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
    )
}

// ---------------------------------------------------------------------------------------------
// help and version

#[test]
fn help_for_every_command_exits_zero_and_names_the_essentials() {
    let cases: [(&[&str], &[&str]); 10] = [
        (
            &["--help"],
            &[
                "serve",
                "check-config",
                "hash-password",
                "demo",
                "--log-format",
                "--version",
            ],
        ),
        (&["-h"], &["serve", "check-config", "hash-password", "demo"]),
        (
            &["serve", "--help"],
            &[
                "--config",
                "SIGTERM",
                "SIGINT",
                "SIGHUP",
                "shutdown_grace",
                "64",
                "PGWARDEN_CONFIG",
            ],
        ),
        (&["check-config", "--help"], &["--config", "64", "line"]),
        (
            &["hash-password", "--help"],
            &["SCRAM-SHA-256", "pg_authid", "stdin"],
        ),
        (
            &["demo", "--help"],
            &["--listen", "--smoke-test", "127.0.0.1:6432"],
        ),
        (
            &["login", "--help"],
            &["--issuer", "--client-id", "device", "tokens.json", "--ca"],
        ),
        (
            &["token", "--help"],
            &["PGPASSWORD", "--access", "--issuer"],
        ),
        (&["psql", "--help"], &["psql", "--"]),
        (
            &["approvals", "--help"],
            &[
                "list",
                "show",
                "approve",
                "deny",
                "--admin",
                "pgwarden login",
            ],
        ),
    ];
    for (args, words) in cases {
        let output = run(args);
        assert!(
            output.status.success(),
            "pgwarden {}: {}",
            args.join(" "),
            describe(&output)
        );
        let stdout = text(&output.stdout);
        for word in words {
            assert!(
                stdout.contains(word),
                "pgwarden {} does not mention {word}:\n{stdout}",
                args.join(" ")
            );
        }
    }
}

#[test]
fn usage_errors_exit_two() {
    for args in [&["frobnicate"][..], &["serve"], &[]] {
        let output = run(args);
        assert_eq!(
            output.status.code(),
            Some(2),
            "pgwarden {}: {}",
            args.join(" "),
            describe(&output)
        );
        assert!(
            text(&output.stderr).contains("Usage"),
            "{}",
            describe(&output)
        );
    }
    // `serve` without a config names the missing option.
    assert!(text(&run(&["serve"]).stderr).contains("--config"));
}

#[test]
fn version_is_printed() {
    // With the git revision it was built from: this checkout's HEAD.
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(
            || "unknown".to_owned(),
            |o| text(&o.stdout).trim().to_owned(),
        );
    assert_eq!(
        pgwarden::VERSION,
        format!("{} ({head})", env!("CARGO_PKG_VERSION"))
    );
    let expected = format!("pgwarden {}\n", pgwarden::VERSION);
    for args in [&["--version"][..], &["-V"]] {
        let output = run(args);
        assert!(output.status.success(), "{}", describe(&output));
        assert_eq!(text(&output.stdout), expected);
    }
    // Subcommands have it too (clap names them `pgwarden-serve`).
    let output = run(&["serve", "--version"]);
    assert!(output.status.success(), "{}", describe(&output));
    assert_eq!(
        text(&output.stdout),
        format!("pgwarden-serve {}\n", pgwarden::VERSION)
    );
}

// ---------------------------------------------------------------------------------------------
// hash-password and verifiers

/// `pgwarden hash-password` with `stdin` piped in.
async fn hash_password(stdin: &[u8]) -> Output {
    let mut child = tokio::process::Command::new(BIN)
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn hash-password");
    let mut input = child.stdin.take().expect("stdin");
    tokio::io::AsyncWriteExt::write_all(&mut input, stdin)
        .await
        .expect("write password");
    drop(input);
    tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("hash-password did not finish")
        .expect("wait for hash-password")
}

/// Extra config: a local user `name` with `verifier`, allowed into `app` as `app_rw`.
fn local_user(name: &str, verifier: &str) -> ProxyOptions {
    ProxyOptions {
        extra: format!(
            "[[auth.local]]\nname = \"{name}\"\nscram = \"{verifier}\"\n\n\
             [[access]]\nusers = [\"{name}\"]\ndatabases = [\"app\"]\nroles = [\"app_rw\"]\n"
        ),
        ..Default::default()
    }
}

/// Log in as `user` through `proxy`: the right password works (as app_rw), a wrong one is 28P01.
async fn assert_login(proxy: &Proxy, user: &str, password: &str) {
    let client = proxy
        .try_connect(&proxy.conninfo(user, password, "sslmode=disable"))
        .await
        .unwrap_or_else(|e| panic!("{user} cannot log in with the right password: {e}"));
    let row = client
        .query_one("SELECT current_user::text, count(*) FROM items", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "app_rw");
    assert_eq!(row.get::<_, i64>(1), 10);
    let err = proxy
        .try_connect(&proxy.conninfo(user, &format!("{password}x"), "sslmode=disable"))
        .await
        .err()
        .unwrap_or_else(|| panic!("{user} logged in with a wrong password"));
    assert_eq!(sqlstate(&err).as_deref(), Some("28P01"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_password_output_works_as_a_local_user_verifier() {
    let output = hash_password(b"carol-secret\n").await;
    assert!(output.status.success(), "{}", describe(&output));
    let stdout = text(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "expected exactly one line:\n{stdout}");
    let verifier = lines[0];
    assert!(verifier.starts_with("SCRAM-SHA-256$4096:"), "{verifier}");
    // The salt is random: the same password never gives the same verifier twice.
    let again = hash_password(b"carol-secret\r\n").await;
    assert!(again.status.success(), "{}", describe(&again));
    let again = text(&again.stdout);
    assert_ne!(again.trim(), verifier);

    let proxy = Proxy::start(local_user("carol", verifier)).await;
    assert_login(&proxy, "carol", "carol-secret").await;
    // The CRLF-terminated input hashed the same password (without the \r).
    let proxy = Proxy::start(local_user("carol", again.trim())).await;
    assert_login(&proxy, "carol", "carol-secret").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_password_refuses_an_empty_password() {
    for input in [&b""[..], b"\n"] {
        let output = hash_password(input).await;
        assert!(!output.status.success(), "{}", describe(&output));
        assert!(output.stdout.is_empty(), "{}", describe(&output));
        assert!(
            text(&output.stderr).contains("empty"),
            "{}",
            describe(&output)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verifier_from_pg_authid_works_as_a_local_user_verifier() {
    let pg = &harness().pg;
    pg.psql(
        "postgres",
        "CREATE ROLE pgw_cli_from_pg PASSWORD 'from-pg-pw';",
    )
    .expect("create role");
    let verifier = pg
        .psql(
            "postgres",
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'pgw_cli_from_pg';",
        )
        .expect("read rolpassword");
    let verifier = verifier.trim();
    assert!(verifier.starts_with("SCRAM-SHA-256$4096:"), "{verifier}");
    let proxy = Proxy::start(local_user("dave", verifier)).await;
    assert_login(&proxy, "dave", "from-pg-pw").await;
}

// ---------------------------------------------------------------------------------------------
// check-config

fn check_config(path: &Path) -> Output {
    run(&["check-config", "--config", path.to_str().unwrap()])
}

#[test]
fn check_config_accepts_the_test_config() {
    let path = common::write_file("valid.toml", &common::config_text(&Default::default()));
    let output = check_config(&path);
    assert!(output.status.success(), "{}", describe(&output));
    assert!(
        text(&output.stdout).contains("configuration is valid"),
        "{}",
        describe(&output)
    );
    // The inline app_ro password is allowed, with a warning.
    assert!(
        text(&output.stderr).contains("upstream.roles[1].password"),
        "{}",
        describe(&output)
    );
    // Also through the environment variable.
    let output = pgwarden()
        .arg("check-config")
        .env("PGWARDEN_CONFIG", &path)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", describe(&output));
}

/// Run check-config on `config`; assert exit 64 and that stderr contains every one of `needles`.
fn assert_invalid(what: &str, config: &str, needles: &[String]) {
    let path = common::write_file("invalid.toml", config);
    let output = check_config(&path);
    assert_eq!(
        output.status.code(),
        Some(64),
        "{what}: {}\n--- config ---\n{config}",
        describe(&output)
    );
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains(path.to_str().unwrap()),
        "{what}: the file is not named:\n{stderr}"
    );
    for needle in needles {
        assert!(
            stderr.contains(needle.as_str()),
            "{what}: `{needle}` missing from:\n{stderr}\n--- config ---\n{config}"
        );
    }
    assert!(output.stdout.is_empty(), "{what}: {}", describe(&output));
}

#[test]
fn check_config_unknown_key_names_the_key_and_line() {
    let base = common::config_text(&Default::default());
    let config = base.replacen(
        "[server]\n",
        "[server]\nlisten_adress = \"127.0.0.1:1\"\n",
        1,
    );
    let line = line_of(&config, "listen_adress");
    assert_invalid(
        "unknown key",
        &config,
        &[
            format!(":{line}: `server.listen_adress`: unknown field"),
            "expected one of".into(),
        ],
    );
    // A value of the wrong type: its key, its line, and the type in words, on one line.
    let config = base.replacen("[server]\n", "[server]\nmax_connections = \"many\"\n", 1);
    let line = line_of(&config, "max_connections");
    assert_invalid(
        "wrong type",
        &config,
        &[format!(
            ":{line}: `server.max_connections`: invalid type: string \"many\", expected a whole number"
        )],
    );
}

#[test]
fn check_config_zero_max_connections_names_the_key_and_line() {
    let config = common::config_text(&ProxyOptions {
        server_extra: "max_connections = 0".into(),
        ..Default::default()
    });
    let line = line_of(&config, "max_connections = 0");
    assert_invalid(
        "max_connections = 0",
        &config,
        &["server.max_connections".into(), format!(":{line}:")],
    );
}

#[test]
fn check_config_access_rule_with_an_unknown_role_names_the_rule() {
    let config = common::config_text(&ProxyOptions {
        extra: "[[access]]\nusers = [\"zed\"]\ndatabases = [\"app\"]\nroles = [\"ghost\"]\n".into(),
        ..Default::default()
    });
    let line = line_of(&config, "roles = [\"ghost\"]");
    assert_invalid(
        "unknown role",
        &config,
        &[
            "access[2].roles".into(),
            format!(":{line}:"),
            "ghost".into(),
            "[[upstream.roles]]".into(),
        ],
    );
}

#[test]
fn check_config_unset_environment_variable_names_the_key() {
    let h = harness();
    let base = common::config_text(&Default::default());
    let inline = format!("password = \"{}\"", h.app_ro_password);
    assert!(base.contains(&inline));
    let config = base.replace(&inline, "password = \"env:SURELY_UNSET_VAR_X\"");
    let line = line_of(&config, "env:SURELY_UNSET_VAR_X");
    assert_invalid(
        "unset variable",
        &config,
        &[
            "upstream.roles[1].password".into(),
            format!(":{line}:"),
            "SURELY_UNSET_VAR_X is not set".into(),
        ],
    );
}

#[test]
fn check_config_other_invalid_values_name_their_key_and_line() {
    let base = common::config_text(&Default::default());
    let cases = [
        (
            "bad listen",
            "listen = \"127.0.0.1:0\"",
            "listen = \"localhost\"",
            "server.listen",
        ),
        (
            "bad verifier",
            "scram = \"SCRAM-SHA-256$",
            "scram = \"SCRAM-SHA-1$",
            "auth.local[0].scram",
        ),
        (
            "bad duration",
            "auth_timeout = \"5s\"",
            "auth_timeout = \"5 fortnights\"",
            "`server.auth_timeout`: `5 fortnights`: unknown unit",
        ),
        (
            "zero auth_timeout",
            "auth_timeout = \"5s\"",
            "auth_timeout = \"0s\"",
            "server.auth_timeout",
        ),
        (
            "missing secret file",
            "password = \"file:",
            "password = \"file:/nonexistent",
            "upstream.roles[0].password",
        ),
        (
            "bad TLS mode",
            "mode = \"optional\"",
            "mode = \"sometimes\"",
            "`server.tls.mode`: unknown variant `sometimes`",
        ),
    ];
    for (what, from, to, key) in cases {
        assert!(
            base.contains(from),
            "{what}: `{from}` not in the base config"
        );
        let config = base.replacen(from, to, 1);
        let line = line_of(&config, to);
        // Validation and TOML errors alike say `file:LINE: `key`: …`.
        assert_invalid(what, &config, &[key.to_owned(), format!(":{line}:")]);
    }
}

#[test]
fn check_config_missing_tls_certificate_is_reported() {
    let h = harness();
    let base = common::config_text(&Default::default());
    let cert = h.certs.server_cert.to_str().unwrap();
    let missing = format!("{cert}.missing");
    let config = base.replace(cert, &missing);
    assert_ne!(config, base);
    let output = check_config(&common::write_file("tls.toml", &config));
    assert_eq!(output.status.code(), Some(64), "{}", describe(&output));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains(&missing) && stderr.contains("certificate"),
        "{stderr}"
    );
    // A key that is not the certificate's: said in words, naming both files.
    let other_key = harness().dir.join("not-the-server-key.pem");
    let pair = rcgen::KeyPair::generate().unwrap();
    std::fs::write(&other_key, pair.serialize_pem()).unwrap();
    let key = h.certs.server_key.to_str().unwrap();
    let config = base.replace(key, other_key.to_str().unwrap());
    assert_ne!(config, base);
    let output = check_config(&common::write_file("tls-key.toml", &config));
    assert_eq!(output.status.code(), Some(64), "{}", describe(&output));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("server.tls.key") && stderr.contains("is not the key of the certificate"),
        "{stderr}"
    );
    assert!(!stderr.contains("KeyMismatch"), "{stderr}");
}

#[test]
fn check_config_missing_file_is_a_readable_error() {
    let path = harness().dir.join("no-such-config.toml");
    let output = check_config(&path);
    assert!(!output.status.success(), "{}", describe(&output));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("cannot read config file"), "{stderr}");
    assert!(stderr.contains(path.to_str().unwrap()), "{stderr}");
    assert!(stderr.contains("No such file"), "{stderr}");
}

// ---------------------------------------------------------------------------------------------
// serve

/// `pgwarden serve` as a child process, killed if the test ends early.
struct Serve {
    child: tokio::process::Child,
    pid: u32,
    config: PathBuf,
    log: PathBuf,
    port: u16,
}

impl Serve {
    fn start(config: &str, port: u16) -> Serve {
        Self::start_with(config, port, &[])
    }

    fn start_with(config: &str, port: u16, args: &[&str]) -> Serve {
        let path = common::write_file("serve.toml", config);
        let log = common::write_file("serve.log", "");
        let log_file = std::fs::File::create(&log).expect("create serve log");
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.args(args)
            .arg("serve")
            .arg("--config")
            .arg(&path)
            .env_remove("PGWARDEN_CONFIG")
            .env_remove("PGWARDEN_LOG_FORMAT")
            .env("RUST_LOG", "pgwarden=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file.try_clone().expect("clone log file")))
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true);
        let child = cmd.spawn().expect("spawn pgwarden serve");
        let pid = child.id().expect("pid");
        Serve {
            child,
            pid,
            config: path,
            log,
            port,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn try_connect(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        self.try_connect_as("alice", ALICE_PASSWORD).await
    }

    async fn try_connect_as(
        &self,
        user: &str,
        password: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let conninfo = format!(
            "host=127.0.0.1 port={} dbname=app user={user} password={password} sslmode=disable",
            self.port
        );
        let (client, connection) =
            tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// Wait until a login through the child succeeds.
    async fn wait_ready(&mut self) -> tokio_postgres::Client {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.try_connect().await {
                Ok(client) => return client,
                Err(e) => {
                    if let Ok(Some(status)) = self.child.try_wait() {
                        panic!(
                            "pgwarden serve exited ({status}) before accepting:\n{}",
                            self.log()
                        );
                    }
                    assert!(
                        Instant::now() < deadline,
                        "pgwarden serve never accepted a login ({e}):\n{}",
                        self.log()
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid.to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} {} failed", self.pid);
    }

    /// Wait until the log contains `needle` (up to 10 s).
    async fn wait_for_log(&mut self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.log().contains(needle) {
            assert!(self.is_running(), "pgwarden exited:\n{}", self.log());
            assert!(
                Instant::now() < deadline,
                "`{needle}` never logged:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Secrets from the harness never appear in the log, even at debug level.
    fn assert_log_has_no_secrets(&self) {
        let h = harness();
        let log = self.log();
        for secret in [
            h.app_rw_password.as_str(),
            h.app_ro_password.as_str(),
            ALICE_PASSWORD,
            h.pg.superuser_password(),
        ] {
            assert!(
                !log.contains(secret),
                "a secret leaked into the log:\n{log}"
            );
        }
    }

    fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.expect("wait for pgwarden"),
            Err(_) => panic!(
                "pgwarden serve did not exit within {limit:?}:\n{}",
                self.log()
            ),
        }
    }
}

/// Wait until the upstream shows `query` as active (it reached PostgreSQL).
async fn wait_until_running(query: &str) {
    let admin = common::direct("postgres").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let row = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE query = $1 AND state = 'active'",
                &[&query],
            )
            .await
            .unwrap();
        if row.get::<_, i64>(0) > 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "`{query}` never started upstream"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The session behind `client` was ended by pgwarden: the next query fails.
async fn assert_closed(what: &str, client: &tokio_postgres::Client) {
    let result =
        tokio::time::timeout(Duration::from_secs(10), client.simple_query("SELECT 1")).await;
    let err = match result {
        Ok(Ok(_)) => panic!("{what}: the session is still open"),
        Ok(Err(e)) => e,
        Err(_) => panic!("{what}: the next query hung"),
    };
    assert!(
        err.is_closed() || sqlstate(&err).as_deref() == Some("57P01"),
        "{what}: unexpected error {err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_sigterm_finishes_running_statements_then_exits_zero() {
    let port = free_port();
    let config = config_on_port(&Default::default(), port)
        .replace("shutdown_grace = \"5s\"", "shutdown_grace = \"8s\"");
    assert!(config.contains("shutdown_grace = \"8s\""));
    let mut serve = Serve::start(&config, port);
    let idle = serve.wait_ready().await;
    let in_transaction = serve.try_connect().await.unwrap();
    in_transaction
        .batch_execute("BEGIN; SELECT 1")
        .await
        .unwrap();
    let sleeper = serve.try_connect().await.unwrap();
    let sleeping = tokio::spawn(async move {
        let result = sleeper
            .simple_query("SELECT pg_sleep(1)")
            .await
            .map(|messages| {
                messages
                    .iter()
                    .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
                    .count()
            });
        (sleeper, result)
    });
    wait_until_running("SELECT pg_sleep(1)").await;

    serve.signal("TERM");
    let signalled = Instant::now();

    // New connections are refused, while the process is still draining.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match serve.try_connect().await {
            Err(_) => break,
            Ok(_) => {
                assert!(
                    Instant::now() < deadline,
                    "still accepting logins after SIGTERM:\n{}",
                    serve.log()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    assert!(
        serve.is_running(),
        "exited although a transaction is open:\n{}",
        serve.log()
    );
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err(),
        "the listener is still open after SIGTERM"
    );

    // The running statement completes normally...
    let (sleeper, result) = sleeping.await.unwrap();
    let rows =
        result.unwrap_or_else(|e| panic!("pg_sleep did not complete: {e:?}\n{}", serve.log()));
    assert_eq!(rows, 1, "pg_sleep did not return its row");
    // ...and then its session, like the idle one, is closed.
    assert_closed("after the running statement", &sleeper).await;
    assert_closed("idle session", &idle).await;

    // The open transaction may still finish within the grace period; then it is closed too.
    let row = in_transaction
        .query_one("SELECT 2::int4", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 2);
    assert!(serve.is_running());
    in_transaction.batch_execute("COMMIT").await.unwrap();
    assert_closed("after commit", &in_transaction).await;

    let status = serve.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "exit status {status}:\n{}", serve.log());
    // No session was left, so it did not wait for the whole grace period.
    assert!(
        signalled.elapsed() < Duration::from_secs(8),
        "took {:?}:\n{}",
        signalled.elapsed(),
        serve.log()
    );
    serve.assert_log_has_no_secrets();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_sigterm_ends_a_lingering_transaction_after_the_grace_period() {
    let port = free_port();
    let config = config_on_port(&Default::default(), port)
        .replace("shutdown_grace = \"5s\"", "shutdown_grace = \"1s\"");
    let mut serve = Serve::start(&config, port);
    let lingering = serve.wait_ready().await;
    lingering.batch_execute("BEGIN; SELECT 1").await.unwrap();
    serve.signal("TERM");
    let status = serve.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "exit status {status}:\n{}", serve.log());
    assert_closed("lingering transaction", &lingering).await;
}

/// `serve --help`: "SIGINT: end sessions now". That must hold during a graceful shutdown too,
/// so an operator can cut a long grace period short (as with PostgreSQL's smart → fast).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_sigint_during_a_graceful_shutdown_ends_it_at_once() {
    let port = free_port();
    let config = config_on_port(&Default::default(), port)
        .replace("shutdown_grace = \"5s\"", "shutdown_grace = \"60s\"");
    let mut serve = Serve::start(&config, port);
    let lingering = serve.wait_ready().await;
    lingering.batch_execute("BEGIN; SELECT 1").await.unwrap();
    serve.signal("TERM");
    // Graceful shutdown is under way once the listener is closed.
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
    {
        assert!(
            Instant::now() < deadline,
            "still listening after SIGTERM:\n{}",
            serve.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(serve.is_running());
    serve.signal("INT");
    let started = Instant::now();
    let exited = tokio::time::timeout(Duration::from_secs(5), serve.child.wait()).await;
    assert!(
        exited.is_ok(),
        "SIGINT during the 60 s grace period of a SIGTERM shutdown was ignored: still running after {:?}:\n{}",
        started.elapsed(),
        serve.log()
    );
    assert_closed("lingering transaction", &lingering).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_sigint_exits_promptly_and_ends_sessions() {
    let port = free_port();
    let mut serve = Serve::start(&config_on_port(&Default::default(), port), port);
    let idle = serve.wait_ready().await;
    let busy = serve.try_connect().await.unwrap();
    let busy_task =
        tokio::spawn(async move { busy.simple_query("SELECT pg_sleep(30)").await.map(|_| ()) });
    wait_until_running("SELECT pg_sleep(30)").await;

    serve.signal("INT");
    let started = Instant::now();
    let status = serve.wait_exit(Duration::from_secs(10)).await;
    let took = started.elapsed();
    assert!(status.success(), "exit status {status}:\n{}", serve.log());
    assert!(
        took < Duration::from_secs(5),
        "SIGINT took {took:?} to exit:\n{}",
        serve.log()
    );
    assert_closed("idle session", &idle).await;
    let busy_result = tokio::time::timeout(Duration::from_secs(5), busy_task)
        .await
        .expect("busy query hung")
        .unwrap();
    let err = busy_result.expect_err("pg_sleep(30) completed although pgwarden exited");
    assert!(
        err.is_closed() || sqlstate(&err).as_deref() == Some("57P01"),
        "{err:?}"
    );

    // The orphaned backend would sleep on; end it.
    let admin = common::direct("postgres").await;
    admin
        .batch_execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)'")
        .await
        .unwrap();
}

/// Poll `attempt` until it returns true (up to 10 s).
async fn eventually<F, Fut>(what: &str, serve: &Serve, mut attempt: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !attempt().await {
        assert!(
            Instant::now() < deadline,
            "{what}: not within 10 s:\n{}",
            serve.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_sighup_reloads_users_and_keeps_the_old_config_when_the_new_one_is_invalid() {
    let port = free_port();
    let base = config_on_port(&Default::default(), port);
    let mut serve = Serve::start(&base, port);
    let alice = serve.wait_ready().await;
    let erin_verifier = pgwarden::auth::scram::hash_password(b"erin-pw");
    let with_erin = format!(
        "{base}\n[[auth.local]]\nname = \"erin\"\nscram = \"{erin_verifier}\"\n\n\
         [[access]]\nusers = [\"erin\"]\ndatabases = [\"app\"]\nroles = [\"app_ro\"]\n"
    );
    let err = serve
        .try_connect_as("erin", "erin-pw")
        .await
        .expect_err("erin is not configured yet");
    assert_eq!(sqlstate(&err).as_deref(), Some("28P01"), "{err}");

    std::fs::write(&serve.config, &with_erin).unwrap();
    serve.signal("HUP");
    eventually("erin can log in after SIGHUP", &serve, || async {
        serve.try_connect_as("erin", "erin-pw").await.is_ok()
    })
    .await;
    let erin = serve.try_connect_as("erin", "erin-pw").await.unwrap();
    let row = erin
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "app_ro");
    // The session from before the reload is untouched.
    assert_eq!(
        alice
            .query_one("SELECT 1::int4", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );

    // An invalid config is logged and the current one kept.
    std::fs::write(
        &serve.config,
        with_erin.replacen("[server]\n", "[server]\nmax_connections = 0\n", 1),
    )
    .unwrap();
    serve.signal("HUP");
    serve.wait_for_log("reload failed").await;
    assert!(
        serve.log().contains("server.max_connections"),
        "{}",
        serve.log()
    );
    assert!(serve.is_running());
    serve
        .try_connect_as("erin", "erin-pw")
        .await
        .expect("erin still configured after a failed reload");

    // Removing erin again refuses her new logins and ends her open session.
    std::fs::write(&serve.config, &base).unwrap();
    serve.signal("HUP");
    eventually("erin is refused after removal", &serve, || async {
        serve
            .try_connect_as("erin", "erin-pw")
            .await
            .is_err_and(|e| sqlstate(&e).as_deref() == Some("28P01"))
    })
    .await;
    serve
        .wait_for_log("a reload revoked this session's access")
        .await;
    assert!(erin.query_one("SELECT 2::int4", &[]).await.is_err());

    serve.signal("TERM");
    let status = serve.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "exit status {status}:\n{}", serve.log());
    serve.assert_log_has_no_secrets();
}

/// A SIGHUP that changes `server.max_connections` must either apply the new limit to new
/// sessions or say that it needs a restart; silently keeping the old limit misleads operators.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_sighup_does_not_silently_ignore_max_connections() {
    let port = free_port();
    let base = config_on_port(&Default::default(), port);
    let mut serve = Serve::start(&base, port);
    let first = serve.wait_ready().await;
    std::fs::write(
        &serve.config,
        base.replacen("[server]\n", "[server]\nmax_connections = 1\n", 1),
    )
    .unwrap();
    serve.signal("HUP");
    serve.wait_for_log("configuration reloaded").await;
    let second = serve.try_connect().await;
    let limited = second
        .as_ref()
        .is_err_and(|e| sqlstate(e).as_deref() == Some("53300"));
    let log = serve.log();
    let warned = log
        .lines()
        .any(|l| l.contains("max_connections") && l.contains("restart"));
    assert!(
        limited || warned,
        "max_connections lowered to 1 by SIGHUP, yet a second session was admitted ({:?}) and nothing \
         said the change needs a restart:\n{log}",
        second.as_ref().map(|_| "admitted"),
    );
    drop(first);
}

/// Logs redirected to a file (systemd, `2>pgwarden.log`, docker) must not be full of terminal
/// colour escapes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_pretty_logs_to_a_file_have_no_ansi_escapes() {
    let port = free_port();
    let mut serve = Serve::start(&config_on_port(&Default::default(), port), port);
    drop(serve.wait_ready().await);
    serve.signal("TERM");
    let status = serve.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "exit status {status}:\n{}", serve.log());
    let log = serve.log();
    assert!(log.contains("pgwarden is accepting connections"), "{log}");
    let first = log.lines().find(|l| l.contains('\x1b'));
    assert!(
        first.is_none(),
        "ANSI escapes in a log written to a file: {:?}",
        first.unwrap_or_default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_json_log_format_writes_one_json_object_per_line() {
    let port = free_port();
    let mut serve = Serve::start_with(
        &config_on_port(&Default::default(), port),
        port,
        &["--log-format", "json"],
    );
    let client = serve.wait_ready().await;
    client.simple_query("SELECT 1").await.unwrap();
    drop(client);
    serve.signal("TERM");
    let status = serve.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "exit status {status}:\n{}", serve.log());
    let log = serve.log();
    assert!(log.contains("pgwarden is accepting connections"), "{log}");
    assert!(
        log.contains("\"user\":\"alice\""),
        "the session's user is not in the log:\n{log}"
    );
    let mut in_session = 0;
    for line in log.lines() {
        let record: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON object ({e}): {line}"));
        // A session's lines carry its span once, as `span` (not again as a `spans` list).
        assert!(record.get("spans").is_none(), "{line}");
        if record["span"]["name"] == "conn" {
            assert!(record["span"]["id"].is_u64(), "{line}");
            in_session += 1;
        }
    }
    assert!(in_session > 0, "no line of the session:\n{log}");
    serve.assert_log_has_no_secrets();
}

#[test]
fn serve_with_an_invalid_config_exits_64_before_binding() {
    // Hold the port: if serve tried to bind before validating, it would fail with
    // "cannot listen" (exit 1) instead of reporting the config error (exit 64).
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let valid = config_on_port(&Default::default(), port);
    let invalid_configs = [
        (
            "max_connections = 0",
            valid.replacen("[server]\n", "[server]\nmax_connections = 0\n", 1),
            "server.max_connections",
        ),
        (
            "unset variable",
            valid.replace(
                &format!("password = \"{}\"", harness().app_ro_password),
                "password = \"env:SURELY_UNSET_VAR_X\"",
            ),
            "SURELY_UNSET_VAR_X",
        ),
        (
            "missing TLS key",
            valid.replace("key = \"", "key = \"/nonexistent"),
            "`server.tls.key`",
        ),
    ];
    for (what, config, needle) in invalid_configs {
        assert_ne!(config, valid, "{what}: the replacement did not apply");
        let path = common::write_file("serve-invalid.toml", &config);
        // serve's stderr, once it has refused the file (exit 64).
        let refused = |log_format: &str| {
            let output = pgwarden()
                .args(["serve", "--log-format", log_format, "--config"])
                .arg(&path)
                .output()
                .expect("run serve");
            assert_eq!(
                output.status.code(),
                Some(64),
                "{what}: {}",
                describe(&output)
            );
            text(&output.stderr)
        };
        let stderr = refused("pretty");
        assert!(stderr.contains("invalid configuration"), "{what}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{what}: `{needle}` missing from: {stderr}"
        );
        assert!(
            !stderr.contains("cannot listen"),
            "{what}: bound before validating: {stderr}"
        );
        // With JSON logs, the reason is one JSON line too: a collector reads nothing else.
        let stderr = refused("json");
        let lines: Vec<serde_json::Value> = stderr
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect();
        assert!(
            lines.iter().any(|l| l["level"] == "ERROR"
                && l["error"].as_str().is_some_and(|e| e.contains(needle))),
            "{what}: {stderr}"
        );
    }

    // Control: the valid config gets as far as binding, which fails on the held port.
    let path = common::write_file("serve-held.toml", &valid);
    let output = pgwarden()
        .args(["serve", "--config", path.to_str().unwrap()])
        .output()
        .expect("run serve");
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    assert!(
        text(&output.stderr).contains("cannot listen"),
        "{}",
        describe(&output)
    );
    drop(held);
}

// ---------------------------------------------------------------------------------------------
// demo

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_smoke_test_passes() {
    let child = tokio::process::Command::new(BIN)
        .args(["demo", "--listen", "127.0.0.1:0", "--smoke-test"])
        .env_remove("PGWARDEN_LOG_FORMAT")
        .env_remove("PGPASSWORD")
        .env_remove("PGSSLMODE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn demo");
    let output = tokio::time::timeout(Duration::from_secs(180), child.wait_with_output())
        .await
        .expect("demo --smoke-test did not finish within 180 s")
        .expect("wait for demo");
    assert!(output.status.success(), "{}", describe(&output));
    let stdout = text(&output.stdout);
    assert!(
        stdout.contains("smoke test passed"),
        "{}",
        describe(&output)
    );
    // The sample data arrived: "smoke test passed: N customers through pgwarden", N > 0.
    let count: u64 = stdout
        .split("smoke test passed: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no customer count in: {stdout}"));
    assert!(count > 0);
    // A person signed in with a token from the demo's issuer, a service account with SCRAM.
    assert!(stdout.contains("signed in as dev@example.com"), "{stdout}");
    assert!(stdout.contains("as the service account"), "{stdout}");
    // A DELETE without a declared intent is refused; with one, it is held, approved, run.
    assert!(
        stdout.contains("a DELETE without a declared intent was refused"),
        "{stdout}"
    );
    assert!(
        stdout.contains("dev's DELETE was held as request") && stdout.contains("and ran"),
        "{stdout}"
    );
}

#[test]
fn policy_test_explains_each_statement_and_exits_by_the_decision() {
    let config = common::write_file(
        "policy-test.toml",
        "[upstream]\nhost = \"127.0.0.1\"\n[[upstream.roles]]\nname = \"app_rw\"\n\
         [[access]]\ngroups = [\"dev\"]\ndatabases = [\"app\"]\nroles = [\"app_rw\"]\n\
         [[policy.rules]]\nid = \"orders-wait\"\nstatements = [\"delete\"]\ntables = [\"orders\"]\n\
         action = \"approve\"\nmessage = \"deleting orders needs a DBA\"\n\
         [[policy.rules]]\nid = \"bench-setup\"\npriority = 150\nstatements = [\"drop table\"]\n\
         tables = [\"pgbench_*\"]\naction = \"allow\"\n\
         [[policy.session]]\ngroups = [\"dev\"]\nsettings = { statement_timeout = \"30s\" }\n",
    );
    let config = config.to_str().unwrap();
    let base = [
        "policy", "test", "-c", config, "--user", "alice", "--groups", "dev", "--db", "app",
    ];
    let with = |sql: &str| {
        let mut args = base.to_vec();
        args.push(sql);
        run(&args)
    };
    let allowed = with("SELECT * FROM users WHERE email = 'a@b.c'");
    let text = String::from_utf8_lossy(&allowed.stdout);
    assert!(allowed.status.success(), "{text}");
    assert!(text.contains("as role app_rw"), "{text}");
    assert!(
        text.contains("normalized: SELECT * FROM users WHERE email = $1"),
        "{text}"
    );
    assert!(text.contains("users (read)"), "{text}");

    let held = with("SELECT 1; DELETE FROM orders WHERE id = 3");
    let text = String::from_utf8_lossy(&held.stdout);
    assert_eq!(held.status.code(), Some(1), "{text}");
    assert!(
        text.contains("=> approve (orders-wait): deleting orders needs a DBA"),
        "{text}"
    );

    // An allow rule that names only part of a statement says so.
    let beside = with("DROP TABLE pgbench_history, customers");
    let text = String::from_utf8_lossy(&beside.stdout);
    assert_eq!(beside.status.code(), Some(1), "{text}");
    assert!(
        text.contains("decision:   deny (guardrail.drop)")
            && text.contains("not allowed by bench-setup: an allow rule must name every"),
        "{text}"
    );
    let own = String::from_utf8_lossy(&with("DROP TABLE pgbench_history").stdout).into_owned();
    assert!(
        own.contains("=> allow (bench-setup)") && !own.contains("not allowed by"),
        "{own}"
    );

    let mut json = base.to_vec();
    json.extend(["--json", "DELETE FROM t"]);
    let out = run(&json);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["decision"], "deny");
    assert_eq!(report["rule"], "guardrail.no-where");
    assert_eq!(report["statements"][0]["flags"]["no_where"], true);

    // The session's own limits, as a live session would apply them.
    let limited = |sql: &str| {
        let mut args = base.to_vec();
        args.extend(["--json", sql]);
        let out = run(&args);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (out.status.code(), report)
    };
    let (code, report) = limited("SET statement_timeout = 0");
    assert_eq!(code, Some(1));
    assert_eq!(report["rule"], "policy.locked-setting", "{report}");
    assert_eq!(
        report["session_settings"][0],
        "statement_timeout = 30s (locked)"
    );
    let (code, report) = limited("SET ROLE postgres");
    assert_eq!(code, Some(1));
    assert_eq!(report["rule"], "policy.set-role", "{report}");
    assert_eq!(limited("SET ROLE app_rw").0, Some(0));
    let (code, report) = limited("EXECUTE cleanup");
    assert_eq!(code, Some(1));
    assert_eq!(report["rule"], "policy.unknown-prepared-statement");
    // A body PREPAREd earlier in the text is what EXECUTE is judged by.
    let (code, report) =
        limited("PREPARE cleanup AS DELETE FROM orders WHERE id = $1; EXECUTE cleanup(3)");
    assert_eq!(code, Some(1));
    assert_eq!(report["rule"], "orders-wait", "{report}");
    assert_eq!(report["statements"][1]["decision"], "approve");
    let text = String::from_utf8_lossy(&with("SHOW statement_timeout").stdout).into_owned();
    assert!(
        text.contains("session settings: statement_timeout = 30s (locked)"),
        "{text}"
    );

    let broken = with("SELEC 1");
    let text = String::from_utf8_lossy(&broken.stdout);
    assert_eq!(broken.status.code(), Some(1));
    assert!(text.contains("parser rejects"), "{text}");

    // Someone [[access]] keeps out of the database, or out of the role, never gets that far.
    for (who, role) in [("nobody", None), ("dev", Some("postgres"))] {
        let mut args = vec![
            "policy", "test", "-c", config, "--user", "bob", "--groups", who, "--db", "app",
        ];
        if let Some(role) = role {
            args.extend(["--role", role]);
        }
        args.push("SELECT 1");
        let out = run(&args);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{text}");
        assert!(
            text.contains("=> deny (access): refused at login"),
            "{text}"
        );
    }
}

/// `pgwarden reload` checks the file first, then signals the pgwarden in server.pid_file; the
/// open session gets the new policy at its next statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_command_checks_the_file_then_signals_the_running_pgwarden() {
    let port = free_port();
    let pid_file = common::harness().dir.join(format!("pgwarden-{port}.pid"));
    let base = config_on_port(&Default::default(), port).replacen(
        "[server]\n",
        &format!("[server]\npid_file = \"{}\"\n", pid_file.display()),
        1,
    );
    let mut serve = Serve::start(&base, port);
    let alice = serve.wait_ready().await;
    assert!(pid_file.exists(), "serve writes its pid file");
    alice.simple_query("SELECT 1").await.unwrap();
    // A second pgwarden started by mistake on the same port fails, and leaves the running
    // one's pid file as it was.
    let first_pid = std::fs::read_to_string(&pid_file).unwrap();
    let second = run(&["serve", "--config", serve.config.to_str().unwrap()]);
    assert!(!second.status.success(), "{}", describe(&second));
    assert!(
        text(&second.stderr).contains("cannot listen"),
        "{}",
        describe(&second)
    );
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap(), first_pid);

    // A broken file is reported and not signalled.
    std::fs::write(
        &serve.config,
        format!("{base}\n[[policy.rules]]\nid = \"x\"\nflags = [\"nope\"]\naction = \"deny\"\n"),
    )
    .unwrap();
    let out = run(&["reload", "--config", serve.config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64), "{}", describe(&out));
    assert!(
        text(&out.stderr).contains("policy.rules[0].flags"),
        "{}",
        describe(&out)
    );
    std::fs::write(&serve.config, &base).unwrap();

    // A process that is not pgwarden (a pid file left over, its number reused) is not
    // signalled: SIGHUP would end it.
    let mut bystander = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let pid = bystander.id().to_string();
    let config = serve.config.to_str().unwrap();
    let out = run(&["reload", "--config", config, "--pid", &pid]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        text(&out.stderr).contains("not a running `pgwarden serve`"),
        "{}",
        describe(&out)
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        bystander.try_wait().unwrap().is_none(),
        "the bystander was signalled"
    );
    let _ = bystander.kill();
    let _ = bystander.wait();
    // Another file than the one pgwarden runs with: a reload would re-read its own.
    let other = serve.config.with_extension("other.toml");
    std::fs::write(&other, &base).unwrap();
    let out = run(&["reload", "--config", other.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(text(&out.stderr).contains(config), "{}", describe(&out));

    std::fs::write(
        &serve.config,
        format!("{base}\n[[policy.rules]]\nid = \"read-only-now\"\nstatements = [\"select\"]\naction = \"deny\"\n"),
    )
    .unwrap();
    let out = run(&["reload", "--config", serve.config.to_str().unwrap()]);
    assert!(out.status.success(), "{}", describe(&out));
    serve.wait_for_log("configuration reloaded").await;
    let err = alice.simple_query("SELECT 1").await.unwrap_err();
    assert!(
        err.as_db_error()
            .unwrap()
            .message()
            .contains("rule read-only-now"),
        "{err}"
    );

    serve.signal("TERM");
    let status = serve.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "exit status {status}:\n{}", serve.log());
    assert!(!pid_file.exists(), "serve removes its pid file");
}

/// A session signed in with a token, and a sign-in with a forged one, at debug level in
/// both log formats: the logs say who signed in, never the token (nor its signature).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_logs_never_contain_the_tokens_people_sign_in_with() {
    let issuer = pgwarden::testbed::DevIssuer::start(
        "127.0.0.1:0".parse().unwrap(),
        None,
        pgwarden::testbed::KeyAlgorithm::Es256,
    )
    .await
    .unwrap();
    let claims = serde_json::json!({"sub": "u-zoe", "email": "zoe@example.com", "groups": ["dev"]});
    let token = issuer.id_token("pgwarden", &claims, 300);
    let signature = token.rsplit('.').next().unwrap().to_owned();
    // The same claims, signed by a key the issuer never published.
    let forged = {
        let other = pgwarden::testbed::DevIssuer::start(
            "127.0.0.1:0".parse().unwrap(),
            None,
            pgwarden::testbed::KeyAlgorithm::Es256,
        )
        .await
        .unwrap();
        other
            .sign(
                jsonwebtoken::Header::default(),
                &issuer.standard_claims("pgwarden", &claims, 300),
            )
            .unwrap()
    };
    for format in ["pretty", "json"] {
        let port = free_port();
        let options = ProxyOptions {
            extra: format!(
                "[[auth.oidc]]\nissuer = \"{}\"\naudience = \"pgwarden\"\nallow_http = true\n\n\
                 [auth]\nplaintext_tokens = \"loopback\"\n",
                issuer.url()
            ),
            ..Default::default()
        };
        let mut serve = Serve::start_with(
            &config_on_port(&options, port),
            port,
            &["--log-format", format],
        );
        serve.wait_ready().await;
        let conninfo = |password: &str| {
            format!(
                "host=127.0.0.1 port={port} dbname=app user=zoe@example.com password={password} sslmode=disable"
            )
        };
        let (client, connection) =
            tokio_postgres::connect(&conninfo(&token), tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| panic!("token sign-in: {e}\n{}", serve.log()));
        tokio::spawn(connection);
        client.simple_query("SELECT 1").await.unwrap();
        drop(client);
        let refused = tokio_postgres::connect(&conninfo(&forged), tokio_postgres::NoTls).await;
        assert!(refused.is_err(), "a forged token was accepted");
        // Refusals are logged for people: why, and a reason to filter on.
        let elsewhere = conninfo(&token).replace("dbname=app", "dbname=elsewhere");
        assert!(tokio_postgres::connect(&elsewhere, tokio_postgres::NoTls)
            .await
            .is_err());
        let wrong = format!(
            "host=127.0.0.1 port={port} dbname=app user=alice password=wrong sslmode=disable"
        );
        assert!(tokio_postgres::connect(&wrong, tokio_postgres::NoTls)
            .await
            .is_err());
        serve.wait_for_log("wrong password").await;
        serve.wait_for_log("zoe@example.com").await;
        serve.signal("TERM");
        let status = serve.wait_exit(Duration::from_secs(10)).await;
        assert!(status.success(), "exit status {status}:\n{}", serve.log());
        let log = serve.log();
        for (what, secret) in [
            ("token", token.as_str()),
            ("signature", signature.as_str()),
            ("forged token", forged.as_str()),
        ] {
            assert!(
                !log.contains(secret),
                "the {what} is in the {format} log:\n{log}"
            );
        }
        serve.assert_log_has_no_secrets();
        for expected in [
            "sign-in refused",
            "invalid_credentials",
            "alice\\\": wrong password",
            "the token was signed with a key the issuer does not publish",
            "access refused by [[access]]",
            "database_not_allowed",
        ] {
            assert!(
                log.contains(expected),
                "{expected} not in the {format} log:\n{log}"
            );
        }
        for debug_dump in ["Failed {", "WrongPassword", "Token {", "DatabaseNotAllowed"] {
            assert!(
                !log.contains(debug_dump),
                "{debug_dump} in the {format} log:\n{log}"
            );
        }
    }
}

/// Run `pgwarden audit verify DIR --pubkey KEY [--anchor A]…`; (success, stdout).
fn verify_with(dir: &Path, pubkey: &Path, anchors: &[&str]) -> (bool, String) {
    let mut args = vec![
        "audit",
        "verify",
        dir.to_str().unwrap(),
        "--pubkey",
        pubkey.to_str().unwrap(),
    ];
    for anchor in anchors {
        args.extend(["--anchor", anchor]);
    }
    let output = run(&args);
    (output.status.success(), text(&output.stdout))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_logs_checkpoint_anchors_that_catch_the_newest_files_removed() {
    let h = harness();
    let dir = common::audit_dir("anchored");
    let key = h.dir.join(format!("anchor-key-{}.pem", std::process::id()));
    let _ = std::fs::remove_file(&key);
    let made = run(&["audit", "keygen", "--out", key.to_str().unwrap()]);
    assert!(made.status.success(), "{}", describe(&made));
    let pubkey = common::write_file("anchor.pub", &text(&made.stdout));
    let port = free_port();
    let options = ProxyOptions {
        extra: format!(
            "[audit]\ndir = \"{}\"\nsigning_key = \"file:{}\"\ncheckpoint_interval = \"100ms\"\nrotate_size = \"4KiB\"\n",
            dir.display(),
            key.display()
        ),
        ..Default::default()
    };
    let mut serve = Serve::start_with(
        &config_on_port(&options, port),
        port,
        &["--log-format", "json"],
    );
    let client = serve.wait_ready().await;
    // Enough records for several files, with checkpoints in between.
    for round in 0..6 {
        for i in 0..10 {
            client
                .simple_query(&format!("SELECT {round} + {i}"))
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    drop(client);
    serve.signal("TERM");
    let status = serve.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "exit status {status}:\n{}", serve.log());

    // Every signed checkpoint is logged with its anchor; the last one is the shutdown's.
    let anchors: Vec<String> = serve
        .log()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|entry| entry["message"] == "audit checkpoint written")
        .map(|entry| entry["anchor"].as_str().unwrap().to_owned())
        .collect();
    assert!(anchors.len() >= 3, "{anchors:?}\n{}", serve.log());
    let last = anchors.last().unwrap().as_str();
    let (ok, said) = verify_with(&dir, &pubkey, &[anchors[0].as_str(), last]);
    assert!(ok, "{said}");
    assert!(said.contains("anchored: the 2 record(s)"), "{said}");
    // verify prints the same anchor for the next review.
    assert!(said.contains(&format!("anchor: {last} ")), "{said}");

    // Someone removes the newest file, checkpoints and all: the rest is a consistent log,
    // and only the anchor kept elsewhere shows it is short.
    let files = pgwarden::audit::list_files(&dir).unwrap();
    assert!(files.len() >= 3, "{files:?}");
    let cut = common::audit_dir("anchored-cut");
    std::fs::create_dir_all(&cut).unwrap();
    for name in &files[..files.len() - 1] {
        std::fs::copy(dir.join(name), cut.join(name)).unwrap();
    }
    let (ok, said) = verify_with(&cut, &pubkey, &[]);
    assert!(
        ok,
        "without an anchor the shorter log still verifies: {said}"
    );
    let (ok, said) = verify_with(&cut, &pubkey, &[last]);
    assert!(!ok, "{said}");
    assert!(
        said.contains(&format!(
            "anchored record {last} is not in the log: the log ends at seq"
        )),
        "{said}"
    );

    // A record rewritten in place (the chain recomputed after it) is not the anchored one.
    let (seq, _) = last.split_once(':').unwrap();
    let forged = format!("{seq}:{}", "0".repeat(64));
    let (ok, said) = verify_with(&dir, &pubkey, &[&forged]);
    assert!(!ok, "{said}");
    assert!(said.contains("is not the record anchored as"), "{said}");
    // A malformed anchor is a usage error.
    let output = run(&[
        "audit",
        "verify",
        dir.to_str().unwrap(),
        "--anchor",
        "12:xyz",
    ]);
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    assert!(
        text(&output.stderr).contains("64 hex digits"),
        "{}",
        describe(&output)
    );
}

/// The admin API out of reach: the commands say why (here, nothing listens), once.
#[test]
fn admin_commands_say_why_they_cannot_reach_pgwarden() {
    let closed = format!("http://127.0.0.1:{}", free_port());
    for args in [
        vec!["ready", "--admin", &closed],
        vec!["approvals", "--admin", &closed, "--token", "x", "list"],
    ] {
        let out = run(&args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
        assert!(stderr.contains("Connection refused"), "{}", describe(&out));
        assert_eq!(stderr.matches(&closed).count(), 1, "{}", describe(&out));
    }
}
