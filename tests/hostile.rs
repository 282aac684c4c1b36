//! Hostile and malformed clients on raw TCP: broken startup packets, garbage during and after
//! authentication, memory under a flood of bad connections and under a client that never
//! reads, the authentication timeout, the connection limit (and cancels and floods at it),
//! GSSENCRequest, protocol version negotiation, replication requests, startup parameters that
//! change what was authorized, messages pipelined behind the login, and a server that answers
//! what was never asked.
//!
//! Every case asserts what the client is told (an ErrorResponse with severity FATAL and the
//! expected SQLSTATE) and/or that the connection is closed within a bounded wait, and that a
//! normal client still gets in afterwards.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use common::wire::{
    alice_login, alice_startup, auth_code, encryption_request, error_fields, finish_login,
    read_message, read_message_untimed, read_until_close, scram, startup_packet, Outcome,
    GSSENC_REQUEST, PROTOCOL_3_0, PROTOCOL_3_2, SSL_REQUEST, WAIT,
};
use common::{Proxy, ProxyOptions, ALICE_PASSWORD};
use pgwarden::app::Server;
use pgwarden::config::Config;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// VmRSS is per process: the memory tests take this lock exclusively, every other test
/// shares it, so neither other tests' allocations nor the backtrace of a failing test (which
/// loads debug info, 100+ MiB) can blur a measurement.
static EXCLUSIVE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

// ---------------------------------------------------------------------------------------------
// Helpers (the shared raw-protocol ones are in common::wire)
// ---------------------------------------------------------------------------------------------

/// An untagged startup-phase packet: length word, `code`, then `payload` as given.
fn untagged(code: i32, payload: &[u8]) -> Vec<u8> {
    let mut packet = i32::try_from(payload.len() + 8)
        .unwrap()
        .to_be_bytes()
        .to_vec();
    packet.extend_from_slice(&code.to_be_bytes());
    packet.extend_from_slice(payload);
    packet
}

/// A tagged message with a correct length word.
fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&i32::try_from(body.len() + 4).unwrap().to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Connect, write `bytes` (the proxy may close before it has read them all, so write errors
/// are expected and ignored), then read until the proxy closes.
async fn send_raw(proxy: &Proxy, bytes: &[u8]) -> Outcome {
    let mut tcp = TcpStream::connect(proxy.addr)
        .await
        .expect("connect to pgwarden");
    let _ = tokio::time::timeout(WAIT, tcp.write_all(bytes)).await;
    read_until_close(&mut tcp, WAIT).await
}

/// A raw connection as alice, logged in, after a good query proved the relay works.
async fn raw_session(proxy: &Proxy) -> TcpStream {
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    alice_login(&mut tcp).await;
    tcp.write_all(&frame(b'Q', b"SELECT 41 + 1\0"))
        .await
        .unwrap();
    let mut saw_row = false;
    loop {
        let (tag, body) = read_message(&mut tcp).await;
        match tag {
            b'D' => saw_row = body.ends_with(b"42"),
            b'Z' => break,
            b'E' => panic!("query failed: {:?}", error_fields(&body)),
            _ => {}
        }
    }
    assert!(saw_row, "SELECT 41 + 1 did not return 42");
    tcp
}

/// A normal client still gets in and runs a query.
async fn assert_healthy(proxy: &Proxy) {
    let client = tokio::time::timeout(WAIT, proxy.alice())
        .await
        .expect("a normal login through pgwarden hung");
    let row = tokio::time::timeout(WAIT, client.query_one("SELECT 1", &[]))
        .await
        .expect("SELECT 1 hung")
        .expect("SELECT 1 failed");
    assert_eq!(row.get::<_, i32>(0), 1);
}

fn random_bytes(len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    rand::fill(&mut bytes[..]);
    bytes
}

/// `count` parameters `pNNNN=v` plus user and database.
fn many_parameters(count: usize) -> Vec<u8> {
    let names: Vec<String> = (0..count).map(|i| format!("p{i:05}")).collect();
    let mut params: Vec<(&str, &[u8])> = vec![("user", b"alice"), ("database", b"app")];
    params.extend(names.iter().map(|n| (n.as_str(), &b"v"[..])));
    startup_packet(PROTOCOL_3_0, &params)
}

/// For three seconds while the client does not read, the process's RSS stays under
/// `before` + `limit` bytes.
async fn assert_grows_less_than(before: u64, limit: u64) {
    let mut peak = before;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(rss_bytes());
    }
    let growth = peak.saturating_sub(before);
    assert!(
        growth < limit,
        "RSS grew by {} MiB while the client did not read",
        growth >> 20
    );
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS line");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmRSS value");
    kib * 1024
}

// ---------------------------------------------------------------------------------------------
// Broken startup packets
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn random_bytes_are_refused() {
    let _shared = EXCLUSIVE.read().await;
    let proxy = Proxy::default().await;
    // 64 KiB of noise. The first byte is pinned to a value that is not a TLS record type
    // (0x16), so the length word is far above the startup limit and the answer deterministic.
    let mut noise = random_bytes(64 * 1024);
    noise[0] = 0x40 | (noise[0] & 0x3f);
    let outcome = send_raw(&proxy, &noise).await;
    let fields = outcome.assert_fatal("08P01");
    assert!(
        fields[&b'M'].contains("invalid startup packet length"),
        "{fields:?}"
    );

    // Noise that starts like a TLS record goes to the TLS acceptor, which must fail it and
    // close without ever authenticating anyone.
    let mut noise = random_bytes(64 * 1024);
    noise[0] = 0x16;
    let outcome = send_raw(&proxy, &noise).await;
    assert!(
        outcome.closed(),
        "pgwarden hung on TLS-looking noise: {outcome:?}"
    );
    assert!(!outcome.has_auth_request());
    assert_healthy(&proxy).await;
}

