//! Which client message each server response answers.
//!
//! PostgreSQL answers messages strictly in order, so a queue of what was forwarded is enough
//! to attribute every response: ParseComplete to its Parse, CommandComplete to its Execute,
//! ReadyForQuery to its Sync or Query. This is how a statement's record gets its outcome
//! (rows, duration, SQLSTATE), and how a refused statement's slot is found: a refused message
//! is replaced upstream by one that fails harmlessly ([`INERT_QUERY`]), and the error that
//! comes back in its slot is swapped for pgwarden's own. The server's own error handling
//! (abort the transaction, skip to Sync) thus applies exactly as if the statement had failed
//! there, which is what the client and its driver expect.

use std::collections::VecDeque;
use std::time::Instant;

use std::sync::Arc;

use bytes::{BufMut, Bytes};

use crate::session::state::{ClosedStatement, NamesBefore, Portal};
use crate::sql::Analysis;

use crate::error::ClientError;

/// The text sent upstream in place of a refused statement: an unterminated quoted string, so
/// PostgreSQL's lexer rejects it before any catalog access, in every transaction state. It
/// never includes the client's text.
pub const INERT_QUERY: &str = "'pgwarden refused this statement";

/// What a forwarded message will be answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Parse,
    Bind,
    Describe,
    /// A Describe of the portal about to run that pgwarden added so masking knows the
    /// columns: its answer goes no further.
    HiddenDescribe,
    Close,
    Execute,
    Sync,
    /// A simple Query (or the inert Query standing in for a refused FunctionCall).
    Query,
    FunctionCall,
}

/// An audited statement in flight.
#[derive(Debug)]
pub struct Running {
    pub statement: u64,
    pub started: Instant,
}

/// A finished statement's outcome, for its `statement.result` record.
#[derive(Debug)]
pub struct Finished {
    pub statement: u64,
    pub started: Instant,
    pub command: Option<String>,
    pub rows: u64,
    pub sqlstate: Option<[u8; 5]>,
    pub skipped: bool,
    /// The Parse or Bind it was recorded as running was not carried out by the server: it
    /// ran (or failed to find) whatever that name held before.
    pub not_as_recorded: bool,
    /// What was masked in its results.
    pub masked: crate::masking::rewrite::Counts,
    /// The session ended before the server answered it: its outcome is not known.
    pub unanswered: bool,
}

#[derive(Debug)]
struct Pending {
    expect: Expect,
    run: Option<Running>,
    /// Set when the message was refused: the error its slot's ErrorResponse becomes.
    refusal: Option<Box<ClientError>>,
    rows: u64,
    /// DataRows so far: an Execute that stops at its row limit (PortalSuspended) has no
    /// CommandComplete to count them.
    data_rows: u64,
    command: Option<String>,
    sqlstate: Option<[u8; 5]>,
    /// The statements whose results this message brings (masking needs their lineage).
    analysis: Option<Arc<Analysis>>,
    /// Results completed so far (a Query runs one statement after another).
    results: usize,
    masked: crate::masking::rewrite::Counts,
    /// A Sync sent while a COPY FROM STDIN may be taking data, with the number of COPYs the
    /// client had ended since the message that runs them: the server ignores it if that
    /// message's next COPY (a Query may run several) did start.
    in_copy: Option<u32>,
    /// A COPY FROM STDIN that has not started (no CopyInResponse yet).
    copy_in_expected: bool,
    /// CopyInResponses so far (a Query may run several COPYs).
    copies_started: u32,
    /// A Sync pgwarden sent on its own: its ReadyForQuery is not the client's.
    hidden: bool,
    /// Binds sent before this message ([`crate::session::state::Portal::bound`]): the
    /// portals a ReadyForQuery ends are the ones bound before what it answers.
    binds_before: u64,
    /// An Execute (or pgwarden's Describe before it): the portal it runs, as bound, and the
    /// prepared statement behind it. If the server turns out not to have made that portal
    /// or statement, its results are not the `analysis` recorded here.
    origin: Option<Box<Origin>>,
    /// The server did not carry out the Parse or Bind behind `origin`.
    origin_lost: bool,
    /// A Parse that defined a statement in pgwarden's session state (name, text): undone if
    /// the server does not define it.
    defines: Option<(Bytes, Bytes)>,
    /// The session's named things before this message's SQL statements changed them: put
    /// back if an error stops them.
    names_before: Option<Box<NamesBefore>>,
    /// What this Query leaves for certain if it runs without error outside a transaction.
    settles: Option<Settled>,
    /// A Bind or Close that changed the session's record of a portal.
    portal: Option<Box<PortalChange>>,
    /// A Close of a prepared statement: what it took away.
    closed: Option<Box<ClosedStatement>>,
}

