//! Front-door authentication, access rules, and every upstream login method.

mod common;

use common::{harness, sqlstate, Proxy, ProxyOptions, ALICE_PASSWORD, BOB_PASSWORD};

fn message(err: &tokio_postgres::Error) -> String {
    err.as_db_error()
        .map(|e| e.message().to_owned())
        .unwrap_or_else(|| err.to_string())
}

#[tokio::test]
async fn wrong_password_and_unknown_user_look_the_same_and_the_next_client_is_served() {
    let proxy = Proxy::default().await;
    let wrong = proxy
        .try_connect(&proxy.conninfo("alice", "not-her-password", "sslmode=disable"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&wrong).as_deref(), Some("28P01"), "{wrong}");
    assert_eq!(
        message(&wrong),
        "password authentication failed for user \"alice\""
    );
    let unknown = proxy
        .try_connect(&proxy.conninfo("mallory", "whatever", "sslmode=disable"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&unknown).as_deref(), Some("28P01"), "{unknown}");
    assert_eq!(
        message(&unknown),
        "password authentication failed for user \"mallory\""
    );
    let client = proxy.alice().await;
    assert_eq!(
        client
            .query_one("SELECT 1::int4", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_sign_ins_are_checked_only_up_to_the_failure_limit() {
    let proxy = Proxy::start(ProxyOptions {
        extra: "[auth.rate_limit]\nmax_failures = 3\nbackoff = \"30s\"\n".into(),
        ..Default::default()
    })
    .await;
    let connect_all = |password: &'static str| {
        let conninfo = proxy.conninfo("alice", password, "sslmode=disable");
        futures_util::future::join_all((0..8).map(move |_| {
            let conninfo = conninfo.clone();
            async move {
                tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
                    .await
                    .map(|(client, connection)| {
                        tokio::spawn(connection);
                        client
                    })
            }
        }))
    };
    // A pool opening eight connections at once with the right password: queued three at a
    // time, all signed in.
    for client in connect_all(ALICE_PASSWORD).await {
        client.unwrap().simple_query("SELECT 1").await.unwrap();
    }
    // Eight guesses at once: three are checked, the rest wait for a slot and then find the
    // address over its limit, without their password being looked at.
    let mut codes: Vec<String> = connect_all("guess")
        .await
        .into_iter()
        .map(|result| sqlstate(&result.unwrap_err()).unwrap_or_default())
        .collect();
    codes.sort();
    assert_eq!(
        codes,
        ["28000", "28000", "28000", "28000", "28000", "28P01", "28P01", "28P01"]
    );
}

#[tokio::test]
async fn a_database_outside_the_access_rules_is_refused() {
    let proxy = Proxy::default().await;
    let conninfo = format!("host=127.0.0.1 port={} dbname=postgres user=alice password={ALICE_PASSWORD} sslmode=disable", proxy.port());
    let err = proxy.try_connect(&conninfo).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("28000"), "{err}");
    assert_eq!(
        message(&err),
        "user \"alice\" may not connect to database \"postgres\""
    );
    // The default database is the user name, as in PostgreSQL: also not allowed.
    let conninfo = format!(
        "host=127.0.0.1 port={} user=alice password={ALICE_PASSWORD} sslmode=disable",
        proxy.port()
    );
    let err = proxy.try_connect(&conninfo).await.unwrap_err();
    assert_eq!(
        message(&err),
        "user \"alice\" may not connect to database \"alice\""
    );
    proxy.alice().await.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn each_identity_gets_the_role_its_access_rule_grants() {
    let proxy = Proxy::default().await;
    let bob = proxy.connect("bob", BOB_PASSWORD).await;
    let row = bob
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "app_ro");
    // app_ro may read but not write: the database's own permissions still apply.
    assert_eq!(
        bob.query("SELECT * FROM items", &[]).await.unwrap().len(),
        10
    );
    let err = bob.execute("DELETE FROM items", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("42501"));
}

/// Log in upstream as `role` (listed in [[upstream.roles]] with `password`) and check who we are.
async fn login_upstream_as(
    role: &str,
    password: Option<&str>,
    upstream: Option<String>,
) -> Result<String, tokio_postgres::Error> {
    let password_line = password
        .map(|p| format!("password = \"{p}\"\n"))
        .unwrap_or_default();
    let proxy = Proxy::start(ProxyOptions {
        upstream,
        extra: format!(
            "[[upstream.roles]]\nname = \"{role}\"\n{password_line}\n\
             [[auth.local]]\nname = \"carol\"\nscram = \"{}\"\n\n\
             [[access]]\nusers = [\"carol\"]\ndatabases = [\"app\"]\nroles = [\"{role}\"]\n",
            pgwarden::auth::scram::hash_password(b"carol-pw")
        ),
        ..Default::default()
    })
    .await;
    let client = proxy
        .try_connect(&proxy.conninfo("carol", "carol-pw", "sslmode=disable"))
        .await?;
    let row = client.query_one("SELECT current_user::text", &[]).await?;
    Ok(row.get(0))
}

#[tokio::test]
async fn upstream_login_with_md5_cleartext_trust_and_unix_socket() {
    assert_eq!(
        login_upstream_as("md5_user", Some("md5-pw"), None)
            .await
            .unwrap(),
        "md5_user"
    );
    assert_eq!(
        login_upstream_as("clear_user", Some("clear-pw"), None)
            .await
            .unwrap(),
        "clear_user"
    );
    assert_eq!(
        login_upstream_as("trust_user", None, None).await.unwrap(),
        "trust_user"
    );
    let h = harness();
    // The throwaway server trusts its private Unix socket.
    let unix = format!(
        "host = \"{}\"\nport = {}\n",
        h.pg.socket_dir().display(),
        h.pg.port()
    );
    assert_eq!(
        login_upstream_as("trust_user", None, Some(unix))
            .await
            .unwrap(),
        "trust_user"
    );
}

#[tokio::test]
async fn upstream_auth_methods_limit_what_the_server_may_ask_for() {
    let h = harness();
    let scram_only = format!(
        "host = \"{}\"\nport = {}\nsslmode = \"disable\"\nauth_methods = [\"scram-sha-256\"]\n",
        h.pg.host(),
        h.pg.port()
    );
    for (role, password) in [
        ("md5_user", Some("md5-pw")),
        ("clear_user", Some("clear-pw")),
        ("trust_user", None),
    ] {
        let err = login_upstream_as(role, password, Some(scram_only.clone()))
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&err).as_deref(), Some("08001"), "{role}: {err}");
    }
}