#[tokio::test]
async fn impossible_startup_lengths_are_refused() {
    let _shared = EXCLUSIVE.read().await;
    let proxy = Proxy::default().await;
    let cases: [(&str, Vec<u8>); 6] = [
        ("length 0", vec![0, 0, 0, 0]),
        ("length 4", vec![0, 0, 0, 4]),
        ("length 7", vec![0, 0, 0, 7, 0, 3, 0]),
        (
            "length 2^31-1",
            [&0x7fff_ffffi32.to_be_bytes()[..], &[0, 3, 0, 0, b'u', b's']].concat(),
        ),
        (
            "length -1",
            [&(-1i32).to_be_bytes()[..], &[0, 3, 0, 0]].concat(),
        ),
        (
            "length i32::MIN",
            [&i32::MIN.to_be_bytes()[..], &[0, 3, 0, 0]].concat(),
        ),
    ];
    for (what, bytes) in cases {
        let outcome = send_raw(&proxy, &bytes).await;
        let fields = outcome.assert_fatal("08P01");
        assert!(
            fields[&b'M'].contains("invalid startup packet length"),
            "{what}: {fields:?}"
        );
    }
    assert_healthy(&proxy).await;
}

#[tokio::test]
async fn oversized_and_overfull_startup_packets_are_refused() {
    let _shared = EXCLUSIVE.read().await;
    let proxy = Proxy::default().await;
    // 10 000 parameters: ~100 KB, ten times PostgreSQL's startup packet limit.
    let huge = many_parameters(10_000);
    assert!(huge.len() > 10_000);
    let fields = send_raw(&proxy, &huge).await.assert_fatal("08P01");
    assert!(
        fields[&b'M'].contains("invalid startup packet length"),
        "{fields:?}"
    );

    // 100 parameters fit in the size limit, but are far more than any real client sends.
    let overfull = many_parameters(100);
    assert!(overfull.len() < 10_000);
    let fields = send_raw(&proxy, &overfull).await.assert_fatal("08P01");
    assert!(fields[&b'M'].contains("parameters"), "{fields:?}");

    // A chatty but legitimate client (20 parameters) is still fine.
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(&many_parameters(18)).await.unwrap();
    assert_eq!(auth_code(&read_message(&mut tcp).await), 10);
    drop(tcp);
    assert_healthy(&proxy).await;
}

#[tokio::test]
async fn malformed_startup_bodies_are_refused() {
    let _shared = EXCLUSIVE.read().await;
    let proxy = Proxy::default().await;
    let cases: [(&str, Vec<u8>); 5] = [
        // Parameter value without its terminator and no final NUL.
        ("unterminated", untagged(PROTOCOL_3_0, b"user\0alice")),
        ("bytes after the final terminator", {
            let mut p = startup_packet(PROTOCOL_3_0, &[("user", b"alice")]);
            p.extend_from_slice(b"junk");
            let len = i32::try_from(p.len()).unwrap().to_be_bytes();
            p[..4].copy_from_slice(&len);
            p
        }),
        (
            "duplicate user",
            startup_packet(PROTOCOL_3_0, &[("user", b"alice"), ("user", b"bob")]),
        ),
        (
            "SSLRequest with a payload",
            untagged(SSL_REQUEST, &[1, 2, 3, 4]),
        ),
        (
            "name not UTF-8",
            untagged(PROTOCOL_3_0, b"user\0alice\0\xff\xfe\0x\0\0"),
        ),
    ];
    for (what, bytes) in cases {
        let outcome = send_raw(&proxy, &bytes).await;
        let fields = outcome.assert_fatal("08P01");
        assert!(fields[&b'M'].contains("malformed"), "{what}: {fields:?}");
    }
    assert_healthy(&proxy).await;
}

#[tokio::test]
async fn a_huge_user_name_within_the_limit_fails_login_cleanly() {
    let _shared = EXCLUSIVE.read().await;
    let proxy = Proxy::default().await;
    let user = vec![b'x'; 9_000];
    let packet = startup_packet(PROTOCOL_3_0, &[("user", &user), ("database", b"app")]);
    assert!(packet.len() <= 10_000);
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(&packet).await.unwrap();
    // An unknown user gets a normal-looking SCRAM exchange that no password can pass.
    let sasl = read_message(&mut tcp).await;
    let reply = scram(&mut tcp, sasl, "any password").await;
    assert_eq!(
        reply.0, b'E',
        "login as an unknown 9000-byte user succeeded?"
    );
    let fields = error_fields(&reply.1);
    assert_eq!(
        fields.get(&b'S').map(String::as_str),
        Some("FATAL"),
        "{fields:?}"
    );
    assert_eq!(
        fields.get(&b'C').map(String::as_str),
        Some("28P01"),
        "{fields:?}"
    );
    let outcome = read_until_close(&mut tcp, WAIT).await;
    assert!(outcome.closed(), "{outcome:?}");
    assert_healthy(&proxy).await;
}

#[tokio::test]
async fn a_startup_without_user_is_refused_with_28000() {
    let _shared = EXCLUSIVE.read().await;
    let proxy = Proxy::default().await;
    for packet in [
        startup_packet(PROTOCOL_3_0, &[("database", b"app")]),
        startup_packet(PROTOCOL_3_0, &[("user", b""), ("database", b"app")]),
        startup_packet(PROTOCOL_3_0, &[]),
    ] {
        let fields = send_raw(&proxy, &packet).await.assert_fatal("28000");
        assert!(fields[&b'M'].contains("user name"), "{fields:?}");
    }
    assert_healthy(&proxy).await;
}

#[tokio::test]
async fn protocol_version_2_is_refused() {
    let _shared = EXCLUSIVE.read().await;
    let proxy = Proxy::default().await;
    let packet = startup_packet(2 << 16, &[("user", b"alice"), ("database", b"app")]);
    let fields = send_raw(&proxy, &packet).await.assert_fatal("0A000");
    assert!(
        fields[&b'M'].contains("unsupported frontend protocol 2.0"),
        "{fields:?}"
    );
    // Major 4 and a nonsense major too.
    for major in [4, 1234] {
        let packet = startup_packet(major << 16, &[("user", b"alice")]);
        send_raw(&proxy, &packet).await.assert_fatal("0A000");
    }
    assert_healthy(&proxy).await;
}

