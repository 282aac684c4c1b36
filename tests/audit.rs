//! The audit log through real clients: logins, sessions and failures are recorded with the
//! identity, never with a secret, and the directory verifies clean.

mod common;

use common::{sqlstate, Proxy, ProxyOptions, ALICE_PASSWORD};

use common::{all_records, audit_dir};

/// A pgwarden with the default test config plus `[audit] dir`.
async fn proxy_auditing_to(dir: &std::path::Path) -> Proxy {
    Proxy::start(ProxyOptions {
        extra: format!("[audit]\ndir = \"{}\"\n", dir.display()),
        ..Default::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_and_failed_logins_are_audited_without_secrets() {
    let dir = audit_dir("sessions");
    let proxy = proxy_auditing_to(&dir).await;
    let conninfo = proxy.conninfo(
        "alice",
        ALICE_PASSWORD,
        "sslmode=disable application_name=billing",
    );
    let client = proxy.try_connect(&conninfo).await.unwrap();
    client.simple_query("SELECT 1; SELECT 2").await.unwrap();
    drop(client);
    let wrong = "Not-Alices-Secret-42";
    let err = proxy
        .try_connect(&proxy.conninfo("alice", wrong, "sslmode=disable"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("28P01"));
    // Signed in, but kept out of the database by [[access]]: the failure is bob's.
    let conninfo = proxy
        .conninfo("bob", common::BOB_PASSWORD, "sslmode=disable")
        .replace("dbname=app", "dbname=postgres");
    let err = proxy.try_connect(&conninfo).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("28000"));
    // Let the session end be recorded, then stop (which flushes).
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    proxy.shutdown(std::time::Duration::from_secs(2)).await;

    let records = all_records(&dir);
    let kinds: Vec<&str> = records
        .iter()
        .map(|r| r["type"].as_str().unwrap())
        .collect();
    for kind in [
        "file.start",
        "proxy.start",
        "session.start",
        "session.end",
        "auth.failure",
        "proxy.stop",
    ] {
        assert!(kinds.contains(&kind), "no {kind} record in {kinds:?}");
    }
    let start = records
        .iter()
        .find(|r| r["type"] == "session.start")
        .unwrap();
    assert_eq!(start["actor"]["user"]["name"], "alice");
    assert_eq!(start["actor"]["user"]["groups"], serde_json::json!(["dev"]));
    assert_eq!(start["actor"]["user"]["auth_method"], "local-scram");
    assert_eq!(start["role"], "app_rw");
    assert_eq!(start["database"], "app");
    assert_eq!(start["application_name"], "billing");
    assert_eq!(start["class_uid"], 3002);
    let end = records.iter().find(|r| r["type"] == "session.end").unwrap();
    assert_eq!(end["session"], start["session"]);
    assert!(end["statements"].as_u64().unwrap() >= 1);
    let failure = records
        .iter()
        .find(|r| r["type"] == "auth.failure")
        .unwrap();
    assert_eq!(failure["user"], "alice");
    assert_eq!(failure["reason"], "invalid_credentials");
    assert_eq!(failure["database"], "app");
    assert!(failure["session"].is_u64(), "{failure}");
    assert!(
        failure["actor"].is_null(),
        "the password was wrong: {failure}"
    );
    let refused = records
        .iter()
        .find(|r| r["type"] == "auth.failure" && r["reason"] == "database_not_allowed")
        .unwrap();
    assert_eq!(refused["actor"]["user"]["name"], "bob", "{refused}");
    assert_eq!(
        refused["actor"]["user"]["groups"],
        serde_json::json!(["ops"])
    );
    assert_eq!(refused["database"], "postgres");

    // No password ever reaches the files, right or wrong.
    for file in pgwarden::audit::list_files(&dir).unwrap() {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        assert!(!text.contains(wrong) && !text.contains(ALICE_PASSWORD));
    }

    // And the directory verifies with the command a reviewer runs.
    let output = pgwarden(&["audit", "verify", dir.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.starts_with("OK: "), "{stdout}");

    // A second run of pgwarden on the same directory: bob's sessions are not hers (ids go
    // on from the first run's; logs from before that restarted them at 1 are read by run).
    let alice_session = start["session"].as_u64().unwrap();
    let again = proxy_auditing_to(&dir).await;
    for _ in 0..alice_session {
        let bob = again.connect("bob", common::BOB_PASSWORD).await;
        bob.simple_query("SELECT count(*) FROM items")
            .await
            .unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    again.shutdown(std::time::Duration::from_secs(2)).await;

    // Reviewers find the person's activity across files, including the session's end
    // (which names no one: it is linked by the session id).
    let found = pgwarden(&[
        "audit",
        "search",
        dir.to_str().unwrap(),
        "--user",
        "alice",
        "--json",
    ]);
    assert!(found.status.success());
    // The session's end and the failed login race each other into the log: compare sorted.
    let mut kinds: Vec<String> = String::from_utf8_lossy(&found.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "auth.failure",
            "session.end",
            "session.start",
            "statement",
            "statement.result"
        ],
        "{kinds:?}"
    );
    // Names are found in any case, as people type them.
    let shouted = pgwarden(&[
        "audit",
        "search",
        dir.to_str().unwrap(),
        "--user",
        "ALICE",
        "--json",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&shouted.stdout).lines().count(),
        kinds.len()
    );
    let failures = pgwarden(&[
        "audit",
        "search",
        dir.to_str().unwrap(),
        "--type",
        "auth.failure",
        "--since",
        "1h",
    ]);
    let table = String::from_utf8_lossy(&failures.stdout);
    assert!(
        table.contains("invalid_credentials")
            && table.contains("database_not_allowed")
            && table.lines().count() == 3,
        "{table}"
    );
    let none = pgwarden(&[
        "audit",
        "search",
        dir.to_str().unwrap(),
        "--since",
        "2100-01-01",
        "--json",
    ]);
    assert!(none.status.success() && none.stdout.is_empty());

    // Tampering is caught by the same command, with the place.
    let files = pgwarden::audit::list_files(&dir).unwrap();
    let path = dir.join(&files[0]);
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replacen("\"alice\"", "\"mallory\"", 1);
    std::fs::write(&path, text).unwrap();
    let output = pgwarden(&["audit", "verify", dir.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!("PROBLEM: {}:", files[0])) && stdout.contains("altered"),
        "{stdout}"
    );
    // Search says so too, rather than quietly leaving the record out.
    let found = pgwarden(&["audit", "search", dir.to_str().unwrap(), "--user", "alice"]);
    let stderr = String::from_utf8_lossy(&found.stderr);
    assert!(
        stderr.contains("warning: 1 line(s) fail their own hash check")
            && stderr.contains("audit verify"),
        "{stderr}"
    );
    // A reader that stops early is not an error.
    for command in ["verify", "search"] {
        let piped = std::process::Command::new("bash")
            .args([
                "-c",
                &format!(
                    "set -o pipefail; {} audit {command} {} | head -c 0",
                    env!("CARGO_BIN_EXE_pgwarden"),
                    dir.display()
                ),
            ])
            .output()
            .unwrap();
        assert!(
            !String::from_utf8_lossy(&piped.stderr).contains("panicked"),
            "{piped:?}"
        );
    }
}

fn pgwarden(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_pgwarden"))
        .args(args)
        .output()
        .unwrap()
}

/// `pgwarden audit verify DIR` passes.
fn assert_verifies(dir: &std::path::Path) {
    let out = pgwarden(&["audit", "verify", dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The `log.write_failed` record among `records` (the test fails without one).
fn write_failed(records: &[serde_json::Value]) -> &serde_json::Value {
    records
        .iter()
        .find(|r| r["type"] == "log.write_failed")
        .expect("a log.write_failed record")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_log_verifies_with_the_public_key_and_ends_with_a_checkpoint() {
    let dir = audit_dir("signed");
    let key = common::harness()
        .dir
        .join(format!("audit-key-{}.pem", std::process::id()));
    let _ = std::fs::remove_file(&key);
    let made = pgwarden(&["audit", "keygen", "--out", key.to_str().unwrap()]);
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let public = String::from_utf8(made.stdout).unwrap();
    assert!(public.starts_with("ed25519:"), "{public}");
    let again = pgwarden(&["audit", "pubkey", "--key", key.to_str().unwrap()]);
    assert_eq!(String::from_utf8(again.stdout).unwrap(), public);
    // Never overwrite a key.
    assert!(
        !pgwarden(&["audit", "keygen", "--out", key.to_str().unwrap()])
            .status
            .success()
    );
    let pubkey = common::write_file("audit.pub", &public);

    let proxy = Proxy::start(ProxyOptions {
        extra: format!(
            "[audit]\ndir = \"{}\"\nsigning_key = \"file:{}\"\ncheckpoint_interval = \"200ms\"\n",
            dir.display(),
            key.display()
        ),
        ..Default::default()
    })
    .await;
    let client = proxy.alice().await;
    client.simple_query("SELECT 1").await.unwrap();
    // Idle for a while: checkpoints keep coming.
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    drop(client);
    proxy.shutdown(std::time::Duration::from_secs(2)).await;

    let checkpoints = all_records(&dir)
        .iter()
        .filter(|r| r["type"] == "checkpoint")
        .count();
    assert!(checkpoints >= 3, "{checkpoints} checkpoints");
    let verify_signed = |dir: &std::path::Path| {
        let out = pgwarden(&[
            "audit",
            "verify",
            dir.to_str().unwrap(),
            "--pubkey",
            pubkey.to_str().unwrap(),
        ]);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, stdout) = verify_signed(&dir);
    assert!(ok, "{stdout}");
    // The final checkpoint at shutdown covers everything but itself.
    assert!(
        stdout.contains("checkpoint(s) verified") && stdout.contains("0 record(s) after it"),
        "{stdout}"
    );
    // Without a single signed checkpoint a log proves nothing (anyone can recompute a plain
    // hash chain): asked to check signatures, verify fails.
    let unsigned_dir = audit_dir("unsigned-log");
    let unsigned = Proxy::start(ProxyOptions {
        extra: format!("[audit]\ndir = \"{}\"\n", unsigned_dir.display()),
        ..Default::default()
    })
    .await;
    unsigned
        .alice()
        .await
        .simple_query("SELECT 1")
        .await
        .unwrap();
    unsigned.shutdown(std::time::Duration::from_secs(2)).await;
    let (ok, stdout) = verify_signed(&unsigned_dir);
    assert!(!ok, "{stdout}");
    assert!(stdout.contains("no signed checkpoint"), "{stdout}");
    // Nor does a signed log whose files were all emptied.
    for file in pgwarden::audit::list_files(&dir).unwrap() {
        std::fs::write(dir.join(file), b"").unwrap();
    }
    let (ok, stdout) = verify_signed(&dir);
    assert!(!ok, "an emptied log verified: {stdout}");
}

/// `chattr` flips the immutable attribute, which stops writes even by root (tests run as
/// root in CI) and even through file descriptors that are already open.
fn immutable(dir: &std::path::Path, on: bool) {
    let flag = if on { "+i" } else { "-i" };
    let mut paths = vec![dir.to_owned()];
    paths.extend(
        pgwarden::audit::list_files(dir)
            .unwrap()
            .into_iter()
            .map(|f| dir.join(f)),
    );
    for path in paths {
        let status = std::process::Command::new("chattr")
            .arg(flag)
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success(), "chattr {flag} {}", path.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_session_starts_while_the_audit_log_cannot_write_and_it_recovers() {
    let dir = audit_dir("unwritable");
    let proxy = proxy_auditing_to(&dir).await;
    let before = proxy.alice().await;
    before.simple_query("SELECT 1").await.unwrap();

    immutable(&dir, true);
    let refused = proxy
        .try_connect(&proxy.conninfo("alice", ALICE_PASSWORD, "sslmode=disable"))
        .await;
    immutable(&dir, false);
    let Err(err) = refused else {
        panic!("a login succeeded while the audit log could not write");
    };
    assert_eq!(sqlstate(&err).as_deref(), Some("58030"), "{err}");
    let message = err.as_db_error().unwrap().message().to_owned();
    assert!(message.contains("audit log"), "{message}");
    // The session that was already running is not cut off.
    before.simple_query("SELECT 2").await.unwrap();

    // Writable again: the next login works, and the log says what was lost.
    let after = proxy.alice().await;
    after.simple_query("SELECT 3").await.unwrap();
    drop((before, after));
    proxy.shutdown(std::time::Duration::from_secs(2)).await;
    let records = all_records(&dir);
    let gap = write_failed(&records);
    assert!(gap["lost_events"].as_u64().unwrap() >= 1, "{gap}");
    assert_verifies(&dir);
}

/// The real binary, killed with SIGKILL while sessions come and go, then started again on the
/// same directory: the chain continues and verifies (a record cut in half is sealed and
/// reported, never merged into the next one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_burst_then_restart_continues_the_chain() {
    let dir = audit_dir("kill9");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = common::config_text(&ProxyOptions {
        extra: format!("[audit]\ndir = \"{}\"\nfsync = \"always\"\n", dir.display()),
        ..Default::default()
    })
    .replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
    );
    let config = common::write_file("kill9.toml", &text);
    let conninfo = format!("host=127.0.0.1 port={port} dbname=app user=alice password={ALICE_PASSWORD} sslmode=disable");
    let spawn = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_pgwarden"))
            .args(["serve", "--config", config.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let connect = |conninfo: String| async move {
        let (client, connection) =
            tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        client.simple_query("SELECT 1").await.map(|_| ())
    };
    for round in 0..2 {
        let mut child = spawn();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while connect(conninfo.clone()).await.is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "pgwarden did not come up (round {round})"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        // A burst of logins (each one fsyncs its session.start), killed in the middle.
        let burst: Vec<_> = (0..40)
            .map(|_| tokio::spawn(connect(conninfo.clone())))
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        child.kill().unwrap();
        child.wait().unwrap();
        for task in burst {
            let _ = task.await;
        }
    }
    // A last clean run to see the chain go on after the second kill.
    let mut child = spawn();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while connect(conninfo.clone()).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "pgwarden did not come up after the kills"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    child.wait().unwrap();

    let out = pgwarden(&["audit", "verify", dir.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let records = all_records(&dir);
    let starts = records
        .iter()
        .filter(|r| r["type"] == "proxy.start")
        .count();
    assert_eq!(starts, 3, "{stdout}");
    // Only the last run stopped normally, and its record says why.
    let stops: Vec<_> = records
        .iter()
        .filter(|r| r["type"] == "proxy.stop")
        .collect();
    assert_eq!(stops.len(), 1, "{stops:?}");
    assert_eq!(stops[0]["reason"], "SIGTERM");
    // Session ids go on from run to run, even after a kill: an id names one session.
    let mut ids: Vec<u64> = records
        .iter()
        .filter(|r| r["type"] == "session.start")
        .map(|r| r["session"].as_u64().unwrap())
        .collect();
    let logged_in = ids.len();
    assert!(logged_in >= 3, "{ids:?}");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), logged_in, "a session id used twice: {ids:?}");
    let firsts: Vec<u64> = records
        .iter()
        .filter(|r| r["type"] == "proxy.start")
        .map(|r| r["first_session"].as_u64().unwrap())
        .collect();
    assert_eq!(firsts[0], 1, "{firsts:?}");
    assert!(firsts.windows(2).all(|w| w[0] < w[1]), "{firsts:?}");
}

/// Statement and result records of one session, in order.
fn statements_of(records: &[serde_json::Value], session: u64) -> Vec<&serde_json::Value> {
    records
        .iter()
        .filter(|r| {
            r["session"] == session && (r["type"] == "statement" || r["type"] == "statement.result")
        })
        .collect()
}

fn result_of<'a>(
    records: &'a [serde_json::Value],
    statement: &serde_json::Value,
) -> &'a serde_json::Value {
    records
        .iter()
        .find(|r| {
            r["type"] == "statement.result"
                && r["session"] == statement["session"]
                && r["statement"] == statement["statement"]
        })
        .unwrap_or_else(|| panic!("no result for {statement}"))
}

/// A client that sends a statement and Terminate in one write and hangs up: the server still
/// runs the statement, and its outcome is on record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_sent_with_terminate_gets_its_outcome_recorded() {
    use tokio::io::AsyncWriteExt;
    let dir = audit_dir("terminate");
    let proxy = proxy_auditing_to(&dir).await;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    common::wire::alice_login(&mut stream).await;
    let mut out = bytes::BytesMut::new();
    postgres_protocol::message::frontend::query(
        "SELECT pg_sleep(0.2), g FROM generate_series(1, 3) g",
        &mut out,
    )
    .unwrap();
    postgres_protocol::message::frontend::terminate(&mut out);
    stream.write_all(&out).await.unwrap();
    drop(stream);
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    proxy.shutdown(std::time::Duration::from_secs(2)).await;
    let records = all_records(&dir);
    let statement = records
        .iter()
        .find(|r| r["type"] == "statement")
        .expect("the statement is on record");
    assert_eq!(result_of(&records, statement)["rows"], 3);
}

/// A client that hangs up while its statement runs (without Terminate): the statement's
/// outcome is not known, and its result record says so rather than being missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_the_session_ends_on_is_recorded_as_unanswered() {
    use tokio::io::AsyncWriteExt;
    let dir = audit_dir("unanswered");
    let proxy = proxy_auditing_to(&dir).await;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    common::wire::alice_login(&mut stream).await;
    let mut out = bytes::BytesMut::new();
    postgres_protocol::message::frontend::query("SELECT pg_sleep(2)", &mut out).unwrap();
    stream.write_all(&out).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    drop(stream);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    proxy.shutdown(std::time::Duration::from_secs(5)).await;
    let records = all_records(&dir);
    let statement = records
        .iter()
        .find(|r| r["type"] == "statement")
        .expect("the statement is on record");
    let result = result_of(&records, statement);
    assert_eq!(result["unanswered"], true, "{result}");
    assert_eq!(result["status"], "Failure", "{result}");
    let end = records.iter().find(|r| r["type"] == "session.end").unwrap();
    assert_eq!(end["ending"], "client disconnected");
}

/// A portal bound in a transaction pipelined behind an earlier statement outlives that
/// statement's ReadyForQuery (which ends only the earlier transaction): its Execute is on
/// record as the statement it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_portal_pipelined_into_the_next_transaction_is_known_when_it_runs() {
    use common::wire::{parse_untyped, sqlstates_until_ready};
    use postgres_protocol::message::frontend;
    use tokio::io::AsyncWriteExt;
    let dir = audit_dir("nexttx");
    let proxy = proxy_auditing_to(&dir).await;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    common::wire::alice_login(&mut stream).await;
    let mut out = bytes::BytesMut::new();
    frontend::query("SELECT 1", &mut out).unwrap();
    frontend::query("BEGIN", &mut out).unwrap();
    parse_untyped("s", "SELECT 42 AS answer", &mut out);
    common::wire::bind_without_parameters("p", "s", &mut out);
    frontend::sync(&mut out);
    stream.write_all(&out).await.unwrap();
    assert!(sqlstates_until_ready(&mut stream, 3).await.is_empty());
    let mut out = bytes::BytesMut::new();
    frontend::execute("p", 0, &mut out).unwrap();
    frontend::sync(&mut out);
    frontend::query("COMMIT", &mut out).unwrap();
    stream.write_all(&out).await.unwrap();
    assert!(sqlstates_until_ready(&mut stream, 2).await.is_empty());
    drop(stream);
    proxy.shutdown(std::time::Duration::from_secs(2)).await;
    let records = all_records(&dir);
    let execute = records
        .iter()
        .rfind(|r| r["type"] == "statement" && r["protocol"] == "extended")
        .expect("the Execute is on record");
    assert_eq!(execute["query"]["text"], "SELECT $1 AS answer", "{execute}");
    assert_eq!(result_of(&records, execute)["rows"], 1);
}

/// A Close and Parse the server skips (an earlier message of their pipeline failed) leave the
/// earlier statement of that name: an Execute pipelined behind them, recorded as running the
/// new text, is marked as not having run what its record says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execute_whose_parse_the_server_skipped_is_marked_not_as_recorded() {
    use common::wire::{parse_untyped, sqlstates_until_ready};
    use postgres_protocol::message::frontend;
    use tokio::io::AsyncWriteExt;
    let dir = audit_dir("notasrecorded");
    let proxy = proxy_auditing_to(&dir).await;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    common::wire::alice_login(&mut stream).await;
    let mut out = bytes::BytesMut::new();
    parse_untyped("s", "SELECT 1 AS old_one", &mut out);
    frontend::sync(&mut out);
    common::wire::redefinition_the_server_skips("z", "s", "SELECT 2 AS new_one", &mut out);
    common::wire::bind_without_parameters("", "s", &mut out);
    frontend::execute("", 0, &mut out).unwrap();
    frontend::sync(&mut out);
    stream.write_all(&out).await.unwrap();
    assert_eq!(sqlstates_until_ready(&mut stream, 3).await, ["22012"]);
    let mut out = bytes::BytesMut::new();
    common::wire::bind_without_parameters("", "s", &mut out);
    frontend::execute("", 0, &mut out).unwrap();
    frontend::sync(&mut out);
    stream.write_all(&out).await.unwrap();
    assert!(sqlstates_until_ready(&mut stream, 1).await.is_empty());
    drop(stream);
    proxy.shutdown(std::time::Duration::from_secs(2)).await;
    let records = all_records(&dir);
    let executes: Vec<_> = records
        .iter()
        .filter(|r| {
            r["type"] == "statement"
                && r["protocol"] == "extended"
                && r["query"]["text"]
                    .as_str()
                    .is_some_and(|t| t.contains("_one"))
        })
        .map(|execute| {
            let result = result_of(&records, execute);
            (
                execute["query"]["text"].as_str().unwrap_or_default(),
                result["rows"].as_u64(),
                result["not_as_recorded"].as_bool(),
            )
        })
        .collect();
    assert_eq!(
        executes,
        [
            ("SELECT $1 AS new_one", Some(1), Some(true)),
            // Once the refusal is known, the next Execute is recorded as what runs.
            ("SELECT $1 AS old_one", Some(1), None),
        ]
    );
}

/// After SET ROLE, records name the role statements run as; a statement sent in the same
/// message as a SET ROLE, before its outcome is known, names both roles it may run as.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_name_the_role_a_statement_runs_as_after_set_role() {
    let admin = common::direct("app").await;
    admin
        .batch_execute(
            "DO $$ BEGIN CREATE ROLE audit_reporter LOGIN PASSWORD 'reporter-pw'; \
             EXCEPTION WHEN duplicate_object THEN NULL; END $$; \
             GRANT audit_reporter TO app_rw",
        )
        .await
        .unwrap();
    let dir = audit_dir("currentrole");
    let proxy = Proxy::start(ProxyOptions {
        extra: format!(
            "[audit]\ndir = \"{}\"\n\n[[upstream.roles]]\nname = \"audit_reporter\"\n\
             password = \"reporter-pw\"\n\n[[access]]\nusers = [\"alice\"]\ndatabases = [\"app\"]\n\
             roles = [\"app_rw\", \"audit_reporter\"]\n",
            dir.display()
        ),
        ..Default::default()
    })
    .await;
    let client = proxy.alice().await;
    for message in [
        "SELECT 'before' AS step",
        "SET ROLE audit_reporter; SELECT 'same message' AS step",
        "SET ROLE audit_reporter",
        "SELECT 'after' AS step",
        "RESET ROLE",
        "SELECT 'reset' AS step",
    ] {
        client.simple_query(message).await.unwrap();
    }
    drop(client);
    proxy.shutdown(std::time::Duration::from_secs(2)).await;
    let records = all_records(&dir);
    let roles: Vec<_> = records
        .iter()
        .filter(|r| r["type"] == "statement")
        .map(|r| r["current_role"].as_str().unwrap_or("-"))
        .collect();
    let either = "app_rw or audit_reporter";
    assert_eq!(
        roles,
        [
            "-",
            either,
            either,
            "audit_reporter",
            "audit_reporter or app_rw",
            "-"
        ],
        "{records:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execute_with_a_row_limit_counts_the_rows_it_sent() {
    let dir = audit_dir("rowlimit");
    let proxy = proxy_auditing_to(&dir).await;
    let mut client = proxy.alice().await;
    let tx = client.transaction().await.unwrap();
    let portal = tx
        .bind("SELECT g FROM generate_series(1, 5) g", &[])
        .await
        .unwrap();
    for (limit, rows) in [(2, 2), (2, 2), (0, 1)] {
        assert_eq!(tx.query_portal(&portal, limit).await.unwrap().len(), rows);
    }
    tx.commit().await.unwrap();
    drop(client);
    proxy.shutdown(std::time::Duration::from_secs(2)).await;
    let records = all_records(&dir);
    let rows: Vec<u64> = records
        .iter()
        .filter(|r| {
            r["type"] == "statement"
                && r["query"]["text"]
                    .as_str()
                    .is_some_and(|t| t.contains("generate_series"))
        })
        .map(|s| result_of(&records, s)["rows"].as_u64().unwrap())
        .collect();
    assert_eq!(rows, [2, 2, 1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_are_recorded_with_who_what_rows_duration_and_errors() {
    let dir = audit_dir("statements");
    let key = common::write_file("parameter.key", "a-parameter-hmac-key-for-tests");
    let proxy = Proxy::start(ProxyOptions {
        extra: format!(
            "[audit]\ndir = \"{}\"\nparameters = \"hmac\"\nparameter_key = \"file:{}\"\n",
            dir.display(),
            key.display()
        ),
        ..Default::default()
    })
    .await;
    let secret_email = "carol.secret@example.com";

    // tokio-postgres: the extended protocol with a named prepared statement and parameters.
    let client = proxy.alice().await;
    client
        .batch_execute("CREATE TABLE audited_people (id int PRIMARY KEY, email text)")
        .await
        .unwrap();
    let insert = client
        .prepare("INSERT INTO audited_people VALUES ($1, $2)")
        .await
        .unwrap();
    client
        .execute(&insert, &[&1i32, &secret_email])
        .await
        .unwrap();
    client
        .execute(&insert, &[&2i32, &"dave@example.com"])
        .await
        .unwrap();
    let rows = client
        .query("SELECT id FROM audited_people WHERE id > $1", &[&0i32])
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    let err = client
        .simple_query("SELECT * FROM no_such_table")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("42P01"));
    // Free text never reaches the log either: comments, and what the parser's error quotes
    // (the client still gets the parser's message).
    client
        .simple_query("SELECT 1 /* pw=Hunter2Comment */")
        .await
        .unwrap();
    let err = client
        .simple_query("ALTER ROLE app_rw PASSWORD Hunter2Unquoted")
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("Hunter2Unquoted"), "{err:?}");
    drop(client);

    // psql: a literal in the text never reaches the log, only its placeholder.
    let conninfo = proxy.conninfo("alice", ALICE_PASSWORD, "sslmode=require");
    let psql = common::run_tool(
        &common::psql_path(),
        &[
            "-X",
            "-d",
            &conninfo,
            "-c",
            &format!("UPDATE audited_people SET email = 'x' WHERE email = '{secret_email}'"),
        ],
        &[],
    )
    .await;
    assert!(psql.status.success(), "{psql:?}");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    proxy.shutdown(std::time::Duration::from_secs(2)).await;

    let records = all_records(&dir);
    let statements: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["type"] == "statement")
        .collect();
    let find = |text: &str| {
        statements
            .iter()
            .copied()
            .find(|r| {
                r["query"]["text"]
                    .as_str()
                    .is_some_and(|t| t.contains(text))
            })
            .unwrap_or_else(|| panic!("no statement record containing {text:?}"))
    };

    let create = find("CREATE TABLE audited_people");
    assert_eq!(create["actor"]["user"]["name"], "alice");
    assert_eq!(create["role"], "app_rw");
    assert_eq!(create["database"], "app");
    assert_eq!(create["protocol"], "simple");
    assert_eq!(create["kinds"], serde_json::json!(["create table"]));
    assert_eq!(create["decision"], "allow");
    assert_eq!(create["class_uid"], 6005);
    assert_eq!(result_of(&records, create)["command"], "CREATE TABLE");

    // Two executions of one prepared statement: two records, same fingerprint, each with
    // its parameters as HMACs (equal values give equal HMACs; never the value itself).
    let inserts: Vec<_> = statements
        .iter()
        .filter(|r| r["query"]["text"] == "INSERT INTO audited_people VALUES ($1, $2)")
        .collect();
    assert_eq!(inserts.len(), 2, "{inserts:?}");
    assert_eq!(inserts[0]["protocol"], "extended");
    assert!(inserts[0]["prepared"]
        .as_str()
        .is_some_and(|p| !p.is_empty()));
    assert_eq!(
        inserts[0]["query"]["fingerprint"],
        inserts[1]["query"]["fingerprint"]
    );
    assert_eq!(
        inserts[0]["tables"],
        serde_json::json!([{"name": "audited_people", "access": "write"}])
    );
    let params = inserts[0]["parameters"].as_array().unwrap();
    assert_eq!(params.len(), 2);
    assert_ne!(inserts[0]["parameters"], inserts[1]["parameters"]);
    let insert_result = result_of(&records, inserts[0]);
    assert_eq!(
        (
            &insert_result["status"],
            &insert_result["command"],
            &insert_result["rows"]
        ),
        (
            &serde_json::json!("Success"),
            &serde_json::json!("INSERT"),
            &serde_json::json!(1)
        )
    );
    assert!(insert_result["duration_us"].as_u64().is_some());

    let select = find("SELECT id FROM audited_people WHERE id > $1");
    assert_eq!(result_of(&records, select)["rows"], 2);
    assert_eq!(
        select["tables"],
        serde_json::json!([{"name": "audited_people", "access": "read"}])
    );

    let missing = find("no_such_table");
    let failed = result_of(&records, missing);
    assert_eq!(failed["status"], "Failure");
    assert_eq!(failed["sqlstate"], "42P01");

    let update = find("UPDATE audited_people SET email = $1 WHERE email = $2");
    assert_eq!(update["kinds"], serde_json::json!(["update"]));
    assert_eq!(result_of(&records, update)["rows"], 1);

    // Sequence numbers run 1, 2, 3… within a session.
    let session = create["session"].as_u64().unwrap();
    let numbers: Vec<u64> = statements_of(&records, session)
        .iter()
        .filter(|r| r["type"] == "statement")
        .map(|r| r["statement"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, (1..=numbers.len() as u64).collect::<Vec<_>>());

    for file in pgwarden::audit::list_files(&dir).unwrap() {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        assert!(
            !text.contains(secret_email),
            "a literal value reached the log"
        );
        assert!(
            !text.contains("dave@example.com"),
            "a parameter value reached the log"
        );
        assert!(!text.contains(ALICE_PASSWORD));
        assert!(
            !text.contains("Hunter2"),
            "a comment or parser message reached the log"
        );
    }
    let found = pgwarden(&[
        "audit",
        "search",
        dir.to_str().unwrap(),
        "--table",
        "audited_people",
        "--decision",
        "allow",
    ]);
    let table = String::from_utf8_lossy(&found.stdout);
    assert!(found.status.success(), "{table}");
    assert!(table.contains("UPDATE audited_people"), "{table}");
    assert!(table.contains("rows=1"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_the_log_cannot_record_is_refused_and_never_reaches_postgres() {
    let dir = audit_dir("refuse");
    let proxy = proxy_auditing_to(&dir).await;
    let admin = common::direct("app").await;
    admin
        .batch_execute(
            "CREATE TABLE refused_writes (id int); GRANT ALL ON refused_writes TO app_rw",
        )
        .await
        .unwrap();
    let client = proxy.alice().await;
    client.simple_query("SELECT 1").await.unwrap();
    let insert = client
        .prepare("INSERT INTO refused_writes VALUES ($1)")
        .await
        .unwrap();

    immutable(&dir, true);
    // Simple protocol, extended protocol, and inside an explicit transaction.
    let simple = client
        .simple_query("INSERT INTO refused_writes VALUES (1)")
        .await
        .unwrap_err();
    let extended = client.execute(&insert, &[&2i32]).await.unwrap_err();
    for err in [&simple, &extended] {
        assert_eq!(sqlstate(err).as_deref(), Some("58030"), "{err}");
        let message = err.as_db_error().unwrap().message();
        assert!(message.contains("audit log"), "{message}");
    }
    let in_transaction = client
        .batch_execute("BEGIN; INSERT INTO refused_writes VALUES (3); COMMIT")
        .await;
    assert!(in_transaction.is_err());
    // A pipeline of extended-protocol statements: each refused in its own slot.
    let pipelined = futures_util::future::join_all((10..14).map(|i| {
        let client = &client;
        let insert = &insert;
        async move { client.execute(insert, &[&i]).await }
    }))
    .await;
    immutable(&dir, false);
    for result in &pipelined {
        let err = result.as_ref().unwrap_err();
        assert_eq!(sqlstate(err).as_deref(), Some("58030"), "{err}");
    }
    // BEGIN itself could not be recorded either, so no transaction is left open.
    let count: i64 = admin
        .query_one("SELECT count(*) FROM refused_writes", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 0, "a refused statement reached PostgreSQL");

    // A refusal inside an explicit transaction aborts it, as a server error would: the
    // row inserted before it is rolled back, and COMMIT ends in ROLLBACK.
    client.batch_execute("BEGIN").await.unwrap();
    client
        .simple_query("INSERT INTO refused_writes VALUES (100)")
        .await
        .unwrap();
    immutable(&dir, true);
    let refused = client
        .simple_query("INSERT INTO refused_writes VALUES (101)")
        .await
        .unwrap_err();
    immutable(&dir, false);
    assert_eq!(sqlstate(&refused).as_deref(), Some("58030"));
    let aborted = client.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&aborted).as_deref(), Some("25P02"), "{aborted}");
    client.batch_execute("COMMIT").await.unwrap();
    let count: i64 = admin
        .query_one("SELECT count(*) FROM refused_writes", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 0, "the aborted transaction's insert was committed");

    // Writable again: the same session carries on and its statements are recorded.
    client.execute(&insert, &[&4i32]).await.unwrap();
    client
        .simple_query("INSERT INTO refused_writes VALUES (5)")
        .await
        .unwrap();
    let count: i64 = admin
        .query_one("SELECT count(*) FROM refused_writes", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 2);
    drop(client);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    proxy.shutdown(std::time::Duration::from_secs(2)).await;
    let records = all_records(&dir);
    assert!(records.iter().any(|r| r["type"] == "log.write_failed"));
    let recorded = records
        .iter()
        .filter(|r| {
            r["type"] == "statement"
                && r["query"]["text"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("INSERT INTO refused_writes"))
        })
        .count();
    // The two that ran, and the one of the transaction that was rolled back.
    assert_eq!(
        recorded, 3,
        "exactly the inserts that reached PostgreSQL are on record"
    );
    assert_verifies(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_on_failure_continue_statements_run_and_the_loss_is_counted() {
    let dir = audit_dir("continue");
    let proxy = Proxy::start(ProxyOptions {
        extra: format!(
            "[audit]\ndir = \"{}\"\non_failure = \"continue\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
            dir.display()
        ),
        ..Default::default()
    })
    .await;
    let admin = proxy.server.as_ref().unwrap().admin_addr().unwrap();
    let client = proxy.alice().await;
    client.simple_query("SELECT 1").await.unwrap();
    immutable(&dir, true);
    let rows = client.simple_query("SELECT 2").await;
    let rows2 = client.query("SELECT $1::int", &[&3i32]).await;
    // While it cannot write, /metrics shows the loss (and the log records it once it can).
    let (_, metrics) = common::http_get(&format!("http://{admin}/metrics")).await;
    immutable(&dir, false);
    let lost: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("pgwarden_audit_lost_events_total "))
        .unwrap_or_else(|| panic!("{metrics}"))
        .parse()
        .unwrap();
    assert!(lost >= 2.0, "{metrics}");
    assert!(
        metrics.contains("\npgwarden_audit_writable 0\n"),
        "{metrics}"
    );
    rows.unwrap();
    assert_eq!(rows2.unwrap()[0].get::<_, i32>(0), 3);
    client.simple_query("SELECT 4").await.unwrap();
    drop(client);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    proxy.shutdown(std::time::Duration::from_secs(2)).await;
    let records = all_records(&dir);
    let gap = write_failed(&records);
    assert!(gap["lost_events"].as_u64().unwrap() >= 2, "{gap}");
}

/// Everything in the audit files so far, as text.
fn audit_text(dir: &std::path::Path) -> String {
    pgwarden::audit::list_files(dir)
        .unwrap()
        .iter()
        .map(|f| std::fs::read_to_string(dir.join(f)).unwrap())
        .collect()
}

/// `fsync = "buffered"`: statements do not wait for the write, the audit thread writes their
/// records on its own within milliseconds, and once a write has failed statements are
/// refused as with `"batch"`, until the log can write again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_records_are_written_by_the_audit_thread_and_a_failed_write_refuses() {
    let dir = audit_dir("buffered");
    let proxy = Proxy::start(ProxyOptions {
        extra: format!(
            "[audit]\ndir = \"{}\"\nfsync = \"buffered\"\n",
            dir.display()
        ),
        ..Default::default()
    })
    .await;
    let admin = common::direct("app").await;
    admin
        .batch_execute(
            "CREATE TABLE buffered_writes (id int); GRANT ALL ON buffered_writes TO app_rw",
        )
        .await
        .unwrap();
    let client = proxy.alice().await;
    client
        .simple_query("INSERT INTO buffered_writes VALUES (1)")
        .await
        .unwrap();
    client
        .execute("INSERT INTO buffered_writes VALUES ($1)", &[&2i32])
        .await
        .unwrap();
    // Nobody else writes: the audit thread does, without a flush or a shutdown.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while audit_text(&dir)
        .matches("\"text\":\"INSERT INTO buffered_writes VALUES ($1)\"")
        .count()
        < 2
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the buffered statement records were not written within 5 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    immutable(&dir, true);
    // The first statement after the disk stops taking writes may get through (its record
    // waits in memory); the audit thread's write then fails, and from there on statements
    // are refused and never reach PostgreSQL.
    let first = client
        .simple_query("INSERT INTO buffered_writes VALUES (3)")
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let refused = client
        .simple_query("INSERT INTO buffered_writes VALUES (4)")
        .await
        .unwrap_err();
    let extended = client
        .execute("INSERT INTO buffered_writes VALUES ($1)", &[&5i32])
        .await
        .unwrap_err();
    immutable(&dir, false);
    for err in [&refused, &extended] {
        assert_eq!(sqlstate(err).as_deref(), Some("58030"), "{err}");
    }
    let ids: Vec<i32> = admin
        .query("SELECT id FROM buffered_writes ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let expected = if first.is_ok() {
        vec![1, 2, 3]
    } else {
        vec![1, 2]
    };
    assert_eq!(ids, expected, "a refused statement reached PostgreSQL");

    // Writable again: the next statement writes its record itself and goes through.
    client
        .simple_query("INSERT INTO buffered_writes VALUES (6)")
        .await
        .unwrap();
    drop(client);
    proxy.shutdown(std::time::Duration::from_secs(2)).await;
    let records = all_records(&dir);
    let gap = write_failed(&records);
    if first.is_ok() {
        // The statement that ran while its record could not be written is counted.
        assert!(gap["lost_events"].as_u64().unwrap() >= 1, "{gap}");
    }
    assert_verifies(&dir);
}

/// Cancel requests are on record: from where, and whether one reached a session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_requests_are_audited() {
    use tokio::io::AsyncWriteExt;
    let dir = audit_dir("cancels");
    let proxy = proxy_auditing_to(&dir).await;
    let client = proxy.alice().await;
    let cancel = client.cancel_token();
    let sleeping = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(30.25)").await });
    // Cancel once the server shows the sleep running (a fixed delay could come before it).
    let direct = common::direct("app").await;
    for _ in 0..100 {
        let running: i64 = direct
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30.25)' AND state = 'active'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if running > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    cancel.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let err = sleeping.await.unwrap().unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("57014"), "{err}");
    // A guessed key: ignored, and on record.
    let mut guess = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let mut packet = vec![0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e];
    packet.extend([0, 0, 0, 7, 1, 2, 3, 4]);
    guess.write_all(&packet).await.unwrap();
    drop(guess);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    proxy.shutdown(std::time::Duration::from_secs(2)).await;
    let records = all_records(&dir);
    let session = records
        .iter()
        .find(|r| r["type"] == "session.start")
        .map(|r| r["session"].clone())
        .unwrap();
    // The forwarded cancel names the session it cancelled; the guess names none.
    let mut cancels: Vec<(bool, serde_json::Value)> = records
        .iter()
        .filter(|r| r["type"] == "cancel.request")
        .map(|r| (r["forwarded"].as_bool().unwrap(), r["session"].clone()))
        .collect();
    cancels.sort_by_key(|(forwarded, _)| *forwarded);
    assert_eq!(
        cancels,
        [(false, serde_json::Value::Null), (true, session.clone())]
    );
    // And `audit search --session` finds it with the session's statements.
    let out = pgwarden(&[
        "audit",
        "search",
        dir.to_str().unwrap(),
        "--session",
        &session.to_string(),
        "--type",
        "cancel.request",
        "--json",
    ]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
}
