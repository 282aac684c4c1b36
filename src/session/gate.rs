//! The single point where every statement is decided before it reaches the database.
//!
//! The session calls [`StatementGate::decide`] for each Query, each Parse and each
//! FunctionCall, before forwarding it. The statement gate (policy) plugs in here; until it
//! lands, [`AllowAll`] is the only implementation.

use crate::auth::Identity;

/// Which protocol path carried the statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol<'a> {
    /// A simple Query message: `sql` may hold several statements.
    Simple,
    /// A Parse message: exactly one statement, possibly named.
    Extended { statement_name: &'a [u8] },
    /// The fast-path FunctionCall message (e.g. libpq's large-object functions): no SQL.
    FunctionCall { function_oid: u32 },
}

/// Everything the gate knows about one statement.
#[derive(Debug, Clone, Copy)]
pub struct Statement<'a> {
    pub identity: &'a Identity,
    pub database: &'a str,
    pub role: &'a str,
    /// Raw bytes in the client's encoding (not necessarily UTF-8).
    pub sql: &'a [u8],
    pub protocol: Protocol<'a>,
    /// Transaction status from the last ReadyForQuery (`I`, `T` or `E`).
    pub transaction_status: u8,
}

/// What happens to a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Forward it unchanged.
    Allow,
}

/// Decides statements. Must be cheap and must not block: it runs on the relay path.
pub trait StatementGate: Send + Sync + std::fmt::Debug {
    fn decide(&self, statement: &Statement<'_>) -> Decision;
}

/// Allows everything (no policy configured yet).
#[derive(Debug, Default, Clone, Copy)]
pub struct AllowAll;

impl StatementGate for AllowAll {
    fn decide(&self, _statement: &Statement<'_>) -> Decision {
        Decision::Allow
    }
}