/// A server that is not PostgreSQL (someone in the middle of an unverified connection):
/// answers the startup packet with `first`, then, if pgwarden answers, with `then`.
/// Returns the `[upstream]` lines and what pgwarden sent after `first` (None: it hung up).
async fn impostor(
    first: Vec<u8>,
    then: Vec<u8>,
) -> (String, tokio::task::JoinHandle<Option<Vec<u8>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let len = conn.read_i32().await.unwrap();
        let mut startup = vec![0; usize::try_from(len).unwrap() - 4];
        conn.read_exact(&mut startup).await.unwrap();
        conn.write_all(&first).await.unwrap();
        let mut answer = vec![0; 5];
        if conn.read_exact(&mut answer).await.is_err() {
            return None;
        }
        let len = i32::from_be_bytes(answer[1..5].try_into().unwrap());
        let mut rest = vec![0; usize::try_from(len).unwrap() - 4];
        conn.read_exact(&mut rest).await.unwrap();
        answer.extend(rest);
        conn.write_all(&then).await.unwrap();
        let mut more = [0u8; 1];
        let _ = conn.read(&mut more).await;
        Some(answer)
    });
    let upstream = format!("host = \"127.0.0.1\"\nport = {port}\nsslmode = \"disable\"\n");
    (upstream, task)
}

fn auth_request(code: i32, data: &[u8]) -> Vec<u8> {
    let mut out = vec![b'R'];
    out.extend((8 + data.len() as i32).to_be_bytes());
    out.extend(code.to_be_bytes());
    out.extend(data);
    out
}

#[tokio::test]
async fn an_impostor_server_gets_no_password_and_cannot_skip_scram() {
    let ready = [b'Z', 0, 0, 0, 5, b'I'];
    // Asked for the password itself where only SCRAM is allowed: pgwarden hangs up.
    let (upstream, server) = impostor(auth_request(3, &[]), Vec::new()).await;
    let upstream = format!("{upstream}auth_methods = [\"scram-sha-256\"]\n");
    let err = login_upstream_as("fake_role", Some("the-real-secret"), Some(upstream))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("08001"), "{err}");
    assert_eq!(
        server.await.unwrap(),
        None,
        "pgwarden answered a password request"
    );

    // Starts SCRAM, then says "OK" without proving it knows the password.
    let mut ok = auth_request(0, &[]);
    ok.extend(ready);
    let (upstream, server) = impostor(auth_request(10, b"SCRAM-SHA-256\0\0"), ok).await;
    let err = login_upstream_as("fake_role", Some("the-real-secret"), Some(upstream))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("08001"), "{err}");
    let sent = server.await.unwrap().expect("the SCRAM first message");
    assert_eq!(sent[0], b'p');
    assert!(!String::from_utf8_lossy(&sent).contains("the-real-secret"));
}