#[tokio::test]
async fn a_truncated_startup_packet_then_close_is_cleaned_up() {
    let _shared = EXCLUSIVE.read().await;
    let proxy = Proxy::default().await;
    let packet = alice_startup();
    for cut in [1, 3, 5, packet.len() - 1] {
        let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
        tcp.write_all(&packet[..cut]).await.unwrap();
        tcp.shutdown().await.unwrap();
        let outcome = read_until_close(&mut tcp, WAIT).await;
        assert!(
            outcome.closed(),
            "cut at {cut}: pgwarden kept the half-closed connection open"
        );
        assert!(!outcome.has_auth_request(), "cut at {cut}: {outcome:?}");
    }
    // A connection that closes without sending anything at all.
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    drop(tcp);
    assert_healthy(&proxy).await;
}

// ---------------------------------------------------------------------------------------------
// Garbage during authentication and after login
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn garbage_during_authentication_is_refused() {
    let _shared = EXCLUSIVE.read().await;
    let proxy = Proxy::default().await;
    let mut wrong_mechanism = BytesMut::new();
    frontend::sasl_initial_response("SCRAM-SHA-1", b"n,,n=,r=abc", &mut wrong_mechanism).unwrap();
    // The declared inner length does not match the data.
    let mut bad_inner_len = b"SCRAM-SHA-256\0".to_vec();
    bad_inner_len.extend_from_slice(&100i32.to_be_bytes());
    bad_inner_len.extend_from_slice(b"n,,n=,r=abc");
    let cases: [(&str, Vec<u8>, &str); 6] = [
        (
            "a query instead of a SASL response",
            frame(b'Q', b"SELECT 1\0"),
            "08P01",
        ),
        ("an unknown message type", frame(b'?', b""), "08P01"),
        (
            "a 1 MiB SASL response",
            [&[b'p'][..], &(1i32 << 20).to_be_bytes()].concat(),
            "54000",
        ),
        (
            "a 2 GiB SASL response",
            [&[b'p'][..], &i32::MAX.to_be_bytes()].concat(),
            "54000",
        ),
        ("another mechanism", wrong_mechanism.to_vec(), "28000"),
        (
            "inner length mismatch",
            frame(b'p', &bad_inner_len),
            "08P01",
        ),
    ];
    for (what, garbage, sqlstate) in cases {
        let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
        tcp.write_all(&alice_startup()).await.unwrap();
        assert_eq!(auth_code(&read_message(&mut tcp).await), 10, "{what}");
        let _ = tcp.write_all(&garbage).await;
        let outcome = read_until_close(&mut tcp, WAIT).await;
        let fields = outcome.assert_fatal(sqlstate);
        assert!(!fields[&b'M'].is_empty(), "{what}: {fields:?}");
    }
    assert_healthy(&proxy).await;
}

#[tokio::test]
async fn garbage_after_login_is_a_fatal_protocol_violation() {
    let _shared = EXCLUSIVE.read().await;
    let proxy = Proxy::default().await;
    let bystander = proxy.alice().await;

    // Bind: portal "", statement "", no format codes, one parameter declaring 4096 bytes but
    // carrying two, no result formats.
    let mut bind_overrun = b"\0\0".to_vec();
    bind_overrun.extend_from_slice(&0i16.to_be_bytes());
    bind_overrun.extend_from_slice(&1i16.to_be_bytes());
    bind_overrun.extend_from_slice(&4096i32.to_be_bytes());
    bind_overrun.extend_from_slice(b"hi");
    bind_overrun.extend_from_slice(&0i16.to_be_bytes());

    let cases: [(&str, Vec<u8>, &str, &str); 8] = [
        (
            "unknown message type '?'",
            frame(b'?', b"whatever"),
            "08P01",
            "unexpected message type '?'",
        ),
        (
            "Bind parameter past the message end",
            frame(b'B', &bind_overrun),
            "08P01",
            "Bind",
        ),
        (
            "Query without its terminator",
            frame(b'Q', b"SELECT 1"),
            "08P01",
            "Query",
        ),
        (
            "Query with bytes after the terminator",
            frame(b'Q', b"SELECT 1\0SELECT 2\0"),
            "08P01",
            "Query",
        ),
        (
            "Sync with a body",
            frame(b'S', b"x"),
            "08P01",
            "invalid length",
        ),
        (
            "length 2^31-1 (2 GiB)",
            [&[b'Q'][..], &i32::MAX.to_be_bytes(), b"SELECT"].concat(),
            "54000",
            "over the limit",
        ),
        (
            "length 2^31 (negative)",
            [&[b'Q'][..], &i32::MIN.to_be_bytes(), b"SELECT"].concat(),
            "08P01",
            "invalid length",
        ),
        (
            "length 3",
            [&[b'Q'][..], &3i32.to_be_bytes()].concat(),
            "08P01",
            "invalid length",
        ),
    ];
    for (what, garbage, sqlstate, message) in cases {
        let mut tcp = raw_session(&proxy).await;
        let _ = tcp.write_all(&garbage).await;
        let outcome = read_until_close(&mut tcp, WAIT).await;
        let fields = outcome.assert_fatal(sqlstate);
        assert!(fields[&b'M'].contains(message), "{what}: {fields:?}");
        // Nothing of the garbage may have reached the server as a statement: the other
        // session (and the server) are fine.
        let row = bystander
            .query_one("SELECT 2", &[])
            .await
            .expect("bystander session broken");
        assert_eq!(row.get::<_, i32>(0), 2, "{what}");
    }
    assert_healthy(&proxy).await;
}

