//! Drivers people use, through pgwarden over TLS (issue #9): each client's own test program
//! in `tests/clients/` runs against pgwarden and, for comparison, PostgreSQL directly.
//! Drivers are installed on first use under `target/` (a Python venv from PyPI), so a fresh
//! machine needs only what `scripts/deps.sh` installs.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{harness, Proxy, ProxyOptions, ALICE_PASSWORD};

/// Pinned driver versions (also listed in README.md).
const PSYCOPG: &str = "psycopg[binary]==3.3.9";

/// A Python venv under target/ with the drivers installed (created once).
fn python_venv() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let venv = root.join("target/client-venv");
    let python = venv.join("bin/python");
    let marker = venv.join(".installed");
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(PSYCOPG) {
        return python;
    }
    let run = |program: &Path, args: &[&str]| {
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
    };
    run(
        Path::new("python3"),
        &["-m", "venv", venv.to_str().unwrap()],
    );
    run(
        &python,
        &[
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            PSYCOPG,
        ],
    );
    std::fs::write(&marker, PSYCOPG).unwrap();
    python
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg3() {
    let python = tokio::task::spawn_blocking(python_venv).await.unwrap();
    let table = "matrix_psycopg";
    let secret = format!("p{:012x}@example.com", rand::random::<u64>() >> 16);
    common::direct("app")
        .await
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {table};\n\
             CREATE TABLE {table} (id int PRIMARY KEY, name text, email text);\n\
             INSERT INTO {table} VALUES (1, 'Jane', '{secret}'), (2, 'John', 'john@example.net');\n\
             ALTER TABLE {table} OWNER TO app_rw;"
        ))
        .await
        .unwrap();
    let proxy = Proxy::start(ProxyOptions {
        extra: format!(
            "[[masking.rules]]\ntable = \"{table}\"\ncolumn = \"email\"\nstrategy = \"email\"\n"
        ),
        ..Default::default()
    })
    .await;
    let h = harness();
    let proxy_dsn = format!(
        "host=127.0.0.1 port={} dbname=app user=alice password={ALICE_PASSWORD} sslmode=require",
        proxy.port()
    );
    let direct_dsn = format!(
        "host={} port={} dbname=app user={} password={} sslmode=disable",
        h.pg.host(),
        h.pg.port(),
        h.pg.superuser(),
        h.pg.superuser_password()
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/psycopg_matrix.py");
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(&python)
            .arg(&script)
            .env("PROXY_DSN", &proxy_dsn)
            .env("DIRECT_DSN", &direct_dsn)
            .env("TABLE", table)
            .env("SECRET_EMAIL", &secret)
            .output(),
    )
    .await
    .expect("the psycopg matrix did not finish in 120 s")
    .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && said.trim_end().ends_with("ok"),
        "psycopg through pgwarden:\n{said}"
    );
    assert!(!said.contains(&secret), "the masked value was printed");
    proxy.shutdown(Duration::from_secs(5)).await;
}
