//! One issuer's signing keys: discovery and JWKS fetched over HTTP(S), cached, refreshed
//! periodically and on an unknown `kid` (at most once per `jwks_cooldown`, so a flood of
//! forged key ids cannot turn pgwarden into a traffic amplifier against the provider).
//!
//! A provider that is unreachable at start does not stop pgwarden: a background task retries
//! with backoff, [`IssuerKeys::status`] says so, and logins needing it get a clear
//! "try again" error meanwhile.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::Algorithm;
use openidconnect::core::{CoreJsonWebKeySet, CoreProviderMetadata};
use openidconnect::IssuerUrl;
use tracing::{info, warn};

use super::token::jwk_allows;
use super::{IssuerSettings, TokenError};
use crate::error::error_chain;
use crate::net::http::Fetcher;

/// Largest discovery document or key set accepted.
const MAX_DOCUMENT: usize = 512 * 1024;
/// Retry delays while the provider is unreachable.
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// The keys as last fetched, in both libraries' shapes.
#[derive(Debug)]
pub struct KeySet {
    pub oidc: CoreJsonWebKeySet,
    pub jwt: JwkSet,
}

impl KeySet {
    /// The key for a token: by `kid`, or without one the only key that fits `alg`.
    pub fn find(&self, kid: Option<&str>, alg: Algorithm) -> Result<&Jwk, TokenError> {
        match kid {
            Some(kid) => self.jwt.find(kid).ok_or(TokenError::UnknownKey),
            None => {
                let mut fitting = self.jwt.keys.iter().filter(|k| jwk_allows(k, alg));
                match (fitting.next(), fitting.next()) {
                    (Some(key), None) => Ok(key),
                    _ => Err(TokenError::UnknownKey),
                }
            }
        }
    }

    fn has(&self, kid: Option<&str>) -> bool {
        kid.is_none_or(|kid| self.jwt.find(kid).is_some())
    }
}

/// Whether an issuer's keys are available, for readiness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerStatus {
    pub issuer: String,
    pub ready: bool,
    /// The last fetch error, if the last fetch failed.
    pub last_error: Option<String>,
}

#[derive(Debug)]
pub struct IssuerKeys {
    pub settings: IssuerSettings,
    fetcher: Fetcher,
    current: ArcSwapOption<KeySet>,
    /// Serializes fetches; holds when the last one started.
    refresh: tokio::sync::Mutex<Option<Instant>>,
    last_error: Mutex<Option<String>>,
}

impl IssuerKeys {
    pub fn new(settings: IssuerSettings) -> Result<Self, String> {
        let fetcher = Fetcher::new(settings.ca.as_deref(), settings.fetch_timeout, MAX_DOCUMENT)?;
        Ok(Self {
            settings,
            fetcher,
            current: ArcSwapOption::empty(),
            refresh: tokio::sync::Mutex::new(None),
            last_error: Mutex::new(None),
        })
    }

    pub fn status(&self) -> IssuerStatus {
        IssuerStatus {
            issuer: self.settings.issuer.clone(),
            ready: self.current.load().is_some(),
            last_error: self.last_error.lock().ok().and_then(|e| e.clone()),
        }
    }

    /// The key set to verify a token whose header names `kid`. An unknown `kid` (or no keys
    /// yet) triggers a fetch, unless one started less than `jwks_cooldown` ago.
    pub async fn keys_for(&self, kid: Option<&str>) -> Result<Arc<KeySet>, TokenError> {
        if let Some(set) = self.current.load_full().filter(|set| set.has(kid)) {
            return Ok(set);
        }
        let mut last = self.refresh.lock().await;
        // Another login may have fetched while this one waited for the lock.
        if let Some(set) = self.current.load_full().filter(|set| set.has(kid)) {
            return Ok(set);
        }
        if last.is_none_or(|at| at.elapsed() >= self.settings.jwks_cooldown) {
            *last = Some(Instant::now());
            self.fetch_and_store().await;
        }
        drop(last);
        match self.current.load_full() {
            None => Err(TokenError::IssuerUnavailable),
            Some(set) if set.has(kid) => Ok(set),
            Some(_) => Err(TokenError::UnknownKey),
        }
    }

    /// Fetch now (the background refresher). Returns whether keys are available.
    async fn refresh_now(&self) -> bool {
        let mut last = self.refresh.lock().await;
        *last = Some(Instant::now());
        self.fetch_and_store().await
    }

    async fn fetch_and_store(&self) -> bool {
        let was_ready = self.current.load().is_some();
        match self.fetch().await {
            Ok(set) => {
                if !was_ready {
                    info!(issuer = %self.settings.issuer, keys = set.jwt.keys.len(), "identity provider keys loaded");
                }
                self.current.store(Some(Arc::new(set)));
                if let Ok(mut e) = self.last_error.lock() {
                    *e = None;
                }
                true
            }
            Err(e) => {
                warn!(issuer = %self.settings.issuer, error = %e, keeping_old_keys = was_ready, "cannot fetch the identity provider's keys");
                if let Ok(mut last) = self.last_error.lock() {
                    *last = Some(e);
                }
                was_ready
            }
        }
    }

    /// Discovery (which also fetches the key set), then both libraries' views of the keys.
    async fn fetch(&self) -> Result<KeySet, String> {
        let issuer = IssuerUrl::new(self.settings.issuer.clone()).map_err(|e| e.to_string())?;
        let metadata = CoreProviderMetadata::discover_async(issuer, &self.fetcher)
            .await
            .map_err(|e| error_chain(&e))?;
        if !self.settings.allow_http && metadata.jwks_uri().url().scheme() != "https" {
            return Err(format!(
                "the discovery document's jwks_uri {} is not https",
                metadata.jwks_uri().as_str()
            ));
        }
        let oidc = metadata.jwks().clone();
        let jwt: JwkSet = serde_json::to_value(&oidc)
            .and_then(serde_json::from_value)
            .map_err(|e| format!("the key set is not a JWKS: {e}"))?;
        Ok(KeySet { oidc, jwt })
    }
}

/// Keep `keys` fresh until it is dropped: fetch now, then every `jwks_refresh`; while the
/// provider is unreachable, retry with backoff.
pub fn spawn_refresher(keys: &Arc<IssuerKeys>) {
    let weak: Weak<IssuerKeys> = Arc::downgrade(keys);
    tokio::spawn(async move {
        let mut retry = FIRST_RETRY;
        loop {
            let Some(keys) = weak.upgrade() else { return };
            let wait = if keys.refresh_now().await {
                retry = FIRST_RETRY;
                keys.settings.jwks_refresh
            } else {
                let wait = retry;
                retry = (retry * 2).min(MAX_RETRY);
                wait
            };
            drop(keys);
            tokio::time::sleep(wait).await;
        }
    });
}