#[tokio::test]
async fn a_valid_message_followed_by_garbage_in_one_write_is_refused() {
    let _shared = EXCLUSIVE.read().await;
    let proxy = Proxy::default().await;
    let mut tcp = raw_session(&proxy).await;
    let mut batch = frame(b'Q', b"SELECT 1\0");
    batch.extend_from_slice(&frame(b'?', b""));
    let _ = tcp.write_all(&batch).await;
    let outcome = read_until_close(&mut tcp, WAIT).await;
    assert!(outcome.closed(), "{outcome:?}");
    let messages = outcome.messages();
    let fatal = messages
        .iter()
        .filter(|(tag, _)| *tag == b'E')
        .map(|(_, body)| error_fields(body))
        .find(|f| f.get(&b'S').map(String::as_str) == Some("FATAL"));
    let fatal = fatal.unwrap_or_else(|| panic!("no FATAL: {messages:?}"));
    assert_eq!(fatal[&b'C'], "08P01", "{fatal:?}");
    assert_healthy(&proxy).await;
}

// ---------------------------------------------------------------------------------------------
// Memory under a flood of hostile connections
// ---------------------------------------------------------------------------------------------

/// One hostile connection of kind `i % 12`; returns once pgwarden closed it.
async fn hostile_connection(proxy: &Proxy, i: usize) {
    let outcome = match i % 12 {
        0 => {
            let mut noise = random_bytes(64 * 1024);
            noise[0] = 0x40 | (noise[0] & 0x3f);
            send_raw(proxy, &noise).await
        }
        1 => send_raw(proxy, &[0, 0, 0, 0]).await,
        2 => {
            send_raw(
                proxy,
                &[&0x7fff_ffffi32.to_be_bytes()[..], &[0; 16]].concat(),
            )
            .await
        }
        3 => send_raw(proxy, &many_parameters(10_000)).await,
        4 => send_raw(proxy, &many_parameters(100)).await,
        5 => {
            send_raw(
                proxy,
                &startup_packet(PROTOCOL_3_0, &[("database", b"app")]),
            )
            .await
        }
        6 => send_raw(proxy, &startup_packet(2 << 16, &[("user", b"alice")])).await,
        7 => {
            let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
            tcp.write_all(&alice_startup()[..10]).await.unwrap();
            tcp.shutdown().await.unwrap();
            read_until_close(&mut tcp, WAIT).await
        }
        8 => {
            // A 10 KiB SASL response declared at 12 KiB, then the client vanishes.
            let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
            tcp.write_all(&alice_startup()).await.unwrap();
            let _ = read_message(&mut tcp).await;
            let mut partial = vec![b'p'];
            partial.extend_from_slice(&(12 * 1024i32).to_be_bytes());
            partial.extend_from_slice(&random_bytes(10 * 1024));
            tcp.write_all(&partial).await.unwrap();
            tcp.shutdown().await.unwrap();
            read_until_close(&mut tcp, WAIT).await
        }
        9 => {
            // After login: a message declared at 60 MiB (within the 64 MiB limit), 4 MiB of
            // it, then the client vanishes.
            let mut tcp = raw_session(proxy).await;
            let mut partial = vec![b'Q'];
            partial.extend_from_slice(&(60i32 << 20).to_be_bytes());
            partial.extend_from_slice(&random_bytes(4 << 20));
            tcp.write_all(&partial).await.unwrap();
            tcp.shutdown().await.unwrap();
            read_until_close(&mut tcp, WAIT).await
        }
        10 => {
            let mut tcp = raw_session(proxy).await;
            let _ = tcp.write_all(&frame(b'?', b"garbage")).await;
            read_until_close(&mut tcp, WAIT).await
        }
        _ => {
            let mut tcp = raw_session(proxy).await;
            let _ = tcp
                .write_all(&[&[b'Q'][..], &i32::MAX.to_be_bytes()].concat())
                .await;
            read_until_close(&mut tcp, WAIT).await
        }
    };
    assert!(
        outcome.closed(),
        "hostile connection {i} was not closed: {outcome:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_flat_under_300_hostile_connections() {
    let _alone = EXCLUSIVE.write().await;
    let proxy = Proxy::default().await;
    // Warm up allocator arenas, TLS config, upstream connections and code paths first.
    for i in 0..24 {
        hostile_connection(&proxy, i).await;
    }
    assert_healthy(&proxy).await;
    let before = rss_bytes();
    for i in 0..300 {
        hostile_connection(&proxy, i).await;
    }
    assert_healthy(&proxy).await;
    let after = rss_bytes();
    let growth = after.saturating_sub(before);
    assert!(
        growth < 50 << 20,
        "RSS grew by {} MiB over 300 hostile connections ({} -> {} MiB)",
        growth >> 20,
        before >> 20,
        after >> 20
    );
    // No leaked sessions: every hostile login is gone from the cancel-key map.
    let server = proxy.server.as_ref().unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.active_sessions() != 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        server.active_sessions(),
        0,
        "sessions leaked after hostile connections closed"
    );
}

// ---------------------------------------------------------------------------------------------
// Authentication timeout and connection limit
// ---------------------------------------------------------------------------------------------

/// A pgwarden like [`Proxy::start`], with `server.auth_timeout = "1s"`.
async fn proxy_with_one_second_auth_timeout() -> Proxy {
    let text = common::config_text(&ProxyOptions::default());
    assert!(
        text.contains("auth_timeout = \"5s\""),
        "config_text changed shape:\n{text}"
    );
    let text = text.replace("auth_timeout = \"5s\"", "auth_timeout = \"1s\"");
    let path = common::write_file("pgwarden-auth-timeout.toml", &text);
    let config = Config::load(&path).unwrap_or_else(|e| panic!("config invalid: {e}\n{text}"));
    assert_eq!(config.server.auth_timeout, Duration::from_secs(1));
    let server = Server::start(config).await.expect("start pgwarden");
    let addr = server.local_addr();
    Proxy {
        server: Some(server),
        addr,
        config_path: path,
    }
}

