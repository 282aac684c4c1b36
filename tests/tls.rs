//! TLS on both legs: client TLS with tokio-postgres and psql (verified against the per-run CA),
//! `required` and `disabled` modes, pre-handshake data injection (CVE-2021-23214 class), PG17
//! direct TLS with ALPN, and TLS towards a second throwaway PostgreSQL with `ssl = on`.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::BytesMut;
use common::wire::{
    alice_login, alice_startup, encryption_request, error_fields, read_message, read_until_close,
    CANCEL_REQUEST, SSL_REQUEST, WAIT,
};
use common::{sqlstate, Proxy, ProxyOptions, ALICE_PASSWORD};
use pgwarden::testbed::{self, PostgresOptions, TestCertificates, ThrowawayPostgres};
use postgres_protocol::message::frontend;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Log in as alice on a raw stream (BackendKeyData included), then run `SELECT 1`.
async fn login_and_select_1<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) {
    alice_login(stream).await.expect("no BackendKeyData");
    let mut out = BytesMut::new();
    frontend::query("SELECT 1", &mut out).unwrap();
    stream.write_all(&out).await.unwrap();
    let mut row = None;
    loop {
        let (tag, body) = read_message(stream).await;
        match tag {
            b'D' => row = Some(body),
            b'E' => panic!("{:?}", error_fields(&body)),
            b'Z' => break,
            _ => {}
        }
    }
    assert!(row.expect("no row").ends_with(b"1"));
}

fn roots(ca: &Path) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for cert in pgwarden::net::tls::load_certs(ca).expect("CA file") {
        roots.add(cert).unwrap();
    }
    roots
}

fn client_config(ca: &Path, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots(ca))
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

fn harness_ca() -> PathBuf {
    common::harness().certs.ca_cert.clone()
}

/// A CA (and server certificate) that has nothing to do with the harness or the upstream.
fn unrelated_certs() -> &'static TestCertificates {
    static CERTS: OnceLock<TestCertificates> = OnceLock::new();
    CERTS.get_or_init(|| {
        let dir = common::harness().dir.join("unrelated-ca");
        std::fs::create_dir_all(&dir).unwrap();
        testbed::write_test_certificates(&dir).expect("unrelated certificates")
    })
}

fn tokio_postgres_connector(ca: &Path, alpn: &[&[u8]]) -> tokio_postgres_rustls::MakeRustlsConnect {
    let config = Arc::unwrap_or_clone(client_config(ca, alpn));
    tokio_postgres_rustls::MakeRustlsConnect::new(config)
}

async fn connect_with(
    conninfo: &str,
    connector: tokio_postgres_rustls::MakeRustlsConnect,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) =
        tokio::time::timeout(WAIT, tokio_postgres::connect(conninfo, connector))
            .await
            .expect("connect hung")?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

fn alice_conninfo(proxy: &Proxy, host: &str, extra: &str) -> String {
    format!(
        "host={host} port={} dbname=app user=alice password={ALICE_PASSWORD} {extra}",
        proxy.port()
    )
}

async fn select_1(client: &tokio_postgres::Client) {
    let row = client.query_one("SELECT 1", &[]).await.expect("SELECT 1");
    assert_eq!(row.get::<_, i32>(0), 1);
}

async fn psql(conninfo: &str, commands: &[&str]) -> std::process::Output {
    let mut args = vec!["-X", "-At", "-d", conninfo];
    for command in commands {
        args.extend(["-c", command]);
    }
    let program = common::psql_path();
    let run = common::run_tool(&program, &args, &[("PGPASSWORD", ALICE_PASSWORD)]);
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("psql hung")
}

/// SSLRequest on a fresh connection, the one-byte answer.
async fn ssl_answer(proxy: &Proxy) -> (TcpStream, u8) {
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(&encryption_request(SSL_REQUEST))
        .await
        .unwrap();
    let answer = tokio::time::timeout(WAIT, tcp.read_u8())
        .await
        .expect("no answer")
        .unwrap();
    (tcp, answer)
}