/// Where the results of an Execute come from, as pgwarden recorded it when sending it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// [`Portal::bound`] of the portal.
    pub bound: u64,
    /// The prepared statement's name and text.
    pub statement: Bytes,
    pub sql: Bytes,
}

/// The session's record of a portal before and after a Bind or Close changed it: put back if
/// the server refuses or skips the message (a Bind to a name a portal or cursor already has
/// fails, a Bind or Close after an error is skipped, and ROLLBACK TO SAVEPOINT keeps the
/// older portal usable).
#[derive(Debug)]
pub struct PortalChange {
    pub name: Bytes,
    pub before: Option<Portal>,
    /// The [`Portal::bound`] of the record the message left (`None`: it closed the portal).
    pub after: Option<u64>,
}

impl Pending {
    fn new(expect: Expect, run: Option<Running>, analysis: Option<Arc<Analysis>>) -> Self {
        Self {
            expect,
            run,
            refusal: None,
            rows: 0,
            data_rows: 0,
            command: None,
            sqlstate: None,
            analysis,
            results: 0,
            masked: Default::default(),
            in_copy: None,
            copy_in_expected: false,
            copies_started: 0,
            hidden: false,
            binds_before: 0,
            origin: None,
            origin_lost: false,
            defines: None,
            names_before: None,
            settles: None,
            portal: None,
            closed: None,
        }
    }

    /// The outcome of an audited statement (nothing for messages that are not one).
    fn finish(mut self, skipped: bool) -> Option<Finished> {
        let run = self.run.take()?;
        Some(Finished {
            statement: run.statement,
            started: run.started,
            command: self.command,
            rows: self.rows,
            sqlstate: self.sqlstate,
            skipped,
            not_as_recorded: self.origin_lost,
            masked: self.masked,
            unanswered: false,
        })
    }
}

/// What to do with a server frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Rewrite {
    Keep,
    /// Send this error instead of the frame (the refused message's slot).
    Replace(Box<ClientError>),
    /// The answer to a message the client did not send: not forwarded.
    Drop,
}

#[derive(Debug, Default)]
pub struct Tracker {
    queue: VecDeque<Pending>,
    /// The number of the last Bind sent.
    last_bind: u64,
    /// Outcomes ready to be recorded.
    pub finished: Vec<Finished>,
    /// What the server's answers showed the session state must be told (it was updated
    /// when the messages were sent): see [`Correction`].
    pub corrections: Vec<Correction>,
}

/// What the session state, updated when a message was sent, learns from the server's answer.
#[derive(Debug)]
pub enum Correction {
    /// A statement recorded at its Parse (name, text) that the server did not define: the
    /// Parse failed, or was skipped after an earlier error.
    Undefined(Bytes, Bytes),
    /// A message whose SQL statements an error stopped: the names before them, the
    /// statements, and how many of them ran.
    Stopped(Box<NamesBefore>, Arc<Analysis>, usize),
    /// A search_path or role now known for certain: a Query that set it ran without error,
    /// outside a transaction, with nothing sent after it still unanswered.
    Settled(Settled),
    /// A message whose SQL statements an error stopped, while messages sent after it that
    /// also change names are unanswered: which names those saw is uncertain, so the names
    /// this one changed are forgotten (an EXECUTE of a forgotten name is refused, a FETCH
    /// from a forgotten cursor masked as unknown).
    Forget(Box<NamesBefore>),
    /// A Bind or Close of a portal the server did not carry out.
    PortalUndone(Box<PortalChange>),
    /// A Close of a prepared statement the server skipped.
    Unclosed(Box<ClosedStatement>),
    /// Messages no ReadyForQuery will answer: Syncs sent during COPY FROM STDIN, Queries
    /// and FunctionCalls the server skipped after an extended-protocol error.
    Unanswered(usize),
    /// An extended-protocol message failed and no Sync has been sent after it yet: the server
    /// discards whatever the client sends until its next Sync.
    SkippingUntilSync,
}

/// What a lone SET or RESET leaves the session with once the server has run it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Settled {
    pub search_path: Option<Vec<String>>,
    pub role: Option<String>,
}

impl Tracker {
    fn enqueue(&mut self, mut pending: Pending) {
        pending.binds_before = self.last_bind;
        if let (Expect::Bind, Some(bound)) = (
            pending.expect,
            pending.portal.as_ref().and_then(|change| change.after),
        ) {
            self.last_bind = bound;
        }
        self.queue.push_back(pending);
    }

