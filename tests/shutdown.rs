//! Graceful shutdown: stop accepting, let running statements finish, then end sessions with
//! 57P01 admin_shutdown.

mod common;

use std::time::{Duration, Instant};

use common::{sqlstate, Proxy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_statements_finish_then_sessions_end_with_admin_shutdown() {
    let proxy = Proxy::default().await;
    let addr = proxy.addr;
    let busy = proxy.alice().await;
    let idle = proxy.alice().await;
    let running = tokio::spawn(async move {
        let row = busy
            .query_one("SELECT pg_sleep(1)::text, 'done'", &[])
            .await;
        (row.map(|r| r.get::<_, String>(1)), busy)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let shutdown = tokio::spawn(proxy.shutdown(Duration::from_secs(10)));

    // The running statement completes normally.
    let (result, busy) = running.await.unwrap();
    assert_eq!(result.unwrap(), "done");
    // Then that session is ended, as is the idle one.
    let err = busy.simple_query("SELECT 1").await.unwrap_err();
    assert!(
        sqlstate(&err).as_deref() == Some("57P01") || err.is_closed(),
        "{err}"
    );
    let err = idle.simple_query("SELECT 1").await.unwrap_err();
    assert!(
        sqlstate(&err).as_deref() == Some("57P01") || err.is_closed(),
        "{err}"
    );
    shutdown.await.unwrap();
    // It did not wait for the whole grace period: sessions were idle after ~1 s.
    assert!(started.elapsed() < Duration::from_secs(8));
    // No longer accepting.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_is_told_why_it_is_disconnected() {
    let proxy = Proxy::default().await;
    let (client, mut connection) = tokio_postgres::connect(
        &proxy.conninfo("alice", common::ALICE_PASSWORD, "sslmode=disable"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    let shutdown = tokio::spawn(proxy.shutdown(Duration::from_secs(5)));
    // The connection task reports the server's FATAL as an error.
    let err = futures_util::future::poll_fn(|cx| connection.poll_message(cx))
        .await
        .expect("a message before the close")
        .expect_err("an error");
    assert_eq!(sqlstate(&err).as_deref(), Some("57P01"), "{err}");
    let message = err
        .as_db_error()
        .map(|e| e.message().to_owned())
        .unwrap_or_default();
    assert!(message.contains("pgwarden is shutting down"), "{message}");
    drop(client);
    shutdown.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_transaction_is_ended_when_the_grace_period_runs_out() {
    let proxy = Proxy::default().await;
    let client = proxy.alice().await;
    client
        .batch_execute("BEGIN; CREATE TEMP TABLE pending (v int)")
        .await
        .unwrap();
    let started = Instant::now();
    proxy.shutdown(Duration::from_millis(500)).await;
    assert!(started.elapsed() >= Duration::from_millis(500));
    let err = client.simple_query("SELECT 1").await.unwrap_err();
    assert!(
        sqlstate(&err).as_deref() == Some("57P01") || err.is_closed(),
        "{err}"
    );
}

/// A statement still running when the grace period runs out is cancelled on the server, not
/// left running there with nobody waiting for it (the server notices a closed connection
/// only when it next writes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_still_running_at_the_end_of_the_grace_period_is_cancelled() {
    let proxy = Proxy::default().await;
    let client = proxy.alice().await;
    let running = tokio::spawn(async move {
        let _ = client
            .simple_query("SELECT pg_sleep(60), 'left-running-at-shutdown'")
            .await;
    });
    let direct = common::direct("app").await;
    let running_upstream = || async {
        direct
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' \
                 AND query LIKE '%left-running-at-shutdown%' AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while running_upstream().await == 0 {
        assert!(Instant::now() < deadline, "the statement never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxy.shutdown(Duration::from_millis(300)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while running_upstream().await > 0 {
        assert!(
            Instant::now() < deadline,
            "the statement is still running on the server after pgwarden ended its session"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.await.unwrap();
}
