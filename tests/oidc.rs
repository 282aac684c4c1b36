//! Signing in with OIDC tokens through real clients. The issuer is the testbed's development
//! issuer on 127.0.0.1, over HTTPS with the per-run CA, serving discovery and a key set
//! generated for this run; pgwarden fetches them like it would from a real provider.

mod common;

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::{all_records, audit_dir, harness, sqlstate, Proxy, ProxyOptions};
use pgwarden::testbed::KeyAlgorithm;
use serde_json::{json, Value};

const AUDIENCE: &str = "pgwarden";

fn ann() -> Value {
    json!({"sub": "u-ann", "email": "ann@example.com", "groups": ["engineering", "oncall"]})
}

/// `[[auth.oidc]]` for `issuer` (plus `issuer_keys` inside that table; audience `pgwarden`
/// unless they set one), an access rule for group `engineering`, and `extra` after it.
fn options(issuer_url: &str, issuer_keys: &str, extra: &str) -> ProxyOptions {
    let audience = if issuer_keys.contains("audience =") {
        String::new()
    } else {
        format!("audience = \"{AUDIENCE}\"")
    };
    ProxyOptions {
        extra: format!(
            "[[auth.oidc]]\nissuer = \"{issuer_url}\"\n{audience}\nca = \"{ca}\"\n{issuer_keys}\n\n\
             [[access]]\ngroups = [\"engineering\"]\ndatabases = [\"app\"]\nroles = [\"app_ro\", \"app_rw\"]\n\n{extra}\n",
            ca = harness().certs.ca_cert.display(),
        ),
        ..Default::default()
    }
}

fn conninfo(proxy: &Proxy, user: &str, token: &str, sslmode: &str) -> String {
    format!(
        "host=127.0.0.1 port={} dbname=app user={user} password={token} sslmode={sslmode}",
        proxy.port()
    )
}

async fn connect(
    proxy: &Proxy,
    user: &str,
    token: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    proxy
        .try_connect_tls(&conninfo(proxy, user, token, "require"))
        .await
}

async fn current_user(client: &tokio_postgres::Client) -> String {
    client
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0)
}