    /// The Binds sent before the message the next ReadyForQuery answers, if one is awaited.
    pub fn binds_before_ready(&self) -> Option<u64> {
        self.queue
            .iter()
            .find(|p| {
                matches!(
                    p.expect,
                    Expect::Sync | Expect::Query | Expect::FunctionCall
                )
            })
            .map(|p| p.binds_before)
    }

    pub fn push(&mut self, expect: Expect, run: Option<Running>) {
        self.enqueue(Pending::new(expect, run, None));
    }

    /// A message whose results come from `analysis`'s statements.
    pub fn push_for(
        &mut self,
        expect: Expect,
        run: Option<Running>,
        analysis: Option<Arc<Analysis>>,
    ) {
        self.enqueue(Pending::new(expect, run, analysis));
    }

    /// A message running SQL statements that changed the session's named things.
    pub fn push_changing_names(
        &mut self,
        expect: Expect,
        run: Option<Running>,
        analysis: Option<Arc<Analysis>>,
        names_before: Option<Box<NamesBefore>>,
    ) {
        let mut pending = Pending::new(expect, run, analysis);
        pending.names_before = names_before;
        self.enqueue(pending);
    }

    /// The Query just pushed leaves this search_path and/or role if it runs without error
    /// outside a transaction.
    pub fn settles(&mut self, settled: Settled) {
        if let Some(last) = self.queue.back_mut() {
            last.settles = Some(settled);
        }
    }

    /// A Parse that defines statement `name` as `sql` in the session state.
    pub fn push_parse(&mut self, name: Bytes, sql: Bytes) {
        let mut pending = Pending::new(Expect::Parse, None, None);
        pending.defines = Some((name, sql));
        self.enqueue(pending);
    }

    /// Whether a Parse still unanswered defines statement `name` as `sql`.
    pub fn defines(&self, name: &[u8], sql: &[u8]) -> bool {
        self.queue.iter().any(|p| {
            p.defines
                .as_ref()
                .is_some_and(|(n, s)| n == name && s == sql)
        })
    }

    /// A Close of a prepared statement.
    pub fn push_statement_close(&mut self, closed: ClosedStatement) {
        let mut pending = Pending::new(Expect::Close, None, None);
        pending.closed = Some(Box::new(closed));
        self.enqueue(pending);
    }

    /// A Bind or Close that changed the record of a portal.
    pub fn push_portal_change(&mut self, expect: Expect, change: PortalChange) {
        let mut pending = Pending::new(expect, None, None);
        pending.portal = Some(Box::new(change));
        self.enqueue(pending);
    }

    /// The message just pushed brings the results of this portal and statement.
    pub fn set_origin(&mut self, origin: Origin) {
        if let Some(last) = self.queue.back_mut() {
            last.origin = Some(Box::new(origin));
        }
    }

    /// A Parse (`statement`) or Bind (`bound`) the server did not carry out: messages still
    /// unanswered that were sent as running what it made run something else, unknown to
    /// pgwarden (their results are masked as unknown).
    fn unknown_origin(&mut self, bound: Option<u64>, statement: Option<(&Bytes, &Bytes)>) {
        for pending in &mut self.queue {
            // A Parse of the same text sent again defines the statement from there on.
            if statement.is_some()
                && pending.defines.as_ref().map(|(name, sql)| (name, sql)) == statement
            {
                break;
            }
            let Some(origin) = pending.origin.as_deref() else {
                continue;
            };
            if Some(origin.bound) == bound || Some((&origin.statement, &origin.sql)) == statement {
                pending.analysis = None;
                pending.origin_lost = true;
            }
        }
    }

    /// The message just pushed runs a COPY FROM STDIN.
    pub fn expect_copy_in(&mut self) {
        if let Some(last) = self.queue.back_mut() {
            last.copy_in_expected = true;
        }
    }

    /// A COPY FROM STDIN was sent and has neither started nor been answered otherwise.
    pub fn awaits_copy_in(&self) -> bool {
        self.queue.iter().any(|p| p.copy_in_expected)
    }

    /// A Sync sent after a message that may run COPY FROM STDIN, once the client has ended
    /// `copies_ended` of its COPYs (with CopyDone or CopyFail): the server ignores it if it
    /// reads it in the next COPY's copy-in mode.
    pub fn push_sync_in_copy(&mut self, copies_ended: u32) {
        let mut pending = Pending::new(Expect::Sync, None, None);
        pending.in_copy = Some(copies_ended);
        self.enqueue(pending);
    }