#[tokio::test]
async fn refused_upstream_credentials_are_reported_without_the_secret() {
    let err = login_upstream_as("md5_user", Some("wrong-upstream-secret"), None)
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("08001"), "{err}");
    let db = err.as_db_error().unwrap();
    assert_eq!(
        db.message(),
        "pgwarden could not log in to the database server"
    );
    let everything = format!("{} {:?} {:?}", db.message(), db.detail(), db.hint());
    assert!(
        !everything.contains("wrong-upstream-secret"),
        "{everything}"
    );
}

#[tokio::test]
async fn a_password_needed_upstream_but_not_configured_is_a_clear_error() {
    let err = login_upstream_as("clear_user", None, None)
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("08001"), "{err}");
}

#[tokio::test]
async fn the_servers_own_startup_errors_pass_through() {
    let proxy = Proxy::start(ProxyOptions {
        extra: "[[access]]\nusers = [\"alice\"]\ndatabases = [\"*\"]\nroles = [\"app_rw\"]\n"
            .into(),
        ..Default::default()
    })
    .await;
    let conninfo = format!(
        "host=127.0.0.1 port={} dbname=no_such_db user=alice password={ALICE_PASSWORD} sslmode=disable",
        proxy.port()
    );
    let err = proxy.try_connect(&conninfo).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("3D000"), "{err}");
    assert_eq!(message(&err), "database \"no_such_db\" does not exist");
}