fn message(err: &tokio_postgres::Error) -> String {
    err.as_db_error()
        .map(|e| format!("{} (hint: {})", e.message(), e.hint().unwrap_or_default()))
        .unwrap_or_else(|| err.to_string())
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn id_and_access_tokens_sign_people_in_with_their_groups_and_requested_role() {
    let issuer = common::https_issuer().await;
    let dir = audit_dir("oidc-accept");
    let proxy = Proxy::start(options(
        issuer.url(),
        "",
        &format!("[audit]\ndir = \"{}\"\n", dir.display()),
    ))
    .await;

    // An ID token; the person's own name as the user means their default role.
    let id_token = issuer.id_token(AUDIENCE, &ann(), 300);
    let client = connect(&proxy, "ann@example.com", &id_token).await.unwrap();
    assert_eq!(current_user(&client).await, "app_ro");
    drop(client);

    // An RFC 9068 access token asking for another role the access rules allow.
    let access_token = issuer.access_token(AUDIENCE, &ann(), 300);
    let client = connect(&proxy, "app_rw", &access_token).await.unwrap();
    assert_eq!(current_user(&client).await, "app_rw");
    drop(client);

    // A role the rules do not give this person.
    let err = connect(&proxy, "postgres", &access_token)
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("28000"), "{err}");

    // psql with the token in PGPASSWORD, verifying pgwarden's certificate.
    let out = common::run_tool(
        &common::psql_path(),
        &[
            "-h",
            "localhost",
            "-p",
            &proxy.port().to_string(),
            "-U",
            "ann@example.com",
            "-d",
            "app",
            "-Atc",
            "SELECT current_user",
        ],
        &[
            ("PGPASSWORD", &id_token),
            ("PGSSLMODE", "verify-full"),
            ("PGSSLROOTCERT", harness().certs.ca_cert.to_str().unwrap()),
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "app_ro");
    proxy.shutdown(Duration::from_secs(5)).await;

    let records = all_records(&dir);
    let starts: Vec<&Value> = records
        .iter()
        .filter(|r| r["type"] == "session.start")
        .collect();
    assert_eq!(starts.len(), 3, "{starts:#?}");
    for start in &starts {
        let user = &start["actor"]["user"];
        assert_eq!(user["name"], "ann@example.com", "{start}");
        assert_eq!(user["groups"], json!(["engineering", "oncall"]));
        assert_eq!(user["uid"], "u-ann");
        assert_eq!(user["issuer"], issuer.url());
        assert_eq!(user["auth_method"], "oidc-password");
    }
    assert_eq!(starts[0]["actor"]["user"]["token_type"], "id_token");
    assert_eq!(starts[1]["actor"]["user"]["token_type"], "access_token");
    assert_eq!(starts[1]["role"], "app_rw");
    let text = records
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    for token in [&id_token, &access_token] {
        let signature = token.rsplit('.').next().unwrap();
        assert!(!text.contains(signature), "a token reached the audit log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_token_is_refused_with_28p01_and_a_reason_and_the_proxy_keeps_serving() {
    let issuer = common::https_issuer().await;
    let dir = audit_dir("oidc-reject");
    let proxy = Proxy::start(options(
        issuer.url(),
        "",
        &format!(
            "[audit]\ndir = \"{}\"\n[auth.rate_limit]\nmax_failures = 0\n",
            dir.display()
        ),
    ))
    .await;
    let now = pgwarden::testbed::issuer::unix_now();
    let valid = issuer.id_token(AUDIENCE, &ann(), 300);
    let [header, payload, signature]: [&str; 3] =
        valid.split('.').collect::<Vec<_>>().try_into().unwrap();
    let claims = issuer.standard_claims(AUDIENCE, &ann(), 300);
    let with = |extra: Value| {
        let mut c = claims.clone();
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let sign = |claims: &Value| {
        issuer
            .sign(jsonwebtoken::Header::default(), claims)
            .unwrap()
    };
    let without = |key: &str| {
        let mut c = claims.clone();
        c.as_object_mut().unwrap().remove(key);
        c
    };
    let hs256_with_public_key = {
        use hmac::{KeyInit, Mac};
        let head = b64(&json!({"alg": "HS256", "typ": "JWT", "kid": issuer.active_kid()}));
        let body = b64(&claims);
        let pem = issuer.public_key_pem().unwrap();
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(pem.as_bytes()).unwrap();
        mac.update(format!("{head}.{body}").as_bytes());
        let tag = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{head}.{body}.{tag}")
    };
    let tampered = format!(
        "{header}.{}.{signature}",
        b64(&with(json!({"email": "admin@example.com"})))
    );
    assert_ne!(tampered.split('.').nth(1), Some(payload));
    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "expired",
            sign(&with(json!({"exp": now - 3600}))),
            "expired",
            "token_expired",
        ),
        (
            "not yet valid",
            sign(&with(json!({"nbf": now + 3600}))),
            "not valid yet",
            "token_not_yet_valid",
        ),
        (
            "issued in the future",
            sign(&with(json!({"iat": now + 3600, "exp": now + 7200}))),
            "not valid yet",
            "token_not_yet_valid",
        ),
        (
            "wrong issuer",
            sign(&with(json!({"iss": "https://idp.evil.example"}))),
            "issuer is not one pgwarden trusts",
            "unknown_issuer",
        ),
        (
            "issuer with a trailing slash",
            sign(&with(json!({"iss": format!("{}/", issuer.url())}))),
            "issuer is not one pgwarden trusts",
            "unknown_issuer",
        ),
        (
            "wrong audience",
            sign(&with(json!({"aud": "another-app"}))),
            "wrong audience",
            "wrong_audience",
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "typ": "JWT"})),
                b64(&claims)
            ),
            "algorithm \"none\" is not allowed",
            "algorithm_not_allowed",
        ),
        (
            "HS256 keyed with the RSA public key",
            hs256_with_public_key,
            "algorithm \"HS256\" is not allowed",
            "algorithm_not_allowed",
        ),
        (
            "unknown kid",
            issuer
                .sign(
                    jsonwebtoken::Header {
                        kid: Some("no-such-key".into()),
                        ..Default::default()
                    },
                    &claims,
                )
                .unwrap(),
            "key the issuer does not publish",
            "unknown_key",
        ),
        (
            "tampered payload",
            tampered,
            "signature is not valid",
            "bad_signature",
        ),
        (
            "not a token at all",
            "hunter2".into(),
            "not a valid token",
            "token_malformed",
        ),
        // Named, not "not an ID token".
        (
            "no exp",
            sign(&without("exp")),
            "lacks the claim \"exp\"",
            "missing_claim",
        ),
        (
            "email_verified as a number",
            sign(&with(json!({"email_verified": 0}))),
            "email_verified is not true or false",
            "token_malformed",
        ),
        // Another client's ID token that lists pgwarden among its audiences.
        (
            "issued to another client",
            sign(&with(
                json!({"aud": [AUDIENCE, "other-app"], "azp": "other-app"}),
            )),
            "issued to the client \"other-app\"",
            "wrong_audience",
        ),
    ];
    for (name, token, expected, _) in &cases {
        let err = connect(&proxy, "ann@example.com", token)
            .await
            .err()
            .unwrap_or_else(|| panic!("{name}: accepted"));
        assert_eq!(sqlstate(&err).as_deref(), Some("28P01"), "{name}: {err}");
        assert!(
            message(&err).contains(expected),
            "{name}: {}",
            message(&err)
        );
    }
    // A token over plaintext is refused before the client sends it.
    let err = proxy
        .try_connect(&conninfo(&proxy, "ann@example.com", &valid, "disable"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("28P01"), "{err}");
    assert!(
        message(&err).contains("sslmode=require"),
        "{}",
        message(&err)
    );

    // Still serving.
    let client = connect(&proxy, "ann@example.com", &valid).await.unwrap();
    assert_eq!(current_user(&client).await, "app_ro");
    // Issued to pgwarden's own client: accepted.
    let own = sign(&with(
        json!({"aud": [AUDIENCE, "other-app"], "azp": AUDIENCE}),
    ));
    let client = connect(&proxy, "ann@example.com", &own).await.unwrap();
    assert_eq!(current_user(&client).await, "app_ro");
    drop(client);
    proxy.shutdown(Duration::from_secs(5)).await;

    let records = all_records(&dir);
    let reasons: Vec<&str> = records
        .iter()
        .filter(|r| r["type"] == "auth.failure")
        .map(|r| r["reason"].as_str().unwrap())
        .collect();
    let mut expected: Vec<&str> = cases.iter().map(|c| c.3).collect();
    expected.push("plaintext_refused");
    assert_eq!(reasons, expected);
    let text = records
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(!text.contains(signature), "a token reached the audit log");
}

