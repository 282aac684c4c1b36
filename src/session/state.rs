//! What a session remembers about the protocol conversation: transaction status, what is in
//! flight, prepared statements and portals (with their SQL and result formats) and the
//! server's reported parameters. Later phases (policy, masking, audit) read it.
//!
//! Bookkeeping follows what the client sent, at once, and is then corrected by what the
//! server's answers show it did not do (a failed or skipped Parse, Bind, Close or SQL
//! statement: [`Correction`]).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::sql::facts::{CursorUse, SettingValue};
use crate::sql::{Analysis, StatementFacts};

use crate::protocol::views::{Bind, Parse};
use crate::session::track::{Correction, Settled};

/// Most cursors whose DECLARE a session remembers.
const MAX_CURSORS: usize = 256;

/// The session's named things before a message changed them and right after (see
/// [`SessionState::on_sql_statements`]): an undo restores only the names the message changed
/// and nothing has changed again since.
#[derive(Debug)]
pub struct NamesBefore {
    before: Names,
    after: Names,
}

#[derive(Debug, Clone)]
struct Names {
    sql_prepared: HashMap<String, StatementFacts>,
    cursors: HashMap<String, StatementFacts>,
    statements: HashMap<Bytes, Arc<PreparedStatement>>,
}

impl Names {
    fn of(state: &SessionState) -> Self {
        Self {
            sql_prepared: state.sql_prepared.clone(),
            cursors: state.cursors.clone(),
            statements: state.statements.clone(),
        }
    }
}

/// Put back in `current` what `before` had for each key that changed between `before` and
/// `after` and has not changed again since `after`.
fn revert<K, V>(
    current: &mut HashMap<K, V>,
    before: HashMap<K, V>,
    after: &HashMap<K, V>,
    same: impl Fn(&V, &V) -> bool,
) where
    K: Eq + std::hash::Hash + Clone,
{
    let same_entry = |x: Option<&V>, y: Option<&V>| match (x, y) {
        (Some(x), Some(y)) => same(x, y),
        (None, None) => true,
        _ => false,
    };
    let keys: Vec<K> = before.keys().chain(after.keys()).cloned().collect();
    let mut before = before;
    for key in keys {
        let was = before.get(&key);
        let set = after.get(&key);
        if same_entry(was, set) || !same_entry(current.get(&key), set) {
            continue;
        }
        match before.remove(&key) {
            Some(value) => {
                current.insert(key, value);
            }
            None => {
                current.remove(&key);
            }
        }
    }
}

/// Remove from `current` every key whose entry differs between `before` and `after`.
fn forget_changed<K, V>(
    current: &mut HashMap<K, V>,
    before: &HashMap<K, V>,
    after: &HashMap<K, V>,
    same: impl Fn(&V, &V) -> bool,
) where
    K: Eq + std::hash::Hash,
{
    for key in before.keys().chain(after.keys()) {
        let unchanged = match (before.get(key), after.get(key)) {
            (Some(x), Some(y)) => same(x, y),
            (None, None) => true,
            _ => false,
        };
        if !unchanged {
            current.remove(key);
        }
    }
}