    /// A Sync pgwarden sent on its own ([`Self::segment_open`]): its ReadyForQuery is dropped.
    pub fn push_hidden_sync(&mut self) {
        let mut pending = Pending::new(Expect::Sync, None, None);
        pending.hidden = true;
        self.enqueue(pending);
    }

    /// A refused message, replaced upstream by [`write_inert`] with the given shape.
    pub fn push_refused(&mut self, expect: Expect, refusal: ClientError) {
        let mut pending = Pending::new(expect, None, None);
        pending.refusal = Some(Box::new(refusal));
        self.enqueue(pending);
    }

    /// The statement the next result belongs to: the analysis of the message being
    /// answered and the statement's index in it.
    pub fn current_statement(&self) -> Option<(&Arc<Analysis>, usize)> {
        let front = self.queue.front()?;
        Some((front.analysis.as_ref()?, front.results))
    }

    /// Whether the message being answered is a Parse: its errors and notices come from
    /// parse analysis, which reads no table data.
    pub fn answering_parse(&self) -> bool {
        self.queue
            .front()
            .is_some_and(|p| p.expect == Expect::Parse)
    }

    /// Count what masking did toward the message being answered.
    pub fn add_masked(&mut self, counts: crate::masking::rewrite::Counts) {
        if let Some(front) = self.queue.front_mut() {
            front.masked.merge(counts);
        }
    }

    /// Whether a server message of type `tag` may come now: it answers the message at the
    /// front of the queue, or it may come at any time (notices, notifications, parameter
    /// changes, errors). Anything else means pgwarden no longer knows which message a
    /// response answers, so masking would apply the wrong statement's columns and the audit
    /// would credit the wrong statement: the caller ends the session instead.
    pub fn fits(&self, tag: u8) -> bool {
        use Expect::*;
        if matches!(tag, b'N' | b'A' | b'S' | b'E') {
            return true;
        }
        let Some(front) = self.queue.front() else {
            return false;
        };
        match tag {
            b'1' => front.expect == Parse,
            b'2' => front.expect == Bind,
            b'3' => front.expect == Close,
            b't' => front.expect == Describe,
            b'n' => matches!(front.expect, Describe | HiddenDescribe),
            b'T' => matches!(front.expect, Describe | HiddenDescribe | Query),
            // Rows, results and COPY (both directions start here; data and done for COPY TO).
            b'D' | b'C' | b'I' | b'G' | b'H' | b'd' | b'c' => {
                matches!(front.expect, Execute | Query)
            }
            b's' => front.expect == Execute,
            b'V' => front.expect == FunctionCall,
            b'Z' => matches!(front.expect, Sync | Query | FunctionCall),
            _ => false,
        }
    }

    /// A message sent since the last Sync is unanswered: if it fails, the server skips what
    /// the client sends next until its Sync. (A Sync sent during COPY FROM STDIN may be
    /// ignored by the server, so it does not count as one.)
    pub fn segment_may_fail(&self) -> bool {
        self.queue
            .back()
            .is_some_and(|last| last.expect != Expect::Sync || last.in_copy.is_some())
    }

    /// Extended-protocol messages were sent after the last Sync: the server holds their
    /// answers until a Sync (or Flush) comes.
    pub fn segment_open(&self) -> bool {
        self.queue.back().is_some_and(|last| {
            !matches!(
                last.expect,
                Expect::Sync | Expect::Query | Expect::FunctionCall
            )
        })
    }

