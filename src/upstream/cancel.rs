//! Proxy-issued cancel keys (DESIGN §3.5).
//!
//! A client never sees the upstream BackendKeyData. It gets a random key from pgwarden, and a
//! CancelRequest carrying that key is forwarded, on a fresh upstream connection, with the
//! upstream key it maps to. A request with an unknown key does nothing and is logged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use rand::RngExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Endpoint, UpstreamError};

/// The key a client was given: process id and 4-byte secret (protocol 3.0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey {
    pub process_id: i32,
    pub secret: [u8; 4],
}

/// The upstream backend a client key stands for.
#[derive(Debug, Clone)]
struct Target {
    endpoint: Endpoint,
    process_id: i32,
    secret: Vec<u8>,
    /// Whose session it is ([`crate::auth::Identity::owner`]).
    owner: String,
    /// The session's id (as in its logs and audit records).
    session: u64,
    /// Counts the session's cancel requests, so a statement pgwarden itself is holding (for
    /// approval) can be cancelled too.
    requests: Arc<tokio::sync::watch::Sender<u64>>,
}

/// All live sessions' keys.
#[derive(Debug, Default, Clone)]
pub struct CancelMap {
    inner: Arc<Mutex<HashMap<ClientKey, Target>>>,
}

/// Removes its key from the map when the session ends.
#[derive(Debug)]
pub struct Registration {
    map: CancelMap,
    pub key: ClientKey,
    /// Changes with each CancelRequest for this session.
    pub requests: tokio::sync::watch::Receiver<u64>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut map) = self.map.inner.lock() {
            map.remove(&self.key);
        }
    }
}

impl CancelMap {
    /// Issue a fresh random key for an upstream backend of `owner`'s session `session`.
    pub fn register(
        &self,
        endpoint: Endpoint,
        process_id: i32,
        secret: Vec<u8>,
        (owner, session): (String, u64),
    ) -> Registration {
        let (requests, receiver) = tokio::sync::watch::channel(0);
        let target = Target {
            endpoint,
            process_id,
            secret,
            owner,
            session,
            requests: Arc::new(requests),
        };
        let mut rng = rand::rng();
        let mut map = self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        loop {
            // Positive process ids, like real ones, so clients that print them are not confused.
            let key = ClientKey {
                process_id: rng.random_range(1..i32::MAX),
                secret: rng.random(),
            };
            if let std::collections::hash_map::Entry::Vacant(slot) = map.entry(key) {
                slot.insert(target);
                return Registration {
                    map: self.clone(),
                    key,
                    requests: receiver,
                };
            }
        }
    }

    /// Forward a client's CancelRequest: `None` for an unknown key, else the id of the
    /// session it named and whether the cancel reached that session's server process.
    pub async fn cancel(
        &self,
        process_id: i32,
        secret: &[u8],
    ) -> Option<(u64, Result<(), UpstreamError>)> {
        let secret = <[u8; 4]>::try_from(secret).ok()?;
        let target = {
            let map = self
                .inner
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            map.get(&ClientKey { process_id, secret }).cloned()
        };
        let target = target?;
        target.requests.send_modify(|count| *count += 1);
        Some((target.session, target.forward().await))
    }

    /// The upstream process ids of `owner`'s live sessions.
    pub fn backends_of(&self, owner: &str) -> Vec<i32> {
        let map = self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        map.values()
            .filter(|target| target.owner == owner)
            .map(|target| target.process_id)
            .collect()
    }

    pub fn len(&self) -> usize {
        self.inner.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Target {
    /// Send the upstream CancelRequest, on a fresh connection.
    async fn forward(&self) -> Result<(), UpstreamError> {
        let mut stream = self.endpoint.connect().await?;
        let mut request = BytesMut::new();
        request.extend_from_slice(&(12 + self.secret.len() as i32).to_be_bytes());
        request.extend_from_slice(&80_877_102i32.to_be_bytes());
        request.extend_from_slice(&self.process_id.to_be_bytes());
        request.extend_from_slice(&self.secret);
        stream.write_all(&request).await?;
        // The server closes the connection once it has signalled the backend; waiting for
        // that means the cancel has really been delivered when we return.
        let mut sink = [0u8; 64];
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
        Ok(())
    }
}
