//! pgwarden: an identity-aware PostgreSQL proxy.
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | [`app`] | wiring a [`config::Config`] into a running [`app::Server`]; signals |
//! | [`audit`] | the hash-chained, signed audit log: events, writer, verify, search |
//! | [`config`] | the TOML model, validation (with key and line in errors), secret references |
//! | [`net`] | the listener (connection limit, one span per connection), TLS configs, streams |
//! | [`protocol`] | length-checked framing, startup packets, message views and builders |
//! | [`auth`] | identities; front-door methods (OIDC tokens as password or OAUTHBEARER, local SCRAM users); OIDC discovery, keys and token verification; `[[access]]` rules; sign-in rate limiting |
//! | [`upstream`] | logging in to PostgreSQL as the granted role; proxy-issued cancel keys |
//! | [`session`] | one connection's life: handshake, the relay loop, statement flow, shutdown phases, the list of running sessions |
//! | [`sql`] | statement analysis with PostgreSQL's parser: facts, column lineage, fingerprint, normalized text |
//! | [`policy`] | the rules and guardrails that decide each statement; session settings |
//! | [`approvals`] | statements held for approval: requests, answers, grants |
//! | [`masking`] | masking rules resolved through the catalog, strategies, content detectors, rewriting what reaches the client |
//! | [`metrics`] | the Prometheus registry behind `/metrics` |
//! | [`admin`] | the admin HTTP endpoint: `/healthz`, `/readyz`, `/metrics`, the approvals and sessions APIs, and their command-line client |
//! | [`login`] | the client side: `pgwarden login` (device flow), `token`, `psql` |
//! | [`testbed`] | throwaway PostgreSQL servers and a development OIDC issuer, for the demo, tests and benchmarks |
//! | [`demo`] | `pgwarden demo` |
//! | [`error`] | SQLSTATEs and the ErrorResponse shape every module's errors map to |
//!
//! # The path of one statement
//!
//! 1. [`net::listener`] accepts the TCP connection and spawns [`session::serve`] in a span
//!    `conn{id, peer, tls, user, identity, db, role}`.
//! 2. The session negotiates TLS, reads the StartupMessage ([`protocol::startup`]),
//!    authenticates the client ([`auth::front_door`]), picks the upstream role from `[[access]]`, and logs
//!    in upstream with pgwarden's own credentials ([`upstream::login`]). The client gets a
//!    proxy-issued cancel key.
//! 3. [`session::relay::run`] reads client frames ([`protocol::frame`]); each statement of a
//!    Query, Parse/Execute or FunctionCall is analysed ([`sql`]), decided ([`policy`]) and
//!    audited in [`session::flow`] and, when allowed, its raw bytes are copied upstream
//!    unchanged.
//! 4. Server frames come back the same way: scanned in place (ReadyForQuery, ParameterStatus
//!    and errors update [`session::state::SessionState`]), masked where the identity may not
//!    see a value ([`masking::rewrite`]), and copied to the client in batches.
//! 5. Logins, failed logins and session ends are recorded by the [`audit`] writer; a session
//!    starts only once its `session.start` record is accepted.

#![forbid(unsafe_code)]

/// The version and the git revision built from (`0.1.0 (1a2b3c4d5e6f)`).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("PGWARDEN_GIT_REV"),
    ")"
);

pub mod admin;
pub mod app;
pub mod approvals;
pub mod audit;
pub mod auth;
pub mod config;
pub mod demo;
pub mod error;
pub mod login;
pub mod masking;
pub mod metrics;
pub mod net;
pub mod policy;
pub mod protocol;
pub mod session;
pub mod sql;
pub mod testbed;
pub mod upstream;