/// What a Close of a prepared statement took away (see [`SessionState::close_statement`]).
#[derive(Debug)]
pub struct ClosedStatement {
    pub name: Bytes,
    pub statement: Option<Arc<PreparedStatement>>,
    pub sql_prepared: Option<StatementFacts>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedStatement {
    pub sql: Bytes,
    /// `None` when PostgreSQL's parser rejects the text.
    pub analysis: Option<Arc<Analysis>>,
    /// The policy rule that allowed it, if one did.
    pub rule: Option<String>,
    /// When the rule held it for approval: the approval it was prepared under. Its executions
    /// in this session run under that approval.
    pub approval: Option<crate::audit::event::ApprovalNote>,
    /// Its sqlcommenter tags, recorded with each execution.
    pub tags: Option<Arc<crate::sql::comments::Tags>>,
    /// The session's search_path and roles when it was judged (SET LOCAL ones included):
    /// PostgreSQL plans it again under a new path, and its unqualified names may then be
    /// other tables; under another role, other rules apply.
    pub search_path: Vec<String>,
    pub roles: Vec<String>,
    /// The configuration it was judged under ([`crate::session::Snapshot::generation`]):
    /// after a reload its Executes are judged again by the new rules.
    pub generation: u64,
}

/// How a Parse was decided, kept with the prepared statement.
#[derive(Debug, Clone, Default)]
pub struct Decided {
    pub rule: Option<String>,
    pub approval: Option<crate::audit::event::ApprovalNote>,
    pub tags: Option<Arc<crate::sql::comments::Tags>>,
    pub generation: u64,
}

/// A protocol-level statement name that a Parse or Close changed behind an earlier message of
/// the same pipeline segment (since the last Sync) that was still unanswered: if that message
/// fails, the server skips the change and the name keeps what it held before.
#[derive(Debug)]
pub struct StatementDoubt {
    /// The segment ([`SessionState::syncs`]) of the last such change: a Bind in the same
    /// segment is skipped along with it, so only later Binds are in doubt.
    pub segment: u64,
    /// What the name may still hold (the bodies it had before each such change).
    pub earlier: Vec<StatementFacts>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Portal {
    pub statement: Bytes,
    /// The statement as it was when bound: the portal runs that, even if the name is
    /// closed or (the unnamed one) parsed again before the Execute.
    pub prepared: Option<Arc<PreparedStatement>>,
    /// As sent in Bind: empty = all text, one code = all columns, else one per column.
    pub result_formats: Vec<i16>,
    /// Parameter values as keyed hashes, when the audit log records them.
    pub parameters: Option<Vec<Option<String>>>,
    /// Which of the session's Binds made it: an undo of that Bind tells by it whether the
    /// record is still the one that Bind left.
    pub bound: u64,
    /// Bound to a name in doubt ([`StatementDoubt`]): the server may run one of these
    /// bodies instead of `prepared`.
    pub earlier: Option<Arc<[StatementFacts]>>,
}

#[derive(Debug)]
pub struct SessionState {
    /// From the last ReadyForQuery: `I` idle, `T` in a transaction, `E` failed transaction.
    pub transaction_status: u8,
    /// Query, Sync and FunctionCall messages forwarded whose ReadyForQuery has not come back.
    pub in_flight: usize,
    pub statements: HashMap<Bytes, Arc<PreparedStatement>>,
    pub portals: HashMap<Bytes, Portal>,
    /// Binds sent so far (numbers [`Portal::bound`]).
    pub binds: u64,
    /// ParameterStatus values as last reported by the server (client_encoding, search_path…).
    pub parameters: HashMap<Vec<u8>, Vec<u8>>,
    /// Statements sent so far, run or refused (Query, Execute, FunctionCall): the audit
    /// sequence number.
    pub statements_seen: u64,
    /// After a refused extended-protocol message: drop the client's messages up to its
    /// Sync, as the server does after an error.
    pub skip_until_sync: bool,
    /// SQL-level `PREPARE name AS …`: what each name's body does, so that `EXECUTE name`
    /// is judged by it.
    pub sql_prepared: HashMap<String, StatementFacts>,
    /// Open SQL-level cursors and the DECLARE that made each (what FETCH returns comes
    /// from its query: masking needs its lineage).
    pub cursors: HashMap<String, StatementFacts>,
    /// SQL-level names a message still unanswered redefined or dropped, with the bodies
    /// they had before (PREPARE) or just the names (DECLARE): until every answer is in, the
    /// server may have either, so an EXECUTE of one is judged by every body and the results
    /// of an EXECUTE or FETCH of one are masked as unknown. Cleared when nothing sent is
    /// unanswered ([`Self::names_settled`]).
    pub prepared_in_doubt: HashMap<String, Vec<StatementFacts>>,
    /// Names were forgotten because pgwarden could not tell what the server made of
    /// messages that changed them: a name it does not know may still exist on the server.
    pub names_forgotten: bool,
    pub cursors_in_doubt: std::collections::HashSet<String>,
    /// Protocol-level names in doubt; cleared with the others.
    pub statements_in_doubt: HashMap<Bytes, StatementDoubt>,
    /// Syncs sent: the number of the current pipeline segment.
    pub syncs: u64,
    /// The schemas unqualified names are looked up in, as far as pgwarden can tell (`*`:
    /// unknown, any schema): tracked from SET / RESET / set_config of `search_path`.
    pub search_path: Vec<String>,
    /// What RESET returns to.
    pub initial_search_path: Vec<String>,
    /// The session's declared intent (`SET pgwarden.intent`), and the one it started with
    /// (startup options), which RESET returns to.
    pub intent: Option<String>,
    pub initial_intent: Option<String>,
    /// The roles the session may be running as: the one it logged in with (or its startup
    /// `role`), and any SET ROLE the server may have made. Widened when a change is sent,
    /// settled like the search_path; rules are applied for each (the strictest wins).
    pub roles: Vec<String>,
    /// Schemas and roles added by changes for the current transaction only (`SET LOCAL`,
    /// `set_config(…, true)`): they end with it.
    pub local_search_path: Vec<String>,
    pub local_roles: Vec<String>,
    /// The session user, what SET ROLE NONE returns to.
    pub login_role: String,
    /// The role the session started with (its startup `role`, else the login role), what
    /// RESET ROLE returns to.
    pub reset_role: String,
}

/// `list` and then the items of `local` it does not have.
fn with_local<'a>(list: &'a [String], local: &[String]) -> std::borrow::Cow<'a, [String]> {
    if local.iter().all(|item| list.contains(item)) {
        return std::borrow::Cow::Borrowed(list);
    }
    let mut all = list.to_vec();
    widen(&mut all, local.to_vec());
    std::borrow::Cow::Owned(all)
}

/// Add `more` to `list`, each item once.
fn widen(list: &mut Vec<String>, more: Vec<String>) {
    for item in more {
        if !list.contains(&item) {
            list.push(item);
        }
    }
}

impl SessionState {
    pub fn new(transaction_status: u8, parameters: Vec<(Vec<u8>, Vec<u8>)>) -> Self {
        Self {
            transaction_status,
            in_flight: 0,
            statements: HashMap::new(),
            portals: HashMap::new(),
            binds: 0,
            parameters: parameters.into_iter().collect(),
            statements_seen: 0,
            skip_until_sync: false,
            sql_prepared: HashMap::new(),
            cursors: HashMap::new(),
            prepared_in_doubt: HashMap::new(),
            names_forgotten: false,
            cursors_in_doubt: Default::default(),
            statements_in_doubt: HashMap::new(),
            syncs: 0,
            search_path: Vec::new(),
            initial_search_path: Vec::new(),
            intent: None,
            initial_intent: None,
            roles: Vec::new(),
            local_search_path: Vec::new(),
            local_roles: Vec::new(),
            login_role: String::new(),
            reset_role: String::new(),
        }
    }

    /// Nothing is running and no transaction is open: the session can end without losing work.
    pub fn is_idle(&self) -> bool {
        self.in_flight == 0 && self.transaction_status == b'I'
    }

