//! Test harness: one throwaway PostgreSQL per test binary (shared by its tests, stopped by the
//! testbed's watchdog when the binary exits, even after a panic), and pgwarden in-process on
//! 127.0.0.1:0 per test with its own config.
//!
//! The server has:
//! - database `app` owned by `app_rw`; roles `app_rw` (SCRAM) and `app_ro` (SCRAM, read-only);
//! - roles `md5_user`, `clear_user`, `trust_user` reached through pg_hba lines using md5,
//!   password and trust, to test every upstream authentication method.
//!
//! pgwarden's default test config has local users `alice` (group `dev` → `app` as `app_rw`)
//! and `bob` (group `ops` → `app` as `app_ro`), and TLS `optional` with a per-run CA.

#![allow(dead_code)]

pub mod wire;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use pgwarden::app::Server;
use pgwarden::config::Config;
use pgwarden::testbed::{self, PostgresOptions, TestCertificates, ThrowawayPostgres};

pub const ALICE_PASSWORD: &str = "alice-pw";
pub const BOB_PASSWORD: &str = "bob-pw";

pub struct Harness {
    pub pg: ThrowawayPostgres,
    pub certs: TestCertificates,
    /// Holds config files and secrets; inside the server's temp dir, so it is cleaned up too.
    pub dir: PathBuf,
    pub app_rw_password: String,
    pub app_ro_password: String,
}

static HARNESS: OnceLock<Harness> = OnceLock::new();

/// The shared PostgreSQL (started on first use).
pub fn harness() -> &'static Harness {
    HARNESS.get_or_init(|| {
        let _ = tracing_subscriber_init();
        let pg = ThrowawayPostgres::start(PostgresOptions {
            settings: vec![("max_connections".into(), "200".into())],
            ..PostgresOptions::default()
        })
        .expect("start PostgreSQL");
        let app_rw_password = testbed::random_password();
        let app_ro_password = testbed::random_password();
        pg.psql(
            "postgres",
            &format!(
                "CREATE ROLE app_rw LOGIN PASSWORD '{app_rw_password}';\n\
                 CREATE ROLE app_ro LOGIN PASSWORD '{app_ro_password}';\n\
                 CREATE DATABASE app OWNER app_rw;\n\
                 SET password_encryption = 'md5';\n\
                 CREATE ROLE md5_user LOGIN PASSWORD 'md5-pw';\n\
                 RESET password_encryption;\n\
                 CREATE ROLE clear_user LOGIN PASSWORD 'clear-pw';\n\
                 CREATE ROLE trust_user LOGIN;\n\
                 GRANT CONNECT ON DATABASE app TO app_ro, md5_user, clear_user, trust_user;\n"
            ),
        )
        .expect("create roles");
        pg.psql(
            "app",
            "SET ROLE app_rw;\n\
             CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL);\n\
             INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 10) g;\n\
             GRANT SELECT ON items TO app_ro;\n",
        )
        .expect("create schema");
        // Upstream auth methods other than SCRAM: pg_hba lines ahead of initdb's.
        let hba = pg.data_dir().join("pg_hba.conf");
        let original = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
        let extra = "host all md5_user 127.0.0.1/32 md5\n\
                     host all clear_user 127.0.0.1/32 password\n\
                     host all trust_user 127.0.0.1/32 trust\n";
        std::fs::write(&hba, format!("{extra}{original}")).expect("write pg_hba.conf");
        pg.psql("postgres", "SELECT pg_reload_conf();")
            .expect("reload");

        let dir = pg
            .data_dir()
            .parent()
            .expect("temp dir")
            .join("pgwarden-tests");
        std::fs::create_dir_all(&dir).expect("create test dir");
        let certs = testbed::write_test_certificates(&dir).expect("certificates");
        Harness {
            pg,
            certs,
            dir,
            app_rw_password,
            app_ro_password,
        }
    })
}

fn tracing_subscriber_init() -> Result<(), ()> {
    // pgwarden logs go to the test output only when asked: RUST_LOG=pgwarden=debug.
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
    Ok(())
}

