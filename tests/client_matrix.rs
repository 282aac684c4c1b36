//! Drivers and ORMs people use, through pgwarden over TLS (issue #9). Each client runs its own
//! program (`tests/clients/`) twice: as a local SCRAM user and with an OIDC token as the
//! password. Every program compares results with a direct connection, reads a masked column,
//! hits a guardrail and goes on, and runs one statement that pgwarden holds for approval; the
//! harness here approves it through the admin API as a DBA would, while the client waits.
//!
//! Drivers are installed on first use under `target/` (a Python venv from PyPI, npm packages);
//! the JDBC jar and Java come from Debian packages (`scripts/deps.sh`).

mod common;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use common::{harness, Proxy, ProxyOptions, ALICE_PASSWORD};
use pgwarden::testbed::DevIssuer;
use serde_json::{json, Value};

/// Pinned driver versions (also listed in README.md's "Clients tested").
const PYTHON_PACKAGES: &[&str] = &[
    "psycopg[binary]==3.3.9",
    "asyncpg==0.32.0",
    "SQLAlchemy==2.1.9",
    "Django==5.2.19",
];
const NODE_PACKAGES: &[&str] = &["pg@8.23.1", "pg-cursor@2.22.1"];
/// Debian's libpostgresql-jdbc-java (installed by scripts/deps.sh).
const JDBC_JAR: &str = "/usr/share/java/postgresql.jar";

const AUDIENCE: &str = "pgwarden";
/// How long one run of a client program may take.
const PROGRAM_TIMEOUT: Duration = Duration::from_secs(180);

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Run `program args` and panic with its output unless it succeeds.
fn run_ok(program: &Path, args: &[&str]) {
    let output = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    assert!(
        output.status.success(),
        "{} {args:?}:\n{}{}",
        program.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A Python venv under target/ with the drivers installed (once per version list; the tests
/// of this binary share it).
fn python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let venv = root().join("target/client-venv");
            let python = venv.join("bin/python");
            let marker = venv.join(".installed");
            let wanted = PYTHON_PACKAGES.join("\n");
            if std::fs::read_to_string(&marker).ok().as_deref() != Some(wanted.as_str()) {
                if !python.exists() {
                    run_ok(
                        Path::new("python3"),
                        &["-m", "venv", venv.to_str().unwrap()],
                    );
                }
                let mut args = vec![
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                ];
                args.extend(PYTHON_PACKAGES);
                run_ok(&python, &args);
                std::fs::write(&marker, wanted).unwrap();
            }
            python
        })
        .clone()
}

/// node_modules under target/ with node-postgres (installed once per version list).
fn node_modules() -> PathBuf {
    static MODULES: OnceLock<PathBuf> = OnceLock::new();
    MODULES
        .get_or_init(|| {
            let dir = root().join("target/client-node");
            let marker = dir.join(".installed");
            let wanted = NODE_PACKAGES.join("\n");
            if std::fs::read_to_string(&marker).ok().as_deref() != Some(wanted.as_str()) {
                std::fs::create_dir_all(&dir).unwrap();
                let mut args = vec![
                    "install",
                    "--no-audit",
                    "--no-fund",
                    "--prefix",
                    dir.to_str().unwrap(),
                ];
                args.extend(NODE_PACKAGES);
                run_ok(Path::new("npm"), &args);
                std::fs::write(&marker, wanted).unwrap();
            }
            dir.join("node_modules")
        })
        .clone()
}

/// Who a client program signs in as.
#[derive(Clone, Copy, Debug)]
enum Identity {
    /// `alice`, a local SCRAM user in group `dev`.
    Local,
    /// A person of the development issuer in group `developers`: the token is the password,
    /// the startup user names the role (`app_rw`).
    Oidc,
}

impl Identity {
    const ALL: [Identity; 2] = [Identity::Local, Identity::Oidc];

    fn name(self) -> &'static str {
        match self {
            Identity::Local => "local",
            Identity::Oidc => "oidc",
        }
    }

    /// The requester an approval request names.
    fn requester(self) -> &'static str {
        match self {
            Identity::Local => "alice",
            Identity::Oidc => "dev@example.com",
        }
    }

    /// The row id the program inserts and then deletes with its held statement.
    fn held_id(self) -> i32 {
        match self {
            Identity::Local => 100,
            Identity::Oidc => 200,
        }
    }
}

/// pgwarden with a masking rule, a hold rule, OIDC and the admin API, and a table of the
/// client's own.
struct Matrix {
    issuer: DevIssuer,
    proxy: Proxy,
    admin: SocketAddr,
    table: String,
    /// Row 1's real email, which the programs must never see.
    secret: String,
}