/// `username_prefix` and `groups_prefix` keep an issuer's names and groups apart from
/// another's: rules name the prefixed forms, and the unprefixed ones match nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuers_prefixes_mark_its_names_and_groups() {
    let issuer = common::https_issuer().await;
    let dir = audit_dir("oidc-prefix");
    let proxy = Proxy::start(options(
        issuer.url(),
        "username_prefix = \"corp:\"\ngroups_prefix = \"corp:\"",
        &format!(
            "[[access]]\ngroups = [\"corp:oncall\"]\ndatabases = [\"app\"]\nroles = [\"app_rw\"]\n\n\
             [audit]\ndir = \"{}\"\n",
            dir.display()
        ),
    ))
    .await;
    let token = issuer.id_token(AUDIENCE, &ann(), 300);
    // Only the prefixed group's rule applies: its role, not the unprefixed rule's.
    let client = connect(&proxy, "corp:ann@example.com", &token)
        .await
        .unwrap();
    assert_eq!(current_user(&client).await, "app_rw");
    let err = connect(&proxy, "app_ro", &token).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("28000"), "{err}");
    drop(client);
    proxy.shutdown(Duration::from_secs(5)).await;
    let records = all_records(&dir);
    let start = records
        .iter()
        .find(|r| r["type"] == "session.start")
        .expect("a session started");
    assert_eq!(start["actor"]["user"]["name"], "corp:ann@example.com");
    assert_eq!(
        start["actor"]["user"]["groups"],
        json!(["corp:engineering", "corp:oncall"])
    );
}

/// `authorized_parties` names other clients whose ID tokens (with pgwarden among their
/// audiences) are accepted, e.g. a provider's cross-client sign-in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorized_parties_accept_id_tokens_issued_to_other_named_clients() {
    let issuer = common::https_issuer().await;
    let proxy = Proxy::start(options(
        issuer.url(),
        "authorized_parties = [\"reports-app\"]",
        "",
    ))
    .await;
    let mut person = ann();
    person["aud"] = json!([AUDIENCE, "reports-app"]);
    person["azp"] = json!("reports-app");
    let client = connect(
        &proxy,
        "ann@example.com",
        &issuer.id_token(AUDIENCE, &person, 300),
    )
    .await
    .unwrap();
    assert_eq!(current_user(&client).await, "app_ro");
    person["azp"] = json!("other-app");
    let err = connect(
        &proxy,
        "ann@example.com",
        &issuer.id_token(AUDIENCE, &person, 300),
    )
    .await
    .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("28P01"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_can_be_limited_to_one_kind_of_token() {
    let issuer = common::https_issuer().await;
    let access_only = Proxy::start(options(
        issuer.url(),
        "token_types = [\"access_token\"]",
        "",
    ))
    .await;
    let id_token = issuer.id_token(AUDIENCE, &ann(), 300);
    let access_token = issuer.access_token(AUDIENCE, &ann(), 300);
    let err = connect(&access_only, "ann@example.com", &id_token)
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("28P01"));
    assert!(
        message(&err).contains("id_token tokens are not accepted"),
        "{}",
        message(&err)
    );
    connect(&access_only, "ann@example.com", &access_token)
        .await
        .unwrap();

    let id_only = Proxy::start(options(issuer.url(), "token_types = [\"id_token\"]", "")).await;
    let err = connect(&id_only, "ann@example.com", &access_token)
        .await
        .unwrap_err();
    assert!(
        message(&err).contains("access_token tokens are not accepted"),
        "{}",
        message(&err)
    );
    connect(&id_only, "ann@example.com", &id_token)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_keys_are_picked_up_and_a_flood_of_unknown_kids_fetches_at_most_once() {
    let issuer = common::https_issuer().await;
    let proxy = Proxy::start(options(
        issuer.url(),
        "jwks_cooldown = \"1s\"",
        "[auth.rate_limit]\nmax_failures = 0\n",
    ))
    .await;
    let before_rotation = issuer.id_token(AUDIENCE, &ann(), 300);
    connect(&proxy, "ann@example.com", &before_rotation)
        .await
        .unwrap();

    issuer.rotate(KeyAlgorithm::Es256).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let after_rotation = issuer.id_token(AUDIENCE, &ann(), 300);
    let client = connect(&proxy, "ann@example.com", &after_rotation)
        .await
        .unwrap();
    assert_eq!(current_user(&client).await, "app_ro");
    // The retired key no longer verifies anything.
    let err = connect(&proxy, "ann@example.com", &before_rotation)
        .await
        .unwrap_err();
    assert!(
        message(&err).contains("does not publish"),
        "{}",
        message(&err)
    );
    // Ed25519 keys too, for both kinds of token.
    issuer.rotate(KeyAlgorithm::EdDsa).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for token in [
        issuer.id_token(AUDIENCE, &ann(), 300),
        issuer.access_token(AUDIENCE, &ann(), 300),
    ] {
        connect(&proxy, "ann@example.com", &token).await.unwrap();
    }
    let after_rotation = issuer.id_token(AUDIENCE, &ann(), 300);

    // Forty logins with made-up key ids, all at once.
    let fetches_before = issuer.jwks_fetches();
    let claims = issuer.standard_claims(AUDIENCE, &ann(), 300);
    let mut attempts = tokio::task::JoinSet::new();
    for i in 0..40 {
        let token = issuer
            .sign(
                jsonwebtoken::Header {
                    kid: Some(format!("forged-{i}")),
                    ..Default::default()
                },
                &claims,
            )
            .unwrap();
        let conninfo = conninfo(&proxy, "ann@example.com", &token, "require");
        attempts.spawn(async move {
            let (client, connection) =
                tokio_postgres::connect(&conninfo, common::tls_connector()).await?;
            drop(connection);
            Ok::<_, tokio_postgres::Error>(client)
        });
    }
    let started = std::time::Instant::now();
    while let Some(result) = attempts.join_next().await {
        assert!(result.unwrap().is_err(), "a forged kid was accepted");
    }
    let elapsed = started.elapsed();
    let fetches = issuer.jwks_fetches() - fetches_before;
    // One fetch per cooldown (1s) at most, plus the one the flood may start with.
    let allowed = 1 + elapsed.as_secs();
    assert!(
        fetches <= allowed,
        "{fetches} key-set fetches for 40 forged kids in {elapsed:?}"
    );
    // And a valid token still gets in.
    connect(&proxy, "ann@example.com", &after_rotation)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_down_at_start_is_retried_and_logins_work_once_it_is_up() {
    // A port nobody listens on yet.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("https://localhost:{}", addr.port());
    let proxy = Proxy::start(options(
        &url,
        "jwks_cooldown = \"200ms\"",
        "[admin]\nlisten = \"127.0.0.1:0\"\n",
    ))
    .await;
    let admin = proxy.server.as_ref().unwrap().admin_addr().unwrap();
    let (status, body) = readyz(admin).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["ready"], false);
    assert_eq!(body["identity_providers"][0]["issuer"], url);
    assert_eq!(body["identity_providers"][0]["ready"], false);
    assert!(
        body["reasons"][0].as_str().unwrap().contains(&url),
        "{body}"
    );

    // A well-formed token naming that issuer: it cannot be checked, so it is refused as
    // temporary (57P03), not as a bad password.
    let claims = json!({"iss": url, "aud": AUDIENCE, "sub": "x", "exp": pgwarden::testbed::issuer::unix_now() + 300});
    let unverifiable = format!(
        "{}.{}.c2ln",
        b64(&json!({"alg": "RS256", "kid": "k"})),
        b64(&claims)
    );
    let err = connect(&proxy, "ann@example.com", &unverifiable)
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("57P03"), "{err}");
    assert!(
        message(&err).contains("cannot be reached"),
        "{}",
        message(&err)
    );

    let issuer = common::https_issuer_at(&addr.to_string()).await;
    let token = issuer.id_token(AUDIENCE, &ann(), 300);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match connect(&proxy, "ann@example.com", &token).await {
            Ok(client) => {
                assert_eq!(current_user(&client).await, "app_ro");
                break;
            }
            Err(e) if std::time::Instant::now() < deadline => {
                assert_eq!(sqlstate(&e).as_deref(), Some("57P03"), "{e}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("the issuer is up but logins still fail: {e}"),
        }
    }
    let (status, body) = readyz(admin).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["identity_providers"][0]["ready"], true);
}

