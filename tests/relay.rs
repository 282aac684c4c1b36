//! The relay through tokio-postgres: simple and extended protocol, pipelining, transactions,
//! COPY, LISTEN/NOTIFY, errors mid-pipeline, cancel, and upstream failures.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{direct, sqlstate, Proxy, ALICE_PASSWORD};
use futures_util::{SinkExt, StreamExt};

#[tokio::test]
async fn simple_query() {
    let proxy = Proxy::default().await;
    let client = proxy.alice().await;
    let rows = client
        .simple_query("SELECT 1 AS one, current_user AS who; SELECT 'two'")
        .await
        .unwrap();
    let values: Vec<String> = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .collect();
    assert_eq!(values, ["1", "two"]);
    // pgwarden logged in as the role granted by [[access]], not as the client's user.
    let row = client
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "app_rw");
}

#[tokio::test]
async fn extended_query_with_parameters_text_and_binary() {
    let proxy = Proxy::default().await;
    let client = proxy.alice().await;
    // tokio-postgres uses binary results and parameters.
    let row = client
        .query_one(
            "SELECT $1::int4 + 1, $2::text || '!', $3::float8, $4::bytea",
            &[&41i32, &"hi", &1.5f64, &vec![0u8, 255]],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    assert_eq!(row.get::<_, String>(1), "hi!");
    assert_eq!(row.get::<_, f64>(2), 1.5);
    assert_eq!(row.get::<_, Vec<u8>>(3), vec![0u8, 255]);
    // Text results through the simple protocol for the same values.
    let text = client.simple_query("SELECT 41 + 1").await.unwrap();
    let row = text.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    });
    assert_eq!(row.as_deref(), Some("42"));
    // A named prepared statement reused across calls.
    let stmt = client
        .prepare("SELECT name FROM items WHERE id = $1")
        .await
        .unwrap();
    for id in [1i32, 5, 10] {
        let row = client.query_one(&stmt, &[&id]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), format!("item {id}"));
    }
}

#[tokio::test]
async fn pipelined_queries_arrive_in_order() {
    let proxy = Proxy::default().await;
    let client = proxy.alice().await;
    let stmt = client.prepare("SELECT $1::int8 * 2").await.unwrap();
    // tokio-postgres pipelines concurrent queries on one connection.
    let futures = (0..200i64).map(|i| {
        let client = &client;
        let stmt = &stmt;
        async move {
            client
                .query_one(stmt, &[&i])
                .await
                .map(|r| r.get::<_, i64>(0))
        }
    });
    let results = futures_util::future::join_all(futures).await;
    for (i, result) in results.into_iter().enumerate() {
        assert_eq!(result.unwrap(), i as i64 * 2);
    }
}

#[tokio::test]
async fn a_server_error_mid_pipeline_is_followed_by_a_good_query() {
    let proxy = Proxy::default().await;
    let client = proxy.alice().await;
    let good = client.query_one("SELECT 1::int4", &[]);
    let bad = client.query_one("SELECT 1/0", &[]);
    let after = client.query_one("SELECT 2::int4", &[]);
    let (good, bad, after) = tokio::join!(good, bad, after);
    assert_eq!(good.unwrap().get::<_, i32>(0), 1);
    assert_eq!(sqlstate(&bad.unwrap_err()).as_deref(), Some("22012"));
    assert_eq!(after.unwrap().get::<_, i32>(0), 2);
    // And the session is still perfectly usable.
    assert_eq!(
        client
            .query_one("SELECT 3::int4", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        3
    );
}

#[tokio::test]
async fn transactions_commit_and_roll_back() {
    let proxy = Proxy::default().await;
    let mut client = proxy.alice().await;
    client
        .batch_execute("CREATE TEMP TABLE t (v int)")
        .await
        .unwrap();
    let tx = client.transaction().await.unwrap();
    tx.execute("INSERT INTO t VALUES (1)", &[]).await.unwrap();
    tx.rollback().await.unwrap();
    let tx = client.transaction().await.unwrap();
    tx.execute("INSERT INTO t VALUES (2)", &[]).await.unwrap();
    tx.commit().await.unwrap();
    let rows = client.query("SELECT v FROM t", &[]).await.unwrap();
    assert_eq!(
        rows.iter().map(|r| r.get::<_, i32>(0)).collect::<Vec<_>>(),
        vec![2]
    );
    // A failed transaction stays failed until rolled back.
    client.batch_execute("BEGIN").await.unwrap();
    assert!(client.batch_execute("SELECT 1/0").await.is_err());
    assert_eq!(
        sqlstate(&client.batch_execute("SELECT 1").await.unwrap_err()).as_deref(),
        Some("25P02")
    );
    client.batch_execute("ROLLBACK").await.unwrap();
    client.batch_execute("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn copy_round_trip_of_100_000_rows() {
    let proxy = Proxy::default().await;
    let client = proxy.alice().await;
    client
        .batch_execute("CREATE TEMP TABLE big (id int, label text)")
        .await
        .unwrap();
    let sink = client.copy_in("COPY big FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    let mut expected = Vec::new();
    let mut chunk = Vec::new();
    for i in 0..100_000 {
        let line = format!("{i}\tlabel-{i}\n");
        expected.extend_from_slice(line.as_bytes());
        chunk.extend_from_slice(line.as_bytes());
        if chunk.len() > 32 * 1024 {
            sink.send(Bytes::from(std::mem::take(&mut chunk)))
                .await
                .unwrap();
        }
    }
    sink.send(Bytes::from(chunk)).await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), 100_000);

    let stream = client
        .copy_out("COPY (SELECT * FROM big ORDER BY id) TO STDOUT")
        .await
        .unwrap();
    futures_util::pin_mut!(stream);
    let mut received = Vec::new();
    while let Some(chunk) = stream.next().await {
        received.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(received.len(), expected.len());
    assert!(
        received == expected,
        "COPY TO STDOUT returned different bytes than COPY FROM STDIN took"
    );
}

#[tokio::test]
async fn listen_notify_is_delivered() {
    let proxy = Proxy::default().await;
    let conninfo = proxy.conninfo("alice", ALICE_PASSWORD, "sslmode=disable");
    let (listener, mut connection) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let _ = tx.send((n.channel().to_owned(), n.payload().to_owned()));
            }
        }
    });
    listener.batch_execute("LISTEN jobs").await.unwrap();
    let sender = proxy.alice().await;
    sender
        .batch_execute("NOTIFY jobs, 'hello through pgwarden'")
        .await
        .unwrap();
    let (channel, payload) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (channel.as_str(), payload.as_str()),
        ("jobs", "hello through pgwarden")
    );
}

