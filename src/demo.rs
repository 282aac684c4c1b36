//! `pgwarden demo`: a throwaway PostgreSQL with sample data, a development OIDC issuer with two
//! people (a developer and a DBA), pgwarden in front of it all, and instructions to connect.
//! Everything lives in one temp dir, removed on Ctrl-C.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::app::{AppError, Server};
use crate::audit::checkpoint::{PublicKey, SigningKey};
use crate::audit::verify::verify_dir_with;
use crate::auth::scram::hash_password;
use crate::config::Config;
use crate::testbed::{
    self, DevIssuer, KeyAlgorithm, PostgresOptions, TestbedError, ThrowawayPostgres,
};

/// Upstream roles pgwarden logs in as.
const UPSTREAM_ROLES: [&str; 2] = ["app_rw", "app_ro"];

/// People who sign in through the development issuer: (id, email, groups).
const DEMO_PEOPLE: [(&str, &str, &[&str]); 2] = [
    ("dev", "dev@example.com", &["developers"]),
    ("dba", "dba@example.com", &["dba", "pii-readers"]),
];

/// A local (SCRAM) service account: (user, password, group).
const SERVICE_ACCOUNT: (&str, &str, &str) = ("report-bot", "demo", "reporting");

/// The client id `pgwarden login` uses against the demo issuer.
const DEMO_CLIENT_ID: &str = "pgwarden-cli";

/// Lifetime of the ready-made tokens the demo writes to files.
const READY_TOKEN_TTL_SECS: i64 = 8 * 3600;

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
    #[error("the development issuer: {0}")]
    Issuer(String),
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
    let issuer = start_issuer(&dir).await?;
    let config_path = dir.join("pgwarden.toml");
    let config_text = demo_config(listen, &postgres, &certs, &audit, &issuer.issuer, &dir)?;
    write(&config_path, &config_text)?;
    let config = Config::load(&config_path).map_err(AppError::from)?;
    let server = Server::start(config).await?;
    let addr = server.local_addr();
    let admin = server
        .admin_addr()
        .map_or_else(String::new, |a| format!("http://{a}"));

    let result = if smoke_test {
        smoke(addr, &certs.ca_cert, &issuer, &admin).await
    } else {
        print_tour(addr, &config_path, &certs.ca_cert, &audit, &issuer, &admin);
        wait_for_signal().await;
        println!("\nStopping pgwarden and PostgreSQL...");
        Ok(())
    };
    server.shutdown(Duration::from_secs(2)).await;
    let result = result.and_then(|()| audit.verify(smoke_test));
    tokio::task::spawn_blocking(move || drop(postgres)).await?;
    result
}

/// The development issuer and the ready-made tokens written next to the config.
struct DemoIssuer {
    issuer: DevIssuer,
    /// Person id → file holding an ID token for them.
    token_files: Vec<(&'static str, PathBuf)>,
}

async fn start_issuer(dir: &Path) -> Result<DemoIssuer, DemoError> {
    let issuer = DevIssuer::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        None,
        KeyAlgorithm::Rs256,
    )
    .await
    .map_err(DemoError::Issuer)?;
    let mut token_files = Vec::new();
    for (id, email, groups) in DEMO_PEOPLE {
        let claims = serde_json::json!({
            "sub": format!("demo-{id}"),
            "email": email,
            "name": id,
            "groups": groups,
        });
        issuer.add_person(id, claims.clone());
        let file = dir.join(format!("{id}.token"));
        write(
            &file,
            &issuer.id_token(DEMO_CLIENT_ID, &claims, READY_TOKEN_TTL_SECS),
        )?;
        token_files.push((id, file));
    }
    Ok(DemoIssuer {
        issuer,
        token_files,
    })
}

impl DemoIssuer {
    fn token_file(&self, id: &str) -> PathBuf {
        self.token_files
            .iter()
            .find(|(person, _)| *person == id)
            .map(|(_, file)| file.clone())
            .unwrap_or_default()
    }
}