/// Write `text` to a fresh file in the harness dir and return its path.
pub fn write_file(name: &str, text: &str) -> PathBuf {
    let path = harness().dir.join(format!("{}-{}", unique(), name));
    std::fs::write(&path, text).expect("write file");
    path
}

/// A fresh audit directory for one test.
pub fn audit_dir(name: &str) -> PathBuf {
    let dir = harness().dir.join(format!("audit-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Every record in an audit directory, oldest first.
pub fn all_records(dir: &Path) -> Vec<serde_json::Value> {
    pgwarden::audit::list_files(dir)
        .unwrap()
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(dir.join(f))
                .unwrap()
                .lines()
                // A crash's sealed partial line is not JSON; audit verify reports it.
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Knobs for one test's pgwarden config. `Default` is the config described in the module doc.
#[derive(Clone)]
pub struct ProxyOptions {
    /// `[server.tls] mode`, or `None` for no `[server.tls]` section.
    pub tls_mode: Option<&'static str>,
    /// Raw TOML appended to `[server]` (e.g. `max_connections = 2`).
    pub server_extra: String,
    /// Replaces the `[upstream]` section's host/port/sslmode lines.
    pub upstream: Option<String>,
    /// Raw TOML appended at the end (more users, roles, access rules).
    pub extra: String,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        Self {
            tls_mode: Some("optional"),
            server_extra: String::new(),
            upstream: None,
            extra: String::new(),
        }
    }
}

/// The config text for `options`.
pub fn config_text(options: &ProxyOptions) -> String {
    let h = harness();
    let rw_secret = write_file("app_rw.password", &h.app_rw_password);
    let tls = match options.tls_mode {
        None => String::new(),
        Some(mode) => format!(
            "[server.tls]\nmode = \"{mode}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            h.certs.server_cert.display(),
            h.certs.server_key.display()
        ),
    };
    let upstream = options.upstream.clone().unwrap_or_else(|| {
        format!(
            "host = \"{}\"\nport = {}\nsslmode = \"disable\"\n",
            h.pg.host(),
            h.pg.port()
        )
    });
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nauth_timeout = \"5s\"\nshutdown_grace = \"5s\"\n{server_extra}\n\
         {tls}\n\
         [upstream]\n{upstream}\n\
         [[upstream.roles]]\nname = \"app_rw\"\npassword = \"file:{rw}\"\n\n\
         [[upstream.roles]]\nname = \"app_ro\"\npassword = \"{ro}\"\n\n\
         [[auth.local]]\nname = \"alice\"\nscram = \"{alice}\"\ngroups = [\"dev\"]\n\n\
         [[auth.local]]\nname = \"bob\"\nscram = \"{bob}\"\ngroups = [\"ops\"]\n\n\
         [[access]]\ngroups = [\"dev\"]\ndatabases = [\"app\"]\nroles = [\"app_rw\"]\n\n\
         [[access]]\ngroups = [\"ops\"]\ndatabases = [\"app\"]\nroles = [\"app_ro\"]\n\n\
         {extra}\n",
        server_extra = options.server_extra,
        rw = rw_secret.display(),
        ro = h.app_ro_password,
        alice = alice_verifier(),
        bob = bob_verifier(),
        extra = options.extra,
    )
}

/// Verifiers are slow to compute (4096 PBKDF2 rounds): once per binary.
fn alice_verifier() -> &'static str {
    static V: OnceLock<String> = OnceLock::new();
    V.get_or_init(|| pgwarden::auth::scram::hash_password(ALICE_PASSWORD.as_bytes()))
}

fn bob_verifier() -> &'static str {
    static V: OnceLock<String> = OnceLock::new();
    V.get_or_init(|| pgwarden::auth::scram::hash_password(BOB_PASSWORD.as_bytes()))
}

/// A pgwarden running in this test's runtime.
pub struct Proxy {
    pub server: Option<Server>,
    pub addr: std::net::SocketAddr,
    pub config_path: PathBuf,
}

