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
    let proxy = Proxy::default().await;
    let server = proxy.server.as_ref().unwrap();
    let before = proxy.alice().await;
    // New config: bob may no longer connect.
    let text = std::fs::read_to_string(&proxy.config_path).unwrap();
    let without_bob = text.replace(
        "groups = [\"ops\"]\ndatabases = [\"app\"]",
        "groups = [\"ops\"]\ndatabases = [\"elsewhere\"]",
    );
    assert_ne!(text, without_bob);
    std::fs::write(&proxy.config_path, &without_bob).unwrap();
    server.reload(&proxy.config_path).await.unwrap();
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
}
