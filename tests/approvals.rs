//! Statements held for approval, through real clients and the real admin HTTP API: a
//! developer's statement waits in their session while an approver (signed in with the same
//! identity provider) answers over HTTP.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{all_records, audit_dir, harness, sqlstate, Proxy, ProxyOptions};
use pgwarden::net::http::Fetcher;
use pgwarden::testbed::DevIssuer;
use serde_json::{json, Value};

const AUDIENCE: &str = "pgwarden";

/// The issuer, pgwarden, a table of its own, and tokens for the people involved.
struct Setup {
    issuer: DevIssuer,
    proxy: Proxy,
    admin: SocketAddr,
    table: String,
    audit: std::path::PathBuf,
}

fn person(name: &str, groups: &[&str]) -> Value {
    json!({"sub": format!("u-{name}"), "email": format!("{name}@example.com"), "groups": groups})
}

impl Setup {
    async fn start(name: &str, approvals: &str) -> Setup {
        let h = harness();
        let issuer = common::https_issuer().await;
        let table = format!("held_{name}");
        common::fresh_table(&table).await;
        let audit = audit_dir(&format!("approvals-{name}"));
        let proxy = Proxy::start(ProxyOptions {
            extra: format!(
                "[[auth.oidc]]\nissuer = \"{issuer}\"\naudience = [\"{AUDIENCE}\", \"pgwarden-cli\"]\nca = \"{ca}\"\n\n\
                 [auth.rate_limit]\nmax_failures = 0\n\n\
                 [[access]]\ngroups = [\"developers\", \"dba\"]\ndatabases = [\"app\"]\nroles = [\"app_rw\"]\n\n\
                 [[policy.rules]]\nid = \"held-deletes\"\nstatements = [\"delete\"]\ntables = [\"{table}\"]\naction = \"approve\"\nmessage = \"deleting from {table} needs a DBA\"\n\n\
                 [approvals]\napprover_groups = [\"dba\"]\npublic_url = \"http://admin.example\"\n{approvals}\n\n\
                 [admin]\nlisten = \"127.0.0.1:0\"\n\n\
                 [audit]\ndir = \"{audit}\"\n",
                issuer = issuer.url(),
                ca = h.certs.ca_cert.display(),
                audit = audit.display(),
            ),
            ..Default::default()
        })
        .await;
        let admin = proxy.server.as_ref().unwrap().admin_addr().unwrap();
        Setup {
            issuer,
            proxy,
            admin,
            table,
            audit,
        }
    }

    fn token(&self, name: &str, groups: &[&str]) -> String {
        self.issuer.id_token(AUDIENCE, &person(name, groups), 600)
    }

    /// A developer's session (as app_rw).
    async fn developer(&self) -> tokio_postgres::Client {
        self.connect(&self.token("dev", &["developers"])).await
    }

    async fn connect(&self, token: &str) -> tokio_postgres::Client {
        self.proxy
            .try_connect_tls(&format!(
                "host=127.0.0.1 port={} dbname=app user=app_rw password={token} sslmode=require",
                self.proxy.port()
            ))
            .await
            .unwrap()
    }

    /// Call the admin API as `token`: (HTTP status, JSON body).
    async fn api(&self, method: &str, path: &str, token: &str, body: Value) -> (u16, Value) {
        common::admin_api(self.admin, method, path, token, body).await
    }

