//! Shutdown phases broadcast to every session and the listener, and the end of one session
//! an administrator asked for ([`Shutdown::end`]).
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

/// What a [`PhaseWatch`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The whole process moved to this phase.
    Phase(Phase),
    /// An administrator ended this watch's session; why (who, and their reason).
    Ended(String),
}

#[derive(Debug, Default)]
struct Inner {
    phase: AtomicU8,
    next_id: AtomicU64,
    wakers: Mutex<HashMap<u64, Waker>>,
    /// Watches whose session an administrator ended, with why; each is reported once.
    ended: Mutex<HashMap<u64, String>>,
    /// Ends asked for so far: a watch looks into `ended` only when this moved, so the relay
    /// pays one atomic load per wake-up for it.
    ends: AtomicU64,
}

impl Inner {
    fn wakers(&self) -> MutexGuard<'_, HashMap<u64, Waker>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.wakers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn ended(&self) -> MutexGuard<'_, HashMap<u64, String>> {
        self.ended
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

    /// Tell the watch `watch` (see [`PhaseWatch::id`]) that its session is to end, and why.
    pub fn end(&self, watch: u64, why: String) {
        self.inner.ended().insert(watch, why);
        self.inner.ends.fetch_add(1, Ordering::AcqRel);
        if let Some(waker) = self.inner.wakers().get(&watch) {
            waker.wake_by_ref();
        }
    }

    pub fn watch(&self) -> PhaseWatch {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        PhaseWatch {
            inner: self.inner.clone(),
            id,
            seen: self.phase(),
            ends_seen: self.inner.ends.load(Ordering::Acquire),
            waker: None,
        }
    }
}

/// Notices phase changes, and the end of its own session. Each change is reported once.
#[derive(Debug)]
pub struct PhaseWatch {
    inner: Arc<Inner>,
    id: u64,
    seen: Phase,
    ends_seen: u64,
    waker: Option<Waker>,
}

impl PhaseWatch {
    /// What [`Shutdown::end`] names this watch by.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Ready with the new phase when it differs from the last one reported, or with why
    /// this watch's session was ended.
    pub fn poll_changed(&mut self, cx: &mut Context<'_>) -> Poll<Change> {
        if let Some(change) = self.check() {
            return Poll::Ready(change);
        }
        if !self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            self.inner.wakers().insert(self.id, cx.waker().clone());
            self.waker = Some(cx.waker().clone());
            // Something may have moved between the loads and the registration.
            if let Some(change) = self.check() {
                return Poll::Ready(change);
            }
        }
        Poll::Pending
    }

    fn check(&mut self) -> Option<Change> {
        let current = Phase::from_u8(self.inner.phase.load(Ordering::Acquire));
        if current != self.seen {
            self.seen = current;
            return Some(Change::Phase(current));
        }
        let ends = self.inner.ends.load(Ordering::Acquire);
        if ends != self.ends_seen {
            self.ends_seen = ends;
            return self.inner.ended().remove(&self.id).map(Change::Ended);
        }
        None
    }

    /// Wait for the next change.
    ///
    /// # Cancel safety
    /// Cancel-safe: a change is only consumed when it is returned.
    pub async fn changed(&mut self) -> Change {
        poll_fn(|cx| self.poll_changed(cx)).await
    }
}

impl Drop for PhaseWatch {
    fn drop(&mut self) {
        if self.waker.is_some() {
            self.inner.wakers().remove(&self.id);
        }
        // An end asked for as the session was ending anyway.
        if self.inner.ends.load(Ordering::Acquire) != self.ends_seen {
            self.inner.ended().remove(&self.id);
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
        assert_eq!(
            (first, second),
            (
                Change::Phase(Phase::Draining),
                Change::Phase(Phase::Terminating)
            )
        );
        assert_eq!(shutdown.phase(), Phase::Terminating);
        assert!(shutdown.inner.wakers().is_empty());
    }

    #[tokio::test]
    async fn an_end_reaches_only_the_watch_it_names() {
        let shutdown = Shutdown::default();
        let mut ended = shutdown.watch();
        let mut other = shutdown.watch();
        let id = ended.id();
        let waiter = tokio::spawn(async move { ended.changed().await });
        tokio::task::yield_now().await;
        shutdown.end(id, "ended by an administrator".into());
        assert_eq!(
            waiter.await.unwrap(),
            Change::Ended("ended by an administrator".into())
        );
        let nothing = std::future::poll_fn(|cx| Poll::Ready(other.poll_changed(cx))).await;
        assert!(nothing.is_pending());
        assert!(shutdown.inner.ended().is_empty());
    }
}
