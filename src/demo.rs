//! `pgwarden demo`: a throwaway PostgreSQL with sample data, pgwarden in front of it, and
//! instructions to connect. Everything lives in one temp dir, removed on Ctrl-C.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::app::{AppError, Server};
use crate::audit::checkpoint::{PublicKey, SigningKey};
use crate::audit::verify::verify_dir_with;
use crate::auth::scram::hash_password;
use crate::config::Config;
use crate::testbed::{self, PostgresOptions, TestbedError, ThrowawayPostgres};

/// The demo's people: (user, password, group, upstream role).
const DEMO_USERS: [(&str, &str, &str, &str); 2] = [
    ("developer", "demo", "developers", "app_rw"),
    ("analyst", "demo", "analysts", "app_ro"),
];

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{0}")]
    Testbed(#[from] TestbedError),
    #[error("{0}")]
    App(#[from] AppError),
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("the smoke test failed: {0}")]
    Smoke(String),
    #[error("audit: {0}")]
    Audit(String),
    #[error("background task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Run the demo until Ctrl-C (or, with `smoke_test`, until one query went through).
pub async fn run(listen: SocketAddr, smoke_test: bool) -> Result<(), DemoError> {
    println!("Starting a throwaway PostgreSQL server (this takes a few seconds)...");
    let postgres = tokio::task::spawn_blocking(start_postgres).await??;
    let dir = postgres
        .data_dir()
        .parent()
        .unwrap_or(postgres.data_dir())
        .to_owned();
    let certs = testbed::write_test_certificates(&dir)?;
    let audit = AuditFiles::create(&dir)?;
    let config_path = dir.join("pgwarden.toml");
    let config_text = demo_config(listen, &postgres, &certs, &audit, &dir)?;
    write(&config_path, &config_text)?;
    let config = Config::load(&config_path).map_err(AppError::from)?;
    let server = Server::start(config).await?;
    let addr = server.local_addr();

    let result = if smoke_test {
        smoke(addr, &certs.ca_cert).await
    } else {
        print_tour(addr, &config_path, &certs.ca_cert, &audit);
        wait_for_signal().await;
        println!("\nStopping pgwarden and PostgreSQL...");
        Ok(())
    };
    server.shutdown(Duration::from_secs(2)).await;
    let result = result.and_then(|()| audit.verify(smoke_test));
    tokio::task::spawn_blocking(move || drop(postgres)).await?;
    result
}

fn start_postgres() -> Result<ThrowawayPostgres, TestbedError> {
    let postgres = ThrowawayPostgres::start(PostgresOptions::default())?;
    let mut setup = String::new();
    for (_, _, _, role) in DEMO_USERS {
        // Passwords are set when the config is written: only pgwarden ever knows them.
        setup.push_str(&format!("CREATE ROLE {role} LOGIN;\n"));
    }
    setup.push_str("CREATE DATABASE shop OWNER app_rw;\n");
    postgres.psql("postgres", &setup)?;
    let schema = format!(
        "SET ROLE app_rw;\n{}\nGRANT SELECT ON ALL TABLES IN SCHEMA public TO app_ro;\n",
        testbed::SAMPLE_SCHEMA
    );
    postgres.psql("shop", &schema)?;
    Ok(postgres)
}

/// The demo's audit log: directory, signing key and the public key reviewers use.
struct AuditFiles {
    dir: PathBuf,
    key: PathBuf,
    public_key: PathBuf,
}

impl AuditFiles {
    fn create(dir: &Path) -> Result<Self, DemoError> {
        let files = Self {
            dir: dir.join("audit"),
            key: dir.join("audit.key"),
            public_key: dir.join("audit.pub"),
        };
        let pem = SigningKey::generate_pem().map_err(DemoError::Audit)?;
        let key = SigningKey::from_pem(&pem).map_err(DemoError::Audit)?;
        write(&files.key, &pem)?;
        write(&files.public_key, &key.public_key())?;
        Ok(files)
    }

    /// Check the log the demo wrote, as a reviewer would; the smoke test insists on it.
    fn verify(&self, strict: bool) -> Result<(), DemoError> {
        let public = PublicKey::load(&self.public_key).map_err(DemoError::Audit)?;
        let report = verify_dir_with(&self.dir, Some(&public))
            .map_err(|e| DemoError::Audit(e.to_string()))?;
        if report.is_clean() && report.checkpoints > 0 {
            if strict {
                println!(
                    "audit log verified: {} records, {} signed checkpoint(s)",
                    report.records, report.checkpoints
                );
            }
            return Ok(());
        }
        let problems: Vec<String> = report.problems.iter().map(ToString::to_string).collect();
        Err(DemoError::Audit(format!(
            "the demo's audit log does not verify: {problems:?}"
        )))
    }
}

fn demo_config(
    listen: SocketAddr,
    postgres: &ThrowawayPostgres,
    certs: &testbed::TestCertificates,
    audit: &AuditFiles,
    dir: &Path,
) -> Result<String, DemoError> {
    let mut text = format!(
        "# Written by `pgwarden demo`; see config/example.toml for every key.\n\
         [server]\nlisten = \"{listen}\"\n\n\
         [server.tls]\nmode = \"optional\"\ncert = \"{}\"\nkey = \"{}\"\n\n\
         [upstream]\nhost = \"{}\"\nport = {}\nsslmode = \"disable\"\n\n\
         [audit]\ndir = \"{}\"\nsigning_key = \"file:{}\"\ncheckpoint_interval = \"10s\"\n",
        certs.server_cert.display(),
        certs.server_key.display(),
        postgres.host(),
        postgres.port(),
        audit.dir.display(),
        audit.key.display(),
    );
    for (user, password, group, role) in DEMO_USERS {
        // The upstream password lives in a file only pgwarden reads.
        let secret = dir.join(format!("{role}.password"));
        let upstream_password = crate::testbed::random_password();
        postgres.psql(
            "postgres",
            &format!("ALTER ROLE {role} PASSWORD '{upstream_password}';"),
        )?;
        write(&secret, &upstream_password)?;
        text.push_str(&format!(
            "\n[[upstream.roles]]\nname = \"{role}\"\npassword = \"file:{}\"\n\n\
             [[auth.local]]\nname = \"{user}\"\nscram = \"{}\"\ngroups = [\"{group}\"]\n\n\
             [[access]]\ngroups = [\"{group}\"]\ndatabases = [\"shop\"]\nroles = [\"{role}\"]\n",
            secret.display(),
            hash_password(password.as_bytes()),
        ));
    }
    Ok(text)
}

fn write(path: &Path, text: &str) -> Result<(), DemoError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|source| DemoError::Write {
            path: path.display().to_string(),
            source,
        })
}