    /// Wait until exactly one request is pending, as the DBA sees it; return it.
    async fn pending(&self, dba: &str) -> Value {
        for _ in 0..200 {
            let (status, body) = self
                .api("GET", "/approvals?status=pending", dba, Value::Null)
                .await;
            assert_eq!(status, 200, "{body}");
            if let Some(first) = body["requests"].as_array().and_then(|r| r.first()) {
                return first.clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no request became pending");
    }

    /// Wait for the one pending request and approve it as `dba` with `body`; the request.
    /// A setup where the developer has `PREPARE d(int) AS DELETE FROM <table> WHERE id = $1`
    /// approved by a DBA: (setup, the DBA's token, the developer's client).
    async fn with_approved_delete(
        name: &str,
    ) -> (Setup, String, std::sync::Arc<tokio_postgres::Client>) {
        let s = Setup::start(name, "").await;
        let dba = s.token("dba", &["dba"]);
        let dev = std::sync::Arc::new(s.developer().await);
        let sql = format!("PREPARE d(int) AS DELETE FROM {} WHERE id = $1", s.table);
        let client = dev.clone();
        s.approved(&dba, async move { client.simple_query(&sql).await })
            .await
            .unwrap();
        (s, dba, dev)
    }

    /// Run `held` (a statement the policy holds) while `dba` approves it; its result.
    async fn approved<T: Send + 'static>(
        &self,
        dba: &str,
        held: impl std::future::Future<Output = T> + Send + 'static,
    ) -> T {
        let held = tokio::spawn(held);
        self.approve_pending(dba, Value::Null).await;
        held.await.unwrap()
    }

    /// A statement containing `statement` is waiting for approval.
    async fn assert_held(&self, dba: &str, statement: &str) {
        let held = self.pending(dba).await;
        assert!(
            held["statement"].as_str().unwrap().contains(statement),
            "{held}"
        );
    }

    /// Reload pgwarden's config file (as SIGHUP does); fails the test if it is refused.
    async fn reload(&self) {
        let server = self.proxy.server.as_ref().unwrap();
        server.reload(&self.proxy.config_path).await.unwrap();
    }

    /// Whether the table still has the row `id` (seen directly, not through pgwarden).
    async fn has_row(&self, id: i32) -> bool {
        common::direct("app")
            .await
            .query_one(
                &format!("SELECT count(*) FROM {} WHERE id = $1", self.table),
                &[&id],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 1
    }

    async fn approve_pending(&self, dba: &str, body: Value) -> Value {
        let request = self.pending(dba).await;
        let (status, answer) = self
            .api(
                "POST",
                &format!("/approvals/{}/approve", request["id"].as_str().unwrap()),
                dba,
                body,
            )
            .await;
        assert_eq!(status, 200, "{answer}");
        request
    }

    async fn count(&self, client: &tokio_postgres::Client) -> i64 {
        client
            .query_one(&format!("SELECT count(*) FROM {}", self.table), &[])
            .await
            .unwrap()
            .get(0)
    }
}

fn db_message(err: &tokio_postgres::Error) -> String {
    err.as_db_error()
        .map(|e| format!("{} | {}", e.message(), e.detail().unwrap_or_default()))
        .unwrap_or_else(|| err.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_statement_runs_in_its_session_once_a_dba_approves() {
    let s = Setup::start("approve", "").await;
    let dev = s.developer().await;
    let dba = s.token("dba", &["dba"]);
    let table = s.table.clone();
    let held = tokio::spawn(async move {
        dev.execute(&format!("DELETE FROM {table} WHERE id = 7"), &[])
            .await
            .map(|rows| (rows, dev))
    });
    let request = s.pending(&dba).await;
    assert_eq!(request["requester"], "dev@example.com");
    assert_eq!(request["rule"], "held-deletes");
    assert_eq!(
        request["statement"],
        format!("DELETE FROM {} WHERE id = 7", s.table)
    );
    assert_eq!(request["approver_groups"], json!(["dba"]));
    assert!(!held.is_finished(), "the statement ran without approval");
    // Nothing reached PostgreSQL yet.
    let direct = common::direct("app").await;
    assert_eq!(s.count(&direct).await, 20);

    let id = request["id"].as_str().unwrap();
    let (status, answered) = s
        .api(
            "POST",
            &format!("/approvals/{id}/approve"),
            &dba,
            json!({"reason": "cleanup"}),
        )
        .await;
    assert_eq!(status, 200, "{answered}");
    assert_eq!(answered["status"], "approved");
    let (rows, dev) = tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .expect("the approved statement did not complete")
        .unwrap()
        .unwrap();
    assert_eq!(rows, 1);
    assert_eq!(s.count(&dev).await, 19, "the session goes on normally");

    // /metrics: Prometheus text, with the decision and the approval counted.
    let fetcher = Fetcher::new(None, Duration::from_secs(10), 1 << 20).unwrap();
    let response = fetcher
        .fetch(
            openidconnect::http::Request::builder()
                .uri(format!("http://{}/metrics", s.admin))
                .body(Vec::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let text = String::from_utf8(response.body().clone()).unwrap();
    let mut samples = std::collections::HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (name, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample: {line}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("not a number: {line}"));
        samples.insert(name.to_owned(), value);
    }
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    assert_eq!(
        samples[r#"pgwarden_statements_total{decision="approve"}"#], 1.0,
        "{text}"
    );
    assert_eq!(
        samples[r#"pgwarden_approvals_finished_total{outcome="approved"}"#],
        1.0
    );
    assert_eq!(samples["pgwarden_approvals_pending"], 0.0);
    assert_eq!(samples["pgwarden_sessions"], 1.0, "{text}");
    assert!(samples["pgwarden_statement_duration_seconds_count"] >= 1.0);
    assert_eq!(samples["pgwarden_audit_writable"], 1.0);
    assert!(samples.contains_key("pgwarden_audit_pending_records"));
    assert_eq!(samples["pgwarden_audit_lost_events_total"], 0.0);
    assert_eq!(samples["pgwarden_upstream_up"], 1.0, "{text}");
    assert_eq!(samples["pgwarden_connections_over_limit_total"], 0.0);
    assert_eq!(samples["pgwarden_auth_timeouts_total"], 0.0);
    // Series with no event yet are there, at 0, for alerts.
    assert_eq!(
        samples[r#"pgwarden_approvals_finished_total{outcome="expired"}"#],
        0.0
    );
    assert!(samples.contains_key(r#"pgwarden_config_reloads_total{result="failure"}"#));
    let build = text
        .lines()
        .find(|l| l.starts_with("pgwarden_build_info{"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        build.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION")))
            && build.ends_with(" 1"),
        "{build}"
    );

    // `pgwarden ready` (the container health check) asks /readyz.
    let ready = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgwarden"))
        .args(["ready", "--admin", &format!("http://{}", s.admin)])
        .output()
        .await
        .unwrap();
    assert!(ready.status.success(), "{ready:?}");
    assert!(
        String::from_utf8_lossy(&ready.stdout).contains("\"ready\""),
        "{ready:?}"
    );
    let unreachable = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgwarden"))
        .args(["ready", "--admin", "http://127.0.0.1:1", "--timeout", "2"])
        .output()
        .await
        .unwrap();
    assert!(!unreachable.status.success());

    s.proxy.shutdown(Duration::from_secs(5)).await;
    let records = all_records(&s.audit);
    let of_type = |t: &str| {
        records
            .iter()
            .filter(|r| r["type"] == t)
            .cloned()
            .collect::<Vec<_>>()
    };
    let requests = of_type("approval.request");
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0]["request"], id);
    assert_eq!(requests[0]["actor"]["user"]["name"], "dev@example.com");
    assert!(
        requests[0]["query"]["text"]
            .as_str()
            .unwrap()
            .contains("$1"),
        "the audit log keeps the normalized text: {}",
        requests[0]
    );
    let answers = of_type("approval.answer");
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0]["by"], "dba@example.com");
    assert_eq!(answers[0]["approve"], true);
    let executed: Vec<Value> = of_type("statement")
        .into_iter()
        .filter(|r| r["approval"]["request"] == id)
        .collect();
    assert_eq!(executed.len(), 1, "{records:#?}");
    assert_eq!(executed[0]["decision"], "approve");
    assert_eq!(
        executed[0]["approval"]["approved_by"],
        json!(["dba@example.com"])
    );
    let calls = of_type("admin.call");
    assert!(calls
        .iter()
        .any(|c| c["caller"] == "dba@example.com"
            && c["path"].as_str().unwrap().ends_with("/approve")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denials_self_approval_outsiders_and_timeouts() {
    let s = Setup::start("deny", "timeout = \"3s\"").await;
    let dba = s.token("dba", &["dba"]);
    let dev_token = s.token("dev", &["developers"]);
    let outsider = s.token("eve", &["developers"]);

    let dev = s.developer().await;
    let table = s.table.clone();
    let held = tokio::spawn(async move {
        dev.execute(&format!("DELETE FROM {table} WHERE id = 1"), &[])
            .await
            .map_err(|e| (sqlstate(&e), db_message(&e)))
    });
    let request = s.pending(&dba).await;
    let id = request["id"].as_str().unwrap().to_owned();
    // The requester sees their own request but cannot answer it.
    let (status, body) = s
        .api("GET", &format!("/approvals/{id}"), &dev_token, Value::Null)
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = s
        .api(
            "POST",
            &format!("/approvals/{id}/approve"),
            &dev_token,
            Value::Null,
        )
        .await;
    assert_eq!((status, body["error"].as_str()), (403, Some("own_request")));
    // Someone outside the approver groups neither sees nor answers it, nor learns from
    // trying that it exists: the same 404 as for a request that does not.
    let (status, _) = s
        .api("GET", &format!("/approvals/{id}"), &outsider, Value::Null)
        .await;
    assert_eq!(status, 404);
    for request in [id.as_str(), "ZZZZ-0000"] {
        let (status, body) = s
            .api(
                "POST",
                &format!("/approvals/{request}/approve"),
                &outsider,
                Value::Null,
            )
            .await;
        assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    }
    // No token, a bad token.
    let (status, _) = s.api("GET", "/approvals", "", Value::Null).await;
    assert_eq!(status, 401);
    let (status, body) = s.api("GET", "/approvals", "not-a-token", Value::Null).await;
    assert_eq!(status, 401);
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("the bearer token is not a valid token"),
        "{body}"
    );
    // A denial needs a reason; then the client gets it.
    let (status, _) = s
        .api("POST", &format!("/approvals/{id}/deny"), &dba, Value::Null)
        .await;
    assert_eq!(status, 400);
    let (status, body) = s
        .api(
            "POST",
            &format!("/approvals/{id}/deny"),
            &dba,
            json!({"reason": "use the archive job instead"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (code, message) = held.await.unwrap().unwrap_err();
    assert_eq!(code.as_deref(), Some("42501"));
    assert!(
        message.contains("dba@example.com denied this statement"),
        "{message}"
    );
    assert!(message.contains("use the archive job instead"), "{message}");
    let (status, body) = s
        .api(
            "POST",
            &format!("/approvals/{id}/approve"),
            &dba,
            Value::Null,
        )
        .await;
    assert_eq!((status, body["error"].as_str()), (409, Some("not_pending")));

    // Nobody answers: the statement fails after the timeout, the session goes on.
    let dev = s.developer().await;
    let started = std::time::Instant::now();
    let err = dev
        .execute(&format!("DELETE FROM {} WHERE id = 2", s.table), &[])
        .await
        .unwrap_err();
    assert!(started.elapsed() >= Duration::from_secs(3));
    assert_eq!(sqlstate(&err).as_deref(), Some("57014"), "{err}");
    assert!(
        db_message(&err).contains("not answered within 3s"),
        "{}",
        db_message(&err)
    );
    assert_eq!(s.count(&dev).await, 20, "nothing was deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_lets_the_same_shape_run_at_once_until_it_expires() {
    let s = Setup::start("grant", "").await;
    let dba = s.token("dba", &["dba"]);
    let dev = std::sync::Arc::new(s.developer().await);
    let run = |id: i32| {
        let dev = dev.clone();
        let table = s.table.clone();
        tokio::spawn(async move {
            dev.execute(&format!("DELETE FROM {table} WHERE id = {id}"), &[])
                .await
        })
    };
    let first = run(1);
    let request = s.approve_pending(&dba, json!({"grant": "3s"})).await;
    assert_eq!(first.await.unwrap().unwrap(), 1);
    // Same shape, other literal: runs at once under the grant.
    let second = tokio::time::timeout(Duration::from_secs(2), run(2))
        .await
        .expect("the granted statement waited")
        .unwrap()
        .unwrap();
    assert_eq!(second, 1);
    // Too long a grant is refused.
    let (status, _) = s
        .api(
            "POST",
            "/approvals/XXXX-0000/approve",
            &dba,
            json!({"grant": "48h"}),
        )
        .await;
    assert_eq!(status, 400);
    // After the grant: held again.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let third = run(3);
    let again = s.pending(&dba).await;
    assert_ne!(again["id"], request["id"]);
    assert!(!third.is_finished());
    s.api(
        "POST",
        &format!("/approvals/{}/approve", again["id"].as_str().unwrap()),
        &dba,
        Value::Null,
    )
    .await;
    assert_eq!(third.await.unwrap().unwrap(), 1);
}

/// A grant covers one shape exactly. libpg_query's fingerprint, which grants were once keyed
/// on, gives an aliased DELETE the same value whatever table it names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_does_not_stretch_to_another_table_under_the_same_alias() {
    let other = "held_scope_other";
    common::fresh_table(other).await;
    let s = Setup::start(
        "scope",
        &format!(
            "\n[[policy.rules]]\nid = \"held-other\"\nstatements = [\"delete\"]\ntables = [\"{other}\"]\naction = \"approve\"\n"
        ),
    )
    .await;
    let dba = s.token("dba", &["dba"]);
    let dev = std::sync::Arc::new(s.developer().await);
    let run = |sql: String| {
        let dev = dev.clone();
        tokio::spawn(async move { dev.execute(&sql, &[]).await })
    };
    let first = run(format!("DELETE FROM {} t WHERE t.id = 1", s.table));
    let request = s.approve_pending(&dba, json!({"grant": "10m"})).await;
    assert_eq!(first.await.unwrap().unwrap(), 1);
    // The same shape in other spelling and literals runs at once under the grant…
    let again = tokio::time::timeout(
        Duration::from_secs(5),
        run(format!(
            "delete from {} T\n where T.ID = 2 -- and again",
            s.table.to_uppercase()
        )),
    )
    .await
    .expect("the granted statement waited")
    .unwrap()
    .unwrap();
    assert_eq!(again, 1);
    // …another table under the same alias is held…
    let stretched = run(format!("DELETE FROM {other} t WHERE t.id = 1"));
    let held = s.pending(&dba).await;
    assert_ne!(held["id"], request["id"]);
    assert_eq!(held["rule"], "held-other");
    assert!(!stretched.is_finished(), "ran under another table's grant");
    let (status, body) = s
        .api(
            "POST",
            &format!("/approvals/{}/deny", held["id"].as_str().unwrap()),
            &dba,
            json!({"reason": "not that table"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let err = stretched.await.unwrap().unwrap_err();
    assert_eq!(
        sqlstate(&err).as_deref(),
        Some("42501"),
        "{}",
        db_message(&err)
    );
    let direct = common::direct("app").await;
    let left: i64 = direct
        .query_one(&format!("SELECT count(*) FROM {other}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 20, "nothing was deleted from {other}");
    // …and so is the same text under a search_path where it names another schema's table.
    direct
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS scope_b CASCADE; CREATE SCHEMA scope_b AUTHORIZATION app_rw; \
             CREATE TABLE scope_b.{t} (id int PRIMARY KEY, note text); \
             INSERT INTO scope_b.{t} SELECT g, 'b' FROM generate_series(1, 20) g; \
             ALTER TABLE scope_b.{t} OWNER TO app_rw",
            t = s.table
        ))
        .await
        .unwrap();
    dev.batch_execute("SET search_path = scope_b, public")
        .await
        .unwrap();
    let elsewhere = run(format!("DELETE FROM {} t WHERE t.id = 3", s.table));
    let held = s.pending(&dba).await;
    assert!(
        !elsewhere.is_finished(),
        "ran under a grant for another schema"
    );
    s.api(
        "POST",
        &format!("/approvals/{}/deny", held["id"].as_str().unwrap()),
        &dba,
        json!({"reason": "not that schema"}),
    )
    .await;
    assert!(elsewhere.await.unwrap().is_err());
    let left: i64 = direct
        .query_one(&format!("SELECT count(*) FROM scope_b.{}", s.table), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 20, "nothing was deleted from scope_b");
}

/// With `[admin.tls]` the admin API is HTTPS (a token is a database credential too); the
/// command-line client never sends one in clear off this machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_serves_https_and_tokens_never_travel_in_clear() {
    let h = harness();
    let s = Setup::start(
        "https",
        &format!(
            "\n[admin.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            h.certs.server_cert.display(),
            h.certs.server_key.display()
        ),
    )
    .await;
    let dba = s.token("dba", &["dba"]);
    let fetcher = Fetcher::new(Some(&h.certs.ca_cert), Duration::from_secs(10), 1 << 20).unwrap();
    let request = openidconnect::http::Request::builder()
        .uri(format!("https://localhost:{}/approvals", s.admin.port()))
        .header("authorization", format!("Bearer {dba}"))
        .body(Vec::new())
        .unwrap();
    let response = fetcher.fetch(request).await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    // Health checks may stay plain HTTP on the same port.
    let plain = openidconnect::http::Request::builder()
        .uri(format!("http://127.0.0.1:{}/healthz", s.admin.port()))
        .body(Vec::new())
        .unwrap();
    assert_eq!(fetcher.fetch(plain).await.unwrap().status().as_u16(), 200);
    // HTTP clients that offer ALPN (curl, browsers, Prometheus) get HTTP/1.1.
    let response = https_get_offering_alpn(s.admin.port(), "/healthz").await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    let target = |admin: &str| pgwarden::admin::client::Target {
        admin: admin.to_owned(),
        issuer: None,
        ca: Some(h.certs.ca_cert.clone()),
        json: true,
        token: Some(dba.clone()),
    };
    let list = pgwarden::admin::client::Call::List { all: true };
    let err = pgwarden::admin::client::run(&target("http://pgwarden.example:9187"), list.clone())
        .await
        .unwrap_err();
    assert!(err.contains("in clear"), "{err}");
    pgwarden::admin::client::run(
        &target(&format!("https://localhost:{}", s.admin.port())),
        list,
    )
    .await
    .unwrap();
}

/// GET `path` over HTTPS on `port` the way curl does: offering ALPN `h2` and `http/1.1`.
/// Returns the response as text once the server closes.
async fn https_get_offering_alpn(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for cert in pgwarden::net::tls::load_certs(&harness().certs.ca_cert).unwrap() {
        roots.add(cert).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS handshake with the admin API");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response).await;
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_or_leaving_withdraws_the_request() {
    let s = Setup::start("withdraw", "").await;
    let dba = s.token("dba", &["dba"]);

    // CancelRequest (tokio-postgres cancel_query) while held.
    let dev = s.developer().await;
    let cancel = dev.cancel_token();
    let table = s.table.clone();
    let held = tokio::spawn(async move {
        let result = dev
            .execute(&format!("DELETE FROM {table} WHERE id = 1"), &[])
            .await;
        (result.map_err(|e| sqlstate(&e)), dev)
    });
    let request = s.pending(&dba).await;
    cancel.cancel_query(common::tls_connector()).await.unwrap();
    let (result, dev) = tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .expect("cancel did not end the wait")
        .unwrap();
    assert_eq!(result.unwrap_err().as_deref(), Some("57014"));
    let (_, shown) = s
        .api(
            "GET",
            &format!("/approvals/{}", request["id"].as_str().unwrap()),
            &dba,
            Value::Null,
        )
        .await;
    assert_eq!(shown["status"], "withdrawn");
    assert_eq!(shown["withdrawn_because"], "the client cancelled");
    assert_eq!(s.count(&dev).await, 20, "the session is still usable");

    // The client goes away while held: its socket closes.
    let (leaver, connection) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} dbname=app user=app_rw password={} sslmode=require",
            s.proxy.port(),
            s.token("dev", &["developers"])
        ),
        common::tls_connector(),
    )
    .await
    .unwrap();
    let socket = tokio::spawn(connection);
    let table = s.table.clone();
    let held = tokio::spawn(async move {
        let _ = leaver
            .execute(&format!("DELETE FROM {table} WHERE id = 2"), &[])
            .await;
    });
    let request = s.pending(&dba).await;
    held.abort();
    socket.abort();
    let id = request["id"].as_str().unwrap();
    let mut status = Value::Null;
    for _ in 0..100 {
        let (_, shown) = s
            .api("GET", &format!("/approvals/{id}"), &dba, Value::Null)
            .await;
        status = shown["status"].clone();
        if status == "withdrawn" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, "withdrawn");
    let (status, _) = s
        .api(
            "POST",
            &format!("/approvals/{id}/approve"),
            &dba,
            Value::Null,
        )
        .await;
    assert_eq!(status, 409, "a withdrawn request cannot be approved");
    assert_eq!(s.count(&dev).await, 20);
    s.proxy.shutdown(Duration::from_secs(5)).await;
    let closed: Vec<Value> = all_records(&s.audit)
        .into_iter()
        .filter(|r| r["type"] == "approval.closed")
        .collect();
    assert_eq!(closed.len(), 2, "{closed:#?}");
    assert!(closed.iter().all(|r| r["request_status"] == "withdrawn"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_with_a_held_statement_keeps_its_order() {
    use common::wire::{alice_login, error_fields, read_message};
    use postgres_protocol::message::frontend;
    use tokio::io::AsyncWriteExt;
    let s = Setup::start("pipeline", "").await;
    let dba = s.token("dba", &["dba"]);
    // One write: three extended-protocol statements, the middle one held, then one Sync.
    let mut stream = tokio::net::TcpStream::connect(s.proxy.addr).await.unwrap();
    alice_login(&mut stream).await;
    let mut out = bytes::BytesMut::new();
    for sql in [
        "SELECT 1".to_owned(),
        format!("DELETE FROM {} WHERE id = 5 RETURNING id", s.table),
        format!("SELECT count(*) FROM {}", s.table),
    ] {
        common::wire::parse_untyped("", &sql, &mut out);
        common::wire::bind_without_parameters("", "", &mut out);
        frontend::execute("", 0, &mut out).unwrap();
    }
    frontend::sync(&mut out);
    stream.write_all(&out).await.unwrap();
    let read_all = async {
        let mut rows = Vec::new();
        loop {
            let (tag, body) = read_message(&mut stream).await;
            match tag {
                b'D' => rows.push(String::from_utf8_lossy(&body[6..]).into_owned()),
                b'E' => panic!("{:?}", error_fields(&body)),
                b'Z' => return rows,
                _ => {}
            }
        }
    };
    let approve = async {
        let request = s.pending(&dba).await;
        s.api(
            "POST",
            &format!("/approvals/{}/approve", request["id"].as_str().unwrap()),
            &dba,
            Value::Null,
        )
        .await
    };
    let (rows, (status, _)) = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::join!(read_all, approve)
    })
    .await
    .expect("the pipeline did not finish");
    assert_eq!(status, 200);
    // In the order sent: the count ran after the delete.
    assert_eq!(rows, ["1", "5", "19"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_shows_the_hold_notice_with_the_request_and_how_to_approve() {
    let s = Setup::start("psql", "").await;
    let dba = s.token("dba", &["dba"]);
    let token = s.token("dev", &["developers"]);
    let port = s.proxy.port().to_string();
    let sql = format!("DELETE FROM {} WHERE id = 3", s.table);
    let ca = harness().certs.ca_cert.display().to_string();
    let psql = tokio::spawn({
        let (token, port, sql, ca) = (token.clone(), port.clone(), sql.clone(), ca.clone());
        async move {
            common::run_tool(
                &common::psql_path(),
                &[
                    "-h",
                    "localhost",
                    "-p",
                    &port,
                    "-U",
                    "app_rw",
                    "-d",
                    "app",
                    "-c",
                    &sql,
                ],
                &[
                    ("PGPASSWORD", &token),
                    ("PGSSLMODE", "verify-full"),
                    ("PGSSLROOTCERT", &ca),
                ],
            )
            .await
        }
    });
    let request = s.pending(&dba).await;
    let id = request["id"].as_str().unwrap().to_owned();
    s.api(
        "POST",
        &format!("/approvals/{id}/approve"),
        &dba,
        Value::Null,
    )
    .await;
    let out = psql.await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "DELETE 1");
    assert!(
        stderr.contains(&format!("NOTICE:  pgwarden is holding this statement for approval (request {id}, rule held-deletes)")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("pgwarden approvals approve {id}")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("http://admin.example/approvals/{id}/approve")),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_approvals_command_lists_shows_and_answers_with_the_login_token() {
    let s = Setup::start("cli", "").await;
    s.issuer.add_person("dba", person("dba", &["dba"]));
    let config_dir = harness().dir.join("approvals-cli-config");
    let _ = std::fs::remove_dir_all(&config_dir);
    common::pgwarden_login(s.issuer.url(), "dba", &config_dir).await;
    let admin = format!("http://{}", s.admin);
    let pgwarden = |args: Vec<String>| {
        let config_dir = config_dir.clone();
        let admin = admin.clone();
        async move {
            let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgwarden"))
                .arg("approvals")
                .args(&args)
                .args(["--admin", &admin])
                .env("PGWARDEN_CONFIG_DIR", &config_dir)
                .output()
                .await
                .unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    let (ok, stdout, _) = pgwarden(vec!["list".into()]).await;
    assert!(ok);
    assert_eq!(stdout.trim(), "no requests");

    let dev = s.developer().await;
    let table = s.table.clone();
    let held = tokio::spawn(async move {
        dev.execute(&format!("DELETE FROM {table} WHERE id = 9"), &[])
            .await
    });
    let dba = s.token("dba", &["dba"]);
    let id = s.pending(&dba).await["id"].as_str().unwrap().to_owned();
    let (ok, stdout, stderr) = pgwarden(vec!["list".into()]).await;
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains(&id) && stdout.contains("dev@example.com"),
        "{stdout}"
    );
    let (ok, stdout, _) = pgwarden(vec!["show".into(), id.to_lowercase()]).await;
    assert!(ok);
    assert!(
        stdout.contains(&format!("DELETE FROM {} WHERE id = 9", s.table)),
        "{stdout}"
    );
    assert!(stdout.contains("held-deletes"), "{stdout}");
    let (ok, _, stderr) = pgwarden(vec![
        "deny".into(),
        id.clone(),
        "--reason".into(),
        String::new(),
    ])
    .await;
    assert!(!ok);
    assert!(stderr.contains("needs a reason"), "{stderr}");
    let (ok, stdout, stderr) = pgwarden(vec![
        "approve".into(),
        id.clone(),
        "--reason".into(),
        "INC-4711".into(),
    ])
    .await;
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), format!("request {id} is now approved"));
    assert_eq!(held.await.unwrap().unwrap(), 1);
}

/// A webhook receiver on loopback: the bodies POSTed to it.
async fn webhook() -> (String, tokio::sync::mpsc::Receiver<Value>) {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (sender, receiver) = tokio::sync::mpsc::channel(8);
    tokio::spawn(pgwarden::net::http::serve(
        listener,
        None,
        tokio_util::sync::CancellationToken::new(),
        move |request: hyper::Request<hyper::body::Incoming>| {
            let sender = sender.clone();
            async move {
                let body = request.into_body().collect().await.unwrap().to_bytes();
                let _ = sender
                    .send(serde_json::from_slice(&body).unwrap_or(Value::Null))
                    .await;
                pgwarden::net::http::response(hyper::StatusCode::OK, "text/plain", "ok".into())
            }
        },
    ));
    (url, receiver)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_requests_are_announced_on_the_webhook() {
    let (url, mut hook) = webhook().await;
    let s = Setup::start(
        "webhook",
        &format!("notify_webhook = \"{url}\"\nnotify_format = \"slack\""),
    )
    .await;
    let dev = s.developer().await;
    dev.batch_execute("SET pgwarden.intent = 'INC-77: cleanup'")
        .await
        .unwrap();
    let table = s.table.clone();
    let held = tokio::spawn(async move {
        dev.execute(&format!("DELETE FROM {table} WHERE id = 4"), &[])
            .await
    });
    let announced = tokio::time::timeout(Duration::from_secs(10), hook.recv())
        .await
        .expect("nothing was announced")
        .unwrap();
    let text = announced["text"].as_str().unwrap();
    let dba = s.token("dba", &["dba"]);
    let request = s.pending(&dba).await;
    assert_eq!(
        request["intent"], "INC-77: cleanup",
        "the approver sees why"
    );
    let id = request["id"].as_str().unwrap().to_owned();
    assert!(text.contains(&id), "{text}");
    assert!(
        text.contains("dev@example.com wants to run on app"),
        "{text}"
    );
    assert!(
        text.contains(&format!("DELETE FROM {} WHERE id = 4", s.table)),
        "{text}"
    );
    assert!(
        text.contains(&format!("pgwarden approvals approve {id}")),
        "{text}"
    );
    s.api(
        "POST",
        &format!("/approvals/{id}/approve"),
        &dba,
        Value::Null,
    )
    .await;
    assert_eq!(held.await.unwrap().unwrap(), 1);

    // A reviewer searching by the intent finds the request and who answered it, by name.
    let found = std::process::Command::new(env!("CARGO_BIN_EXE_pgwarden"))
        .args([
            "audit",
            "search",
            s.audit.to_str().unwrap(),
            "--intent",
            "inc-77",
        ])
        .output()
        .unwrap();
    assert!(found.status.success(), "{found:?}");
    let table = String::from_utf8_lossy(&found.stdout);
    let line = |kind: &str| {
        table
            .lines()
            .find(|l| l.contains(kind))
            .unwrap_or_else(|| panic!("no {kind} in:\n{table}"))
            .to_owned()
    };
    let request = line("approval.request");
    assert!(
        request.contains("dev@example.com") && request.contains(&id),
        "{request}"
    );
    assert!(request.contains("intent=\"INC-77: cleanup\""), "{request}");
    let answer = line("approval.answer");
    assert!(
        answer.contains("dba@example.com") && answer.contains("approved"),
        "{answer}"
    );
    // With another filter too, the answer is still known to belong to the intent; and the
    // statement that ran names who approved it.
    let search = |extra: &[&str]| {
        let mut args = vec![
            "audit",
            "search",
            s.audit.to_str().unwrap(),
            "--intent",
            "inc-77",
        ];
        args.extend_from_slice(extra);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgwarden"))
            .args(&args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let answers = search(&["--type", "approval.answer"]);
    assert_eq!(answers.lines().count(), 2, "{answers}");
    assert!(answers.contains("dba@example.com"), "{answers}");
    let statements = search(&["--type", "statement"]);
    assert!(
        statements.contains("approved by dba@example.com"),
        "{statements}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_goes_unready_when_the_database_server_is_down() {
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let proxy = Proxy::start(ProxyOptions {
        upstream: Some(format!(
            "host = \"127.0.0.1\"\nport = {closed}\nsslmode = \"disable\"\n"
        )),
        extra: "[admin]\nlisten = \"127.0.0.1:0\"\n".into(),
        ..Default::default()
    })
    .await;
    let admin = proxy.server.as_ref().unwrap().admin_addr().unwrap();
    let get = |path: &'static str| async move {
        common::http_get(&format!("http://{admin}{path}")).await
    };
    let (status, body) = get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["upstream"]["reachable"], false);
    assert!(
        body["reasons"][0]
            .as_str()
            .unwrap()
            .contains("database server is unreachable"),
        "{body}"
    );
    // Liveness is another matter.
    assert_eq!(get("/healthz").await.0, 200);
    // And /metrics says so too.
    let (_, metrics) = get("/metrics").await;
    assert!(metrics.contains("\npgwarden_upstream_up 0\n"), "{metrics}");
    // The endpoint needs no credentials, so it probes the database server at most once a
    // second however often it is asked.
    let counter = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let counted = counter.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = accepted.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = counter.accept().await {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(conn);
        }
    });
    let probed = Proxy::start(ProxyOptions {
        upstream: Some(format!(
            "host = \"127.0.0.1\"\nport = {counted}\nsslmode = \"disable\"\n"
        )),
        extra: "[admin]\nlisten = \"127.0.0.1:0\"\n".into(),
        ..Default::default()
    })
    .await;
    let probed_admin = probed.server.as_ref().unwrap().admin_addr().unwrap();
    let before = accepted.load(std::sync::atomic::Ordering::SeqCst);
    for _ in 0..20 {
        common::http_get(&format!("http://{probed_admin}/readyz")).await;
    }
    let probes = accepted.load(std::sync::atomic::Ordering::SeqCst) - before;
    assert!((1..=2).contains(&probes), "{probes} probes for 20 requests");
    // With the server up, ready.
    let up = Proxy::start(ProxyOptions {
        extra: "[admin]\nlisten = \"127.0.0.1:0\"\n".into(),
        ..Default::default()
    })
    .await;
    let admin = up.server.as_ref().unwrap().admin_addr().unwrap();
    let fetcher = Fetcher::new(None, Duration::from_secs(10), 1 << 16).unwrap();
    let response = fetcher
        .fetch(
            openidconnect::http::Request::builder()
                .uri(format!("http://{admin}/readyz"))
                .body(Vec::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_break_glass_token_answers_when_the_identity_provider_cannot() {
    let secret = "b".repeat(16) + &"7".repeat(24);
    let file = common::write_file("break-glass.token", &secret);
    let s = Setup::start(
        "glass",
        &format!(
            "\n[[admin.break_glass]]\nname = \"oncall\"\ntoken = \"file:{}\"\ngroups = [\"dba\"]\n",
            file.display()
        ),
    )
    .await;
    let dev = s.developer().await;
    let table = s.table.clone();
    let held = tokio::spawn(async move {
        dev.execute(&format!("DELETE FROM {table} WHERE id = 6"), &[])
            .await
    });
    let request = s.pending(&secret).await;
    let id = request["id"].as_str().unwrap();
    let (status, _) = s
        .api(
            "POST",
            &format!("/approvals/{id}/approve"),
            &"x".repeat(40),
            Value::Null,
        )
        .await;
    assert_eq!(status, 401, "a wrong static token is refused");
    let (status, body) = s
        .api(
            "POST",
            &format!("/approvals/{id}/approve"),
            &secret,
            json!({"reason": "IdP down"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["answers"][0]["by"], "break-glass:oncall");
    assert_eq!(held.await.unwrap().unwrap(), 1);
}

/// An approval answers the statement that was held, and nothing else: if that statement is
/// decided differently when it comes back (here a reload denies it meanwhile), the
/// statement pipelined behind it still needs its own approval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_is_not_spent_on_the_statement_behind_the_held_one() {
    use common::wire::{alice_login, error_fields, read_message};
    use tokio::io::AsyncWriteExt;
    let s = Setup::start("spent", "").await;
    let dba = s.token("dba", &["dba"]);
    let frame = |sql: &str| {
        let mut out = bytes::BytesMut::new();
        postgres_protocol::message::frontend::query(sql, &mut out).unwrap();
        out
    };
    let mut stream = tokio::net::TcpStream::connect(s.proxy.addr).await.unwrap();
    alice_login(&mut stream).await;
    // One write: a held DELETE, then a DO block (held by the guardrails) that deletes too.
    let mut both = frame(&format!("DELETE FROM {} WHERE id = 7", s.table));
    both.extend(frame(&format!(
        "DO $$ BEGIN DELETE FROM {} WHERE id = 8; END $$",
        s.table
    )));
    stream.write_all(&both).await.unwrap();
    let first = s.pending(&dba).await;
    // While it waits, a reload denies deletes from the table outright.
    let config = std::fs::read_to_string(&s.proxy.config_path).unwrap();
    let denying = format!(
        "{config}\n[[policy.rules]]\nid = \"no-deletes\"\npriority = 50\nstatements = [\"delete\"]\ntables = [\"{}\"]\naction = \"deny\"\n",
        s.table
    );
    std::fs::write(&s.proxy.config_path, denying).unwrap();
    s.reload().await;
    let (status, answer) = s
        .api(
            "POST",
            &format!("/approvals/{}/approve", first["id"].as_str().unwrap()),
            &dba,
            Value::Null,
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    // The DELETE is now refused by the new rule...
    let refused = loop {
        let (tag, body) = read_message(&mut stream).await;
        match tag {
            b'E' => break error_fields(&body),
            b'Z' => panic!("the DELETE ran"),
            _ => {}
        }
    };
    assert_eq!(refused.get(&b'C').map(String::as_str), Some("42501"));
    // ...and the DO block waits for an approval of its own.
    let second = loop {
        let request = s.pending(&dba).await;
        if request["id"] != first["id"] {
            break request;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(second["rule"], "guardrail.code-and-privileges");
    let direct = common::direct("app").await;
    assert_eq!(
        s.count(&direct).await,
        20,
        "a statement ran without approval"
    );
}

/// A password written into a held statement is not shown to approvers (nor sent to a
/// webhook): they see that a password is set, not which.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvers_do_not_see_passwords_in_held_statements() {
    let s = Setup::start("password", "").await;
    let dba = s.token("dba", &["dba"]);
    let dev = s.developer().await;
    let held = tokio::spawn(async move {
        dev.simple_query("ALTER ROLE app_rw PASSWORD 'Hunter2Held'")
            .await
    });
    let request = s.pending(&dba).await;
    assert_eq!(request["statement"], "ALTER ROLE app_rw PASSWORD '…'");
    let (status, body) = s
        .api(
            "POST",
            &format!("/approvals/{}/deny", request["id"].as_str().unwrap()),
            &dba,
            json!({"reason": "not through here"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(held.await.unwrap().is_err());
    // On record as what it came to: refused, with the approver's reason.
    s.proxy.shutdown(Duration::from_secs(5)).await;
    let records = all_records(&s.audit);
    let statement = records
        .iter()
        .find(|r| r["type"] == "statement" && r["kinds"][0] == "alter role")
        .expect("the ALTER ROLE is on record");
    assert_eq!(statement["decision"], "deny", "{statement}");
    assert!(
        statement["reason"]
            .as_str()
            .is_some_and(|r| r.contains("not through here")),
        "{statement}"
    );
    let text = serde_json::to_string(&records).unwrap();
    assert!(!text.contains("Hunter2Held"));
}

/// Two pipelined messages that each prepare a name again, both stopped by an error: the
/// name is not left with the body of either (pgwarden forgets it), so an EXECUTE of it is
/// not judged as a harmless SELECT while the server runs the approved DELETE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_name_is_not_redefined_by_messages_that_failed() {
    let (s, dba, dev) = Setup::with_approved_delete("redefine").await;
    // Pipelined: tokio-postgres sends both before reading either answer.
    let (first, second) = tokio::join!(
        dev.simple_query("SELECT 1/0; DEALLOCATE d; PREPARE d(int) AS SELECT $1"),
        dev.simple_query("SELECT 1/0; DEALLOCATE d; PREPARE d(int) AS SELECT abs($1)"),
    );
    assert!(first.is_err() && second.is_err());
    // Refused as unknown (the messages were pipelined), or held as the DELETE it is (they
    // happened to go one at a time): never run as a SELECT.
    let execute = tokio::spawn(async move { dev.simple_query("EXECUTE d(5)").await });
    match tokio::time::timeout(Duration::from_secs(3), execute).await {
        Ok(result) => {
            let err = result.unwrap().expect_err("EXECUTE d ran unjudged");
            assert_refused(&err);
        }
        Err(_) => s.assert_held(&dba, "EXECUTE d").await,
    }
    assert!(s.has_row(5).await, "the DELETE ran unjudged");
}

/// An EXECUTE pipelined right behind a message that prepares its name again — a message
/// that then fails — runs the old body on the server: it is judged by both bodies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execute_behind_a_pending_redefinition_is_judged_by_every_body() {
    let (s, dba, dev) = Setup::with_approved_delete("lookahead").await;
    let both = async {
        tokio::join!(
            dev.simple_query("SELECT 1/0; DEALLOCATE d; PREPARE d(int) AS SELECT $1"),
            dev.simple_query("EXECUTE d(6)"),
        )
    };
    match tokio::time::timeout(Duration::from_secs(3), both).await {
        Ok((first, execute)) => {
            assert!(first.is_err());
            let err = execute.expect_err("EXECUTE d ran as the SELECT pgwarden expected");
            assert_refused(&err);
        }
        Err(_) => s.assert_held(&dba, "EXECUTE d").await,
    }
    assert!(s.has_row(6).await, "the DELETE ran unjudged");
}

/// Refused by pgwarden's policy (42501).
fn assert_refused(err: &tokio_postgres::Error) {
    assert_eq!(
        sqlstate(err).as_deref(),
        Some("42501"),
        "{}",
        db_message(err)
    );
}

/// A protocol-level statement prepared under an approval runs under it at each Execute, also
/// after a reload that still asks for approval: the reload judges it again, and a DBA is not
/// asked twice for the same statement in the same session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_prepared_statement_stays_approved_across_a_reload() {
    let s = Setup::start("reloadapproved", "").await;
    let dba = s.token("dba", &["dba"]);
    let dev = std::sync::Arc::new(s.developer().await);
    let sql = format!("DELETE FROM {} WHERE id = $1", s.table);
    let client = dev.clone();
    let delete = s
        .approved(&dba, async move { client.prepare(&sql).await })
        .await
        .unwrap();
    assert_eq!(dev.execute(&delete, &[&1i32]).await.unwrap(), 1);
    // The same file again: a new snapshot of the same rules.
    s.reload().await;
    let run = tokio::time::timeout(Duration::from_secs(5), dev.execute(&delete, &[&2i32]))
        .await
        .expect("held again after the reload");
    assert_eq!(run.unwrap(), 1);
    assert!(!s.has_row(2).await);
}