    /// Every message sent has been answered.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Messages sent and not answered yet.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Account for one server frame.
    pub fn on_server(&mut self, tag: u8, body: &[u8]) -> Rewrite {
        let Some(front) = self.queue.front_mut() else {
            return Rewrite::Keep;
        };
        match (tag, front.expect) {
            (b'1', Expect::Parse)
            | (b'2', Expect::Bind)
            | (b'3', Expect::Close)
            | (b'n' | b'T', Expect::Describe) => {
                self.queue.pop_front();
            }
            (b'n' | b'T', Expect::HiddenDescribe) => {
                self.queue.pop_front();
                return Rewrite::Drop;
            }
            (b'I', Expect::Query) => front.results += 1,
            // The COPY started: the Syncs sent during it are ignored by the server. Only
            // its own: those before the next statement (a later COPY's are its own affair),
            // sent after the message's earlier COPYs ended (those went to the main loop).
            (b'G', Expect::Execute | Expect::Query) => {
                front.copy_in_expected = false;
                let this_start = Some(front.copies_started);
                front.copies_started += 1;
                let this_copy = self
                    .queue
                    .iter()
                    .skip(1)
                    .position(|p| matches!(p.expect, Expect::Execute | Expect::Query))
                    .map_or(self.queue.len(), |next| next + 1);
                let mut ignored = 0;
                let mut index = 0;
                self.queue.retain(|p| {
                    index += 1;
                    let drop = index <= this_copy && p.in_copy == this_start;
                    ignored += usize::from(drop);
                    !drop
                });
                if ignored > 0 {
                    self.corrections.push(Correction::Unanswered(ignored));
                }
            }
            (b'C', Expect::Execute | Expect::Query) => {
                front.results += 1;
                front.rows += rows_of(body);
                front.command = Some(command_of(body));
                if front.expect == Expect::Execute {
                    self.finish_front(false);
                }
            }
            (b'D', Expect::Execute) => front.data_rows += 1,
            (b's', Expect::Execute) => {
                front.rows = front.data_rows;
                self.finish_front(false);
            }
            (b'I', Expect::Execute) => self.finish_front(false),
            (b'E', _) => return self.on_error(body),
            (b'Z', _) => {
                // The answer to pgwarden's own Sync is not the client's.
                let hidden = self.on_ready(body.first().copied());
                return if hidden { Rewrite::Drop } else { Rewrite::Keep };
            }
            _ => {}
        }
        Rewrite::Keep
    }

    fn on_error(&mut self, body: &[u8]) -> Rewrite {
        let sqlstate = sqlstate_of(body);
        // pgwarden's own Describe of a portal failing (e.g. the portal does not exist) is
        // the failure of the Execute it precedes: the error belongs to that statement.
        if self
            .queue
            .front()
            .is_some_and(|p| p.expect == Expect::HiddenDescribe)
        {
            self.queue.pop_front();
        }
        let Some(front) = self.queue.front_mut() else {
            return Rewrite::Keep;
        };
        let rewrite = front.refusal.take().map_or(Rewrite::Keep, Rewrite::Replace);
        match front.expect {
            // The ReadyForQuery that follows ends these.
            Expect::Query | Expect::FunctionCall => {
                front.sqlstate = front.sqlstate.or(sqlstate);
                if let (Some(before), Some(analysis)) =
                    (front.names_before.take(), front.analysis.clone())
                {
                    let ran = front.results;
                    let undo = if self.queue.iter().skip(1).any(|p| p.names_before.is_some()) {
                        Correction::Forget(before)
                    } else {
                        Correction::Stopped(before, analysis, ran)
                    };
                    self.corrections.push(undo);
                }
            }
            // An error at Sync (e.g. a deferred constraint at the implicit commit) answers
            // no statement still in flight; the Sync remembers it (nothing it settles held).
            Expect::Sync => front.sqlstate = front.sqlstate.or(sqlstate),
            // Extended protocol: the server now skips everything up to Sync, simple Queries
            // and FunctionCalls included.
            _ => {
                front.sqlstate = sqlstate;
                let mut first = true;
                let mut undo = Vec::new();
                let mut unanswered = 0;
                while let Some(pending) = self.queue.front() {
                    if pending.expect == Expect::Sync {
                        break;
                    }
                    let Some(mut pending) = self.queue.pop_front() else {
                        break;
                    };
                    let names = pending.names_before.take().zip(pending.analysis.clone());
                    undo.push((
                        pending.defines.take(),
                        names,
                        pending.portal.take(),
                        pending.closed.take(),
                    ));
                    if matches!(pending.expect, Expect::Query | Expect::FunctionCall) {
                        unanswered += 1;
                    }
                    if let Some(done) = pending.finish(!first) {
                        self.finished.push(done);
                    }
                    first = false;
                }
                let later_names = self.queue.iter().any(|p| p.names_before.is_some());
                // Last in, first out: each undo then finds the session as its message left it.
                for (defines, names, portal, closed) in undo.into_iter().rev() {
                    if let Some(closed) = closed {
                        self.corrections.push(Correction::Unclosed(closed));
                    }
                    if let Some((name, sql)) = defines {
                        self.unknown_origin(None, Some((&name, &sql)));
                        // The same Parse sent again behind this one defines it after all (or
                        // is undone in turn).
                        if !self.defines(&name, &sql) {
                            self.corrections.push(Correction::Undefined(name, sql));
                        }
                    }
                    if let Some((before, analysis)) = names {
                        self.corrections.push(if later_names {
                            Correction::Forget(before)
                        } else {
                            Correction::Stopped(before, analysis, 0)
                        });
                    }
                    if let Some(change) = portal {
                        self.undo_portal_change(change);
                    }
                }
                if unanswered > 0 {
                    self.corrections.push(Correction::Unanswered(unanswered));
                }
                match self.queue.front_mut() {
                    // The Sync this skipped to answers a failed pipeline: nothing it would
                    // settle is certain.
                    Some(sync) => sync.sqlstate = sync.sqlstate.or(sqlstate),
                    // What the client sends next is skipped too, until it sends a Sync.
                    None => self.corrections.push(Correction::SkippingUntilSync),
                }
            }
        }
        rewrite
    }