    /// No statement is running (a transaction may be open).
    pub fn between_statements(&self) -> bool {
        self.in_flight == 0
    }

    /// A simple Query replaces the unnamed statement and portal.
    pub fn on_query(&mut self) {
        // Checked first: hashing the key costs more than the common case needs.
        if !self.statements.is_empty() {
            self.statements.remove(&b""[..]);
        }
        if !self.portals.is_empty() {
            self.portals.remove(&b""[..]);
        }
        self.in_flight += 1;
    }

    /// Remember a Parse; `analyze` runs only when the text is new for this name.
    /// `may_be_skipped`: an earlier message of its pipeline segment is unanswered.
    pub fn on_parse(
        &mut self,
        parse: &Parse<'_>,
        analyze: impl FnOnce() -> Option<Arc<Analysis>>,
        decided: Decided,
        may_be_skipped: bool,
    ) -> &PreparedStatement {
        let Decided {
            rule,
            approval,
            tags,
            generation,
        } = decided;
        // Drivers re-send the same unnamed SQL over and over: keep the stored copy then.
        let unchanged = self
            .statements
            .get(parse.statement)
            .is_some_and(|existing| existing.sql == parse.sql);
        if !unchanged {
            let statement = Arc::new(PreparedStatement {
                sql: Bytes::copy_from_slice(parse.sql),
                analysis: analyze(),
                rule,
                approval,
                tags,
                search_path: self.effective_search_path().into_owned(),
                roles: self.effective_roles().into_owned(),
                generation,
            });
            let earlier = self
                .statements
                .insert(Bytes::copy_from_slice(parse.statement), statement);
            self.doubt_statement(parse.statement, earlier.as_deref(), may_be_skipped);
        } else {
            // Usually nothing changed: then no copy (a portal bound to it shares it).
            let same = self.statements.get(parse.statement).is_some_and(|e| {
                e.rule == rule
                    && e.approval == approval
                    && e.tags == tags
                    && *e.search_path == *self.effective_search_path()
                    && *e.roles == *self.effective_roles()
                    && e.generation == generation
            });
            if !same {
                let search_path = self.effective_search_path().into_owned();
                let roles = self.effective_roles().into_owned();
                if let Some(existing) = self.statements.get_mut(parse.statement) {
                    // A portal bound to it keeps the version it was bound to.
                    let existing = Arc::make_mut(existing);
                    existing.rule = rule;
                    existing.approval = approval;
                    existing.tags = tags;
                    existing.search_path = search_path;
                    existing.roles = roles;
                    existing.generation = generation;
                }
            }
        }
        &self.statements[parse.statement]
    }

    /// Prepared statement `name` (still `sql`) was judged again under configuration
    /// `generation`, after a reload, with the search_path and roles it was judged under:
    /// the new judgement is kept, so that later Executes of it are not judged again.
    pub fn judged_again(
        &mut self,
        name: &[u8],
        sql: &[u8],
        rule: Option<String>,
        approval: Option<crate::audit::event::ApprovalNote>,
        generation: u64,
    ) {
        let search_path = self.effective_search_path().into_owned();
        let roles = self.effective_roles().into_owned();
        let Some(existing) = self.statements.get_mut(name) else {
            return;
        };
        if existing.sql != sql || existing.search_path != search_path || existing.roles != roles {
            return;
        }
        // A portal bound to it keeps the version it was bound to.
        let existing = Arc::make_mut(existing);
        existing.rule = rule;
        existing.approval = approval;
        existing.generation = generation;
    }

    /// Record the portal a Bind makes. Returns what the name held before and the number of
    /// this Bind (see [`Portal::bound`]), so that it can be undone if the server refuses or
    /// skips the Bind.
    pub fn on_bind(
        &mut self,
        bind: &Bind<'_>,
        parameters: Option<Vec<Option<String>>>,
    ) -> (Option<Portal>, u64) {
        // Portals and SQL cursors share one namespace: a portal of this name is not the
        // cursor an earlier DECLARE made (FETCH from it returns this statement's rows).
        self.forget_cursor(bind.portal);
        self.binds += 1;
        let statement = match self.portals.get(bind.portal) {
            Some(old) if old.statement == bind.statement => old.statement.clone(),
            _ => Bytes::copy_from_slice(bind.statement),
        };
        // A change of the name in this segment is skipped along with this Bind if it is
        // skipped; one in an earlier segment may have been skipped while this Bind runs.
        let earlier = self
            .statements_in_doubt
            .get(bind.statement)
            .filter(|doubt| doubt.segment < self.syncs && !doubt.earlier.is_empty())
            .map(|doubt| Arc::from(doubt.earlier.as_slice()));
        let portal = Portal {
            statement,
            prepared: self.statements.get(bind.statement).cloned(),
            result_formats: bind.result_formats().collect(),
            parameters,
            bound: self.binds,
            earlier,
        };
        let before = match self.portals.get_mut(bind.portal) {
            Some(old) => Some(std::mem::replace(old, portal)),
            None => {
                self.portals
                    .insert(Bytes::copy_from_slice(bind.portal), portal);
                None
            }
        };
        (before, self.binds)
    }

