//! The sessions running now, for the admin API (`GET /sessions`): who, as which role, from
//! where, since when; and a way to end one ([`LiveSessions::end`]), as pgwarden's own
//! shutdown would end it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use super::shutdown::Shutdown;
use crate::audit::event::{Actor, Endpoint};

/// One running session as the admin API shows it; the field names are those of its
/// `session.start` audit record.
#[derive(Debug, Clone, Serialize)]
pub struct LiveSession {
    pub session: u64,
    pub actor: Actor,
    pub src_endpoint: Endpoint,
    /// TLS version of the client connection, when there is one.
    pub tls: Option<String>,
    pub application_name: Option<String>,
    pub database: String,
    /// The upstream role pgwarden logged in as.
    pub role: String,
    /// Milliseconds since the Unix epoch, like the audit records' `time`.
    pub started: u64,
    /// `state` and `statements`, as of now.
    #[serde(flatten)]
    pub activity: Arc<Activity>,
    /// [`crate::auth::Identity::owner`]: people may see and end their own sessions.
    #[serde(skip)]
    pub owner: String,
}

/// What a session is doing, kept current by its relay loop (the listing is a snapshot, so
/// relaxed atomics do).
#[derive(Debug, Default)]
pub struct Activity {
    statements: AtomicU64,
    state: AtomicU8,
}

/// [`Activity`]'s `state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Idle = 0,
    /// Statements sent, not all answered yet.
    Active = 1,
    InTransaction = 2,
    InFailedTransaction = 3,
    /// A statement waits for approval.
    Held = 4,
}

impl Activity {
    pub fn set(&self, statements: u64, state: State) {
        self.statements.store(statements, Ordering::Relaxed);
        self.state.store(state as u8, Ordering::Relaxed);
    }
}

impl Serialize for Activity {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let state = match self.state.load(Ordering::Relaxed) {
            0 => "idle",
            1 => "active",
            2 => "idle in transaction",
            3 => "idle in failed transaction",
            _ => "waiting for approval",
        };
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry("state", state)?;
        map.serialize_entry("statements", &self.statements.load(Ordering::Relaxed))?;
        map.end()
    }
}

/// Every running session, by id.
#[derive(Debug, Default)]
pub struct LiveSessions {
    sessions: Mutex<BTreeMap<u64, Listed>>,
}

#[derive(Debug)]
struct Listed {
    session: LiveSession,
    /// The [`super::shutdown::PhaseWatch`] of the session's relay loop.
    watch: u64,
}

/// Keeps a session listed while it runs.
#[derive(Debug)]
pub struct Listing<'a> {
    sessions: &'a LiveSessions,
    id: u64,
}

impl Drop for Listing<'_> {
    fn drop(&mut self) {
        self.sessions.lock().remove(&self.id);
    }
}

impl LiveSessions {
    /// List `session`, whose relay loop watches with `watch`, until the guard is dropped.
    pub fn add(&self, session: LiveSession, watch: u64) -> Listing<'_> {
        let id = session.session;
        self.lock().insert(id, Listed { session, watch });
        Listing { sessions: self, id }
    }

    /// Every running session, oldest first.
    pub fn list(&self) -> Vec<LiveSession> {
        self.lock().values().map(|l| l.session.clone()).collect()
    }

    pub fn get(&self, id: u64) -> Option<LiveSession> {
        self.lock().get(&id).map(|l| l.session.clone())
    }

    /// Ask session `id` to end, telling its client `why`; false when it is not running.
    pub fn end(&self, id: u64, shutdown: &Shutdown, why: String) -> bool {
        // Under the lock: a session still listed still has its watch, which takes the end
        // (or, dropped right after, clears it).
        let sessions = self.lock();
        let Some(listed) = sessions.get(&id) else {
            return false;
        };
        shutdown.end(listed.watch, why);
        true
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, Listed>> {
        // Entries are inserted and removed whole: a panic elsewhere leaves the map usable.
        self.sessions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