    /// A Bind or Close of a portal that did not happen. A message still unanswered
    /// that changes the same portal started from this one's result: it now starts from what
    /// was there before this one (so that its own undo, if it fails too, puts that back).
    /// Otherwise the session's record is put back.
    fn undo_portal_change(&mut self, change: Box<PortalChange>) {
        if change.after.is_some() {
            self.unknown_origin(change.after, None);
        }
        let later = self
            .queue
            .iter_mut()
            .filter_map(|p| p.portal.as_mut())
            .find(|later| later.name == change.name);
        match later {
            Some(later) => later.before = change.before,
            None => self.corrections.push(Correction::PortalUndone(change)),
        }
    }

    /// Returns whether the ReadyForQuery answers a Sync pgwarden sent on its own.
    fn on_ready(&mut self, status: Option<u8>) -> bool {
        while let Some(mut pending) = self.queue.pop_front() {
            if let Some((name, sql)) = pending.defines.take() {
                if !self.defines(&name, &sql) {
                    self.corrections.push(Correction::Undefined(name, sql));
                }
            }
            if let Some(settled) = pending.settles.take() {
                if pending.sqlstate.is_none() && status == Some(b'I') && self.queue.is_empty() {
                    self.corrections.push(Correction::Settled(settled));
                }
            }
            let ends = matches!(
                pending.expect,
                Expect::Sync | Expect::Query | Expect::FunctionCall
            );
            let hidden = pending.hidden;
            self.finished.extend(pending.finish(!ends));
            if ends {
                return hidden;
            }
        }
        false
    }

    /// The session ends with messages unanswered: their statements' outcomes are not known,
    /// and are recorded as such.
    pub fn abandon(&mut self) {
        for pending in self.queue.drain(..) {
            if let Some(mut done) = pending.finish(false) {
                done.unanswered = true;
                self.finished.push(done);
            }
        }
    }

    fn finish_front(&mut self, skipped: bool) {
        if let Some(done) = self.queue.pop_front().and_then(|p| p.finish(skipped)) {
            self.finished.push(done);
        }
    }
}

/// Write the message that stands in for a refused one: a Query for the simple-protocol
/// slots (Query, FunctionCall: answered by ErrorResponse + ReadyForQuery), a Parse for the
/// extended ones (answered by ErrorResponse, then the server skips to Sync).
pub fn write_inert(out: &mut bytes::BytesMut, expect: Expect) {
    match expect {
        Expect::Query | Expect::FunctionCall => {
            out.put_u8(b'Q');
            out.put_i32((4 + INERT_QUERY.len() + 1) as i32);
            out.put_slice(INERT_QUERY.as_bytes());
            out.put_u8(0);
        }
        _ => {
            // Named, so that the client's unnamed statement survives (an unnamed Parse would
            // drop it before failing); a Parse that fails creates nothing.
            const NAME: &[u8] = b"pgwarden_refused";
            out.put_u8(b'P');
            out.put_i32((4 + NAME.len() + 1 + INERT_QUERY.len() + 1 + 2) as i32);
            out.put_slice(NAME);
            out.put_u8(0);
            out.put_slice(INERT_QUERY.as_bytes());
            out.put_u8(0);
            out.put_i16(0);
        }
    }
}

/// Rows from a CommandComplete tag: the last number of `INSERT 0 5`, `SELECT 3`, `UPDATE 2`.
fn rows_of(body: &[u8]) -> u64 {
    let tag = body.strip_suffix(b"\0").unwrap_or(body);
    let last = tag.rsplit(|&b| b == b' ').next().unwrap_or_default();
    if last.is_empty() || !last.iter().all(u8::is_ascii_digit) || last.len() > 19 {
        return 0;
    }
    last.iter().fold(0u64, |n, d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    })
}

