//! Declared intent: `SET pgwarden.intent`, startup options and sqlcommenter tags, through psql
//! and tokio-postgres; rules that require it; the audit records that carry it.

mod common;

use std::time::Duration;

use common::{all_records, audit_dir, sqlstate, Proxy, ProxyOptions, ALICE_PASSWORD};
use serde_json::Value;

async fn start(name: &str) -> (Proxy, std::path::PathBuf, String) {
    let table = format!("intent_{name}");
    common::fresh_table(&table).await;
    let dir = audit_dir(&format!("intent-{name}"));
    let proxy = Proxy::start(ProxyOptions {
        extra: format!(
            "[[policy.rules]]\nid = \"deletes-need-intent\"\nstatements = [\"delete\"]\naction = \"allow\"\nrequire_intent = true\nmessage = \"say which ticket\"\n\n\
             [audit]\ndir = \"{}\"\n",
            dir.display()
        ),
        ..Default::default()
    })
    .await;
    (proxy, dir, table)
}

fn statements(dir: &std::path::Path) -> Vec<Value> {
    all_records(dir)
        .into_iter()
        .filter(|r| r["type"] == "statement")
        .collect()
}

/// The statement record whose normalized text contains `needle`.
fn record_of<'a>(records: &'a [Value], needle: &str) -> &'a Value {
    records
        .iter()
        .find(|r| {
            r["query"]["text"]
                .as_str()
                .is_some_and(|t| t.contains(needle))
        })
        .unwrap_or_else(|| panic!("no statement record with {needle}: {records:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_declares_intent_with_set_and_with_sqlcommenter_tags() {
    let (proxy, dir, _) = start("psql").await;
    let port = proxy.port().to_string();
    let out = common::run_tool(
        &common::psql_path(),
        &[
            "-h", "127.0.0.1", "-p", &port, "-U", "alice", "-d", "app", "-X",
            "-c", "SET pgwarden.intent = 'INC-4711: refund duplicate order'",
            "-c", "SELECT 'with the session intent' AS a",
            "-c", "SELECT 'tagged' AS b /*intent='INC-9%3A%20nightly%20report',route='%2Forders',traceparent='00-5bd66ef5095369c7b0d1f8f4bd33716a-c532cb4098ac3dd2-01'*/",
            "-c", "RESET pgwarden.intent",
            "-c", "SELECT 'after reset' AS c",
            "-c", "SHOW pgwarden.intent",
            "-c", "SET pgwarden.intent = 'INC-OLD'",
            "-c", "DISCARD ALL",
            "-c", "SELECT 'after discard all' AS d",
        ],
        &[("PGPASSWORD", ALICE_PASSWORD), ("PGSSLMODE", "disable")],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    proxy.shutdown(Duration::from_secs(5)).await;
    let records = statements(&dir);
    let a = record_of(&records, " AS a");
    assert_eq!(a["intent"], "INC-4711: refund duplicate order");
    let b = record_of(&records, " AS b");
    assert_eq!(
        b["intent"], "INC-9: nightly report",
        "the tag wins over the session"
    );
    assert_eq!(b["tags"]["route"], "/orders");
    assert_eq!(b["trace_id"], "5bd66ef5095369c7b0d1f8f4bd33716a");
    let c = record_of(&records, " AS c");
    assert!(c.get("intent").is_none(), "RESET clears it: {c}");
    let d = record_of(&records, " AS d");
    assert!(
        d.get("intent").is_none(),
        "DISCARD ALL clears it (it includes RESET ALL): {d}"
    );

    // audit search --intent finds by it.
    let found = std::process::Command::new(env!("CARGO_BIN_EXE_pgwarden"))
        .args([
            "audit",
            "search",
            dir.to_str().unwrap(),
            "--intent",
            "inc-4711",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(found.status.success());
    let hits: Vec<Value> = String::from_utf8_lossy(&found.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(!hits.is_empty());
    // The statements, each followed by its outcome.
    assert!(
        hits.iter()
            .filter(|h| h["type"] != "statement.result")
            .all(|h| h.to_string().contains("INC-4711")),
        "{hits:#?}"
    );
    assert!(hits.iter().any(|h| h["type"] == "statement.result"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_requiring_intent_refuses_until_one_is_declared() {
    let (proxy, dir, table) = start("require").await;
    let alice = proxy.alice().await;
    let delete = |id: i32| format!("DELETE FROM {table} WHERE id = {id}");

    let err = alice.batch_execute(&delete(1)).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("42501"), "{err}");
    let message = err.as_db_error().unwrap().message().to_owned();
    assert!(
        message.contains("needs a declared intent (say which ticket)"),
        "{message}"
    );
    assert!(message.contains("SET pgwarden.intent"), "{message}");

    // Nothing that only looks like a tag counts.
    for sql in [
        format!("{} /*intent='unterminated*/", delete(2)),
        format!("{} /*intent=''*/", delete(2)),
        format!("DELETE FROM {table} WHERE note = '/*intent=''x''*/'"),
        format!("{} -- intent='x'", delete(2)),
    ] {
        let err = alice.batch_execute(&sql).await.unwrap_err();
        assert_eq!(sqlstate(&err).as_deref(), Some("42501"), "{sql}: {err}");
    }

    // A tag, a SET in the same message, a session SET: each lets it run.
    alice
        .batch_execute(&format!("{} /*intent='INC-1%3A%20dup'*/", delete(3)))
        .await
        .unwrap();
    alice
        .batch_execute(&format!(
            "SET pgwarden.intent = 'INC-2: same message'; {}",
            delete(4)
        ))
        .await
        .unwrap();
    alice.batch_execute("RESET pgwarden.intent").await.unwrap();
    alice
        .batch_execute("SET pgwarden.intent = 'INC-3: session'")
        .await
        .unwrap();
    // Extended protocol too.
    assert_eq!(alice.execute(delete(5).as_str(), &[]).await.unwrap(), 1);

    // Startup options (tokio-postgres `options`).
    let with_options = proxy
        .try_connect(&proxy.conninfo(
            "alice",
            ALICE_PASSWORD,
            "sslmode=disable options='-c pgwarden.intent=INC-6'",
        ))
        .await
        .unwrap();
    with_options.batch_execute(&delete(6)).await.unwrap();

    proxy.shutdown(Duration::from_secs(5)).await;
    let records = statements(&dir);
    let intents: Vec<(String, Option<String>)> = records
        .iter()
        .filter(|r| r["kinds"][r["kinds"].as_array().unwrap().len().saturating_sub(1)] == "delete")
        .map(|r| {
            (
                r["decision"].as_str().unwrap().to_owned(),
                r["intent"].as_str().map(str::to_owned),
            )
        })
        .collect();
    let allowed: Vec<Option<String>> = intents
        .iter()
        .filter(|(d, _)| d == "allow")
        .map(|(_, i)| i.clone())
        .collect();
    assert_eq!(
        allowed,
        [
            Some("INC-1: dup".to_owned()),
            Some("INC-2: same message".to_owned()),
            Some("INC-3: session".to_owned()),
            Some("INC-6".to_owned()),
        ]
    );
    assert_eq!(intents.iter().filter(|(d, _)| d == "deny").count(), 5);
}
