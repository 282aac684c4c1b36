//! Shutdown phases broadcast to every session and the listener.
//!
//! Why not `CancellationToken`: the relay loop polls its shutdown future on every wake-up,
//! and polling a pending `WaitForCancellationFuture` takes a mutex each time — about 2 000
//! instructions per `pgbench -S` transaction, measured with callgrind. A [`PhaseWatch`] costs
//! one atomic load while nothing changes; the lock is taken only to register a new waker
//! (once per session, normally) and when the phase changes.

use std::collections::HashMap;
use std::future::poll_fn;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// Where the process is in its shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Running = 0,
    /// Stop accepting; sessions end once idle.
    Draining = 1,
    /// End every session now.
    Terminating = 2,
}

impl Phase {
    fn from_u8(value: u8) -> Self {
        match value {
            0 => Self::Running,
            1 => Self::Draining,
            _ => Self::Terminating,
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    phase: AtomicU8,
    next_id: AtomicU64,
    wakers: Mutex<HashMap<u64, Waker>>,
}

impl Inner {
    fn wakers(&self) -> MutexGuard<'_, HashMap<u64, Waker>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.wakers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The sender side: owned by the app, cloned into the session context.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

impl Shutdown {
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.inner.phase.load(Ordering::Acquire))
    }

    /// Move forward to `phase` (never back) and wake every watcher.
    pub fn advance(&self, phase: Phase) {
        let previous = self.inner.phase.fetch_max(phase as u8, Ordering::AcqRel);
        if previous < phase as u8 {
            for waker in self.inner.wakers().values() {
                waker.wake_by_ref();
            }
        }
    }

    pub fn watch(&self) -> PhaseWatch {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        PhaseWatch {
            inner: self.inner.clone(),
            id,
            seen: self.phase(),
            waker: None,
        }
    }
}

/// Notices phase changes. Each change is reported once.
#[derive(Debug)]
pub struct PhaseWatch {
    inner: Arc<Inner>,
    id: u64,
    seen: Phase,
    waker: Option<Waker>,
}

impl PhaseWatch {
    /// Ready with the new phase when it differs from the last one reported.
    pub fn poll_changed(&mut self, cx: &mut Context<'_>) -> Poll<Phase> {
        let current = Phase::from_u8(self.inner.phase.load(Ordering::Acquire));
        if current != self.seen {
            self.seen = current;
            return Poll::Ready(current);
        }
        if !self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            self.inner.wakers().insert(self.id, cx.waker().clone());
            self.waker = Some(cx.waker().clone());
            // The phase may have moved between the load and the registration.
            let current = Phase::from_u8(self.inner.phase.load(Ordering::Acquire));
            if current != self.seen {
                self.seen = current;
                return Poll::Ready(current);
            }
        }
        Poll::Pending
    }

    /// Wait for the next phase change.
    ///
    /// # Cancel safety
    /// Cancel-safe: a change is only consumed when it is returned.
    pub async fn changed(&mut self) -> Phase {
        poll_fn(|cx| self.poll_changed(cx)).await
    }
}

impl Drop for PhaseWatch {
    fn drop(&mut self) {
        if self.waker.is_some() {
            self.inner.wakers().remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn watchers_see_each_change_once_and_in_order() {
        let shutdown = Shutdown::default();
        let mut watch = shutdown.watch();
        let waiter = tokio::spawn(async move {
            let first = watch.changed().await;
            let second = watch.changed().await;
            (first, second)
        });
        tokio::task::yield_now().await;
        shutdown.advance(Phase::Draining);
        tokio::task::yield_now().await;
        shutdown.advance(Phase::Running); // never goes back
        shutdown.advance(Phase::Terminating);
        let (first, second) = waiter.await.unwrap();
        assert_eq!((first, second), (Phase::Draining, Phase::Terminating));
        assert_eq!(shutdown.phase(), Phase::Terminating);
        assert!(shutdown.inner.wakers().is_empty());
    }
}