    /// Forget a prepared statement (Close): returns what the name held, protocol-level and
    /// SQL-level (the same server object), to put back if the server skips the Close.
    /// `may_be_skipped`: an earlier message of its pipeline segment is unanswered.
    pub fn close_statement(&mut self, name: &[u8], may_be_skipped: bool) -> ClosedStatement {
        let closed = ClosedStatement {
            name: Bytes::copy_from_slice(name),
            statement: self.statements.remove(name),
            // A SQL PREPARE of that name is the same server object, closed too.
            sql_prepared: std::str::from_utf8(name)
                .ok()
                .and_then(|name| self.sql_prepared.remove(name)),
        };
        // Until the Close is answered, an EXECUTE of the name may still run what it closes.
        let text = String::from_utf8_lossy(name).into_owned();
        let protocol_body = closed
            .statement
            .as_ref()
            .and_then(|s| s.analysis.as_ref()?.statements.first().cloned());
        for body in [closed.sql_prepared.clone(), protocol_body] {
            self.doubt_prepared(&text, body);
        }
        self.doubt_statement(name, closed.statement.as_deref(), may_be_skipped);
        closed
    }

    /// A Parse or Close changed the protocol-level name `name`, which held `earlier`.
    fn doubt_statement(
        &mut self,
        name: &[u8],
        earlier: Option<&PreparedStatement>,
        may_be_skipped: bool,
    ) {
        if !may_be_skipped {
            // Nothing before it in its segment can make the server skip it: what the name
            // held before is gone for certain (a Parse that fails itself leaves no statement).
            if !self.statements_in_doubt.is_empty() {
                self.statements_in_doubt.remove(name);
            }
            return;
        }
        let body = earlier.and_then(|s| s.analysis.as_ref()?.statements.first().cloned());
        let segment = self.syncs;
        let doubt = self
            .statements_in_doubt
            .entry(Bytes::copy_from_slice(name))
            .or_insert_with(|| StatementDoubt {
                segment,
                earlier: Vec::new(),
            });
        doubt.segment = segment;
        if let Some(body) = body {
            if !doubt.earlier.contains(&body) {
                doubt.earlier.push(body);
            }
        }
    }

    /// Forget a portal (Close): returns its record, to put back if the server skips the
    /// Close.
    pub fn close_portal(&mut self, name: &[u8]) -> Option<Portal> {
        self.forget_cursor(name);
        self.portals.remove(name)
    }

    fn forget_cursor(&mut self, portal: &[u8]) {
        if self.cursors.is_empty() {
            return;
        }
        if let Ok(name) = std::str::from_utf8(portal) {
            self.cursors.remove(name);
        }
    }

    /// Sync, Query and FunctionCall each get exactly one ReadyForQuery.
    pub fn on_sync(&mut self) {
        self.in_flight += 1;
        self.syncs += 1;
    }

    /// A ReadyForQuery; `binds_before`: the Binds sent before the message it answers.
    pub fn on_ready_for_query(&mut self, status: u8, binds_before: Option<u64>) {
        self.transaction_status = status;
        self.in_flight = self.in_flight.saturating_sub(1);
        // Portals live until the end of their transaction: those bound before the message
        // this answers, not those pipelined behind it for the next transaction. The unnamed
        // one is kept (it is rebound before any use) so that drivers binding it every time
        // reuse its entry.
        let unnamed = usize::from(self.portals.contains_key(&b""[..]));
        if status == b'I' && self.portals.len() > unnamed {
            let cutoff = binds_before.unwrap_or(u64::MAX);
            self.portals
                .retain(|name, portal| name.is_empty() || portal.bound > cutoff);
        }
    }

