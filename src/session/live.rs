//! The sessions running now, for the admin API (`GET /sessions`): who, as which role, from
//! where, since when; and a way to end one ([`LiveSessions::end`]), as pgwarden's own
//! shutdown would end it.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use serde::Serialize;

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
    /// [`crate::auth::Identity::owner`]: people may see and end their own sessions.
    #[serde(skip)]
    pub owner: String,
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