// ---------------------------------------------------------------------------------------------
// Client TLS with real clients
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn tokio_postgres_over_tls_with_the_harness_ca() {
    let proxy = Proxy::default().await;
    // tokio-postgres-rustls always verifies the chain and the host name, so sslmode=require
    // with a connector that trusts only the harness CA is libpq's verify-full.
    for host in ["localhost", "127.0.0.1"] {
        let client = proxy
            .try_connect_tls(&alice_conninfo(&proxy, host, "sslmode=require"))
            .await
            .unwrap_or_else(|e| panic!("TLS via {host}: {e}"));
        select_1(&client).await;
    }
    // sslmode=prefer also ends up on TLS: it still works, and the relay is the same.
    let client = proxy
        .try_connect_tls(&alice_conninfo(&proxy, "localhost", "sslmode=prefer"))
        .await
        .unwrap();
    select_1(&client).await;
    // The upstream leg is plaintext in the default config: pg_stat_ssl describes that leg.
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert!(!row.get::<_, bool>(0));
}

#[tokio::test]
async fn tls_clients_refuse_a_certificate_they_cannot_verify() {
    let proxy = Proxy::default().await;
    // The proxy's certificate is not signed by this CA.
    let untrusting = tokio_postgres_connector(&unrelated_certs().ca_cert, &[]);
    let err = connect_with(
        &alice_conninfo(&proxy, "localhost", "sslmode=require"),
        untrusting,
    )
    .await
    .expect_err("TLS login succeeded although the client does not trust the CA");
    assert!(
        err.as_db_error().is_none(),
        "expected a TLS failure, got {err}"
    );
    // Both throwaway CAs have the same name, so rustls finds "the" issuer and the signature
    // check fails (BadSignature); with differently named CAs it would be UnknownIssuer.
    assert!(format!("{err:?}").contains("InvalidCertificate"), "{err:?}");

    // Trusted CA but a name that is not in the certificate.
    let trusting = tokio_postgres_connector(&harness_ca(), &[]);
    let conninfo = alice_conninfo(
        &proxy,
        "db.example.com",
        "hostaddr=127.0.0.1 sslmode=require",
    );
    let err = connect_with(&conninfo, trusting)
        .await
        .expect_err("TLS login succeeded with a certificate for another name");
    assert!(
        err.as_db_error().is_none(),
        "expected a TLS failure, got {err}"
    );
    assert!(format!("{err:?}").contains("NotValidForName"), "{err:?}");

    // And the proxy is still fine for a client that trusts it.
    let client = connect_with(
        &alice_conninfo(&proxy, "localhost", "sslmode=require"),
        tokio_postgres_connector(&harness_ca(), &[]),
    )
    .await
    .unwrap();
    select_1(&client).await;
}