impl Proxy {
    pub async fn start(options: ProxyOptions) -> Proxy {
        let text = config_text(&options);
        let path = write_file("pgwarden.toml", &text);
        let config =
            Config::load(&path).unwrap_or_else(|e| panic!("test config invalid: {e}\n{text}"));
        let server = Server::start(config).await.expect("start pgwarden");
        let addr = server.local_addr();
        Proxy {
            server: Some(server),
            addr,
            config_path: path,
        }
    }

    pub async fn default() -> Proxy {
        Self::start(ProxyOptions::default()).await
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// A libpq connection string through pgwarden.
    pub fn conninfo(&self, user: &str, password: &str, extra: &str) -> String {
        format!(
            "host=127.0.0.1 port={} dbname=app user={user} password={password} {extra}",
            self.port()
        )
    }

    /// tokio-postgres over plaintext as `user`.
    pub async fn connect(&self, user: &str, password: &str) -> tokio_postgres::Client {
        self.try_connect(&self.conninfo(user, password, "sslmode=disable"))
            .await
            .unwrap_or_else(|e| panic!("connect through pgwarden as {user}: {e}"))
    }

    /// tokio-postgres as alice (group dev → app_rw).
    pub async fn alice(&self) -> tokio_postgres::Client {
        self.connect("alice", ALICE_PASSWORD).await
    }

    pub async fn try_connect(
        &self,
        conninfo: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// tokio-postgres over TLS, trusting the per-run CA.
    pub async fn try_connect_tls(
        &self,
        conninfo: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) = tokio_postgres::connect(conninfo, tls_connector()).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    pub async fn shutdown(mut self, grace: std::time::Duration) {
        if let Some(server) = self.server.take() {
            server.shutdown(grace).await;
        }
    }
}

/// A rustls connector for tokio-postgres that trusts the harness CA.
pub fn tls_connector() -> tokio_postgres_rustls::MakeRustlsConnect {
    let mut roots = rustls::RootCertStore::empty();
    for cert in pgwarden::net::tls::load_certs(&harness().certs.ca_cert).expect("CA") {
        roots.add(cert).expect("add CA");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_postgres_rustls::MakeRustlsConnect::new(config)
}

/// A direct connection to PostgreSQL as the superuser (bypassing pgwarden).
pub async fn direct(database: &str) -> tokio_postgres::Client {
    let h = harness();
    let conninfo = format!(
        "host={} port={} dbname={database} user={} password={}",
        h.pg.host(),
        h.pg.port(),
        h.pg.superuser(),
        h.pg.superuser_password()
    );
    let (client, connection) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
        .await
        .expect("direct connect");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// The SQLSTATE code of a tokio-postgres error, if the server sent one.
pub fn sqlstate(err: &tokio_postgres::Error) -> Option<String> {
    err.as_db_error().map(|e| e.code().code().to_owned())
}

/// The psql binary next to the server binaries (or on PATH).
pub fn psql_path() -> PathBuf {
    testbed::PgBinaries::discover()
        .expect("PostgreSQL binaries")
        .tool("psql")
}

pub fn pgbench_path() -> PathBuf {
    testbed::PgBinaries::discover()
        .expect("PostgreSQL binaries")
        .tool("pgbench")
}

/// Run a libpq program (psql, pgbench) with a clean libpq environment.
pub async fn run_tool(program: &Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args);
    for var in [
        "PGHOST",
        "PGPORT",
        "PGUSER",
        "PGDATABASE",
        "PGPASSWORD",
        "PGSSLMODE",
        "PGOPTIONS",
        "PGCLIENTENCODING",
        "PGSERVICE",
        "PGSSLROOTCERT",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(std::process::Stdio::null());
    cmd.output().await.expect("run tool")
}

/// `pgwarden login` (device flow) against `issuer` as its person `person`, approving the code
/// through the issuer's form as a browser would; tokens go to `config_dir`.
pub async fn pgwarden_login(issuer: &str, person: &str, config_dir: &Path) {
    use tokio::io::AsyncBufReadExt;
    let ca = harness().certs.ca_cert.display().to_string();
    let mut login = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgwarden"))
        .args([
            "login",
            "--issuer",
            issuer,
            "--client-id",
            "pgwarden-cli",
            "--ca",
            &ca,
        ])
        .env("PGWARDEN_CONFIG_DIR", config_dir)
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn pgwarden login");
    let mut lines = tokio::io::BufReader::new(login.stderr.take().expect("stderr")).lines();
    let code = loop {
        let line = tokio::time::timeout(std::time::Duration::from_secs(20), lines.next_line())
            .await
            .expect("pgwarden login printed no code")
            .expect("read stderr")
            .expect("pgwarden login ended early");
        if let Some(code) = line.strip_prefix("and confirm the code ") {
            break code.to_owned();
        }
    };
    let browser = pgwarden::net::http::Fetcher::new(
        Some(&harness().certs.ca_cert),
        std::time::Duration::from_secs(5),
        1 << 20,
    )
    .expect("http client");
    let approval = openidconnect::http::Request::builder()
        .method("POST")
        .uri(format!("{issuer}/device"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("user_code={code}&person={person}").into_bytes())
        .expect("request");
    let page = browser
        .fetch(approval)
        .await
        .expect("approve the device code");
    assert_eq!(page.status(), 200);
    let status = tokio::time::timeout(std::time::Duration::from_secs(20), login.wait())
        .await
        .expect("pgwarden login did not finish")
        .expect("wait");
    assert!(status.success());
}

/// A fresh table `name` (id 1..=20, note) in `app`, owned by app_rw.
pub async fn fresh_table(name: &str) {
    direct("app")
        .await
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {name};\n\
             CREATE TABLE {name} (id int PRIMARY KEY, note text);\n\
             INSERT INTO {name} SELECT g, 'row ' || g FROM generate_series(1, 20) g;\n\
             ALTER TABLE {name} OWNER TO app_rw;"
        ))
        .await
        .expect("create the test table");
}

/// GET `url` with pgwarden's own HTTP client: (status, body as text).
pub async fn http_get(url: &str) -> (u16, String) {
    let fetcher =
        pgwarden::net::http::Fetcher::new(None, std::time::Duration::from_secs(10), 1 << 20)
            .unwrap();
    let response = fetcher
        .fetch(
            openidconnect::http::Request::builder()
                .uri(url)
                .body(Vec::new())
                .unwrap(),
        )
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    (
        response.status().as_u16(),
        String::from_utf8_lossy(response.body()).into_owned(),
    )
}

/// The testbed's development OIDC issuer on 127.0.0.1:0, over HTTPS with the per-run CA.
pub async fn https_issuer() -> pgwarden::testbed::DevIssuer {
    https_issuer_at("127.0.0.1:0").await
}

/// The development issuer at a chosen address (tests that restart it on the same port).
pub async fn https_issuer_at(addr: &str) -> pgwarden::testbed::DevIssuer {
    let h = harness();
    let tls = pgwarden::testbed::issuer::https_acceptor(&h.certs.server_cert, &h.certs.server_key)
        .expect("issuer TLS");
    pgwarden::testbed::DevIssuer::start(
        addr.parse().expect("issuer address"),
        Some(tls),
        pgwarden::testbed::KeyAlgorithm::Rs256,
    )
    .await
    .expect("start the development issuer")
}

/// Call pgwarden's admin API at `admin` as `token`: (HTTP status, JSON body or null).
pub async fn admin_api(
    admin: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let fetcher =
        pgwarden::net::http::Fetcher::new(None, std::time::Duration::from_secs(10), 1 << 20)
            .expect("http client");
    let request = openidconnect::http::Request::builder()
        .method(method)
        .uri(format!("http://{admin}{path}"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        })
        .expect("request");
    let response = fetcher
        .fetch(request)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = response.status().as_u16();
    (
        status,
        serde_json::from_slice(response.body()).unwrap_or(serde_json::Value::Null),
    )
}