/// The command of a CommandComplete tag, without its counts (`INSERT`, `CREATE TABLE`).
fn command_of(body: &[u8]) -> String {
    let tag = body.strip_suffix(b"\0").unwrap_or(body);
    let words: Vec<&[u8]> = tag
        .split(|&b| b == b' ')
        .filter(|w| !w.is_empty() && !w.iter().all(u8::is_ascii_digit))
        .collect();
    String::from_utf8_lossy(&words.join(&b' ')).into_owned()
}

/// The SQLSTATE (`C` field) of an ErrorResponse body.
fn sqlstate_of(body: &[u8]) -> Option<[u8; 5]> {
    let mut rest = body;
    while let Some((&code, tail)) = rest.split_first() {
        if code == 0 {
            return None;
        }
        let end = tail.iter().position(|&b| b == 0)?;
        if code == b'C' {
            return tail[..end].try_into().ok();
        }
        rest = &tail[end + 1..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::SqlState;

    fn run(n: u64) -> Option<Running> {
        Some(Running {
            statement: n,
            started: Instant::now(),
        })
    }

    #[test]
    fn tags_give_rows_and_commands() {
        assert_eq!(rows_of(b"INSERT 0 5\0"), 5);
        assert_eq!(rows_of(b"SELECT 3\0"), 3);
        assert_eq!(rows_of(b"BEGIN\0"), 0);
        assert_eq!(command_of(b"INSERT 0 5\0"), "INSERT");
        assert_eq!(command_of(b"CREATE TABLE\0"), "CREATE TABLE");
        assert_eq!(sqlstate_of(b"SERROR\0C42P01\0Mno\0\0"), Some(*b"42P01"));
    }

    #[test]
    fn a_pipeline_error_skips_to_sync_and_swaps_the_refused_slot() {
        let mut t = Tracker::default();
        // Parse/Bind/Execute (statement 1), then a refused Execute (replaced by a Parse),
        // a Describe the client sent after it, Sync; then a simple Query (statement 3).
        t.push(Expect::Parse, None);
        t.push(Expect::Bind, None);
        t.push(Expect::Execute, run(1));
        t.push_refused(
            Expect::Parse,
            ClientError::error(SqlState::IO_ERROR, "refused"),
        );
        t.push(Expect::Sync, None);
        t.push(Expect::Query, run(3));
        assert_eq!(t.on_server(b'1', b""), Rewrite::Keep);
        assert_eq!(t.on_server(b'2', b""), Rewrite::Keep);
        t.on_server(b'D', b"");
        t.on_server(b'C', b"SELECT 1\0");
        assert_eq!(t.finished.len(), 1);
        assert_eq!(t.finished[0].rows, 1);
        let rewrite = t.on_server(b'E', b"SERROR\0C42601\0Mx\0\0");
        assert!(matches!(rewrite, Rewrite::Replace(e) if e.message == "refused"));
        t.on_server(b'Z', b"I");
        t.on_server(b'C', b"UPDATE 4\0");
        t.on_server(b'Z', b"I");
        assert_eq!(t.finished.len(), 2);
        assert_eq!((t.finished[1].statement, t.finished[1].rows), (3, 4));
        assert!(t.queue.is_empty());
    }

    #[test]
    fn syncs_sent_during_copy_in_are_ignored_once_the_copy_starts() {
        // tokio-postgres: Bind, Execute, Sync, CopyData…, CopyDone, Sync; the server ignores
        // the first Sync because copy-in began.
        let mut t = Tracker::default();
        t.push(Expect::Bind, None);
        t.push(Expect::HiddenDescribe, None);
        t.push(Expect::Execute, run(1));
        t.push_sync_in_copy(0);
        // CopyDone ends copy-in mode: the next Sync counts (an Execute runs one COPY).
        t.push_sync_in_copy(1);
        t.push(Expect::Describe, None);
        assert_eq!(t.on_server(b'2', b""), Rewrite::Keep);
        assert_eq!(
            t.on_server(b'n', b""),
            Rewrite::Drop,
            "pgwarden's own Describe"
        );
        t.on_server(b'G', b"");
        t.on_server(b'C', b"COPY 3\0");
        t.on_server(b'Z', b"I");
        assert_eq!(t.finished.len(), 1);
        // The client's Describe that followed is answered next, not swallowed.
        assert_eq!(t.on_server(b'n', b""), Rewrite::Keep);
        assert!(t.queue.is_empty());
    }

    #[test]
    fn a_sync_after_one_copy_of_a_query_goes_to_the_next_copy_if_it_starts() {
        // Query "COPY …; COPY …": the Sync sent with the first CopyDone is read by the
        // second COPY, if it starts; one sent after the second CopyDone is answered.
        let mut t = Tracker::default();
        t.push(Expect::Query, run(1));
        t.push_sync_in_copy(1);
        t.on_server(b'G', b"");
        assert_eq!(t.queue.len(), 2, "the first COPY did not take it");
        t.on_server(b'C', b"COPY 1\0");
        t.push_sync_in_copy(2);
        t.on_server(b'G', b"");
        assert_eq!(t.queue.len(), 2, "the second COPY took the first Sync");
        t.on_server(b'C', b"COPY 1\0");
        t.on_server(b'Z', b"I");
        assert!(t.fits(b'Z'));
        t.on_server(b'Z', b"I");
        assert!(t.queue.is_empty());
        // The second COPY failed before starting: the Sync is answered after the Query.
        t.push(Expect::Query, run(2));
        t.push_sync_in_copy(1);
        t.on_server(b'G', b"");
        t.on_server(b'C', b"COPY 1\0");
        t.on_server(b'E', b"SERROR\0C42P01\0Mno\0\0");
        t.on_server(b'Z', b"I");
        assert_eq!(t.queue.len(), 1);
        assert!(t.fits(b'Z'));
    }

    #[test]
    fn the_ready_for_query_of_pgwardens_own_sync_is_dropped() {
        let mut t = Tracker::default();
        t.push(Expect::Execute, run(1));
        assert!(t.segment_open());
        t.push_hidden_sync();
        assert!(!t.segment_open());
        t.on_server(b'C', b"SELECT 1\0");
        assert_eq!(t.on_server(b'Z', b"I"), Rewrite::Drop);
        assert!(t.queue.is_empty());
        assert_eq!(t.finished.len(), 1);
    }

    #[test]
    fn an_error_at_pgwardens_describe_is_the_executes_error() {
        let mut t = Tracker::default();
        t.push(Expect::HiddenDescribe, None);
        t.push(Expect::Execute, run(1));
        t.push(Expect::Sync, None);
        assert_eq!(
            t.on_server(b'E', b"SERROR\0C34000\0Mportal does not exist\0\0"),
            Rewrite::Keep,
            "the client sees the error"
        );
        t.on_server(b'Z', b"I");
        let outcome: Vec<_> = t
            .finished
            .iter()
            .map(|f| (f.statement, f.sqlstate, f.skipped))
            .collect();
        assert_eq!(outcome, [(1, Some(*b"34000"), false)]);
    }

    #[test]
    fn only_answers_to_what_was_sent_fit() {
        let mut t = Tracker::default();
        // Nothing in flight: only what the server may send at any time.
        for tag in [b'N', b'A', b'S', b'E'] {
            assert!(t.fits(tag), "{}", tag as char);
        }
        for tag in [b'D', b'T', b'C', b'Z', b'1', b'G', b'K', b'R', b'W', b'x'] {
            assert!(!t.fits(tag), "{} with nothing in flight", tag as char);
        }
        t.push(Expect::Parse, None);
        t.push(Expect::Describe, None);
        t.push(Expect::Execute, run(1));
        t.push(Expect::Sync, None);
        assert!(!t.fits(b'2') && !t.fits(b'D') && !t.fits(b'Z'));
        t.on_server(b'1', b"");
        assert!(t.fits(b't') && t.fits(b'T') && !t.fits(b'D'));
        t.on_server(b't', b"");
        t.on_server(b'T', b"");
        assert!(t.fits(b'D') && t.fits(b's') && !t.fits(b'T') && !t.fits(b'Z'));
        t.on_server(b'C', b"SELECT 1\0");
        assert!(t.fits(b'Z') && !t.fits(b'D'));
        t.on_server(b'Z', b"I");
        assert!(!t.fits(b'Z'), "a second ReadyForQuery for one Sync");
        t.push(Expect::FunctionCall, None);
        assert!(t.fits(b'V') && !t.fits(b'D'));
    }

    #[test]
    fn executes_skipped_after_an_error_are_marked() {
        let mut t = Tracker::default();
        t.push(Expect::Bind, None);
        t.push(Expect::Execute, run(1));
        t.push(Expect::Execute, run(2));
        t.push(Expect::Sync, None);
        t.on_server(b'2', b"");
        t.on_server(b'E', b"SERROR\0C22012\0Mx\0\0");
        t.on_server(b'Z', b"E");
        let outcome: Vec<_> = t
            .finished
            .iter()
            .map(|f| (f.statement, f.sqlstate, f.skipped))
            .collect();
        assert_eq!(outcome, [(1, Some(*b"22012"), false), (2, None, true)]);
    }
}