#[tokio::test]
async fn silent_and_stalling_clients_are_disconnected_by_the_auth_timeout() {
    let _shared = EXCLUSIVE.read().await;
    let proxy = proxy_with_one_second_auth_timeout().await;
    // Well below the 5 s bound, well above the 1 s timeout.
    let bound = Duration::from_secs(5);

    // Connects and sends nothing.
    let mut silent = TcpStream::connect(proxy.addr).await.unwrap();
    let outcome = read_until_close(&mut silent, bound).await;
    assert!(
        outcome.closed(),
        "a silent client was not disconnected: {outcome:?}"
    );
    assert!(outcome.bytes.is_empty() || outcome.messages().iter().all(|(t, _)| *t == b'E'));

    // Half a startup packet, then silence.
    let mut half = TcpStream::connect(proxy.addr).await.unwrap();
    half.write_all(&alice_startup()[..12]).await.unwrap();
    let outcome = read_until_close(&mut half, bound).await;
    assert!(
        outcome.closed(),
        "a client stalling mid-startup was not disconnected: {outcome:?}"
    );

    // Gets the SASL request, never answers.
    let mut stalled = TcpStream::connect(proxy.addr).await.unwrap();
    stalled.write_all(&alice_startup()).await.unwrap();
    assert_eq!(auth_code(&read_message(&mut stalled).await), 10);
    let outcome = read_until_close(&mut stalled, bound).await;
    assert!(
        outcome.closed(),
        "a client stalling in SCRAM was not disconnected: {outcome:?}"
    );
    assert!(!outcome.has_auth_request());

    // SSLRequest answered, then no ClientHello.
    let mut no_hello = TcpStream::connect(proxy.addr).await.unwrap();
    no_hello
        .write_all(&encryption_request(SSL_REQUEST))
        .await
        .unwrap();
    assert_eq!(no_hello.read_u8().await.unwrap(), b'S');
    let outcome = read_until_close(&mut no_hello, bound).await;
    assert!(
        outcome.closed(),
        "a client stalling before its ClientHello was not disconnected"
    );

    // The timeout is for the handshake only: an idle logged-in session stays.
    let client = proxy.alice().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        client
            .query_one("SELECT 1", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );
    assert_healthy(&proxy).await;
}