fn print_tour(addr: SocketAddr, config: &Path, ca: &Path, audit: &AuditFiles) {
    let (host, port) = (addr.ip(), addr.port());
    println!(
        r#"
pgwarden is running on {addr}, in front of a throwaway PostgreSQL with a sample
`shop` database (customers with fake PII, orders).

Connect as the developer (password: demo), over TLS verified against the demo CA:

    psql "host={host} port={port} dbname=shop user=developer sslmode=verify-full sslrootcert={ca}"

or, without typing the password:

    PGPASSWORD=demo psql "host={host} port={port} dbname=shop user=developer sslmode=require"

Things to try:

    SELECT full_name, email, card_number FROM customers LIMIT 5;
    \d customers
    \copy orders TO 'orders.csv' CSV HEADER
    DELETE FROM orders;           -- refused by pgwarden: no WHERE (rule guardrail.no-where)
    DROP TABLE customers;         -- refused by pgwarden (rule guardrail.drop)

The analyst (password: demo) is read-only upstream, so PostgreSQL itself refuses writes:

    PGPASSWORD=demo psql "host={host} port={port} dbname=shop user=analyst" -c 'DELETE FROM orders WHERE id = 1'

Every statement (literals replaced by $n, with rows and errors), login, failed login and
session is in a hash-chained, signed audit log:

    pgwarden audit search {audit_dir} --user developer
    pgwarden audit verify {audit_dir} --pubkey {pubkey}

The config pgwarden is using: {config}
Press Ctrl-C to stop; everything is removed.
"#,
        config = config.display(),
        ca = ca.display(),
        audit_dir = audit.dir.display(),
        pubkey = audit.public_key.display(),
    );
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Run one real query through pgwarden with psql, as the developer, over verified TLS.
async fn smoke(addr: SocketAddr, ca: &Path) -> Result<(), DemoError> {
    let psql = testbed::PgBinaries::discover()?.tool("psql");
    let conninfo = format!(
        "host={} port={} dbname=shop user=developer sslmode=verify-full sslrootcert={}",
        addr.ip(),
        addr.port(),
        ca.display()
    );
    let output = tokio::process::Command::new(psql)
        .args([
            "-X",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            "SELECT count(*) FROM customers",
            &conninfo,
        ])
        .env("PGPASSWORD", "demo")
        .env_remove("PGSSLMODE")
        .output()
        .await
        .map_err(|e| DemoError::Smoke(format!("cannot run psql: {e}")))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() || stdout.trim().parse::<u32>().map_or(true, |n| n == 0) {
        return Err(DemoError::Smoke(format!(
            "psql said: {}{}",
            stdout.trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    println!(
        "smoke test passed: {} customers through pgwarden",
        stdout.trim()
    );
    Ok(())
}