#[tokio::test]
async fn reload_applies_to_new_sessions_and_a_bad_config_keeps_the_old_one() {
    let proxy = Proxy::start(ProxyOptions {
        extra: "[admin]\nlisten = \"127.0.0.1:0\"\n".into(),
        ..Default::default()
    })
    .await;
    let server = proxy.server.as_ref().unwrap();
    let before = proxy.alice().await;
    // New config: bob may no longer connect.
    reload_without_bob(&proxy).await;
    let err = proxy
        .try_connect(&proxy.conninfo("bob", BOB_PASSWORD, "sslmode=disable"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("28000"));
    // Existing sessions keep going.
    before.simple_query("SELECT 1").await.unwrap();
    // An invalid file is refused and the current config stays.
    std::fs::write(&proxy.config_path, "this is not toml").unwrap();
    assert!(server.reload(&proxy.config_path).await.is_err());
    proxy.alice().await.simple_query("SELECT 1").await.unwrap();
    let err = proxy
        .try_connect(&proxy.conninfo("bob", BOB_PASSWORD, "sslmode=disable"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("28000"));
    // Both are counted for monitoring.
    let admin = server.admin_addr().unwrap();
    let (_, metrics) = common::http_get(&format!("http://{admin}/metrics")).await;
    for result in ["success", "failure"] {
        assert!(
            metrics.contains(&format!(
                "\npgwarden_config_reloads_total{{result=\"{result}\"}} 1\n"
            )),
            "{metrics}"
        );
    }
}

/// Reload `proxy` with a config whose `[[access]]` lets bob's group (ops) into another
/// database only; returns that config's text.
async fn reload_without_bob(proxy: &Proxy) -> String {
    let text = std::fs::read_to_string(&proxy.config_path).unwrap();
    let without_bob = text.replace(
        "groups = [\"ops\"]\ndatabases = [\"app\"]",
        "groups = [\"ops\"]\ndatabases = [\"elsewhere\"]",
    );
    assert_ne!(text, without_bob);
    std::fs::write(&proxy.config_path, &without_bob).unwrap();
    let server = proxy.server.as_ref().unwrap();
    server.reload(&proxy.config_path).await.unwrap();
    without_bob
}

/// The error a watched tokio-postgres connection ends with, within a few seconds.
async fn ended_with(
    connection: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
    what: &str,
) -> tokio_postgres::Error {
    tokio::time::timeout(std::time::Duration::from_secs(5), connection)
        .await
        .unwrap_or_else(|_| panic!("{what} outlived its access"))
        .unwrap()
        .unwrap_err()
}

/// A reload that takes someone's access away ends their open sessions: an idle one at once,
/// a busy one once its statement is answered. Everyone else goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_revokes_access_ends_that_persons_open_sessions() {
    let dir = common::audit_dir("revoked");
    let proxy = Proxy::start(ProxyOptions {
        extra: format!("[audit]\ndir = \"{}\"\n", dir.display()),
        ..Default::default()
    })
    .await;
    let server = proxy.server.as_ref().unwrap();
    let connect_watching = |user: &str, password: &str| {
        let conninfo = proxy.conninfo(user, password, "sslmode=disable");
        async move {
            let (client, connection) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
                .await
                .unwrap();
            (client, tokio::spawn(connection))
        }
    };
    let (_idle, idle_connection) = connect_watching("bob", BOB_PASSWORD).await;
    let (busy, busy_connection) = connect_watching("bob", BOB_PASSWORD).await;
    let (alice, alice_connection) = connect_watching("alice", ALICE_PASSWORD).await;
    // Reloads that change nothing for bob leave him alone.
    server.reload(&proxy.config_path).await.unwrap();
    busy.simple_query("SELECT 1").await.unwrap();

    let sleeping = tokio::spawn(async move {
        let rows = busy.query_one("SELECT 7 FROM pg_sleep(1)", &[]).await;
        (busy, rows)
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let without_bob = reload_without_bob(&proxy).await;

    // The idle session is told why, and closed.
    let err = ended_with(idle_connection, "the idle session").await;
    assert_eq!(sqlstate(&err).as_deref(), Some("28000"), "{err}");
    assert!(
        message(&err).contains("access was revoked")
            && message(&err).contains("may not connect to database \"app\""),
        "{err}"
    );
    // The statement running at the reload completes; then that session ends too.
    let (busy, rows) = sleeping.await.unwrap();
    assert_eq!(rows.unwrap().get::<_, i32>(0), 7);
    let err = ended_with(busy_connection, "the busy session").await;
    assert_eq!(sqlstate(&err).as_deref(), Some("28000"));
    assert!(busy.simple_query("SELECT 1").await.is_err());
    // Alice's access did not change.
    alice.simple_query("SELECT 1").await.unwrap();
    // Now her local user leaves the group [[access]] lets in.
    let alice_moved = without_bob.replacen("groups = [\"dev\"]", "groups = [\"former\"]", 1);
    assert_ne!(alice_moved, without_bob);
    std::fs::write(&proxy.config_path, &alice_moved).unwrap();
    server.reload(&proxy.config_path).await.unwrap();
    let err = ended_with(alice_connection, "alice's session").await;
    assert_eq!(sqlstate(&err).as_deref(), Some("28000"));

    proxy.shutdown(std::time::Duration::from_secs(5)).await;
    let endings: Vec<String> = common::all_records(&dir)
        .iter()
        .filter(|r| r["type"] == "session.end")
        .map(|r| r["ending"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(endings, ["access revoked"; 3]);
}

/// The server reachable but refusing pgwarden's own credentials: no session of that role can
/// start, and /readyz says so (without the secret) until a login succeeds again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_reports_a_database_server_that_refuses_pgwardens_login() {
    let proxy = Proxy::start(ProxyOptions {
        extra: format!(
            "[[upstream.roles]]\nname = \"md5_user\"\npassword = \"wrong-upstream-secret\"\n\n\
             [[auth.local]]\nname = \"carol\"\nscram = \"{}\"\n\n\
             [[access]]\nusers = [\"carol\"]\ndatabases = [\"app\"]\nroles = [\"md5_user\"]\n\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n",
            pgwarden::auth::scram::hash_password(b"carol-pw")
        ),
        ..Default::default()
    })
    .await;
    let admin = proxy.server.as_ref().unwrap().admin_addr().unwrap();
    let readyz = || async move { common::http_get(&format!("http://{admin}/readyz")).await };
    assert_eq!(readyz().await.0, 200);
    let err = proxy
        .try_connect(&proxy.conninfo("carol", "carol-pw", "sslmode=disable"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("08001"), "{err}");
    let (status, body) = readyz().await;
    assert_eq!(status, 503, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["upstream"]["reachable"], true, "{body}");
    let login_error = body["upstream"]["login_error"].as_str().unwrap_or_default();
    assert!(login_error.contains("\"md5_user\""), "{body}");
    assert!(
        !body.to_string().contains("wrong-upstream-secret"),
        "{body}"
    );
    // Another role logs in: the server accepts pgwarden again.
    proxy.alice().await.simple_query("SELECT 1").await.unwrap();
    assert_eq!(readyz().await.0, 200);
}