    /// The schemas unqualified names may be looked up in now: the session's search_path and
    /// what the open transaction set for itself.
    pub fn effective_search_path(&self) -> std::borrow::Cow<'_, [String]> {
        with_local(&self.search_path, &self.local_search_path)
    }

    /// The roles the session may be running as now (see [`Self::roles`]).
    pub fn effective_roles(&self) -> std::borrow::Cow<'_, [String]> {
        with_local(&self.roles, &self.local_roles)
    }

    /// No transaction is open and nothing sent is unanswered: what lived for a transaction
    /// is gone — SET LOCAL changes, and cursors (a WITH HOLD one is then read as unknown,
    /// its computed columns masked).
    pub fn transaction_over(&mut self) {
        self.local_search_path.clear();
        self.local_roles.clear();
        self.cursors.clear();
    }

    pub fn on_parameter_status(&mut self, name: &[u8], value: &[u8]) {
        match self.parameters.get_mut(name) {
            Some(v) => {
                v.clear();
                v.extend_from_slice(value);
            }
            None => {
                self.parameters.insert(name.to_vec(), value.to_vec());
            }
        }
    }

    /// Remember what forwarded statements prepare and deallocate. PostgreSQL keeps the first
    /// PREPARE of a name until DEALLOCATE (a second one fails), and so does this.
    ///
    /// A search_path change is added to the path tracked so far (names then match in the
    /// schemas of both): an error, a rollback or a SET LOCAL may keep it from taking effect.
    /// It replaces the path only once the server's answer shows it held
    /// ([`Correction::Settled`]).
    ///
    /// Returns what the named things (prepared statements, cursors) were before, when the
    /// statements change any: if the server does not run them all, [`Self::undo`] puts the
    /// names back as they were and applies only the statements that did run.
    pub fn on_sql_statements(
        &mut self,
        statements: &[StatementFacts],
        role: &str,
    ) -> Option<Box<NamesBefore>> {
        let changes_names = statements.iter().any(|f| {
            f.prepares.is_some()
                || f.deallocates.is_some()
                || matches!(f.cursor, Some(CursorUse::Declare(_) | CursorUse::Close(_)))
        });
        let before = changes_names.then(|| Names::of(self));
        self.apply_sql_statements(statements, role);
        before.map(|before| {
            let after = Names::of(self);
            // Every name the message defined, redefined or dropped, with what it held.
            for name in before.sql_prepared.keys().chain(after.sql_prepared.keys()) {
                let old = before.sql_prepared.get(name);
                if after.sql_prepared.get(name) != old {
                    self.doubt_prepared(name, old.cloned());
                }
            }
            for name in before.statements.keys().chain(after.statements.keys()) {
                let old = before.statements.get(name);
                let changed = match (old, after.statements.get(name)) {
                    (Some(a), Some(b)) => !Arc::ptr_eq(a, b),
                    (None, None) => false,
                    _ => true,
                };
                if changed {
                    let body = old.and_then(|s| s.analysis.as_ref()?.statements.first().cloned());
                    self.doubt_prepared(&String::from_utf8_lossy(name), body);
                }
            }
            for name in before.cursors.keys().chain(after.cursors.keys()) {
                if before.cursors.get(name) != after.cursors.get(name) {
                    self.cursors_in_doubt.insert(name.clone());
                }
            }
            Box::new(NamesBefore { before, after })
        })
    }

    /// `name` was changed by a message not yet answered; `earlier` is the body it had.
    fn doubt_prepared(&mut self, name: &str, earlier: Option<StatementFacts>) {
        let bodies = self.prepared_in_doubt.entry(name.to_owned()).or_default();
        if let Some(earlier) = earlier {
            if !bodies.contains(&earlier) {
                bodies.push(earlier);
            }
        }
    }

    /// Every message sent has been answered: the names are what the server has.
    pub fn names_settled(&mut self) {
        if !self.prepared_in_doubt.is_empty() {
            self.prepared_in_doubt.clear();
        }
        if !self.cursors_in_doubt.is_empty() {
            self.cursors_in_doubt.clear();
        }
        if !self.statements_in_doubt.is_empty() {
            self.statements_in_doubt.clear();
        }
    }

    /// Take in what the server's answer showed (see [`Correction`]).
    pub fn correct(&mut self, correction: Correction, role: &str) {
        match correction {
            Correction::Undefined(name, sql) => {
                if self.statements.get(&name).is_some_and(|s| s.sql == sql) {
                    self.statements.remove(&name);
                }
                // Portals bound to it since are bound to whatever the server had instead.
                for portal in self.portals.values_mut() {
                    if portal.statement == name
                        && portal.prepared.as_ref().is_some_and(|s| s.sql == sql)
                    {
                        portal.prepared = None;
                    }
                }
            }
            Correction::Stopped(before, analysis, ran) => {
                self.undo(*before, &analysis.statements, ran, role);
            }
            Correction::Settled(settled) => {
                if let Some(path) = settled.search_path {
                    self.search_path = path;
                }
                if let Some(role) = settled.role {
                    self.roles = vec![role];
                }
            }
            Correction::Unanswered(n) => self.in_flight = self.in_flight.saturating_sub(n),
            Correction::SkippingUntilSync => self.skip_until_sync = true,
            Correction::Forget(names) => {
                self.names_forgotten = true;
                let NamesBefore { before, after } = *names;
                forget_changed(
                    &mut self.sql_prepared,
                    &before.sql_prepared,
                    &after.sql_prepared,
                    |a, b| a == b,
                );
                forget_changed(
                    &mut self.cursors,
                    &before.cursors,
                    &after.cursors,
                    |a, b| a == b,
                );
                forget_changed(
                    &mut self.statements,
                    &before.statements,
                    &after.statements,
                    Arc::ptr_eq,
                );
            }
            // A Close the server skipped: the statement is still there, unless something
            // sent since has taken the name.
            Correction::Unclosed(closed) => {
                let ClosedStatement {
                    name,
                    statement,
                    sql_prepared,
                } = *closed;
                if let Some(sql) = sql_prepared {
                    if let Ok(text) = std::str::from_utf8(&name) {
                        self.sql_prepared.entry(text.to_owned()).or_insert(sql);
                    }
                }
                if let Some(statement) = statement {
                    self.statements.entry(name).or_insert(statement);
                }
            }
            Correction::PortalUndone(change) => {
                if self.portals.get(&change.name).map(|p| p.bound) == change.after {
                    match change.before {
                        Some(portal) => {
                            self.portals.insert(change.name, portal);
                        }
                        None => {
                            self.portals.remove(&change.name);
                        }
                    }
                }
            }
        }
    }

    /// The server ran only the first `ran` of `statements` (an error stopped the rest):
    /// put the names back as they were before them, then apply what did run.
    fn undo(&mut self, names: NamesBefore, statements: &[StatementFacts], ran: usize, role: &str) {
        let NamesBefore { before, after } = names;
        revert(
            &mut self.sql_prepared,
            before.sql_prepared,
            &after.sql_prepared,
            |a, b| a == b,
        );
        revert(&mut self.cursors, before.cursors, &after.cursors, |a, b| {
            a == b
        });
        revert(
            &mut self.statements,
            before.statements,
            &after.statements,
            Arc::ptr_eq,
        );
        let ran = &statements[..ran.min(statements.len())];
        self.apply_sql_statements(ran, role);
    }

    /// Add to `path` and `roles` the search_paths and roles `statements` may leave the
    /// session with (each change may or may not take effect: both stay possible).
    ///
    /// `local`: only the changes for the current transaction (`SET LOCAL`, `set_config(…,
    /// true)`), or only the others; `None`: all of them.
    pub fn widen_for(
        &self,
        statements: &[StatementFacts],
        role: &str,
        local: Option<bool>,
        path: &mut Vec<String>,
        roles: &mut Vec<String>,
    ) {
        let mut widen_by = |change: &crate::sql::facts::SettingChange| {
            if local.is_some_and(|local| local != change.local) {
                return;
            }
            if let Some(new_path) = self.path_after(change, role) {
                widen(path, new_path);
            }
            widen(roles, self.role_after(change).into_iter().collect());
        };
        for facts in statements {
            facts.changes.iter().for_each(&mut widen_by);
            // `EXECUTE name` runs the body's set_config calls.
            if let Some(body) = facts
                .executes
                .as_deref()
                .and_then(|n| self.prepared_body(n))
            {
                body.changes.iter().for_each(&mut widen_by);
            }
        }
        if local == Some(true) {
            return;
        }
        for facts in statements {
            if facts.kinds.first() == Some(&"discard") && facts.deallocates.is_some() {
                widen(path, self.initial_search_path.clone());
                // DISCARD ALL includes SET SESSION AUTHORIZATION DEFAULT.
                widen(roles, vec![self.login_role.clone()]);
            }
        }
    }

    /// Whether `statements` may change the search_path or the role.
    pub fn may_change_path_or_role(statements: &[StatementFacts]) -> bool {
        statements.iter().any(|f| {
            f.changes.iter().any(|c| {
                matches!(
                    c.name.as_str(),
                    "search_path" | "role" | "session_authorization" | "all" | "*"
                )
            }) || f.kinds.first() == Some(&"discard")
                || f.executes.is_some()
        })
    }

    /// The search_path a setting change sets, if it sets one.
    fn path_after(
        &self,
        change: &crate::sql::facts::SettingChange,
        role: &str,
    ) -> Option<Vec<String>> {
        match (change.name.as_str(), &change.value) {
            ("search_path", SettingValue::List(list)) => {
                Some(list.iter().map(|s| resolve_schema(s, role)).collect())
            }
            ("search_path", SettingValue::Value(text)) => Some(parse_search_path(text, role)),
            ("all" | "search_path", SettingValue::Reset) => Some(self.initial_search_path.clone()),
            ("search_path" | "*", _) => Some(vec!["*".into()]),
            _ => None,
        }
    }

    fn apply_sql_statements(&mut self, statements: &[StatementFacts], role: &str) {
        let mut path = std::mem::take(&mut self.search_path);
        let mut roles = std::mem::take(&mut self.roles);
        self.widen_for(statements, role, Some(false), &mut path, &mut roles);
        self.search_path = path;
        self.roles = roles;
        let mut path = std::mem::take(&mut self.local_search_path);
        let mut roles = std::mem::take(&mut self.local_roles);
        self.widen_for(statements, role, Some(true), &mut path, &mut roles);
        self.local_search_path = path;
        self.local_roles = roles;
        for facts in statements {
            for change in &facts.changes {
                match (change.name.as_str(), &change.value) {
                    ("all", SettingValue::Reset) => {
                        self.intent = self.initial_intent.clone();
                    }
                    ("pgwarden.intent", SettingValue::Value(text)) => {
                        self.intent = intent(text);
                    }
                    ("pgwarden.intent", SettingValue::Reset) => {
                        self.intent = self.initial_intent.clone();
                    }
                    _ => {}
                }
            }
            // DISCARD ALL includes RESET ALL.
            if facts.kinds.first() == Some(&"discard") && facts.deallocates.is_some() {
                self.intent = self.initial_intent.clone();
            }
            match &facts.cursor {
                Some(CursorUse::Declare(name)) => {
                    // Bounded: a session declaring without end forgets the oldest lineage,
                    // and masking treats those cursors' computed columns as derived.
                    if self.cursors.len() >= MAX_CURSORS {
                        self.cursors.clear();
                    }
                    self.cursors.insert(name.clone(), facts.clone());
                    // Cursors and protocol portals share one namespace: a portal recorded
                    // under this name is not what an Execute of it runs now.
                    self.portals.remove(name.as_bytes());
                }
                // CLOSE ALL closes protocol portals too.
                Some(CursorUse::Close(name)) if name == "*" => {
                    self.cursors.clear();
                    self.portals.clear();
                }
                Some(CursorUse::Close(name)) => {
                    self.cursors.remove(name);
                    self.portals.remove(name.as_bytes());
                }
                _ => {}
            }
            if let Some(name) = &facts.prepares {
                self.sql_prepared
                    .entry(name.clone())
                    .or_insert_with(|| facts.clone());
            }
            match facts.deallocates.as_deref() {
                Some("*") => {
                    self.sql_prepared.clear();
                    self.statements.retain(|name, _| name.is_empty());
                }
                Some(name) => {
                    self.sql_prepared.remove(name);
                    self.statements.remove(name.as_bytes());
                }
                None => {}
            }
        }
    }

    /// The search_path and role a message leaves for certain once it has run without error,
    /// outside any transaction: one SET or RESET (set_config in a query runs only for the
    /// rows it is called on, maybe none; ALTER ROLE/DATABASE … SET changes later sessions),
    /// not for the transaction only. `None` when it changes neither, or not that surely.
    pub fn settled_by(&self, statements: &[StatementFacts], role: &str) -> Option<Settled> {
        let [facts] = statements else {
            return None;
        };
        if !matches!(facts.kind(), "set" | "reset") {
            return None;
        }
        let change = facts.changes.last().filter(|c| !c.local)?;
        let settled = Settled {
            search_path: self.path_after(change, role),
            role: self.role_after(change),
        };
        (settled != Settled::default()).then_some(settled)
    }

    /// The role a setting change leaves the session running as, if it changes it.
    /// `RESET ALL` leaves the role alone (PostgreSQL's `role` is not reset by it); `RESET
    /// ROLE` returns to the role the session started with, `SET ROLE NONE` and `RESET
    /// SESSION AUTHORIZATION` to the login role.
    fn role_after(&self, change: &crate::sql::facts::SettingChange) -> Option<String> {
        match (change.name.as_str(), &change.value) {
            ("role", SettingValue::Value(role)) if role != "none" => Some(role.clone()),
            ("role", SettingValue::Reset) => Some(self.reset_role.clone()),
            ("role", SettingValue::Value(_)) | ("session_authorization", SettingValue::Reset) => {
                Some(self.login_role.clone())
            }
            _ => None,
        }
    }

    /// What `EXECUTE name` runs: the body of a SQL-level PREPARE, or of a protocol-level
    /// (Parse) prepared statement of that name, which EXECUTE can run too.
    pub fn prepared_body(&self, name: &str) -> Option<StatementFacts> {
        self.prepared_body_within(name, 4)
    }

    /// Every body `EXECUTE name` may run: [`Self::prepared_body`], and the bodies that
    /// messages still unanswered replaced along the way (any of them may fail, and the
    /// server then runs the older one). Empty when the name is not known.
    pub fn prepared_bodies(&self, name: &str) -> Vec<StatementFacts> {
        self.prepared_bodies_within(name, 4)
    }

    fn prepared_bodies_within(&self, name: &str, hops: usize) -> Vec<StatementFacts> {
        let mut bodies: Vec<StatementFacts> = self
            .prepared_in_doubt
            .get(name)
            .into_iter()
            .flatten()
            .map(|earlier| earlier.as_executed(name))
            .collect();
        if let Some(facts) = self.sql_prepared.get(name) {
            bodies.push(facts.as_executed(name));
            return bodies;
        }
        let Some(facts) = self
            .statements
            .get(name.as_bytes())
            .and_then(|s| s.analysis.as_ref())
            .and_then(|a| a.statements.first())
        else {
            return Vec::new();
        };
        match &facts.executes {
            None => bodies.push(facts.as_executed(name)),
            Some(inner) if hops > 0 => {
                let inner_bodies = self.prepared_bodies_within(inner, hops - 1);
                if inner_bodies.is_empty() {
                    return Vec::new();
                }
                for body in inner_bodies {
                    let mut body = body.with_arguments_of(facts);
                    body.executes = Some(name.to_owned());
                    bodies.push(body);
                }
            }
            Some(_) => return Vec::new(),
        }
        bodies
    }

    /// A protocol-level statement can itself be `EXECUTE other`: what runs then is the
    /// other's body, followed `hops` names deep (a longer chain, or a loop, is unknown).
    fn prepared_body_within(&self, name: &str, hops: usize) -> Option<StatementFacts> {
        if let Some(facts) = self.sql_prepared.get(name) {
            return Some(facts.as_executed(name));
        }
        let analysis = self.statements.get(name.as_bytes())?.analysis.as_ref()?;
        let facts = analysis.statements.first()?;
        match &facts.executes {
            None => Some(facts.as_executed(name)),
            Some(inner) if hops > 0 => {
                let mut body = self
                    .prepared_body_within(inner, hops - 1)?
                    .with_arguments_of(facts);
                body.executes = Some(name.to_owned());
                Some(body)
            }
            Some(_) => None,
        }
    }

    /// The prepared statement behind a portal, and the portal's statement name.
    pub fn portal_statement(&self, portal: &[u8]) -> Option<(&Portal, Option<&PreparedStatement>)> {
        let portal = self.portals.get(portal)?;
        Some((portal, portal.prepared.as_deref()))
    }

    /// What an Execute of `portal` runs, as far as pgwarden knows; `generation`: the
    /// configuration in force ([`crate::session::Snapshot::generation`]).
    pub fn portal_run(&self, portal: &[u8], generation: u64) -> PortalRun {
        let Some((portal, prepared)) = self.portal_statement(portal) else {
            return PortalRun::default();
        };
        let mut run = PortalRun {
            statement: portal.statement.clone(),
            parameters: portal.parameters.clone(),
            earlier: portal.earlier.clone(),
            lost: prepared.is_none(),
            ..PortalRun::default()
        };
        if let Some(prepared) = prepared {
            run.sql = prepared.sql.clone();
            run.analysis = prepared.analysis.clone();
            run.rule = prepared.rule.clone();
            run.approval = prepared.approval.clone();
            run.tags = prepared.tags.clone();
            run.moved = *prepared.search_path != *self.effective_search_path()
                || *prepared.roles != *self.effective_roles();
            run.reloaded = prepared.generation != generation;
        }
        run
    }
}

