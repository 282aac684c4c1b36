//! The client listener: accepts connections, enforces the connection limit, and runs each
//! session in its own task under one tracing span.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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

/// Counts sessions; a [`SessionSlot`] lives exactly as long as its session task, including
/// early exits, so the count can never drift. The limit itself is read from the current
/// config snapshot at each accept, so a reload changes it.
#[derive(Debug, Default)]
struct SessionCount(AtomicUsize);

struct SessionSlot(Arc<SessionCount>);

impl SessionCount {
    fn try_take(self: &Arc<Self>, limit: usize) -> Option<SessionSlot> {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| SessionSlot(self.clone()))
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Which listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    /// `server.listen`.
    Main,
    /// `server.oauthbearer_listen`: people signing in with a token always get OAUTHBEARER.
    OauthBearer,
}

/// Accept on `main` (and `oauthbearer`, if bound) until the graceful shutdown signal;
/// sessions are spawned on `tracker`. Both listeners share the connection limit and the
/// session ids.
pub async fn accept_loop(
    main: TcpListener,
    oauthbearer: Option<TcpListener>,
    ctx: Arc<Context>,
    tracker: TaskTracker,
) {
    let sessions = Arc::new(SessionCount::default());
    let overflow = Arc::new(Semaphore::new(OVERFLOW_SESSIONS));
    let next_id = AtomicU64::new(ctx.first_session);
    let mut phase = ctx.shutdown.watch();
    loop {
        if ctx.shutdown.phase() != Phase::Running {
            break;
        }
        let (accepted, door) = tokio::select! {
            _ = phase.changed() => break,
            accepted = main.accept() => (accepted, Door::Main),
            accepted = async {
                match &oauthbearer {
                    Some(listener) => listener.accept().await,
                    None => std::future::pending().await,
                }
            } => (accepted, Door::OauthBearer),
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
        ctx.metrics.connections.inc();
        let max_connections = ctx.snapshot.load().config.server.max_connections;
        // Held by the session task until it ends: a session slot, or an overflow permit.
        let permit = match sessions.try_take(max_connections) {
            Some(slot) => (Some(slot), None),
            None => match overflow.clone().try_acquire_owned() {
                Ok(permit) => (None, Some(permit)),
                Err(_) => {
                    ctx.metrics.connections_over_limit.inc();
                    warn!(peer = %peer, "connection limit and overflow reached; dropping connection");
                    continue;
                }
            },
        };
        let admitted = permit.0.is_some();
        if !admitted {
            ctx.metrics.connections_over_limit.inc();
            warn!(peer = %peer, limit = max_connections, "connection limit reached");
        }
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        let span = info_span!(
            "conn",
            id,
            peer = %peer,
            tls = tracing::field::Empty,
            user = tracing::field::Empty,
            identity = tracing::field::Empty,
            db = tracing::field::Empty,
            role = tracing::field::Empty,
        );
        let ctx = ctx.clone();
        tracker.spawn(
            async move {
                session::serve(ctx, id, tcp, (peer, door), admitted).await;
                drop(permit);
            }
            .instrument(span),
        );
    }
}
