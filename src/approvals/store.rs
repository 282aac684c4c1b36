//! Where approval state lives. One pgwarden keeps it in memory ([`MemoryStore`]); several
//! instances behind a load balancer will need a shared store implementing the same trait.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use tokio::sync::watch;

use super::{ApprovalError, Grant, GrantScope, Request, Status};

/// Finished requests kept for listing, at most.
const KEEP_FINISHED: usize = 1000;

pub trait ApprovalStore: Send + Sync + std::fmt::Debug {
    /// A fresh request id, unused in this store.
    fn new_id(&self) -> String;
    /// Store a new request; the receiver follows its status.
    fn insert(&self, request: Request) -> watch::Receiver<Status>;
    fn get(&self, id: &str) -> Option<Request>;
    /// Pending requests (oldest first), then, unless `pending_only`, finished ones (newest
    /// first).
    fn list(&self, pending_only: bool) -> Vec<Request>;
    /// Change a request under the store's lock; waiters see the new status.
    fn update(
        &self,
        id: &str,
        change: &mut dyn FnMut(&mut Request) -> Result<(), ApprovalError>,
    ) -> Result<Request, ApprovalError>;
    fn add_grant(&self, grant: Grant);
    /// An unexpired grant covering exactly `scope`.
    fn find_grant(&self, scope: &GrantScope) -> Option<Grant>;
}

#[derive(Debug)]
struct Entry {
    request: Request,
    status: watch::Sender<Status>,
    /// Insertion order, for listing.
    order: u64,
}

#[derive(Debug, Default)]
struct Inner {
    requests: HashMap<String, Entry>,
    grants: Vec<Grant>,
    next_order: u64,
}

/// Approval state in this process.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

impl MemoryStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl ApprovalStore for MemoryStore {
    fn new_id(&self) -> String {
        // Letters people do not confuse, then digits: `KXPR-4821`.
        const LETTERS: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";
        let inner = self.lock();
        loop {
            let letters: String = (0..4)
                .map(|_| char::from(LETTERS[rand::random_range(0..LETTERS.len())]))
                .collect();
            let id = format!("{letters}-{:04}", rand::random_range(0..10_000u32));
            if !inner.requests.contains_key(&id) {
                return id;
            }
        }
    }

    fn insert(&self, request: Request) -> watch::Receiver<Status> {
        let mut inner = self.lock();
        let (status, receiver) = watch::channel(request.status.clone());
        inner.next_order += 1;
        let order = inner.next_order;
        inner.requests.insert(
            request.id.clone(),
            Entry {
                request,
                status,
                order,
            },
        );
        // Forget the oldest finished requests beyond the limit.
        let finished = inner
            .requests
            .values()
            .filter(|e| e.request.status != Status::Pending)
            .count();
        if finished > KEEP_FINISHED {
            let mut old: Vec<(u64, String)> = inner
                .requests
                .values()
                .filter(|e| e.request.status != Status::Pending)
                .map(|e| (e.order, e.request.id.clone()))
                .collect();
            old.sort();
            for (_, id) in old.into_iter().take(finished - KEEP_FINISHED) {
                inner.requests.remove(&id);
            }
        }
        receiver
    }

    fn get(&self, id: &str) -> Option<Request> {
        self.lock().requests.get(id).map(|e| e.request.clone())
    }

    fn list(&self, pending_only: bool) -> Vec<Request> {
        let inner = self.lock();
        let mut entries: Vec<&Entry> = inner
            .requests
            .values()
            .filter(|e| !pending_only || e.request.status == Status::Pending)
            .collect();
        entries.sort_by_key(|e| {
            let pending = e.request.status == Status::Pending;
            // Pending oldest first, then finished newest first.
            (
                !pending,
                if pending {
                    e.order as i64
                } else {
                    -(e.order as i64)
                },
            )
        });
        entries.into_iter().map(|e| e.request.clone()).collect()
    }

    fn update(
        &self,
        id: &str,
        change: &mut dyn FnMut(&mut Request) -> Result<(), ApprovalError>,
    ) -> Result<Request, ApprovalError> {
        let mut inner = self.lock();
        let entry = inner
            .requests
            .get_mut(id)
            .ok_or_else(|| ApprovalError::NotFound(id.to_owned()))?;
        let mut request = entry.request.clone();
        change(&mut request)?;
        entry.request = request.clone();
        entry.status.send_replace(request.status.clone());
        Ok(request)
    }

    fn add_grant(&self, grant: Grant) {
        let mut inner = self.lock();
        let now = Instant::now();
        inner.grants.retain(|g| g.until.is_some_and(|u| u > now));
        inner.grants.push(grant);
    }

    fn find_grant(&self, scope: &GrantScope) -> Option<Grant> {
        let now = Instant::now();
        self.lock()
            .grants
            .iter()
            .find(|g| g.scope == *scope && g.until.is_some_and(|u| u > now))
            .cloned()
    }
}