/// What an Execute of a portal runs, as far as pgwarden knows (reference-counted copies: the
/// session state is borrowed no further). All empty for a portal pgwarden does not know: the
/// server answers "portal does not exist", and the attempt is still on record.
#[derive(Debug, Default)]
pub struct PortalRun {
    pub sql: Bytes,
    /// The prepared statement's name.
    pub statement: Bytes,
    pub analysis: Option<Arc<Analysis>>,
    pub parameters: Option<Vec<Option<String>>>,
    /// How its Parse was decided.
    pub rule: Option<String>,
    pub approval: Option<crate::audit::event::ApprovalNote>,
    pub tags: Option<Arc<crate::sql::comments::Tags>>,
    /// Judged under another search_path or other roles than those in force.
    pub moved: bool,
    /// Judged under other rules than those in force.
    pub reloaded: bool,
    /// See [`Portal::earlier`].
    pub earlier: Option<Arc<[StatementFacts]>>,
    /// The portal exists, but the server did not define the statement it was bound to (a
    /// Parse pipelined before the Bind was skipped or failed): pgwarden cannot tell what
    /// it runs.
    pub lost: bool,
}

/// Longest intent kept, in characters; longer ones are cut (and marked).
pub const MAX_INTENT: usize = 500;

/// An intent as recorded: trimmed, capped; empty means none.
pub fn intent(text: &str) -> Option<String> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    // Intents go to the audit log and to approvers: personal data in them is masked.
    let scrubbed = crate::masking::detect::scrub(text);
    let text = scrubbed.as_deref().unwrap_or(text);
    if text.chars().count() <= MAX_INTENT {
        return Some(text.to_owned());
    }
    let mut cut: String = text.chars().take(MAX_INTENT).collect();
    cut.push('…');
    Some(cut)
}