/// GET /readyz on the admin endpoint: (status, JSON body).
async fn readyz(admin: std::net::SocketAddr) -> (u16, Value) {
    let fetcher = pgwarden::net::http::Fetcher::new(None, Duration::from_secs(5), 1 << 16).unwrap();
    let request = openidconnect::http::Request::builder()
        .uri(format!("http://{admin}/readyz"))
        .body(Vec::new())
        .unwrap();
    let response = fetcher.fetch(request).await.unwrap();
    let body = serde_json::from_slice(response.body()).unwrap();
    (response.status().as_u16(), body)
}

/// The user name rules match on must belong to one person: not an e-mail address the
/// provider has not verified, not a local user's name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unverified_addresses_and_local_user_names_do_not_name_a_person() {
    let issuer = common::https_issuer().await;
    let proxy = Proxy::start(options(
        issuer.url(),
        "",
        "[auth.rate_limit]\nmax_failures = 0\n",
    ))
    .await;
    let unverified = issuer.id_token(
        AUDIENCE,
        &json!({"sub": "u-x", "email": "ann@example.com", "email_verified": false, "groups": ["engineering"]}),
        300,
    );
    let err = connect(&proxy, "app_ro", &unverified).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("28P01"), "{err}");
    // "alice" is a local user of this pgwarden; a token naming someone "alice" is refused.
    let impostor = issuer.id_token(
        AUDIENCE,
        &json!({"sub": "u-y", "email": "alice", "groups": ["engineering"]}),
        300,
    );
    let err = connect(&proxy, "app_ro", &impostor).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("28P01"), "{err}");
    assert!(
        message(&err).contains("local pgwarden user"),
        "{}",
        message(&err)
    );
    // A verified address signs in.
    let verified = issuer.id_token(
        AUDIENCE,
        &json!({"sub": "u-z", "email": "ann@example.com", "email_verified": true, "groups": ["engineering"]}),
        300,
    );
    let client = connect(&proxy, "app_ro", &verified).await.unwrap();
    assert_eq!(current_user(&client).await, "app_ro");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_from_one_address_are_slowed_down() {
    let issuer = common::https_issuer().await;
    let dir = audit_dir("oidc-ratelimit");
    let proxy = Proxy::start(options(
        issuer.url(),
        "",
        &format!(
            "[audit]\ndir = \"{}\"\n[auth.rate_limit]\nmax_failures = 3\nbackoff = \"30s\"\n",
            dir.display()
        ),
    ))
    .await;
    for attempt in 0..3 {
        let err = connect(&proxy, "ann@example.com", "not-a-token")
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&err).as_deref(), Some("28P01"));
        if attempt == 1 {
            // Signing in as oneself in between does not wipe out the guesses at ann's.
            proxy
                .try_connect(&proxy.conninfo("alice", common::ALICE_PASSWORD, "sslmode=disable"))
                .await
                .unwrap();
        }
    }
    // Even a valid token must wait now, and is not even asked for.
    let valid = issuer.id_token(AUDIENCE, &ann(), 300);
    let err = connect(&proxy, "ann@example.com", &valid)
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("28000"), "{err}");
    assert!(
        message(&err).contains("too many failed"),
        "{}",
        message(&err)
    );
    // Others on the same loopback address (a sidecar's pod) still sign in: there each user
    // has a limit of its own. (From any other address the whole address waits; see the
    // unit tests of auth::rate_limit.)
    proxy
        .try_connect(&proxy.conninfo("alice", common::ALICE_PASSWORD, "sslmode=disable"))
        .await
        .unwrap();
    proxy.shutdown(Duration::from_secs(5)).await;
    let reasons: Vec<String> = all_records(&dir)
        .iter()
        .filter(|r| r["type"] == "auth.failure")
        .map(|r| r["reason"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        reasons,
        [
            "token_malformed",
            "token_malformed",
            "token_malformed",
            "rate_limited"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_ends_the_session_between_statements_with_a_fatal() {
    let issuer = common::https_issuer().await;
    let dir = audit_dir("oidc-expiry");
    // Tokens live 1 s; the 2 s leeway that lets them sign in counts for the session too.
    let proxy = Proxy::start(options(
        issuer.url(),
        "leeway = \"2s\"",
        &format!("[audit]\ndir = \"{}\"\n", dir.display()),
    ))
    .await;
    let connect_watching = |token: String| {
        let conninfo = conninfo(&proxy, "ann@example.com", &token, "require");
        async move {
            let (client, connection) = tokio_postgres::connect(&conninfo, common::tls_connector())
                .await
                .unwrap();
            (client, tokio::spawn(connection))
        }
    };

    // Idle when the token expires: the FATAL arrives on its own, after the leeway.
    let (idle, connection) = connect_watching(issuer.id_token(AUDIENCE, &ann(), 1)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        current_user(&idle).await,
        "app_ro",
        "past exp, within leeway"
    );
    let ended = tokio::time::timeout(Duration::from_secs(15), connection)
        .await
        .expect("the session outlived its token")
        .unwrap();
    let err = ended.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("28000"), "{err}");
    assert!(
        message(&err).contains("sign-in token has expired"),
        "{}",
        message(&err)
    );
    assert!(idle.is_closed());

    // Busy when it expires: the statement finishes, then the session ends.
    let (busy, connection) = connect_watching(issuer.id_token(AUDIENCE, &ann(), 1)).await;
    let started = std::time::Instant::now();
    let row = busy
        .query_one("SELECT pg_sleep(4)::text || 'done'", &[])
        .await
        .expect("a statement running at expiry completes");
    assert_eq!(row.get::<_, String>(0), "done");
    assert!(started.elapsed() >= Duration::from_secs(3));
    let ended = tokio::time::timeout(Duration::from_secs(5), connection)
        .await
        .expect("the session went on after its statement")
        .unwrap();
    assert_eq!(sqlstate(&ended.unwrap_err()).as_deref(), Some("28000"));

    // Always a statement queued behind the running one: what was sent before the deadline
    // is answered, nothing sent after it is read, and the session ends.
    let (pipelining, mut connection) = connect_watching(issuer.id_token(AUDIENCE, &ann(), 1)).await;
    let pipelining = std::sync::Arc::new(pipelining);
    let started = std::time::Instant::now();
    let mut sent = tokio::time::interval(Duration::from_millis(50));
    let mut queries = Vec::new();
    loop {
        tokio::select! {
            _ = &mut connection => break,
            _ = sent.tick() => {
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "a client that keeps statements queued outlived its token"
                );
                let client = pipelining.clone();
                queries.push(tokio::spawn(async move {
                    client.simple_query("SELECT pg_sleep(0.1)").await
                }));
            }
        }
    }
    // The FATAL answers the first statement not read.
    let mut fatal = None;
    for query in queries {
        if let Err(e) = query.await.unwrap() {
            fatal = fatal.or(sqlstate(&e));
        }
    }
    assert_eq!(fatal.as_deref(), Some("28000"));

    // Taking COPY data when it expires: the rest of the COPY is still read and the COPY
    // completes; then the session ends.
    let (copying, connection) = connect_watching(issuer.id_token(AUDIENCE, &ann(), 1)).await;
    copying
        .batch_execute("CREATE TEMP TABLE expiring_copy (n int)")
        .await
        .unwrap();
    let sink = copying
        .copy_in::<_, bytes::Bytes>("COPY expiring_copy FROM STDIN")
        .await
        .unwrap();
    let mut sink = std::pin::pin!(sink);
    let started = std::time::Instant::now();
    let mut rows = 0;
    while started.elapsed() < Duration::from_secs(5) {
        use futures_util::SinkExt;
        sink.send(bytes::Bytes::from(format!("{rows}\n")))
            .await
            .expect("COPY data is read past the token's expiry");
        rows += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(sink.as_mut().finish().await.unwrap(), rows);
    // The FATAL answers tokio-postgres's Close of the COPY's statement, which nothing
    // awaits: the connection reports it closed.
    let ended = tokio::time::timeout(Duration::from_secs(5), connection)
        .await
        .expect("the session went on after its COPY")
        .unwrap();
    assert!(ended.is_err());

    // With on_token_expiry = "allow", sessions outlive their token.
    let allow = Proxy::start(options(
        issuer.url(),
        "leeway = \"0s\"",
        "[auth]\non_token_expiry = \"allow\"\n",
    ))
    .await;
    let conninfo = conninfo(
        &allow,
        "ann@example.com",
        &issuer.id_token(AUDIENCE, &ann(), 1),
        "require",
    );
    let client = allow.try_connect_tls(&conninfo).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(current_user(&client).await, "app_ro");

    proxy.shutdown(Duration::from_secs(5)).await;
    let endings: Vec<String> = all_records(&dir)
        .iter()
        .filter(|r| r["type"] == "session.end")
        .map(|r| r["ending"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        endings,
        [
            "sign-in token expired",
            "sign-in token expired",
            "sign-in token expired",
            "sign-in token expired"
        ]
    );
}

/// Expiry while extended-protocol messages were sent with no Sync behind them: the server
/// holds their answers until a Sync, so pgwarden sends one itself. The client gets the
/// answers, then the FATAL (and no ReadyForQuery it did not ask for).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_with_no_sync_sent_gets_its_answers_then_the_fatal() {
    use common::wire::{
        auth_code, bind_without_parameters, error_fields, parse_untyped, read_message,
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let issuer = common::https_issuer().await;
    let proxy = Proxy::start(options(
        issuer.url(),
        "leeway = \"0s\"",
        "[auth]\nplaintext_tokens = \"loopback\"\n",
    ))
    .await;
    let token = issuer.access_token(AUDIENCE, &ann(), 2);
    let (mut stream, reply) = oauthbearer_attempt(&proxy, &format!("Bearer {token}")).await;
    assert_eq!(auth_code(&reply), 0, "AuthenticationOk expected");
    while read_message(&mut stream).await.0 != b'Z' {}
    // Runs past the token's expiry; no Sync, no Flush.
    let mut out = bytes::BytesMut::new();
    parse_untyped("", "SELECT pg_sleep(3)::text || 'done'", &mut out);
    bind_without_parameters("", "", &mut out);
    postgres_protocol::message::frontend::execute("", 0, &mut out).unwrap();
    stream.write_all(&out).await.unwrap();
    let mut answers = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let mut tag = [0u8; 1];
            if stream.read_exact(&mut tag).await.is_err() {
                break;
            }
            let len = stream.read_i32().await.unwrap();
            let mut body = vec![0u8; len as usize - 4];
            stream.read_exact(&mut body).await.unwrap();
            answers.push((tag[0], body));
        }
    })
    .await;
    assert!(ended.is_ok(), "the session outlived its token: {answers:?}");
    let tags: Vec<char> = answers.iter().map(|(tag, _)| *tag as char).collect();
    assert_eq!(tags, ['1', '2', 'D', 'C', 'E'], "{answers:?}");
    assert!(answers[2].1.ends_with(b"done"));
    assert_eq!(error_fields(&answers[4].1)[&b'C'], "28000");
}