#[tokio::test]
async fn the_connection_limit_refuses_the_third_client_with_53300() {
    let _shared = EXCLUSIVE.read().await;
    let proxy = Proxy::start(ProxyOptions {
        server_extra: "max_connections = 2".into(),
        extra: "[admin]\nlisten = \"127.0.0.1:0\"\n".into(),
        ..Default::default()
    })
    .await;
    let first = proxy.alice().await;
    let second = proxy.alice().await;
    assert_eq!(
        first
            .query_one("SELECT 1", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );
    assert_eq!(
        second
            .query_one("SELECT 2", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        2
    );

    let conninfo = proxy.conninfo("alice", ALICE_PASSWORD, "sslmode=disable");
    let err = proxy
        .try_connect(&conninfo)
        .await
        .expect_err("a third client got in");
    assert_eq!(common::sqlstate(&err).as_deref(), Some("53300"), "{err}");
    let message = err.as_db_error().unwrap().message().to_owned();
    assert!(message.contains("too many clients"), "{message}");
    // The refused client is told over TLS too when it asks for it.
    let tls_conninfo = format!(
        "host=localhost port={} dbname=app user=alice password={ALICE_PASSWORD} sslmode=require",
        proxy.port()
    );
    let err = proxy
        .try_connect_tls(&tls_conninfo)
        .await
        .expect_err("a third client got in over TLS");
    assert_eq!(common::sqlstate(&err).as_deref(), Some("53300"), "{err}");
    // Operators see it in /metrics.
    let admin = proxy.server.as_ref().unwrap().admin_addr().unwrap();
    let (_, metrics) = common::http_get(&format!("http://{admin}/metrics")).await;
    assert!(
        metrics.contains("\npgwarden_connections_over_limit_total 2\n"),
        "{metrics}"
    );
    // Running sessions are unaffected.
    assert_eq!(
        first
            .query_one("SELECT 3", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        3
    );

    // One leaves: a new client gets in (the slot frees when the session task ends, so poll
    // for it within a bound).
    drop(first);
    let deadline = tokio::time::Instant::now() + WAIT;
    let third = loop {
        match proxy.try_connect(&conninfo).await {
            Ok(client) => break client,
            Err(e) if common::sqlstate(&e).as_deref() == Some("53300") => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the slot was never freed"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
    };
    assert_eq!(
        third
            .query_one("SELECT 4", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        4
    );
    assert_eq!(
        second
            .query_one("SELECT 5", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        5
    );
}

#[tokio::test]
async fn a_cancel_request_works_at_the_connection_limit() {
    let _shared = EXCLUSIVE.read().await;
    // Both slots taken; the CancelRequest needs a connection of its own and must still work
    // (PostgreSQL handles cancels before it counts connections, too).
    let proxy = Proxy::start(ProxyOptions {
        server_extra: "max_connections = 2".into(),
        ..Default::default()
    })
    .await;
    let sleeper = proxy.alice().await;
    let _other = proxy.alice().await;
    let token = sleeper.cancel_token();
    let running = tokio::spawn(async move { sleeper.batch_execute("SELECT pg_sleep(60)").await });
    // Cancel until the query is really running (a cancel that arrives first is a no-op).
    let deadline = tokio::time::Instant::now() + WAIT;
    let result = loop {
        token
            .cancel_query(tokio_postgres::NoTls)
            .await
            .expect("cancel request");
        tokio::time::sleep(Duration::from_millis(100)).await;
        if running.is_finished() {
            break running.await.unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cancel never took effect"
        );
    };
    let err = result.expect_err("pg_sleep(60) was not cancelled");
    assert_eq!(common::sqlstate(&err).as_deref(), Some("57014"), "{err}");
}

#[tokio::test]
async fn a_flood_of_idle_connections_is_bounded_and_recovers() {
    let _shared = EXCLUSIVE.read().await;
    let proxy = Proxy::start(ProxyOptions {
        server_extra: "max_connections = 2".into(),
        ..Default::default()
    })
    .await;
    // 2 sessions + 64 "too many clients" slots: these connections are all held open.
    let mut idle = Vec::new();
    for _ in 0..2 + 64 {
        idle.push(TcpStream::connect(proxy.addr).await.unwrap());
    }
    // Beyond that, connections are closed at once instead of piling up.
    for _ in 0..20 {
        let mut extra = TcpStream::connect(proxy.addr).await.unwrap();
        let outcome = read_until_close(&mut extra, WAIT).await;
        assert!(
            outcome.closed(),
            "a connection beyond the overflow was kept: {outcome:?}"
        );
        assert!(!outcome.has_auth_request());
    }
    // One of the overflow connections is told why, the first two get an authentication request.
    let mut overflow = idle.pop().unwrap();
    overflow.write_all(&alice_startup()).await.unwrap();
    let fields = read_until_close(&mut overflow, WAIT)
        .await
        .assert_fatal("53300");
    assert!(fields[&b'M'].contains("too many clients"), "{fields:?}");
    let mut admitted = idle.remove(0);
    admitted.write_all(&alice_startup()).await.unwrap();
    assert_eq!(auth_code(&read_message(&mut admitted).await), 10);
    drop(admitted);
    // Once the flood goes away, normal clients get in again (slots free as tasks end).
    drop(idle);
    let deadline = tokio::time::Instant::now() + WAIT;
    let conninfo = proxy.conninfo("alice", ALICE_PASSWORD, "sslmode=disable");
    let client = loop {
        match proxy.try_connect(&conninfo).await {
            Ok(client) => break client,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "never recovered: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(
        client
            .query_one("SELECT 1", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );
}

// ---------------------------------------------------------------------------------------------
// GSSENCRequest, protocol negotiation, replication
// ---------------------------------------------------------------------------------------------

fn harness_tls_connector() -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in pgwarden::net::tls::load_certs(&common::harness().certs.ca_cert).unwrap() {
        roots.add(cert).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[tokio::test]
async fn gssenc_request_is_declined_and_the_connection_continues() {
    let _shared = EXCLUSIVE.read().await;
    let proxy = Proxy::default().await;

    // GSSENCRequest -> 'N', then a plaintext startup on the same socket.
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(&encryption_request(GSSENC_REQUEST))
        .await
        .unwrap();
    assert_eq!(
        tokio::time::timeout(WAIT, tcp.read_u8())
            .await
            .unwrap()
            .unwrap(),
        b'N'
    );
    alice_login(&mut tcp).await;

    // GSSENCRequest -> 'N', then SSLRequest -> 'S', TLS, and a login inside TLS.
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(&encryption_request(GSSENC_REQUEST))
        .await
        .unwrap();
    assert_eq!(
        tokio::time::timeout(WAIT, tcp.read_u8())
            .await
            .unwrap()
            .unwrap(),
        b'N'
    );
    tcp.write_all(&encryption_request(SSL_REQUEST))
        .await
        .unwrap();
    assert_eq!(
        tokio::time::timeout(WAIT, tcp.read_u8())
            .await
            .unwrap()
            .unwrap(),
        b'S'
    );
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = harness_tls_connector()
        .connect(name, tcp)
        .await
        .expect("TLS after GSSENC + SSL");
    alice_login(&mut tls).await;

    // A third encryption request is a protocol violation, not an endless loop.
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    for _ in 0..2 {
        tcp.write_all(&encryption_request(GSSENC_REQUEST))
            .await
            .unwrap();
        assert_eq!(
            tokio::time::timeout(WAIT, tcp.read_u8())
                .await
                .unwrap()
                .unwrap(),
            b'N'
        );
    }
    tcp.write_all(&encryption_request(GSSENC_REQUEST))
        .await
        .unwrap();
    read_until_close(&mut tcp, WAIT).await.assert_fatal("08P01");
    assert_healthy(&proxy).await;
}

#[tokio::test]
async fn protocol_32_and_pq_options_get_negotiate_protocol_version_first() {
    let _shared = EXCLUSIVE.read().await;
    let proxy = Proxy::default().await;
    let cases: [(i32, &[&str]); 3] = [
        (PROTOCOL_3_2, &["_pq_.test_option"]),
        (PROTOCOL_3_0, &["_pq_.test_option", "_pq_.other"]),
        (PROTOCOL_3_2, &[]),
    ];
    for (version, options) in cases {
        let mut params: Vec<(&str, &[u8])> = vec![("user", b"alice"), ("database", b"app")];
        params.extend(options.iter().map(|o| (*o, &b"on"[..])));
        let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
        tcp.write_all(&startup_packet(version, &params))
            .await
            .unwrap();
        let (tag, body) = read_message(&mut tcp).await;
        assert_eq!(
            tag, b'v',
            "NegotiateProtocolVersion expected first, got {tag:?} {body:?}"
        );
        let newest_minor = i32::from_be_bytes(body[..4].try_into().unwrap());
        let count = i32::from_be_bytes(body[4..8].try_into().unwrap());
        assert_eq!(newest_minor, 0);
        assert_eq!(count, i32::try_from(options.len()).unwrap());
        let names: Vec<&[u8]> = body[8..]
            .split(|&b| b == 0)
            .filter(|n| !n.is_empty())
            .collect();
        let expected: Vec<&[u8]> = options.iter().map(|o| o.as_bytes()).collect();
        assert_eq!(names, expected);
        // Then the authentication request, and the login completes on protocol 3.0.
        finish_login(&mut tcp, ALICE_PASSWORD).await;
    }
    // A plain 3.0 startup gets no NegotiateProtocolVersion.
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(&alice_startup()).await.unwrap();
    assert_eq!(auth_code(&read_message(&mut tcp).await), 10);
    assert_healthy(&proxy).await;
}

#[tokio::test]
async fn replication_connections_are_refused_with_0a000() {
    let _shared = EXCLUSIVE.read().await;
    let proxy = Proxy::default().await;
    for value in [&b"database"[..], b"true", b"on", b"1"] {
        let packet = startup_packet(
            PROTOCOL_3_0,
            &[
                ("user", b"alice"),
                ("database", b"app"),
                ("replication", value),
            ],
        );
        let fields = send_raw(&proxy, &packet).await.assert_fatal("0A000");
        assert!(fields[&b'M'].contains("replication"), "{fields:?}");
    }
    // replication=false is a normal connection.
    let packet = startup_packet(
        PROTOCOL_3_0,
        &[
            ("user", b"alice"),
            ("database", b"app"),
            ("replication", b"false"),
        ],
    );
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(&packet).await.unwrap();
    assert_eq!(auth_code(&read_message(&mut tcp).await), 10);
    assert_healthy(&proxy).await;
}

// ---------------------------------------------------------------------------------------------
// Startup parameters that change what was authorized
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_database_authorized_is_the_database_connected_to() {
    let _shared = EXCLUSIVE.read().await;
    // PostgreSQL defaults a missing or empty `database` to the user name. pgwarden authorizes
    // that default for the *client's* user name, but logs in upstream as the granted role, so
    // the server's default would be the *role's* name: a different database.
    //
    // Setup: a database named like the upstream role (where that default lands), and a local
    // user "app" (group dev: database "app" as app_rw), whose name is an allowed database.
    let admin = common::direct("postgres").await;
    if let Err(e) = admin.batch_execute("CREATE DATABASE app_rw").await {
        assert_eq!(
            common::sqlstate(&e).as_deref(),
            Some("42P04"),
            "create database: {e}"
        );
    }
    let verifier = pgwarden::auth::scram::hash_password(b"app-user-pw");
    let proxy = Proxy::start(ProxyOptions {
        extra: format!(
            "[[auth.local]]\nname = \"app\"\nscram = \"{verifier}\"\ngroups = [\"dev\"]\n"
        ),
        ..Default::default()
    })
    .await;
    let base = format!(
        "host=127.0.0.1 port={} user=app password=app-user-pw sslmode=disable",
        proxy.port()
    );
    let mut landed = Vec::new();
    for (what, conninfo) in [
        ("explicit dbname=app", format!("{base} dbname=app")),
        ("no dbname", base.clone()),
        ("empty dbname", format!("{base} dbname=''")),
    ] {
        let result = proxy.try_connect(&conninfo).await;
        let client = result.unwrap_or_else(|e| panic!("{what}: login failed: {e}"));
        let row = client
            .query_one("SELECT current_database()::text", &[])
            .await
            .unwrap();
        landed.push((what, row.get::<_, String>(0)));
    }
    assert!(
        landed.iter().all(|(_, db)| db == "app"),
        "pgwarden authorized database \"app\" each time, but the sessions landed in: {landed:?}"
    );
}

/// A client that pipelines a million Syncs (five bytes each) without reading: pgwarden stops
/// reading it while thousands are unanswered, instead of keeping a record of every one the
/// socket buffers can hold; then every Sync is answered, in order, and the session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_flood_is_answered_without_pgwarden_holding_it() {
    const SYNCS: usize = 1_000_000;
    let _alone = EXCLUSIVE.write().await;
    let proxy = Proxy::default().await;
    let tcp = raw_session(&proxy).await;
    let (mut reader, mut writer) = tcp.into_split();
    let before = rss_bytes();
    let flood = tokio::spawn(async move {
        let syncs = frame(b'S', b"").repeat(SYNCS);
        writer.write_all(&syncs).await.unwrap();
        writer
    });
    assert_grows_less_than(before, 100 << 20).await;
    let mut reader = tokio::io::BufReader::with_capacity(1 << 16, &mut reader);
    for answered in 0..SYNCS {
        let (tag, body) = read_message(&mut reader).await;
        assert_eq!((tag, &body[..]), (b'Z', &b"I"[..]), "answer {answered}");
    }
    let mut writer = flood.await.unwrap();
    writer
        .write_all(&frame(b'Q', b"SELECT 'still here'\0"))
        .await
        .unwrap();
    loop {
        let (tag, body) = read_message(&mut reader).await;
        match tag {
            b'D' => assert!(body.ends_with(b"still here")),
            b'Z' => break,
            b'E' => panic!("{:?}", error_fields(&body)),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_cannot_make_pgwarden_buffer_the_result() {
    let _alone = EXCLUSIVE.write().await;
    let proxy = Proxy::default().await;
    let mut tcp = raw_session(&proxy).await;
    let before = rss_bytes();
    // ~300 MB of result rows; the client does not read for a while.
    tcp.write_all(&frame(
        b'Q',
        b"SELECT repeat('x', 1000000) FROM generate_series(1, 300)\0",
    ))
    .await
    .unwrap();
    assert_grows_less_than(before, 50 << 20).await;
    // Then it reads everything: all 300 rows arrive intact.
    let mut rows = 0;
    loop {
        let (tag, body) = read_message(&mut tcp).await;
        match tag {
            b'D' => {
                assert_eq!(body.len(), 2 + 4 + 1_000_000);
                rows += 1;
            }
            b'E' => panic!("{:?}", error_fields(&body)),
            b'Z' => break,
            _ => {}
        }
    }
    assert_eq!(rows, 300);
    assert_healthy(&proxy).await;
}

#[tokio::test]
async fn a_query_pipelined_behind_the_final_scram_message_is_answered() {
    let _shared = EXCLUSIVE.read().await;
    // A client may send its first Query right behind SASLResponse without waiting for
    // AuthenticationOk (PostgreSQL reads it from its buffer once the session is ready).
    let proxy = Proxy::default().await;
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(&alice_startup()).await.unwrap();
    let sasl = read_message(&mut tcp).await;
    assert_eq!(auth_code(&sasl), 10);
    let mut client = ScramSha256::new(ALICE_PASSWORD.as_bytes(), ChannelBinding::unsupported());
    let mut out = BytesMut::new();
    frontend::sasl_initial_response(SCRAM_SHA_256, client.message(), &mut out).unwrap();
    tcp.write_all(&out).await.unwrap();
    let cont = read_message(&mut tcp).await;
    assert_eq!(auth_code(&cont), 11);
    client.update(&cont.1[4..]).unwrap();
    out.clear();
    frontend::sasl_response(client.message(), &mut out).unwrap();
    // The final SCRAM message and a Query in one write.
    out.extend_from_slice(&frame(b'Q', b"SELECT 'pipelined'\0"));
    tcp.write_all(&out).await.unwrap();
    // The login completes...
    loop {
        let (tag, body) = read_message(&mut tcp).await;
        match tag {
            b'Z' => break,
            b'E' => panic!("login failed: {:?}", error_fields(&body)),
            _ => {}
        }
    }
    // ...and the pipelined query is answered without the client sending anything more.
    let mut row = None;
    let answered = tokio::time::timeout(WAIT, async {
        loop {
            let (tag, body) = read_message_untimed(&mut tcp).await;
            match tag {
                b'D' => row = Some(body),
                b'E' => panic!("{:?}", error_fields(&body)),
                b'Z' => break,
                _ => {}
            }
        }
    })
    .await;
    assert!(
        answered.is_ok(),
        "the Query sent right behind the final SCRAM message got no answer within {WAIT:?}: \
         it sits in pgwarden's buffer until the client sends more bytes"
    );
    assert!(row.expect("no row").ends_with(b"pipelined"));
}

/// A server on the other end that logs pgwarden in without a password (trust), answers the
/// first Query properly, then sends `stray` as if it answered something more.
async fn upstream_that_answers_more(stray: Vec<u8>) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let len = conn.read_i32().await.unwrap();
        let mut startup = vec![0; usize::try_from(len).unwrap() - 4];
        conn.read_exact(&mut startup).await.unwrap();
        let mut login = frame(b'R', &0i32.to_be_bytes());
        for (name, value) in [
            ("server_version", "15.0"),
            ("server_encoding", "UTF8"),
            ("client_encoding", "UTF8"),
            ("standard_conforming_strings", "on"),
            ("integer_datetimes", "on"),
        ] {
            login.extend(frame(b'S', format!("{name}\0{value}\0").as_bytes()));
        }
        login.extend(frame(b'K', &[0, 0, 0, 7, 0, 0, 0, 9]));
        login.extend(frame(b'Z', b"I"));
        conn.write_all(&login).await.unwrap();
        // pgwarden's own query of the session's settings at login gets an error (pgwarden
        // then does not know them, and carries on); then the client's.
        let (tag, _) = read_message_untimed(&mut conn).await;
        if tag != b'Q' {
            return;
        }
        let mut refused = frame(b'E', b"SERROR\0C42501\0Mnot here\0\0");
        refused.extend(frame(b'Z', b"I"));
        conn.write_all(&refused).await.unwrap();
        loop {
            let (tag, _) = read_message_untimed(&mut conn).await;
            if tag != b'Q' {
                return;
            }
            // One text column "v", one row "fine", then the stray message.
            let mut column = b"v\0".to_vec();
            column.extend(0i32.to_be_bytes()); // table OID
            column.extend(0i16.to_be_bytes()); // attribute number
            column.extend(25i32.to_be_bytes()); // type: text
            column.extend((-1i16).to_be_bytes());
            column.extend((-1i32).to_be_bytes());
            column.extend(0i16.to_be_bytes()); // text format
            let mut answer = frame(b'T', &[&1i16.to_be_bytes()[..], &column].concat());
            answer.extend(frame(
                b'D',
                &[&1i16.to_be_bytes()[..], &4i32.to_be_bytes(), b"fine"].concat(),
            ));
            answer.extend(frame(b'C', b"SELECT 1\0"));
            answer.extend(frame(b'Z', b"I"));
            answer.extend(&stray);
            if conn.write_all(&answer).await.is_err() {
                return;
            }
        }
    });
    let upstream = format!("host = \"127.0.0.1\"\nport = {port}\nsslmode = \"disable\"\n");
    (upstream, task)
}

#[tokio::test]
async fn an_upstream_answer_to_nothing_sent_ends_the_session_unseen() {
    let _shared = EXCLUSIVE.read().await;
    const SECRET: &[u8] = b"jane.secret@example.com";
    let stray_row = frame(
        b'D',
        &[
            &1i16.to_be_bytes()[..],
            &(SECRET.len() as i32).to_be_bytes(),
            SECRET,
        ]
        .concat(),
    );
    for (what, stray) in [
        ("a DataRow after ReadyForQuery", stray_row),
        ("a second ReadyForQuery", frame(b'Z', b"I")),
        ("an unknown message type", frame(b'?', b"")),
    ] {
        let (upstream, server) = upstream_that_answers_more(stray).await;
        let proxy = Proxy::start(ProxyOptions {
            upstream: Some(upstream),
            ..Default::default()
        })
        .await;
        let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
        alice_login(&mut tcp).await;
        tcp.write_all(&frame(b'Q', b"SELECT 'fine'\0"))
            .await
            .unwrap();
        let outcome = read_until_close(&mut tcp, WAIT).await;
        assert!(
            !outcome.bytes.windows(SECRET.len()).any(|w| w == SECRET),
            "{what}: the stray row reached the client"
        );
        let messages = outcome.messages();
        let tags: Vec<u8> = messages.iter().map(|(tag, _)| *tag).collect();
        // The real answer may or may not come first (it is dropped with the stray message
        // when both arrive in one read); the session ends either way.
        assert!(
            tags.split_last()
                .is_some_and(|(last, answer)| *last == b'E' && b"TDCZ".starts_with(answer)),
            "{what}: {:?}",
            String::from_utf8_lossy(&tags)
        );
        outcome.assert_fatal("08006");
        server.abort();
        proxy.shutdown(Duration::from_secs(1)).await;
    }
}