fn start_postgres() -> Result<ThrowawayPostgres, TestbedError> {
    let postgres = ThrowawayPostgres::start(PostgresOptions::default())?;
    let mut setup = String::new();
    for role in UPSTREAM_ROLES {
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
        let report = verify_dir_with(&self.dir, std::slice::from_ref(&public), &[])
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
    issuer: &DevIssuer,
    dir: &Path,
) -> Result<String, DemoError> {
    // The key of the `hash` strategy: masked values stay stable (joinable) across restarts.
    let masking_key = dir.join("masking.key");
    write(&masking_key, &crate::testbed::random_password())?;
    let mut text = format!(
        "# Written by `pgwarden demo`; see config/example.toml for every key.\n\
         [server]\nlisten = \"{listen}\"\n\n\
         [server.tls]\nmode = \"optional\"\ncert = \"{}\"\nkey = \"{}\"\n\n\
         [upstream]\nhost = \"{}\"\nport = {}\nsslmode = \"disable\"\n\n\
         [audit]\ndir = \"{}\"\nsigning_key = \"file:{}\"\ncheckpoint_interval = \"10s\"\n\n\
         # People sign in with tokens from the development issuer (plain http: loopback only).\n\
         [[auth.oidc]]\nissuer = \"{issuer}\"\naudience = [\"pgwarden\", \"{DEMO_CLIENT_ID}\"]\nallow_http = true\n\n\
         [[auth.local]]\nname = \"{bot}\"\nscram = \"{verifier}\"\ngroups = [\"{bot_group}\"]\n\n\
         [[access]]\ngroups = [\"developers\"]\ndatabases = [\"shop\"]\nroles = [\"app_rw\"]\n\n\
         [[access]]\ngroups = [\"dba\"]\ndatabases = [\"shop\"]\nroles = [\"app_rw\", \"app_ro\"]\n\n\
         [[access]]\ngroups = [\"{bot_group}\"]\ndatabases = [\"shop\"]\nroles = [\"app_ro\"]\n\n\
         # Developers' deletes from orders need a declared intent, then wait for a DBA\n\
         # (DELETE without WHERE is refused outright).\n\
         [[policy.rules]]\nid = \"orders-deletes-need-a-dba\"\ngroups = [\"developers\"]\nstatements = [\"delete\"]\ntables = [\"orders\"]\naction = \"approve\"\nrequire_intent = true\nmessage = \"deleting orders needs a DBA's approval\"\n\n\
         [approvals]\napprover_groups = [\"dba\"]\ntimeout = \"10m\"\n\n\
         # Customers' personal data is masked for everyone but pii-readers; the detectors\n\
         # (on by default) catch personal data in any other column.\n\
         [masking]\nhash_key = \"file:{masking_key}\"\nexempt_groups = [\"pii-readers\"]\n\n\
         [[masking.rules]]\ntable = \"public.customers\"\ncolumn = \"email\"\nstrategy = \"email\"\n\n\
         [[masking.rules]]\ntable = \"public.customers\"\ncolumn = \"card_number\"\nstrategy = \"partial\"\nkeep = 4\n\n\
         [[masking.rules]]\ntable = \"public.customers\"\ncolumn = \"ssn\"\nstrategy = \"redact\"\n\n\
         [[masking.rules]]\ntable = \"public.customers\"\ncolumn = \"phone\"\nstrategy = \"hash\"\n\n\
         # DBAs see every running session and may end one (pgwarden sessions).\n\
         [admin]\nlisten = \"127.0.0.1:0\"\noperator_groups = [\"dba\"]\n",
        certs.server_cert.display(),
        certs.server_key.display(),
        postgres.host(),
        postgres.port(),
        audit.dir.display(),
        audit.key.display(),
        issuer = issuer.url(),
        bot = SERVICE_ACCOUNT.0,
        verifier = hash_password(SERVICE_ACCOUNT.1.as_bytes()),
        bot_group = SERVICE_ACCOUNT.2,
        masking_key = masking_key.display(),
    );
    for role in UPSTREAM_ROLES {
        // The upstream password lives in a file only pgwarden reads.
        let secret = dir.join(format!("{role}.password"));
        let upstream_password = crate::testbed::random_password();
        postgres.psql(
            "postgres",
            &format!("ALTER ROLE {role} PASSWORD '{upstream_password}';"),
        )?;
        write(&secret, &upstream_password)?;
        text.push_str(&format!(
            "\n[[upstream.roles]]\nname = \"{role}\"\npassword = \"file:{}\"\n",
            secret.display(),
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

fn print_tour(
    addr: SocketAddr,
    config: &Path,
    ca: &Path,
    audit: &AuditFiles,
    issuer: &DemoIssuer,
    admin: &str,
) {
    let (host, port) = (addr.ip(), addr.port());
    println!(
        r#"
pgwarden is running on {addr}, in front of a throwaway PostgreSQL with a sample
`shop` database (customers with fake PII, orders). People sign in with their identity
provider; here that is a development issuer at {issuer_url}
with two people: dev (group developers) and dba (groups dba, pii-readers).

Sign in as a person, the way your team would (device flow: open the URL it prints and
choose who you are), then connect with the token as the password:

    pgwarden login --issuer {issuer_url} --client-id {client_id}
    PGPASSWORD="$(pgwarden token)" psql "host={host} port={port} dbname=shop user=dev@example.com sslmode=verify-full sslrootcert={ca}"

Or skip the browser with the ready-made tokens (valid 8 hours):

    PGPASSWORD="$(cat {dev_token})" psql "host={host} port={port} dbname=shop user=dev@example.com sslmode=require"
    PGPASSWORD="$(cat {dba_token})" psql "host={host} port={port} dbname=shop user=app_ro sslmode=require"

(The startup user names the database role you want; your own name means your default role.)

Things to try as dev:

    SELECT full_name, email, phone, card_number, ssn FROM customers LIMIT 5;   -- masked
    SELECT lower(email), row_to_json(c) FROM customers c LIMIT 2;             -- masked too
    \d customers
    \copy orders TO 'orders.csv' CSV HEADER
    DELETE FROM orders;           -- refused by pgwarden: no WHERE (rule guardrail.no-where)
    DROP TABLE customers;         -- refused by pgwarden (rule guardrail.drop)
    DELETE FROM orders WHERE id = 1;   -- refused: say why first (rule orders-deletes-need-a-dba)
    SET pgwarden.intent = 'DEMO-1: duplicate order';
    DELETE FROM orders WHERE id = 1;   -- held: waits for a DBA, pgwarden prints the request id

The DBA is a pii-reader and sees the real values:

    PGPASSWORD="$(cat {dba_token})" psql "host={host} port={port} dbname=shop user=app_ro sslmode=require" -c 'SELECT full_name, email, card_number FROM customers LIMIT 5'

While dev's DELETE waits, approve it as the DBA from a second terminal:

    export PGWARDEN_ADMIN={admin} PGWARDEN_TOKEN="$(cat {dba_token})"
    pgwarden approvals list
    pgwarden approvals approve <request id> --reason "demo"    # dev's DELETE runs now

and find the DELETE, with its intent, in the audit log:

    pgwarden audit search {audit_dir} --intent DEMO-1

From the same terminal, see who is connected, and end a session (the DBA is an operator
here; dev would see only their own sessions):

    pgwarden sessions list
    pgwarden sessions end <session> --reason "demo"         # its client gets FATAL 57P01

A service account signs in with a password (SCRAM) instead, and is read-only upstream:

    PGPASSWORD={bot_password} psql "host={host} port={port} dbname=shop user={bot} sslmode=require" -c 'DELETE FROM orders WHERE id = 1'

Every statement (literals replaced by $n, with rows and errors), login, failed login and
session is in a hash-chained, signed audit log, with the person behind it:

    pgwarden audit search {audit_dir} --user dev@example.com
    pgwarden audit verify {audit_dir} --pubkey {pubkey}

The config pgwarden is using: {config}
Press Ctrl-C to stop; everything is removed.
"#,
        config = config.display(),
        ca = ca.display(),
        audit_dir = audit.dir.display(),
        pubkey = audit.public_key.display(),
        issuer_url = issuer.issuer.url(),
        client_id = DEMO_CLIENT_ID,
        dev_token = issuer.token_file("dev").display(),
        dba_token = issuer.token_file("dba").display(),
        bot = SERVICE_ACCOUNT.0,
        bot_password = SERVICE_ACCOUNT.1,
        admin = admin,
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

/// Run real queries through pgwarden with psql over verified TLS: as dev with the
/// ready-made token, and as the service account with its password.
async fn smoke(
    addr: SocketAddr,
    ca: &Path,
    issuer: &DemoIssuer,
    admin: &str,
) -> Result<(), DemoError> {
    let read = |id: &str| {
        std::fs::read_to_string(issuer.token_file(id))
            .map(|t| t.trim().to_owned())
            .map_err(|e| DemoError::Smoke(format!("cannot read the ready-made token: {e}")))
    };
    let token = read("dev")?;
    let count = psql(
        addr,
        ca,
        "dev@example.com",
        &token,
        "SELECT count(*) FROM customers",
    )
    .await?
    .parse::<u32>()
    .unwrap_or(0);
    if count == 0 {
        return Err(DemoError::Smoke("no customers through pgwarden".into()));
    }
    println!("smoke test passed: {count} customers through pgwarden, signed in as dev@example.com");
    // Masking: dev sees the shape of the customers' PII, the DBA (a pii-reader) the values.
    let query =
        "SELECT email || ' ' || coalesce(card_number, '') FROM customers ORDER BY id LIMIT 1";
    let masked = psql(addr, ca, "dev@example.com", &token, query).await?;
    let real = psql(addr, ca, "app_ro", &read("dba")?, query).await?;
    let real_email = real.split_whitespace().next().unwrap_or_default();
    if !real_email.contains('@') || masked.contains(real_email) {
        return Err(DemoError::Smoke(
            "customers' PII was not masked for dev, or not visible to the DBA".into(),
        ));
    }
    let masked = psql(
        addr,
        ca,
        "dev@example.com",
        &token,
        "SELECT email FROM customers ORDER BY id LIMIT 1",
    )
    .await?;
    if !masked.trim().contains("***@") {
        return Err(DemoError::Smoke("dev's email column was not masked".into()));
    }
    println!(
        "smoke test passed: customers' PII masked for dev ({}), visible to the DBA",
        masked.trim()
    );
    let count = psql(
        addr,
        ca,
        SERVICE_ACCOUNT.0,
        SERVICE_ACCOUNT.1,
        "SELECT count(*) FROM customers",
    )
    .await?;
    println!("smoke test passed: {count} customers as the service account");

    // Without a declared intent, the DELETE is refused outright.
    match psql(
        addr,
        ca,
        "dev@example.com",
        &token,
        "DELETE FROM orders WHERE id = 1",
    )
    .await
    {
        Err(DemoError::Smoke(message)) if message.contains("needs a declared intent") => {
            println!("smoke test passed: a DELETE without a declared intent was refused");
        }
        other => {
            return Err(DemoError::Smoke(format!(
                "a DELETE without intent was not refused for it: {other:?}"
            )))
        }
    }
    // The held DELETE, approved by the DBA through the admin API, as the tour does it.
    let delete = psql(
        addr,
        ca,
        "dev@example.com",
        &token,
        "SET pgwarden.intent = 'DEMO-1: smoke test'; DELETE FROM orders WHERE id = (SELECT max(id) FROM orders)",
    );
    let approve = async {
        let target = crate::admin::client::Target {
            admin: admin.to_owned(),
            issuer: None,
            ca: None,
            json: true,
            token: Some(read("dba")?),
        };
        for _ in 0..100 {
            let listed =
                crate::admin::client::run(&target, crate::admin::client::Call::List { all: false })
                    .await
                    .map_err(DemoError::Smoke)?;
            let listed: serde_json::Value = serde_json::from_str(&listed).unwrap_or_default();
            if let Some(id) = listed["requests"][0]["id"].as_str() {
                // The waiting session is listed for the DBA, as the tour shows.
                let sessions =
                    crate::admin::client::run(&target, crate::admin::client::Call::Sessions)
                        .await
                        .map_err(DemoError::Smoke)?;
                if !sessions.contains("dev@example.com") {
                    return Err(DemoError::Smoke(format!(
                        "the DBA does not see dev's session: {sessions}"
                    )));
                }
                let call = crate::admin::client::Call::Approve {
                    id: id.to_owned(),
                    reason: Some("demo smoke test".into()),
                    grant: None,
                };
                crate::admin::client::run(&target, call)
                    .await
                    .map_err(DemoError::Smoke)?;
                return Ok(id.to_owned());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(DemoError::Smoke(
            "the DELETE was not held for approval".into(),
        ))
    };
    let (deleted, approved) = tokio::join!(delete, approve);
    let (deleted, id) = (deleted?, approved?);
    if !deleted.ends_with("DELETE 1") {
        return Err(DemoError::Smoke(format!(
            "the approved DELETE said: {deleted}"
        )));
    }
    println!(
        "smoke test passed: dev's DELETE was held as request {id}, approved by the DBA, and ran"
    );
    Ok(())
}

/// Run one statement with psql over verified TLS; its output (tuples only).
async fn psql(
    addr: SocketAddr,
    ca: &Path,
    user: &str,
    password: &str,
    sql: &str,
) -> Result<String, DemoError> {
    let psql = testbed::PgBinaries::discover()?.tool("psql");
    let conninfo = format!(
        "host={} port={} dbname=shop user={user} sslmode=verify-full sslrootcert={}",
        addr.ip(),
        addr.port(),
        ca.display()
    );
    let output = tokio::process::Command::new(psql)
        .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql, &conninfo])
        .env("PGPASSWORD", password)
        .env_remove("PGSSLMODE")
        .output()
        .await
        .map_err(|e| DemoError::Smoke(format!("cannot run psql: {e}")))?;
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(DemoError::Smoke(format!(
            "psql as {user} said: {stdout}{}",
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}
