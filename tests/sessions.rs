//! The admin API's sessions endpoints through real clients: people see their own running
//! sessions, operators see every one and can end one, and the ended session's client gets
//! FATAL 57P01 saying who ended it while its transaction rolls back on the server.

mod common;

use std::time::Duration;

use common::{all_records, audit_dir, harness, sqlstate, Proxy, ProxyOptions};
use serde_json::{json, Value};

const AUDIENCE: &str = "pgwarden";

fn person(name: &str, groups: &[&str]) -> Value {
    json!({"sub": format!("u-{name}"), "email": format!("{name}@example.com"), "groups": groups})
}

/// The `session` ids in a `GET /sessions` answer.
fn ids(body: &Value) -> Vec<u64> {
    body["sessions"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"))
        .iter()
        .map(|s| s["session"].as_u64().unwrap())
        .collect()
}

/// `pgwarden sessions ARGS` against the admin API at `admin` as `token`: its stdout (the
/// test fails if it exits non-zero).
async fn cli(args: &[&str], admin: &std::net::SocketAddr, token: &str) -> String {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgwarden"))
        .arg("sessions")
        .args(args)
        .args(["--admin", &format!("http://{admin}"), "--token", token])
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "pgwarden sessions {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_list_every_session_and_end_one_people_see_their_own() {
    let h = harness();
    let issuer = common::https_issuer().await;
    let audit = audit_dir("sessions-api");
    let proxy = Proxy::start(ProxyOptions {
        extra: format!(
            "[[auth.oidc]]\nissuer = \"{issuer}\"\naudience = \"{AUDIENCE}\"\nca = \"{ca}\"\n\n\
             [[access]]\ngroups = [\"developers\"]\ndatabases = [\"app\"]\nroles = [\"app_rw\"]\n\n\
             [admin]\nlisten = \"127.0.0.1:0\"\noperator_groups = [\"dba\"]\n\n\
             [audit]\ndir = \"{audit}\"\n",
            issuer = issuer.url(),
            ca = h.certs.ca_cert.display(),
            audit = audit.display(),
        ),
        ..Default::default()
    })
    .await;
    let admin = proxy.server.as_ref().unwrap().admin_addr().unwrap();
    let api = |method: &'static str, path: String, token: String, body: Value| async move {
        common::admin_api(admin, method, &path, &token, body).await
    };
    let dev_token = issuer.id_token(AUDIENCE, &person("dev", &["developers"]), 600);
    let dba_token = issuer.id_token(AUDIENCE, &person("dba", &["dba"]), 600);
    let direct = common::direct("app").await;
    direct
        .batch_execute("CREATE TABLE ended_writes (id int); GRANT ALL ON ended_writes TO app_rw")
        .await
        .unwrap();

    let dev = std::sync::Arc::new(
        proxy
            .try_connect_tls(&format!(
                "host=127.0.0.1 port={} dbname=app user=app_rw password={dev_token} sslmode=require application_name=dev-shell",
                proxy.port()
            ))
            .await
            .unwrap(),
    );
    let alice = proxy.alice().await;

    // The developer sees their own session, and only that one.
    let (status, mine) = api("GET", "/sessions".into(), dev_token.clone(), Value::Null).await;
    assert_eq!(status, 200, "{mine}");
    let [dev_id] = ids(&mine)[..] else {
        panic!("the developer should see exactly their session: {mine}");
    };
    let listed = &mine["sessions"][0];
    assert_eq!(
        listed["actor"]["user"]["name"], "dev@example.com",
        "{listed}"
    );
    assert_eq!(listed["database"], "app");
    assert_eq!(listed["role"], "app_rw");
    assert_eq!(listed["application_name"], "dev-shell");
    assert_eq!(listed["src_endpoint"]["ip"], "127.0.0.1");
    assert!(
        listed["tls"]
            .as_str()
            .is_some_and(|v| v.starts_with("TLSv1")),
        "{listed}"
    );
    assert_eq!(listed["state"], "idle", "{listed}");

    // The operator sees both, and may look at one; the developer may not see Alice's.
    let (status, every) = api("GET", "/sessions".into(), dba_token.clone(), Value::Null).await;
    assert_eq!(status, 200, "{every}");
    let all = ids(&every);
    assert_eq!(all.len(), 2, "{every}");
    let alice_id = *all.iter().find(|id| **id != dev_id).unwrap();
    let (status, one) = api(
        "GET",
        format!("/sessions/{alice_id}"),
        dba_token.clone(),
        Value::Null,
    )
    .await;
    assert_eq!(
        (status, &one["actor"]["user"]["name"]),
        (200, &json!("alice")),
        "{one}"
    );
    let (status, refused) = api(
        "POST",
        format!("/sessions/{alice_id}/end"),
        dev_token.clone(),
        Value::Null,
    )
    .await;
    assert_eq!(
        (status, &refused["error"]),
        (404, &json!("not_found")),
        "{refused}"
    );
    let (status, _) = api("GET", "/sessions".into(), "not-a-token".into(), Value::Null).await;
    assert_eq!(status, 401);

    // The developer is in a transaction that wrote a row, and waits on a long statement.
    dev.batch_execute("BEGIN; INSERT INTO ended_writes VALUES (1)")
        .await
        .unwrap();
    let state = |id: u64| {
        let token = dba_token.clone();
        async move {
            let (status, session) = api("GET", format!("/sessions/{id}"), token, Value::Null).await;
            assert_eq!(status, 200, "{session}");
            session
        }
    };
    let listed = state(dev_id).await;
    assert_eq!(listed["state"], "idle in transaction", "{listed}");
    // Counted as the audit log numbers them: one per message (BEGIN; INSERT is one).
    assert_eq!(listed["statements"], 1, "{listed}");
    let sleeping = {
        let dev = dev.clone();
        tokio::spawn(async move { dev.simple_query("SELECT pg_sleep(30)").await })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while direct
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
        == 0
    {
        assert!(std::time::Instant::now() < deadline, "pg_sleep never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let listed = state(dev_id).await;
    assert_eq!(listed["state"], "active", "{listed}");

    // The operator's command line: the list, then the end.
    let listed = cli(&["list"], &admin, &dba_token).await;
    assert!(
        listed.contains("dev@example.com")
            && listed.contains("alice")
            && listed.contains("dev-shell"),
        "{listed}"
    );
    let ended = cli(
        &["end", &dev_id.to_string(), "--reason", "incident 42"],
        &admin,
        &dba_token,
    )
    .await;
    assert_eq!(ended.trim(), format!("session {dev_id} is ending"));
    let err = tokio::time::timeout(Duration::from_secs(10), sleeping)
        .await
        .expect("the ended session's statement was still waiting after 10 s")
        .unwrap()
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("57P01"), "{err}");
    let message = err.as_db_error().unwrap().message().to_owned();
    assert!(
        message.contains("dba@example.com") && message.contains("incident 42"),
        "{message}"
    );

    // On the server: the statement was cancelled, the transaction rolled back, the
    // backend gone.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while direct
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(30)%'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
        > 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the ended session's backend is still there"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rows: i64 = direct
        .query_one("SELECT count(*) FROM ended_writes", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0, "the ended session's transaction was committed");

    // Alice is untouched; the ended session is no longer listed.
    alice.simple_query("SELECT 1").await.unwrap();
    let (status, after) = api("GET", "/sessions".into(), dba_token.clone(), Value::Null).await;
    assert_eq!((status, ids(&after)), (200, vec![alice_id]), "{after}");
    let (status, gone) = api(
        "POST",
        format!("/sessions/{dev_id}/end"),
        dba_token.clone(),
        Value::Null,
    )
    .await;
    assert_eq!(status, 404, "{gone}");

    drop((dev, alice));
    proxy.shutdown(Duration::from_secs(2)).await;
    let records = all_records(&audit);
    let request = records
        .iter()
        .find(|r| r["type"] == "admin.session_end")
        .expect("an admin.session_end record");
    assert_eq!(request["session"], dev_id);
    assert_eq!(request["by"], "dba@example.com");
    assert_eq!(request["reason"], "incident 42");
    let end = records
        .iter()
        .find(|r| r["type"] == "session.end" && r["session"] == dev_id)
        .expect("the ended session's session.end");
    assert_eq!(end["ending"], "ended by an administrator", "{end}");
    // A reviewer finds it under the person whose session it was.
    let found = std::process::Command::new(env!("CARGO_BIN_EXE_pgwarden"))
        .args(["audit", "search", audit.to_str().unwrap()])
        .args(["--user", "dev@example.com", "--type", "admin.session_end"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&found.stdout);
    assert!(found.status.success(), "{table}");
    assert!(
        table.contains(&format!(
            "session {dev_id} ended by dba@example.com: \"incident 42\""
        )),
        "{table}"
    );
}
