//! The client listener: accepts connections, enforces the connection limit, and runs each
//! session in its own task under one tracing span.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tracing::{info_span, warn, Instrument};

use crate::session::shutdown::Phase;
use crate::session::{self, Context};

/// Connections over the limit still get a FATAL "too many clients", but only this many at a
/// time: beyond it they are dropped at once, so a flood cannot exhaust memory.
const OVERFLOW_SESSIONS: usize = 64;

/// Accept until the graceful shutdown signal; sessions are spawned on `tracker`.
pub async fn accept_loop(listener: TcpListener, ctx: Arc<Context>, tracker: TaskTracker) {
    let max_connections = ctx.snapshot.load().config.server.max_connections;
    // Why a semaphore: a permit lives exactly as long as its session task, including early
    // exits, so the count can never drift.
    let sessions = Arc::new(Semaphore::new(max_connections));
    let overflow = Arc::new(Semaphore::new(OVERFLOW_SESSIONS));
    let next_id = AtomicU64::new(1);
    let mut phase = ctx.shutdown.watch();
    loop {
        if ctx.shutdown.phase() != Phase::Running {
            break;
        }
        let accepted = tokio::select! {
            _ = phase.changed() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let (permit, admitted) = match sessions.clone().try_acquire_owned() {
            Ok(permit) => (permit, true),
            Err(_) => match overflow.clone().try_acquire_owned() {
                Ok(permit) => (permit, false),
                Err(_) => {
                    warn!(peer = %peer, "connection limit and overflow reached; dropping connection");
                    continue;
                }
            },
        };
        if !admitted {
            warn!(peer = %peer, limit = max_connections, "connection limit reached");
        }
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        let span = info_span!(
            "conn",
            id,
            peer = %peer,
            tls = tracing::field::Empty,
            user = tracing::field::Empty,
            db = tracing::field::Empty,
            role = tracing::field::Empty,
        );
        let ctx = ctx.clone();
        tracker.spawn(
            async move {
                session::serve(ctx, tcp, peer, admitted).await;
                drop(permit);
            }
            .instrument(span),
        );
    }
}