/// OAUTHBEARER by hand (the machine's psql is 15): the startup asks for it, then
/// SASLInitialResponse carries `auth=` (empty, or a bearer token).
async fn oauthbearer_attempt(proxy: &Proxy, auth: &str) -> (tokio::net::TcpStream, (u8, Vec<u8>)) {
    use common::wire::{self, auth_code, read_message};
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(&wire::startup_packet(
            wire::PROTOCOL_3_0,
            &[
                ("user", b"ann@example.com"),
                ("database", b"app"),
                ("options", b"-c pgwarden.auth=oauthbearer"),
            ],
        ))
        .await
        .unwrap();
    let offer = read_message(&mut stream).await;
    assert_eq!(auth_code(&offer), 10);
    assert_eq!(&offer.1[4..], b"OAUTHBEARER\0\0");
    let mut out = bytes::BytesMut::new();
    postgres_protocol::message::frontend::sasl_initial_response(
        "OAUTHBEARER",
        format!("n,,\x01auth={auth}\x01\x01").as_bytes(),
        &mut out,
    )
    .unwrap();
    stream.write_all(&out).await.unwrap();
    let reply = read_message(&mut stream).await;
    (stream, reply)
}

/// After a SASLContinue with the RFC 7628 error: check it, acknowledge, return the outcome.
async fn oauthbearer_error(
    mut stream: tokio::net::TcpStream,
    reply: (u8, Vec<u8>),
    issuer: &str,
) -> common::wire::Outcome {
    use tokio::io::AsyncWriteExt;
    assert_eq!(common::wire::auth_code(&reply), 11);
    let status: Value = serde_json::from_slice(&reply.1[4..]).unwrap();
    assert_eq!(status["status"], "invalid_token");
    assert_eq!(
        status["openid-configuration"],
        format!("{issuer}/.well-known/openid-configuration")
    );
    assert_eq!(status["scope"], "openid email profile");
    let mut out = bytes::BytesMut::new();
    postgres_protocol::message::frontend::sasl_response(&[0x01], &mut out).unwrap();
    stream.write_all(&out).await.unwrap();
    common::wire::read_until_close(&mut stream, common::wire::WAIT).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauthbearer_answers_discovery_then_accepts_the_token() {
    use common::wire::{auth_code, error_fields, read_message};
    use tokio::io::AsyncWriteExt;
    let issuer = common::https_issuer().await;
    let proxy = Proxy::start(options(
        issuer.url(),
        "",
        "[auth]\nplaintext_tokens = \"loopback\"\n[auth.rate_limit]\nmax_failures = 0\n",
    ))
    .await;

    // 1. No token yet: the discovery round tells the client where to sign in.
    let (stream, reply) = oauthbearer_attempt(&proxy, "").await;
    let outcome = oauthbearer_error(stream, reply, issuer.url()).await;
    let messages = outcome.messages();
    let (_, body) = messages.iter().find(|(tag, _)| *tag == b'E').unwrap();
    assert_eq!(error_fields(body)[&b'C'], "28000");

    // 2. The follow-up connection carries the token.
    let token = issuer.access_token(AUDIENCE, &ann(), 300);
    let (mut stream, reply) = oauthbearer_attempt(&proxy, &format!("Bearer {token}")).await;
    assert_eq!(auth_code(&reply), 0, "AuthenticationOk expected");
    loop {
        let (tag, body) = read_message(&mut stream).await;
        assert_ne!(tag, b'E', "{:?}", error_fields(&body));
        if tag == b'Z' {
            break;
        }
    }
    let mut out = bytes::BytesMut::new();
    postgres_protocol::message::frontend::query("SELECT current_user", &mut out).unwrap();
    stream.write_all(&out).await.unwrap();
    let row = loop {
        let (tag, body) = read_message(&mut stream).await;
        if tag == b'D' {
            break body;
        }
        assert_ne!(tag, b'E', "{:?}", error_fields(&body));
    };
    assert!(row.ends_with(b"app_ro"), "{row:?}");

    // 3. A bad token: the same error status, then 28P01.
    let expired = issuer.access_token(AUDIENCE, &ann(), -3600);
    let (stream, reply) = oauthbearer_attempt(&proxy, &format!("Bearer {expired}")).await;
    let outcome = oauthbearer_error(stream, reply, issuer.url()).await;
    let messages = outcome.messages();
    let (_, body) = messages.iter().find(|(tag, _)| *tag == b'E').unwrap();
    let fields = error_fields(body);
    assert_eq!(fields[&b'C'], "28P01");
    assert!(fields[&b'M'].contains("expired"), "{fields:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgwarden_login_runs_the_device_flow_and_pgwarden_token_feeds_psql() {
    use tokio::io::AsyncBufReadExt;
    let issuer = common::https_issuer().await;
    issuer.add_person("ann", ann());
    // Tokens that are "about to expire" as soon as they are issued: pgwarden token refreshes.
    issuer.set_issued_tokens(AUDIENCE, 62);
    let proxy = Proxy::start(options(
        issuer.url(),
        "audience = [\"pgwarden\", \"pgwarden-cli\"]",
        "",
    ))
    .await;
    let config_dir = harness().dir.join("login-config");
    let _ = std::fs::remove_dir_all(&config_dir);
    let pgwarden = env!("CARGO_BIN_EXE_pgwarden");
    let ca = harness().certs.ca_cert.display().to_string();

    let mut login = tokio::process::Command::new(pgwarden)
        .args([
            "login",
            "--issuer",
            issuer.url(),
            "--client-id",
            "pgwarden-cli",
            "--ca",
            &ca,
        ])
        .env("PGWARDEN_CONFIG_DIR", &config_dir)
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(login.stderr.take().unwrap()).lines();
    let mut prompt = String::new();
    let code = loop {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("pgwarden login printed no code")
            .unwrap()
            .unwrap_or_else(|| panic!("pgwarden login ended: {prompt}"));
        prompt.push_str(&line);
        prompt.push('\n');
        if let Some(code) = line.strip_prefix("and confirm the code ") {
            break code.to_owned();
        }
    };
    assert!(
        prompt.contains(&format!("{}/device?user_code=", issuer.url())),
        "{prompt}"
    );
    // The person approves in their browser: the form the issuer's page posts.
    let browser = pgwarden::net::http::Fetcher::new(
        Some(&harness().certs.ca_cert),
        Duration::from_secs(5),
        1 << 20,
    )
    .unwrap();
    let approval = openidconnect::http::Request::builder()
        .method("POST")
        .uri(format!("{}/device", issuer.url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("user_code={code}&person=ann").into_bytes())
        .unwrap();
    let page = browser.fetch(approval).await.unwrap();
    assert_eq!(
        page.status(),
        200,
        "{}",
        String::from_utf8_lossy(page.body())
    );
    let status = tokio::time::timeout(Duration::from_secs(20), login.wait())
        .await
        .expect("pgwarden login did not finish after approval")
        .unwrap();
    assert!(status.success());
    let cache = config_dir.join("tokens.json");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let token_of = |args: &'static [&'static str]| {
        let config_dir = config_dir.clone();
        async move {
            let out = tokio::process::Command::new(pgwarden)
                .args(args)
                .env("PGWARDEN_CONFIG_DIR", &config_dir)
                .output()
                .await
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        }
    };
    let cached = std::fs::read_to_string(&cache).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Past "expires within a minute": this refreshes.
    let id_token = token_of(&["token"]).await;
    assert!(!cached.contains(&id_token), "the token was not refreshed");
    let client = connect(&proxy, "ann@example.com", &id_token).await.unwrap();
    assert_eq!(current_user(&client).await, "app_ro");
    let access_token = token_of(&["token", "--access"]).await;
    let client = connect(&proxy, "app_rw", &access_token).await.unwrap();
    assert_eq!(current_user(&client).await, "app_rw");

    // pgwarden psql: psql with the token as its password.
    let psql = common::psql_path();
    let path = format!(
        "{}:{}",
        psql.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = tokio::process::Command::new(pgwarden)
        .args([
            "psql",
            "--",
            "-h",
            "localhost",
            "-p",
            &proxy.port().to_string(),
            "-U",
            "ann@example.com",
            "-d",
            "app",
            "-Atc",
            "SELECT current_user",
        ])
        .env("PGWARDEN_CONFIG_DIR", &config_dir)
        .env("PATH", path)
        .env("PGSSLMODE", "verify-full")
        .env("PGSSLROOTCERT", &ca)
        .env_remove("PGPASSWORD")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "app_ro");

    // Without a sign-in: a clear error, nothing on stdout.
    let out = tokio::process::Command::new(pgwarden)
        .arg("token")
        .env(
            "PGWARDEN_CONFIG_DIR",
            harness().dir.join("nobody-signed-in"),
        )
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pgwarden login"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dedicated_listener_offers_oauthbearer_to_every_token_sign_in() {
    use common::wire::{self, auth_code, read_message};
    use tokio::io::AsyncWriteExt;
    let issuer = common::https_issuer().await;
    let mut opts = options(
        issuer.url(),
        "",
        "[auth]\nplaintext_tokens = \"loopback\"\n",
    );
    opts.server_extra = "oauthbearer_listen = \"127.0.0.1:0\"".into();
    let proxy = Proxy::start(opts).await;
    let oauth_port = proxy.server.as_ref().unwrap().oauthbearer_addr().unwrap();
    let first_request = |addr: std::net::SocketAddr, user: &'static [u8]| async move {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(&wire::startup_packet(
                wire::PROTOCOL_3_0,
                &[("user", user), ("database", b"app")],
            ))
            .await
            .unwrap();
        read_message(&mut stream).await
    };
    // No startup option needed on the dedicated port.
    let offer = first_request(oauth_port, b"ann@example.com").await;
    assert_eq!(auth_code(&offer), 10);
    assert_eq!(&offer.1[4..], b"OAUTHBEARER\0\0");
    // The main port asks for the token as a password (older libpq understands that).
    let ask = first_request(proxy.addr, b"ann@example.com").await;
    assert_eq!(
        auth_code(&ask),
        3,
        "AuthenticationCleartextPassword expected"
    );
    // Local users keep SCRAM on both.
    let scram = first_request(oauth_port, b"alice").await;
    assert_eq!(auth_code(&scram), 10);
    assert!(scram.1.windows(13).any(|w| w == b"SCRAM-SHA-256"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgwarden_login_browser_uses_the_code_flow_with_pkce_on_a_loopback_redirect() {
    use tokio::io::AsyncBufReadExt;
    let issuer = common::https_issuer().await;
    issuer.add_person("ann", ann());
    let proxy = Proxy::start(options(
        issuer.url(),
        "audience = [\"pgwarden\", \"pgwarden-cli\"]",
        "",
    ))
    .await;
    let config_dir = harness().dir.join("login-browser-config");
    let _ = std::fs::remove_dir_all(&config_dir);
    let pgwarden = env!("CARGO_BIN_EXE_pgwarden");
    let ca = harness().certs.ca_cert.display().to_string();
    let mut login = tokio::process::Command::new(pgwarden)
        .args([
            "login",
            "--browser",
            "--issuer",
            issuer.url(),
            "--client-id",
            "pgwarden-cli",
            "--ca",
            &ca,
        ])
        .env("PGWARDEN_CONFIG_DIR", &config_dir)
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(login.stderr.take().unwrap()).lines();
    let authorize_url = loop {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("pgwarden login printed no URL")
            .unwrap()
            .expect("pgwarden login ended early");
        if line.starts_with(&format!("{}/authorize?", issuer.url())) {
            break url::Url::parse(&line).unwrap();
        }
    };
    let params: std::collections::HashMap<String, String> =
        authorize_url.query_pairs().into_owned().collect();
    assert_eq!(params["code_challenge_method"], "S256");
    assert!(params["redirect_uri"].starts_with("http://127.0.0.1:"));

    // The browser: the person picks who they are, the issuer redirects to the loopback port.
    let browser = pgwarden::net::http::Fetcher::new(
        Some(&harness().certs.ca_cert),
        Duration::from_secs(5),
        1 << 20,
    )
    .unwrap();
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in &params {
        form.append_pair(k, v);
    }
    form.append_pair("person", "ann");
    let signed_in = browser
        .fetch(
            openidconnect::http::Request::builder()
                .method("POST")
                .uri(format!("{}/authorize", issuer.url()))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form.finish().into_bytes())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(signed_in.status(), 302);
    let location = signed_in.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(&params["redirect_uri"]), "{location}");
    let back = browser
        .fetch(
            openidconnect::http::Request::builder()
                .uri(location)
                .body(Vec::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(back.status(), 200);
    let status = tokio::time::timeout(Duration::from_secs(20), login.wait())
        .await
        .expect("pgwarden login did not finish after the redirect")
        .unwrap();
    assert!(status.success());

    let out = tokio::process::Command::new(pgwarden)
        .arg("token")
        .env("PGWARDEN_CONFIG_DIR", &config_dir)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let client = connect(&proxy, "ann@example.com", token.trim())
        .await
        .unwrap();
    assert_eq!(current_user(&client).await, "app_ro");
}
