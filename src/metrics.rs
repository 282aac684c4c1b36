//! Prometheus metrics, served as text on the admin endpoint's `GET /metrics`.
//!
//! Counters are bumped where things happen (sessions, sign-in failures, statement decisions,
//! approvals); gauges that are cheaper to read than to keep (pending approvals, audit
//! writability) are set when scraped.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabel {
    /// `allow`, `deny` or `approve`.
    pub decision: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// The audit category (`token_expired`, `invalid_credentials`, …).
    pub reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MaskedLabel {
    /// `rule` (a masking rule or a value derived from a masked column) or a detector kind
    /// (`email`, `credit_card`, …).
    pub by: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabel {
    version: String,
    revision: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `approved`, `denied`, `expired` or `withdrawn`.
    pub outcome: String,
}

/// Every metric pgwarden exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub connections: Counter,
    pub sessions: Gauge,
    pub auth_failures: Family<ReasonLabel, Counter>,
    pub statements: Family<DecisionLabel, Counter>,
    pub statement_seconds: Histogram,
    pub approvals_pending: Gauge,
    pub approvals_finished: Family<OutcomeLabel, Counter>,
    pub audit_writable: Gauge,
    pub audit_pending: Gauge,
    pub masked_values: Family<MaskedLabel, Counter>,
    pub connections_over_limit: Counter,
    pub auth_timeouts: Counter,
    pub upstream_up: Gauge,
    pub reloads: Family<ResultLabel, Counter>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `success` or `failure`.
    pub result: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(Counter::default())
    }
}

impl Metrics {
    /// All metrics, with the audit log's count of lost events (a fresh zero counter when
    /// there is no audit log).
    pub fn new(audit_lost_events: Counter) -> Self {
        let mut registry = Registry::with_prefix("pgwarden");
        let build_info = Family::<BuildLabel, Gauge>::default();
        build_info
            .get_or_create(&BuildLabel {
                version: env!("CARGO_PKG_VERSION").to_owned(),
                revision: env!("PGWARDEN_GIT_REV").to_owned(),
            })
            .set(1);
        registry.register(
            "build_info",
            "Always 1; the labels say which pgwarden this is",
            build_info,
        );
        let connections = Counter::default();
        let sessions = Gauge::default();
        let auth_failures = Family::<ReasonLabel, Counter>::default();
        let statements = Family::<DecisionLabel, Counter>::default();
        // 100 µs … ~3.3 min.
        let statement_seconds = Histogram::new(exponential_buckets(0.0001, 4.0, 12));
        let approvals_pending = Gauge::default();
        let approvals_finished = Family::<OutcomeLabel, Counter>::default();
        let audit_writable = Gauge::default();
        let audit_pending = Gauge::default();
        let masked_values = Family::<MaskedLabel, Counter>::default();
        registry.register(
            "masked_values",
            "Values masked before reaching a client, by rule or detector",
            masked_values.clone(),
        );
        registry.register(
            "connections",
            "Client connections accepted",
            connections.clone(),
        );
        registry.register("sessions", "Sessions logged in now", sessions.clone());
        registry.register(
            "auth_failures",
            "Failed sign-ins, by audit reason",
            auth_failures.clone(),
        );
        registry.register(
            "statements",
            "Statements decided, by decision",
            statements.clone(),
        );
        registry.register(
            "statement_duration_seconds",
            "From forwarding a statement to its last response (sessions with [audit])",
            statement_seconds.clone(),
        );
        registry.register(
            "approvals_pending",
            "Statements waiting for approval now",
            approvals_pending.clone(),
        );
        registry.register(
            "approvals_finished",
            "Approval requests that ended, by outcome",
            approvals_finished.clone(),
        );
        registry.register(
            "audit_writable",
            "0 after the audit log failed to write, else 1 (also without [audit])",
            audit_writable.clone(),
        );
        registry.register(
            "audit_pending_records",
            "Audit records sealed but not yet written (the writer's queue)",
            audit_pending.clone(),
        );
        registry.register(
            "audit_lost_events",
            "Audit events that could not be written (each gap is also recorded in the log, as log.write_failed, once it can write again)",
            audit_lost_events,
        );
        let connections_over_limit = Counter::default();
        registry.register(
            "connections_over_limit",
            "Connections refused (53300) or dropped because server.max_connections sessions were open",
            connections_over_limit.clone(),
        );
        let auth_timeouts = Counter::default();
        registry.register(
            "auth_timeouts",
            "Connections closed because sign-in took longer than server.auth_timeout",
            auth_timeouts.clone(),
        );
        let upstream_up = Gauge::default();
        registry.register(
            "upstream_up",
            "1 when the database server accepts connections and pgwarden's own logins, else 0 (probed when scraped, at most once a second)",
            upstream_up.clone(),
        );
        let reloads = Family::<ResultLabel, Counter>::default();
        registry.register(
            "config_reloads",
            "Configuration reloads (SIGHUP, pgwarden reload), by result",
            reloads.clone(),
        );
        // Series that exist before their first event, so that rate() and alerts see a 0
        // rather than nothing.
        for decision in ["allow", "deny", "approve"] {
            statements
                .get_or_create(&DecisionLabel {
                    decision: decision.to_owned(),
                })
                .inc_by(0);
        }
        for outcome in crate::approvals::Status::FINISHED {
            approvals_finished
                .get_or_create(&OutcomeLabel {
                    outcome: outcome.as_str().to_owned(),
                })
                .inc_by(0);
        }
        for result in ["success", "failure"] {
            reloads
                .get_or_create(&ResultLabel {
                    result: result.to_owned(),
                })
                .inc_by(0);
        }
        Self {
            registry,
            connections,
            sessions,
            auth_failures,
            statements,
            statement_seconds,
            approvals_pending,
            approvals_finished,
            audit_writable,
            audit_pending,
            masked_values,
            connections_over_limit,
            auth_timeouts,
            upstream_up,
            reloads,
        }
    }

    pub fn statement(&self, decision: &str) {
        self.statements
            .get_or_create(&DecisionLabel {
                decision: decision.to_owned(),
            })
            .inc();
    }

    /// Values one statement's results had masked.
    pub fn masked(&self, counts: &crate::masking::rewrite::Counts) {
        if counts.values > 0 {
            self.masked_values
                .get_or_create(&MaskedLabel { by: "rule".into() })
                .inc_by(counts.values);
        }
        for (kind, n) in &counts.detected.0 {
            self.masked_values
                .get_or_create(&MaskedLabel {
                    by: kind.as_str().into(),
                })
                .inc_by(u64::from(*n));
        }
    }

    pub fn auth_failure(&self, reason: &str) {
        self.auth_failures
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn reload(&self, ok: bool) {
        self.reloads
            .get_or_create(&ResultLabel {
                result: if ok { "success" } else { "failure" }.to_owned(),
            })
            .inc();
    }

    pub fn approval_finished(&self, outcome: &str) {
        self.approvals_finished
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}