/// `$user` is the session's role; other names as written.
fn resolve_schema(schema: &str, role: &str) -> String {
    if schema == "$user" {
        role.to_owned()
    } else {
        schema.to_owned()
    }
}

/// A search_path as text (`app, "My Schema", $user`): unquoted names fold to lower case.
pub fn parse_search_path(text: &str, role: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(
            |s| match s.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
                Some(quoted) => resolve_schema(&quoted.replace("\"\"", "\""), role),
                None => resolve_schema(&s.to_lowercase(), role),
            },
        )
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn intents_are_trimmed_capped_and_scrubbed_of_personal_data() {
        assert_eq!(intent("  "), None);
        assert_eq!(
            intent(" INC-1: refund jane.doe@example.com ").as_deref(),
            Some("INC-1: refund j***@example.com")
        );
        assert!(intent(&"x".repeat(600)).unwrap().ends_with('…'));
    }

    use super::*;
    use crate::protocol::views::bind;

    #[test]
    fn a_statement_judged_again_after_a_reload_keeps_the_new_judgement() {
        let mut s = SessionState::new(b'I', vec![]);
        let parse = Parse {
            statement: b"s1",
            sql: b"select 1",
            param_type_count: 0,
        };
        let decided = Decided {
            generation: 1,
            ..Decided::default()
        };
        s.on_parse(&parse, || None, decided, false);
        let unnamed_portal_of_s1 = bind(b"\0s1\0\0\0\0\0\0\0").unwrap();
        s.on_bind(&unnamed_portal_of_s1, None);
        assert!(s.portal_run(b"", 2).reloaded);
        // Another text under the name is not its judgement.
        s.judged_again(b"s1", b"select 2", Some("other".into()), None, 2);
        assert!(s.portal_run(b"", 2).reloaded);
        s.judged_again(b"s1", b"select 1", Some("new-rule".into()), None, 2);
        // The portal keeps the version it was bound to; the next Bind gets the new one.
        assert!(s.portal_run(b"", 2).reloaded);
        s.on_bind(&unnamed_portal_of_s1, None);
        let run = s.portal_run(b"", 2);
        assert!(!run.reloaded);
        assert_eq!(run.rule.as_deref(), Some("new-rule"));
        // Judged under another search_path: kept as it was.
        s.search_path = vec!["elsewhere".into()];
        s.judged_again(b"s1", b"select 1", Some("moved".into()), None, 3);
        s.on_bind(&unnamed_portal_of_s1, None);
        assert_eq!(s.portal_run(b"", 3).rule.as_deref(), Some("new-rule"));
    }

    #[test]
    fn tracks_statements_portals_and_transactions() {
        let mut s = SessionState::new(b'I', vec![]);
        s.on_parse(
            &Parse {
                statement: b"s1",
                sql: b"select $1",
                param_type_count: 1,
            },
            || None,
            Decided::default(),
            false,
        );
        // Unnamed portal, one text parameter "x", binary results; then a named portal.
        s.on_bind(
            &bind(b"\0s1\0\0\0\0\x01\0\0\0\x01x\0\x01\0\x01").unwrap(),
            None,
        );
        s.on_bind(&bind(b"named\0s1\0\0\0\0\0\0\0").unwrap(), None);
        assert_eq!(
            &s.statements[&b"s1"[..]].sql,
            &Bytes::from_static(b"select $1")
        );
        assert_eq!(s.portals[&b""[..]].result_formats, vec![1]);
        s.on_sync();
        assert!(!s.is_idle());
        s.on_ready_for_query(b'T', Some(2));
        assert_eq!(s.in_flight, 0);
        assert!(!s.is_idle());
        assert_eq!(s.portals.len(), 2);
        // A portal bound after the message the ReadyForQuery answers (pipelined, for the
        // next transaction) outlives this transaction's end.
        s.on_bind(&bind(b"later\0s1\0\0\0\0\0\0\0").unwrap(), None);
        s.on_ready_for_query(b'I', Some(2));
        let mut names: Vec<&Bytes> = s.portals.keys().collect();
        names.sort();
        assert_eq!(names, vec![&Bytes::new(), &Bytes::from_static(b"later")]);
        s.close_statement(b"s1", false);
        assert!(!s.statements.contains_key(&b"s1"[..]));
        s.on_parameter_status(b"client_encoding", b"LATIN1");
        assert_eq!(
            parse_search_path("app, \"My Schema\", $user, PUBLIC", "app_rw"),
            ["app", "My Schema", "app_rw", "public"]
        );
        assert_eq!(s.parameters[&b"client_encoding"[..]], b"LATIN1");
    }
}