#[tokio::test]
async fn cancel_of_a_long_query_is_effective_within_two_seconds() {
    let proxy = Proxy::default().await;
    let client = proxy.alice().await;
    let token = client.cancel_token();
    let started = Instant::now();
    let sleeper = tokio::spawn(async move { client.batch_execute("SELECT pg_sleep(30)").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let result = tokio::time::timeout(Duration::from_secs(5), sleeper)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sqlstate(&result.unwrap_err()).as_deref(), Some("57014"));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "cancel took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_cancel_with_an_unknown_key_does_nothing() {
    let proxy = Proxy::default().await;
    let client = proxy.alice().await;
    // Forge a cancel for a key pgwarden never issued, in the 3.0 wire format.
    let mut tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    use tokio::io::AsyncWriteExt;
    let mut packet = 16i32.to_be_bytes().to_vec();
    packet.extend_from_slice(&80_877_102i32.to_be_bytes());
    packet.extend_from_slice(&12345i32.to_be_bytes());
    packet.extend_from_slice(&[1, 2, 3, 4]);
    tcp.write_all(&packet).await.unwrap();
    drop(tcp);
    let row = client
        .query_one("SELECT pg_sleep(0.5)::text", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "");
}

#[tokio::test]
async fn startup_parameters_are_forwarded() {
    let proxy = Proxy::default().await;
    let conninfo = proxy.conninfo(
        "alice",
        ALICE_PASSWORD,
        "sslmode=disable application_name=orders-api options='-c work_mem=7MB -c search_path=public'",
    );
    let client = proxy.try_connect(&conninfo).await.unwrap();
    let row = client
        .query_one("SELECT current_setting('work_mem'), current_setting('application_name'), current_setting('search_path')", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "7MB");
    assert_eq!(row.get::<_, String>(1), "orders-api");
    assert_eq!(row.get::<_, String>(2), "public");
}

#[tokio::test]
async fn a_backend_killed_mid_session_fails_that_client_only() {
    let proxy = Proxy::default().await;
    let victim = proxy.alice().await;
    let bystander = proxy.alice().await;
    let pid: i32 = victim
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let admin = direct("postgres").await;
    let killed: bool = admin
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap()
        .get(0);
    assert!(killed);
    let err = victim.query_one("SELECT 1", &[]).await.unwrap_err();
    assert!(
        sqlstate(&err).as_deref() == Some("57P01") || err.is_closed(),
        "unexpected error for the killed session: {err}"
    );
    assert_eq!(
        bystander
            .query_one("SELECT 7::int4", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        7
    );
    // New sessions are fine too.
    let fresh = proxy.alice().await;
    assert_eq!(
        fresh
            .query_one("SELECT 8::int4", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        8
    );
}

#[tokio::test]
async fn upstream_down_at_connect_is_a_clear_fatal_and_the_proxy_survives() {
    // Point at a port where nothing listens.
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let proxy = Proxy::start(common::ProxyOptions {
        upstream: Some(format!(
            "host = \"127.0.0.1\"\nport = {closed_port}\nconnect_timeout = \"2s\"\n"
        )),
        ..Default::default()
    })
    .await;
    let err = proxy
        .try_connect(&proxy.conninfo("alice", ALICE_PASSWORD, "sslmode=disable"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("08001"), "{err}");
    let message = err.as_db_error().unwrap().message().to_owned();
    assert!(
        message.contains("database server is unavailable"),
        "{message}"
    );
    assert!(
        !message.contains(&closed_port.to_string()),
        "internal address leaked: {message}"
    );
    // Another proxy on the real upstream is unaffected, and this one still answers.
    let err = proxy
        .try_connect(&proxy.conninfo("alice", ALICE_PASSWORD, "sslmode=disable"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("08001"));
}