#[tokio::test]
async fn the_client_leg_is_tls_13_with_the_configured_certificate() {
    let proxy = Proxy::default().await;
    let (tcp, answer) = ssl_answer(&proxy).await;
    assert_eq!(answer, b'S');
    let connector = tokio_rustls::TlsConnector::from(client_config(&harness_ca(), &[]));
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let (_, session) = tls.get_ref();
    assert_eq!(
        session.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    let presented = session.peer_certificates().expect("server certificate")[0].clone();
    let configured = pgwarden::net::tls::load_certs(&common::harness().certs.server_cert).unwrap();
    assert_eq!(
        presented, configured[0],
        "the proxy presented another certificate"
    );
    login_and_select_1(&mut tls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_verify_full_shows_tls_13() {
    let proxy = Proxy::default().await;
    let ca = harness_ca();
    for host in ["localhost", "127.0.0.1"] {
        let conninfo = format!(
            "host={host} port={} dbname=app user=alice sslmode=verify-full sslrootcert={}",
            proxy.port(),
            ca.display()
        );
        let out = psql(&conninfo, &["SELECT 1", "\\conninfo"]).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "psql via {host} failed: {stderr}");
        assert!(stdout.lines().next() == Some("1"), "{stdout}");
        assert!(
            stdout.contains("SSL connection (protocol: TLSv1.3"),
            "{stdout}"
        );
    }
    // verify-full against a CA that did not sign the proxy's certificate fails.
    let conninfo = format!(
        "host=localhost port={} dbname=app user=alice sslmode=verify-full sslrootcert={}",
        proxy.port(),
        unrelated_certs().ca_cert.display()
    );
    let out = psql(&conninfo, &["SELECT 1"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "psql trusted an unrelated CA");
    // "certificate verify failed", or "EVP lib" because both throwaway CAs share a name and
    // OpenSSL fails on the signature.
    assert!(stderr.contains("SSL error"), "{stderr}");
}

// ---------------------------------------------------------------------------------------------
// Modes
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_mode_refuses_plaintext_with_a_hint() {
    let proxy = Proxy::start(ProxyOptions {
        tls_mode: Some("required"),
        ..Default::default()
    })
    .await;
    let err = proxy
        .try_connect(&alice_conninfo(&proxy, "127.0.0.1", "sslmode=disable"))
        .await
        .expect_err("plaintext login succeeded in required mode");
    assert_eq!(sqlstate(&err).as_deref(), Some("28000"), "{err}");
    let db = err.as_db_error().unwrap();
    assert!(
        db.message().contains("requires an encrypted connection"),
        "{}",
        db.message()
    );
    assert!(
        db.hint().is_some_and(|h| h.contains("sslmode")),
        "hint: {:?}",
        db.hint()
    );

    // psql says so too.
    let out = psql(
        &format!(
            "host=127.0.0.1 port={} dbname=app user=alice sslmode=disable",
            proxy.port()
        ),
        &["SELECT 1"],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("requires an encrypted connection"),
        "{stderr}"
    );
    assert!(stderr.contains("sslmode"), "{stderr}");

    // Refused before any authentication request (no password is even asked for).
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(&alice_startup()).await.unwrap();
    read_until_close(&mut tcp, WAIT).await.assert_fatal("28000");

    // TLS works, with tokio-postgres and psql (libpq's default sslmode=prefer).
    let client = proxy
        .try_connect_tls(&alice_conninfo(&proxy, "localhost", "sslmode=require"))
        .await
        .unwrap();
    select_1(&client).await;
    let out = psql(
        &format!("host=localhost port={} dbname=app user=alice", proxy.port()),
        &["SELECT 1"],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A CancelRequest over plaintext still works: libpq before 17 never encrypts cancels.
    let (tcp, answer) = ssl_answer(&proxy).await;
    assert_eq!(answer, b'S');
    let connector = tokio_rustls::TlsConnector::from(client_config(&harness_ca(), &[]));
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let key = alice_login(&mut tls).await.expect("no BackendKeyData");
    let mut out = BytesMut::new();
    frontend::query("SELECT pg_sleep(60)", &mut out).unwrap();
    tls.write_all(&out).await.unwrap();
    let mut cancel = 16i32.to_be_bytes().to_vec();
    cancel.extend_from_slice(&CANCEL_REQUEST.to_be_bytes());
    cancel.extend_from_slice(&key);
    // Cancel until the query is really running (a cancel that arrives first is a no-op).
    let deadline = tokio::time::Instant::now() + WAIT;
    let fields = loop {
        let mut plain = TcpStream::connect(proxy.addr).await.unwrap();
        plain.write_all(&cancel).await.unwrap();
        assert!(read_until_close(&mut plain, WAIT).await.closed());
        // A single-byte read is cancel-safe; the rest of a message is read in full.
        if let Ok(tag) = tokio::time::timeout(Duration::from_millis(200), tls.read_u8()).await {
            let tag = tag.unwrap();
            let len = tls.read_i32().await.unwrap();
            let mut body = vec![0u8; usize::try_from(len).unwrap() - 4];
            tls.read_exact(&mut body).await.unwrap();
            match tag {
                b'T' => {} // RowDescription comes before pg_sleep runs
                b'E' => break error_fields(&body),
                _ => panic!("unexpected message {tag} {body:?}"),
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the plaintext cancel never took effect"
        );
    };
    assert_eq!(
        fields.get(&b'C').map(String::as_str),
        Some("57014"),
        "{fields:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_mode_answers_n_and_serves_plaintext() {
    // config_text writes cert and key anyway; "disabled" must still be accepted.
    let proxy = Proxy::start(ProxyOptions {
        tls_mode: Some("disabled"),
        ..Default::default()
    })
    .await;

    // SSLRequest -> 'N', then the startup continues in plaintext on the same socket.
    let (mut tcp, answer) = ssl_answer(&proxy).await;
    assert_eq!(answer, b'N');
    login_and_select_1(&mut tcp).await;

    // sslmode=require fails (tokio-postgres and psql), sslmode=disable works.
    let err = proxy
        .try_connect_tls(&alice_conninfo(&proxy, "localhost", "sslmode=require"))
        .await
        .expect_err("sslmode=require succeeded although TLS is disabled");
    assert!(err.as_db_error().is_none(), "{err}");
    let out = psql(
        &format!(
            "host=localhost port={} dbname=app user=alice sslmode=require",
            proxy.port()
        ),
        &["SELECT 1"],
    )
    .await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("does not support SSL"), "{stderr}");
    let client = proxy.alice().await;
    select_1(&client).await;

    // A direct-TLS ClientHello is not answered with TLS, nor with an authentication request.
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let connector =
        tokio_rustls::TlsConnector::from(client_config(&harness_ca(), &[b"postgresql"]));
    let name = ServerName::try_from("localhost").unwrap();
    let handshake = tokio::time::timeout(WAIT, connector.connect(name, &mut tcp))
        .await
        .expect("direct TLS hung");
    assert!(
        handshake.is_err(),
        "a TLS handshake succeeded although TLS is disabled"
    );
    let outcome = read_until_close(&mut tcp, WAIT).await;
    assert!(
        outcome.closed() && !outcome.has_auth_request(),
        "{outcome:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Pre-handshake injection (CVE-2021-23214 class)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn plaintext_pipelined_after_ssl_request_is_refused() {
    for mode in ["optional", "required", "disabled"] {
        let proxy = Proxy::start(ProxyOptions {
            tls_mode: Some(mode),
            ..Default::default()
        })
        .await;
        let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
        // One write: SSLRequest immediately followed by a plaintext StartupMessage, as a
        // man-in-the-middle would inject it.
        let injected = [encryption_request(SSL_REQUEST), alice_startup()].concat();
        tcp.write_all(&injected).await.unwrap();
        let outcome = read_until_close(&mut tcp, WAIT).await;
        assert_ne!(
            outcome.bytes.first(),
            Some(&b'S'),
            "{mode}: answered 'S' and went on: {outcome:?}"
        );
        let fields = outcome.assert_fatal("08P01");
        assert_eq!(
            fields[&b'M'], "received unencrypted data after SSL request",
            "{mode}"
        );
        assert_healthy(&proxy).await;
    }
}

#[tokio::test]
async fn plaintext_instead_of_a_client_hello_is_dropped() {
    let proxy = Proxy::default().await;
    let (mut tcp, answer) = ssl_answer(&proxy).await;
    assert_eq!(answer, b'S');
    // Plaintext startup where the ClientHello should be.
    tcp.write_all(&alice_startup()).await.unwrap();
    let outcome = read_until_close(&mut tcp, WAIT).await;
    assert!(
        outcome.closed(),
        "pgwarden kept the connection: {outcome:?}"
    );
    assert!(
        !outcome.has_auth_request(),
        "plaintext authentication request: {outcome:?}"
    );
    // Whatever came back (a TLS alert at most) is not a PostgreSQL message.
    assert!(
        outcome.bytes.first().is_none_or(|&b| b == 0x15),
        "{outcome:?}"
    );
    assert_healthy(&proxy).await;
}

/// A normal client still gets in (sslmode=prefer: TLS unless the proxy declines it).
async fn assert_healthy(proxy: &Proxy) {
    let conninfo = alice_conninfo(proxy, "localhost", "sslmode=prefer");
    let client = tokio::time::timeout(WAIT, proxy.try_connect_tls(&conninfo))
        .await
        .expect("login hung")
        .expect("login failed");
    select_1(&client).await;
}

// ---------------------------------------------------------------------------------------------
// PG17 direct TLS
// ---------------------------------------------------------------------------------------------

/// TCP connect and a TLS handshake right away, offering `alpn`.
async fn direct_tls(
    proxy: &Proxy,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(proxy.addr).await?;
    let connector = tokio_rustls::TlsConnector::from(client_config(&harness_ca(), alpn));
    let name = ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(WAIT, connector.connect(name, tcp))
        .await
        .expect("direct TLS handshake hung")
}

#[tokio::test]
async fn direct_tls_with_alpn_postgresql_works() {
    let proxy = Proxy::default().await;
    let mut tls = direct_tls(&proxy, &[b"postgresql"])
        .await
        .expect("direct TLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"postgresql"[..]));
    login_and_select_1(&mut tls).await;

    // The same with a real client: tokio-postgres with sslnegotiation=direct.
    let connector = tokio_postgres_connector(&harness_ca(), &[b"postgresql"]);
    let conninfo = alice_conninfo(&proxy, "localhost", "sslmode=require sslnegotiation=direct");
    let client = connect_with(&conninfo, connector)
        .await
        .expect("tokio-postgres direct TLS");
    select_1(&client).await;
}

#[tokio::test]
async fn direct_tls_without_alpn_or_with_another_alpn_is_refused() {
    let proxy = Proxy::default().await;

    // No ALPN: the handshake may complete, but no authentication request follows; the client
    // is told why (inside TLS) and disconnected.
    match direct_tls(&proxy, &[]).await {
        Err(_) => {}
        Ok(mut tls) => {
            let outcome = read_until_close(&mut tls, WAIT).await;
            let fields = outcome.assert_fatal("08P01");
            assert!(fields[&b'M'].contains("ALPN"), "{fields:?}");
        }
    }

    // ALPN "h2": not PostgreSQL. Refused in the handshake or right after it.
    match direct_tls(&proxy, &[b"h2"]).await {
        Err(_) => {}
        Ok(mut tls) => {
            let _ = tls.write_all(&alice_startup()).await;
            let outcome = read_until_close(&mut tls, WAIT).await;
            assert!(
                outcome.closed() && !outcome.has_auth_request(),
                "{outcome:?}"
            );
        }
    }

    // tokio-postgres with sslnegotiation=direct but a connector without ALPN.
    let connector = tokio_postgres_connector(&harness_ca(), &[]);
    let conninfo = alice_conninfo(&proxy, "localhost", "sslmode=require sslnegotiation=direct");
    let err = connect_with(&conninfo, connector)
        .await
        .expect_err("direct TLS without ALPN got in");
    if err.as_db_error().is_some() {
        assert_eq!(sqlstate(&err).as_deref(), Some("08P01"), "{err}");
    }
    assert_healthy(&proxy).await;
}

// ---------------------------------------------------------------------------------------------
// Upstream TLS
// ---------------------------------------------------------------------------------------------

/// A second throwaway PostgreSQL with `ssl = on`, a certificate from its own CA, and the
/// harness's roles and database (same passwords, so the default pgwarden config logs in).
struct TlsUpstream {
    pg: ThrowawayPostgres,
    certs: TestCertificates,
}

fn tls_upstream() -> &'static TlsUpstream {
    static UPSTREAM: OnceLock<TlsUpstream> = OnceLock::new();
    UPSTREAM.get_or_init(|| {
        let h = common::harness();
        let pg = ThrowawayPostgres::start(PostgresOptions::default()).expect("start PostgreSQL");
        let dir = pg
            .data_dir()
            .parent()
            .expect("temp dir")
            .join("upstream-certs");
        std::fs::create_dir_all(&dir).unwrap();
        let certs = testbed::write_test_certificates(&dir).expect("upstream certificates");
        // The server runs as the data dir's owner (an unprivileged user when we are root) and
        // insists on a key only it can read.
        let data = pg.data_dir();
        let owner = std::fs::metadata(data).expect("data dir");
        for (source, name, mode) in [
            (&certs.server_cert, "server.crt", 0o644),
            (&certs.server_key, "server.key", 0o600),
        ] {
            let target = data.join(name);
            std::fs::copy(source, &target).expect("copy certificate");
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode)).unwrap();
            std::os::unix::fs::chown(&target, Some(owner.uid()), Some(owner.gid())).unwrap();
        }
        pg.psql(
            "postgres",
            "ALTER SYSTEM SET ssl_cert_file = 'server.crt';\n\
             ALTER SYSTEM SET ssl_key_file = 'server.key';\n\
             ALTER SYSTEM SET ssl = on;\n\
             SELECT pg_reload_conf();\n",
        )
        .expect("enable ssl");
        pg.psql(
            "postgres",
            &format!(
                "CREATE ROLE app_rw LOGIN PASSWORD '{}';\n\
                 CREATE ROLE app_ro LOGIN PASSWORD '{}';\n\
                 CREATE DATABASE app OWNER app_rw;\n\
                 GRANT CONNECT ON DATABASE app TO app_ro;\n",
                h.app_rw_password, h.app_ro_password
            ),
        )
        .expect("create roles");
        // The reload is asynchronous: wait until the server answers an SSLRequest with 'S'.
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if ssl_accepted_sync(pg.port()) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the second PostgreSQL never enabled TLS; see {}",
                pg.log_path().display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        TlsUpstream { pg, certs }
    })
}

fn ssl_accepted_sync(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut tcp) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let mut answer = [0u8; 1];
    tcp.write_all(&encryption_request(SSL_REQUEST)).is_ok()
        && tcp.read_exact(&mut answer).is_ok()
        && answer[0] == b'S'
}

fn upstream_section(port: u16, host: &str, lines: &str) -> String {
    format!("host = \"{host}\"\nport = {port}\n{lines}")
}

async fn upstream_ssl_and_port(proxy: &Proxy) -> (bool, i32) {
    let client = proxy.alice().await;
    let row = client
        .query_one(
            "SELECT ssl, current_setting('port')::int4 FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_require_and_verify_full_encrypt_the_upstream_leg() {
    let up = tls_upstream();
    let port = up.pg.port();
    let verify_full = format!(
        "sslmode = \"verify-full\"\nca = \"{}\"\n",
        up.certs.ca_cert.display()
    );
    let modes = [
        ("localhost", "sslmode = \"require\"\n".to_owned()),
        ("localhost", verify_full.clone()),
        // The certificate's IP address SAN.
        ("127.0.0.1", verify_full),
    ];
    for (host, lines) in modes {
        let proxy = Proxy::start(ProxyOptions {
            upstream: Some(upstream_section(port, host, &lines)),
            ..Default::default()
        })
        .await;
        let (ssl, server_port) = upstream_ssl_and_port(&proxy).await;
        assert_eq!(server_port, i32::from(port), "not the TLS upstream");
        assert!(ssl, "upstream leg to {host} not encrypted with {lines}");
    }
    // Control: sslmode = "disable" towards the same server is plaintext.
    let proxy = Proxy::start(ProxyOptions {
        upstream: Some(upstream_section(
            port,
            "localhost",
            "sslmode = \"disable\"\n",
        )),
        ..Default::default()
    })
    .await;
    assert_eq!(
        upstream_ssl_and_port(&proxy).await,
        (false, i32::from(port))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_verify_full_with_the_wrong_ca_or_name_fails_with_08001() {
    let up = tls_upstream();
    let port = up.pg.port();
    let cases = [
        (
            "harness CA",
            "localhost",
            format!(
                "sslmode = \"verify-full\"\nca = \"{}\"\n",
                harness_ca().display()
            ),
        ),
        (
            "unrelated CA",
            "localhost",
            format!(
                "sslmode = \"verify-full\"\nca = \"{}\"\n",
                unrelated_certs().ca_cert.display()
            ),
        ),
        (
            "name not in the certificate",
            "127.0.0.1",
            format!(
                "sslmode = \"verify-full\"\nca = \"{}\"\nserver_name = \"db.example.com\"\n",
                up.certs.ca_cert.display()
            ),
        ),
    ];
    for (what, host, lines) in cases {
        let proxy = Proxy::start(ProxyOptions {
            upstream: Some(upstream_section(port, host, &lines)),
            ..Default::default()
        })
        .await;
        for _ in 0..2 {
            let err = proxy
                .try_connect(&proxy.conninfo("alice", ALICE_PASSWORD, "sslmode=disable"))
                .await
                .err()
                .unwrap_or_else(|| panic!("{what}: login succeeded over an unverifiable upstream"));
            assert_eq!(sqlstate(&err).as_deref(), Some("08001"), "{what}: {err}");
            let db = err.as_db_error().unwrap();
            assert_eq!(db.severity(), "FATAL", "{what}");
            assert!(
                db.message().contains("upstream connection"),
                "{what}: {}",
                db.message()
            );
        }
    }
}

#[tokio::test]
async fn upstream_require_against_a_server_without_tls_fails_with_08001() {
    let h = common::harness();
    let proxy = Proxy::start(ProxyOptions {
        upstream: Some(upstream_section(
            h.pg.port(),
            h.pg.host(),
            "sslmode = \"require\"\n",
        )),
        ..Default::default()
    })
    .await;
    let err = proxy
        .try_connect(&proxy.conninfo("alice", ALICE_PASSWORD, "sslmode=disable"))
        .await
        .expect_err("login succeeded although the upstream cannot do TLS");
    assert_eq!(sqlstate(&err).as_deref(), Some("08001"), "{err}");
    assert_eq!(err.as_db_error().unwrap().severity(), "FATAL");
}

/// Over TLS, local users may authenticate with SCRAM-SHA-256-PLUS: the exchange is bound to
/// pgwarden's certificate, so clients that insist on it (`channel_binding=require`) connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_binding_required_by_the_client_works_over_tls() {
    let proxy = Proxy::default().await;
    let ca = harness_ca();
    let conninfo = format!(
        "host=localhost port={} dbname=app user=alice sslmode=verify-full sslrootcert={} channel_binding=require",
        proxy.port(),
        ca.display()
    );
    let out = psql(&conninfo, &["SELECT 'bound'"]).await;
    assert!(
        out.status.success(),
        "psql with channel_binding=require failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "bound");

    // tokio-postgres computes tls-server-end-point itself (rustls connector).
    let client = connect_with(
        &alice_conninfo(
            &proxy,
            "localhost",
            "sslmode=require channel_binding=require",
        ),
        tokio_postgres_connector(&ca, &[]),
    )
    .await
    .expect("tokio-postgres with channel_binding=require");
    select_1(&client).await;

    // Without TLS there is nothing to bind to: the client refuses, as it would with PostgreSQL.
    let plain = format!(
        "host=127.0.0.1 port={} dbname=app user=alice sslmode=disable channel_binding=require",
        proxy.port()
    );
    let out = psql(&plain, &["SELECT 1"]).await;
    assert!(!out.status.success());
}

/// A readiness probe of a TLS upstream ends its connection cleanly (close_notify, then FIN),
/// reading what the server still sends: a socket closed with unread data (TLS 1.3 session
/// tickets) is reset, and PostgreSQL logs "could not receive data from client: Connection
/// reset by peer" for every probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_readiness_probe_of_a_tls_upstream_closes_its_connection_cleanly() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = common::harness();
    let config =
        pgwarden::net::tls::server_config(&h.certs.server_cert, &h.certs.server_key).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // A server that answers an SSLRequest like PostgreSQL, then waits for a startup packet:
    // how each connection ended.
    let (ends, mut ended) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let ends = ends.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 8];
                tcp.read_exact(&mut request).await.unwrap();
                tcp.write_all(b"S").await.unwrap();
                let mut tls = acceptor.accept(tcp).await.unwrap();
                let mut rest = Vec::new();
                let _ = ends.send(tls.read_to_end(&mut rest).await.map(|_| rest.len()));
            });
        }
    });
    let proxy = Proxy::start(ProxyOptions {
        upstream: Some(upstream_section(
            port,
            "localhost",
            &format!(
                "sslmode = \"verify-full\"\nca = \"{}\"\n",
                h.certs.ca_cert.display()
            ),
        )),
        extra: "[admin]\nlisten = \"127.0.0.1:0\"\n".into(),
        ..Default::default()
    })
    .await;
    let admin = proxy.server.as_ref().unwrap().admin_addr().unwrap();
    let (status, body) = common::http_get(&format!("http://{admin}/readyz")).await;
    assert_eq!(status, 200, "{body}");
    let end = tokio::time::timeout(WAIT, ended.recv())
        .await
        .expect("the probe's connection never ended")
        .unwrap();
    assert_eq!(
        end.map_err(|e| e.kind()),
        Ok(0),
        "the probe did not end its connection cleanly"
    );
}