impl Matrix {
    async fn start(client: &str) -> Matrix {
        let h = harness();
        let table = format!("matrix_{client}");
        let secret = format!("p{:012x}@example.com", rand::random::<u64>() >> 16);
        common::direct("app")
            .await
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS {table} CASCADE;\n\
                 CREATE TABLE {table} (id int PRIMARY KEY, name text, email text);\n\
                 INSERT INTO {table} VALUES (1, 'Jane', '{secret}'), (2, 'John', 'john@example.net');\n\
                 ALTER TABLE {table} OWNER TO app_rw;"
            ))
            .await
            .unwrap();
        let issuer = common::https_issuer().await;
        let proxy = Proxy::start(ProxyOptions {
            extra: format!(
                "[[auth.oidc]]\nissuer = \"{issuer}\"\naudience = [\"{AUDIENCE}\"]\nca = \"{ca}\"\n\n\
                 [[access]]\ngroups = [\"developers\", \"dba\"]\ndatabases = [\"app\"]\nroles = [\"app_rw\"]\n\n\
                 [[policy.rules]]\nid = \"matrix-held\"\nstatements = [\"delete\"]\ntables = [\"{table}\"]\naction = \"approve\"\nmessage = \"deleting from {table} needs a DBA\"\n\n\
                 [approvals]\napprover_groups = [\"dba\"]\n\n\
                 [admin]\nlisten = \"127.0.0.1:0\"\n\n\
                 [[masking.rules]]\ntable = \"{table}\"\ncolumn = \"email\"\nstrategy = \"email\"\n",
                issuer = issuer.url(),
                ca = h.certs.ca_cert.display(),
            ),
            ..Default::default()
        })
        .await;
        let admin = proxy.server.as_ref().unwrap().admin_addr().unwrap();
        Matrix {
            issuer,
            proxy,
            admin,
            table,
            secret,
        }
    }

    fn token(&self, name: &str, groups: &[&str]) -> String {
        let person = json!({
            "sub": format!("u-{name}"),
            "email": format!("{name}@example.com"),
            "groups": groups,
        });
        self.issuer.id_token(AUDIENCE, &person, 600)
    }

    /// What a client program gets: where pgwarden and PostgreSQL are and who to be
    /// (documented in tests/clients/matrix_common.py).
    fn env(&self, identity: Identity) -> Vec<(&'static str, String)> {
        let h = harness();
        let (user, password) = match identity {
            Identity::Local => ("alice".to_owned(), ALICE_PASSWORD.to_owned()),
            Identity::Oidc => ("app_rw".to_owned(), self.token("dev", &["developers"])),
        };
        vec![
            ("PGW_HOST", "127.0.0.1".to_owned()),
            ("PGW_PORT", self.proxy.port().to_string()),
            ("PGW_DATABASE", "app".to_owned()),
            ("PGW_USER", user),
            ("PGW_PASSWORD", password),
            ("PGW_CA", h.certs.ca_cert.display().to_string()),
            ("DIRECT_HOST", h.pg.host().to_owned()),
            ("DIRECT_PORT", h.pg.port().to_string()),
            ("DIRECT_USER", h.pg.superuser().to_owned()),
            ("DIRECT_PASSWORD", h.pg.superuser_password().to_owned()),
            ("IDENTITY", identity.name().to_owned()),
            ("TABLE", self.table.clone()),
            ("SECRET_EMAIL", self.secret.clone()),
            ("HELD_ID", identity.held_id().to_string()),
        ]
    }

    /// Drive `work` to completion while approving, as a DBA, every statement pgwarden holds
    /// meanwhile; returns its output and the requests approved.
    async fn approving<T>(&self, work: impl Future<Output = T>) -> (T, Vec<Value>) {
        let dba = self.token("dba", &["dba"]);
        let mut approved = Vec::new();
        tokio::pin!(work);
        let output = tokio::time::timeout(PROGRAM_TIMEOUT, async {
            loop {
                tokio::select! {
                    output = &mut work => break output,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
                let (status, body) = common::admin_api(
                    self.admin,
                    "GET",
                    "/approvals?status=pending",
                    &dba,
                    Value::Null,
                )
                .await;
                assert_eq!(status, 200, "{body}");
                for request in body["requests"].as_array().into_iter().flatten() {
                    let id = request["id"].as_str().unwrap();
                    let (status, answer) = common::admin_api(
                        self.admin,
                        "POST",
                        &format!("/approvals/{id}/approve"),
                        &dba,
                        json!({"reason": "client matrix"}),
                    )
                    .await;
                    assert_eq!(status, 200, "{answer}");
                    approved.push(request.clone());
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("the client did not finish in {PROGRAM_TIMEOUT:?}"));
        (output, approved)
    }

    /// Check one run: the program said "ok" last, never printed the masked value, and
    /// exactly one statement of its identity was held, approved and then ran.
    async fn check_run(&self, identity: Identity, success: bool, said: &str, approved: &[Value]) {
        assert!(
            success && said.trim_end().ends_with("ok"),
            "as {identity:?}:\n{said}"
        );
        assert!(
            !said.contains(&self.secret),
            "the masked value was printed:\n{said}"
        );
        assert_eq!(
            approved.len(),
            1,
            "held statements as {identity:?}: {approved:?}"
        );
        assert_eq!(approved[0]["requester"], identity.requester());
        assert_eq!(approved[0]["rule"], "matrix-held");
        let held_row_left: i64 = common::direct("app")
            .await
            .query_one(
                &format!("SELECT count(*) FROM {} WHERE id = $1", self.table),
                &[&identity.held_id()],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(held_row_left, 0, "the approved DELETE did not run");
    }

    /// Run `program args` once per identity (see the module doc).
    async fn run_program(&self, program: &Path, args: &[&str], env: &[(&str, &Path)]) {
        for identity in Identity::ALL {
            let mut command = tokio::process::Command::new(program);
            command
                .args(args)
                .envs(self.env(identity))
                .envs(env.iter().copied())
                .current_dir(root())
                // No __pycache__ in the source tree.
                .env("PYTHONDONTWRITEBYTECODE", "1")
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true);
            let (output, approved) = self.approving(command.output()).await;
            let output = output.unwrap_or_else(|e| panic!("run {}: {e}", program.display()));
            let said = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            self.check_run(identity, output.status.success(), &said, &approved)
                .await;
        }
    }

    async fn shutdown(self) {
        self.proxy.shutdown(Duration::from_secs(5)).await;
    }
}

fn script(name: &str) -> String {
    format!("tests/clients/{name}")
}

/// A Python client's program (`tests/clients/<script>`) on the shared venv.
async fn python_client(client: &str, script_name: &str) {
    let python = tokio::task::spawn_blocking(python).await.unwrap();
    let matrix = Matrix::start(client).await;
    matrix
        .run_program(&python, &[&script(script_name)], &[])
        .await;
    matrix.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg3() {
    python_client("psycopg", "psycopg_matrix.py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg() {
    python_client("asyncpg", "asyncpg_matrix.py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlalchemy() {
    python_client("sqlalchemy", "sqlalchemy_matrix.py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django() {
    python_client("django", "django_matrix.py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_postgres() {
    let modules = tokio::task::spawn_blocking(node_modules).await.unwrap();
    let matrix = Matrix::start("node").await;
    matrix
        .run_program(
            Path::new("node"),
            &[&script("pg_matrix.js")],
            &[("NODE_PATH", &modules)],
        )
        .await;
    matrix.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgjdbc() {
    assert!(
        Path::new(JDBC_JAR).exists(),
        "{JDBC_JAR} is missing: scripts/deps.sh installs libpostgresql-jdbc-java"
    );
    let matrix = Matrix::start("jdbc").await;
    // Java 17 runs a single source file directly (JEP 330): no build step.
    matrix
        .run_program(
            Path::new("java"),
            &["-cp", JDBC_JAR, &script("JdbcMatrix.java")],
            &[],
        )
        .await;
    matrix.shutdown().await;
}

/// sqlx's own Postgres driver (runtime-checked queries: `query`, `query_as`, `query_scalar`),
/// in-process, once per identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlx() {
    let matrix = Matrix::start("sqlx").await;
    for identity in Identity::ALL {
        let env: HashMap<_, _> = matrix.env(identity).into_iter().collect();
        let (result, approved) = matrix.approving(sqlx_session(&env)).await;
        let said = match result {
            Ok(()) => "ok".to_owned(),
            Err(e) => format!("sqlx as {identity:?}: {e}"),
        };
        matrix.check_run(identity, true, &said, &approved).await;
    }
    matrix.shutdown().await;
}

/// What the other clients' programs do, with sqlx; `Err` says which check failed. Table names
/// are the harness's own identifiers, so the dynamic SQL is asserted safe.
async fn sqlx_session(env: &HashMap<&str, String>) -> Result<(), String> {
    use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
    use sqlx::{AssertSqlSafe, Connection, Row};

    fn check(condition: bool, what: impl std::fmt::Display) -> Result<(), String> {
        condition.then_some(()).ok_or_else(|| what.to_string())
    }
    let error = |e: sqlx::Error| e.to_string();
    let table = &env["TABLE"];
    let held_id: i32 = env["HELD_ID"].parse().unwrap();
    let proxy_options = PgConnectOptions::new_without_pgpass()
        .host(&env["PGW_HOST"])
        .port(env["PGW_PORT"].parse().unwrap())
        .database(&env["PGW_DATABASE"])
        .username(&env["PGW_USER"])
        .password(&env["PGW_PASSWORD"])
        .ssl_mode(PgSslMode::VerifyFull)
        .ssl_root_cert(&env["PGW_CA"]);
    let direct_options = PgConnectOptions::new_without_pgpass()
        .host(&env["DIRECT_HOST"])
        .port(env["DIRECT_PORT"].parse().unwrap())
        .database(&env["PGW_DATABASE"])
        .username(&env["DIRECT_USER"])
        .password(&env["DIRECT_PASSWORD"])
        .ssl_mode(PgSslMode::Disable);
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(proxy_options)
        .await
        .map_err(error)?;
    let mut direct = sqlx::PgConnection::connect_with(&direct_options)
        .await
        .map_err(error)?;

    let user: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&pool)
        .await
        .map_err(error)?;
    check(user == "app_rw", format!("upstream role {user}"))?;

    // The same rows as a direct connection (binary results; statements cached per
    // connection and reused).
    let query = format!(
        "SELECT id, name, $1::int8 * id AS product, ARRAY[id, $1::int4] AS arr \
         FROM {table} WHERE id <= 2 ORDER BY id"
    );
    type Typed = (i32, Option<String>, i64, Vec<i32>);
    for _ in 0..5 {
        let mine: Vec<Typed> = sqlx::query_as(AssertSqlSafe(query.as_str()))
            .bind(7_i32)
            .fetch_all(&pool)
            .await
            .map_err(error)?;
        let theirs: Vec<Typed> = sqlx::query_as(AssertSqlSafe(query.as_str()))
            .bind(7_i32)
            .fetch_all(&mut direct)
            .await
            .map_err(error)?;
        check(mine == theirs, format!("{mine:?} != {theirs:?}"))?;
    }

    // A masked column decodes as an ordinary String.
    let row = sqlx::query(AssertSqlSafe(format!(
        "SELECT id, email FROM {table} WHERE id = $1"
    )))
    .bind(1_i32)
    .fetch_one(&pool)
    .await
    .map_err(error)?;
    let email: String = row.try_get("email").map_err(error)?;
    check(
        email.ends_with("***@example.com") && email != env["SECRET_EMAIL"],
        format!("masked: {email}"),
    )?;

    // A refusal is sqlx::Error::Database with 42501 and pgwarden's message; the pool goes on.
    for refused in [
        sqlx::query(AssertSqlSafe(format!("DROP TABLE {table}"))),
        sqlx::query("SELECT pg_read_file($1)").bind("/etc/hostname"),
    ] {
        match refused.execute(&pool).await {
            Err(sqlx::Error::Database(e)) => check(
                e.code().as_deref() == Some("42501") && e.message().contains("pgwarden"),
                format!("refusal: {:?} {}", e.code(), e.message()),
            )?,
            other => return Err(format!("not refused: {other:?}")),
        }
    }
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&pool)
        .await
        .map_err(error)?;
    check(one == 1, "usable after refusals")?;

    // A held statement waits for the DBA, then completes.
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {table} VALUES ($1, 'held', 'held@example.org')"
    )))
    .bind(held_id)
    .execute(&pool)
    .await
    .map_err(error)?;
    let deleted = sqlx::query(AssertSqlSafe(format!("DELETE FROM {table} WHERE id = $1")))
        .bind(held_id)
        .execute(&pool)
        .await
        .map_err(error)?;
    check(
        deleted.rows_affected() == 1,
        format!("held DELETE: {}", deleted.rows_affected()),
    )?;

    // A transaction and concurrent use of the pool.
    let mut tx = pool.begin().await.map_err(error)?;
    sqlx::query("CREATE TEMP TABLE sqlx_tx (id int) ON COMMIT DROP")
        .execute(&mut *tx)
        .await
        .map_err(error)?;
    let inserted = sqlx::query("INSERT INTO sqlx_tx SELECT generate_series(1, 10)")
        .execute(&mut *tx)
        .await
        .map_err(error)?;
    check(inserted.rows_affected() == 10, "insert in a transaction")?;
    tx.commit().await.map_err(error)?;
    let doubled = futures_util::future::join_all((0..16_i32).map(|i| {
        sqlx::query_scalar::<_, i32>("SELECT $1::int4 * 2")
            .bind(i)
            .fetch_one(&pool)
    }))
    .await;
    let doubled: Vec<i32> = doubled
        .into_iter()
        .collect::<Result<_, _>>()
        .map_err(error)?;
    check(
        doubled == (0..16).map(|i| i * 2).collect::<Vec<_>>(),
        format!("pool: {doubled:?}"),
    )?;
    pool.close().await;
    Ok(())
}
