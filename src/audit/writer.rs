//! The writer. Whoever records an event appends it to the current file itself, under a
//! mutex: sealing and one `write(2)` into the page cache take a few microseconds, and a full
//! disk or a permission problem shows at that very call, so a statement's record is known to
//! be written before the statement is forwarded. No thread hand-off sits on that path.
//!
//! Durability is the syncer thread's job: it fsyncs whatever was written since its last
//! fsync (group commit: one fsync covers everything written meanwhile) and answers those
//! waiting for it. With `fsync = "always"` a statement also waits for the fsync covering its
//! record; with `"batch"` it does not, and the fsync follows within the batch window.
//!
//! Files rotate by size and by UTC day; every file starts with a `file.start` record, and
//! the chain continues across files.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use tokio::sync::oneshot;
use tracing::{error, info, warn};

use super::checkpoint::SigningKey;
use super::event::Event;
use super::record::{self, Prepared, GENESIS};
use super::{file_name, list_files, AuditError, FsyncPolicy, Settings};

type Ack = oneshot::Sender<Result<(), String>>;

/// With `fsync = "batch"`, records nobody waits for are fsynced within this long; with
/// `"buffered"`, they are also written within it.
pub const BACKGROUND_SYNC_INTERVAL: Duration = Duration::from_millis(10);

/// With `fsync = "buffered"`, records waiting for the syncer are written by whoever adds
/// to them once they hold this many bytes (a few thousand records: the syncer is behind).
const BUFFER_LIMIT: usize = 1 << 20;

/// A handle to the audit log; cheap to clone. The log closes (final fsync, syncer thread
/// ends) when the last handle is dropped.
#[derive(Debug, Clone)]
pub struct AuditLog {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    writer: Mutex<Writer>,
    syncer: Arc<Syncer>,
    fsync: FsyncPolicy,
    healthy: AtomicBool,
    /// Events that could not be written, reported in the next `log.write_failed` record.
    dropped: AtomicU64,
    /// Every event lost so far (for /metrics; the writer counts its own losses into it).
    lost_total: Counter,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.syncer.stop();
        if let Ok(writer) = self.writer.get_mut() {
            if writer.deferred > 0 {
                let _ = writer.write_pending();
            }
            if let Err(e) = writer.sync_now() {
                error!(error = %e, "final audit fsync failed");
            }
        }
    }
}

impl AuditLog {
    /// Open (or create) the log in `settings.dir`, continuing the chain of what is there.
    /// The thread returned is the syncer's; it ends once every handle is dropped.
    pub fn open(settings: Settings) -> Result<(Self, std::thread::JoinHandle<()>), AuditError> {
        let fsync = settings.fsync;
        let window = match fsync {
            FsyncPolicy::Batch | FsyncPolicy::Buffered => settings.batch_window,
            FsyncPolicy::Always => Duration::ZERO,
        };
        let writer = Writer::recover(settings)?;
        let syncer = Arc::new(Syncer::default());
        let lost_total = writer.lost_total.clone();
        let shared = Arc::new(Shared {
            writer: Mutex::new(writer),
            syncer: syncer.clone(),
            fsync,
            healthy: AtomicBool::new(true),
            dropped: AtomicU64::new(0),
            lost_total,
        });
        let log = Arc::downgrade(&shared);
        let thread = std::thread::Builder::new()
            .name("pgwarden-audit-sync".into())
            .spawn(move || syncer.run(window, &log))
            .map_err(|e| AuditError::Io {
                action: "start the audit fsync thread".into(),
                source: e,
            })?;
        Ok((Self { shared }, thread))
    }

    /// Record an event without waiting for its fsync (a statement's outcome, a session's
    /// end). Fails, and counts the event as lost, when it cannot be written.
    pub async fn record(&self, event: Event) -> Result<(), AuditError> {
        self.append(&event).map(|_| ())
    }

    /// Record an event that may wait: it is sealed into the chain now and written with the
    /// next record, or by the syncer within [`BACKGROUND_SYNC_INTERVAL`] (a statement's
    /// outcome: one `write` then carries it and the next statement). Lost on a crash in
    /// that window, which `audit verify` cannot notice: use it only for what can be lost.
    pub fn record_later(&self, event: Event) {
        // A failure is counted as a loss and reported by the next record written.
        let _ = self.buffer(&event);
    }

    /// Record an event that must be on record before the action it describes happens (a
    /// statement, before it is forwarded): returns once it is written, with
    /// `fsync = "always"` once it is on disk, and with `"buffered"` once it is sealed into
    /// the chain (while the log writes; once a write failed, as with `"batch"`). Every call
    /// that writes is also an attempt to write, so the log recovers by itself once the disk
    /// does.
    pub async fn record_written(&self, event: Event) -> Result<(), AuditError> {
        match self.shared.fsync {
            FsyncPolicy::Buffered => self.buffer(&event),
            FsyncPolicy::Batch => self.append(&event).map(|_| ()),
            FsyncPolicy::Always => {
                let seq = self.append(&event)?;
                self.until_synced(seq).await
            }
        }
    }

    /// Record an event and wait until it is on disk.
    pub async fn record_durable(&self, event: Event) -> Result<(), AuditError> {
        let seq = self.append(&event)?;
        self.until_synced(seq).await
    }

    /// Append a signed checkpoint of everything recorded so far (nothing without a key).
    pub async fn checkpoint(&self) -> Result<(), AuditError> {
        let mut writer = self.lock()?;
        let result = writer.append_checkpoint();
        let signed = matches!(result, Ok(true));
        self.shared.written(&mut writer, result.map(|_| ()), 0)?;
        if signed {
            // Logged so that it lands outside the audit directory (journald, a log
            // collector): `audit verify --anchor` then proves the log still reaches it.
            info!(
                anchor = %format_args!("{}:{}", writer.seq, writer.prev_hash),
                "audit checkpoint written"
            );
        }
        Ok(())
    }

    /// Wait until everything recorded so far is on disk.
    pub async fn flush(&self) -> Result<(), AuditError> {
        let seq = self.lock()?.seq;
        self.until_synced(seq).await
    }

    /// How many events could not be written since the log was opened (a counter that
    /// /metrics shares).
    pub fn lost_events(&self) -> Counter {
        self.shared.lost_total.clone()
    }

    /// Records sealed but not yet written (statement outcomes; with `fsync = "buffered"`,
    /// everything of the last few milliseconds), for /metrics.
    pub fn pending_records(&self) -> u64 {
        self.lock().map_or(0, |writer| writer.deferred)
    }

    /// Whether the last write succeeded (readiness reports it).
    pub fn is_healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::Relaxed)
    }

    /// Count an event the caller could not record and went ahead without (with
    /// `audit.on_failure = "continue"`); the log reports the count once it can write again.
    pub fn count_lost(&self) {
        self.shared.drop_one();
    }

    fn lock(&self) -> Result<MutexGuard<'_, Writer>, AuditError> {
        // A panic while holding the lock leaves the chain position unknown: stop writing.
        self.shared
            .writer
            .lock()
            .map_err(|_| AuditError::Unavailable)
    }

    /// Seal one event to be written by the syncer, or at once when [`BUFFER_LIMIT`] bytes
    /// already wait. A failure is counted as a lost event.
    fn buffer(&self, event: &Event) -> Result<(), AuditError> {
        let (event, mut writer) = self.prepare_and_lock(event)?;
        // A loss or a failure is reported (and a failed file left) by the next record
        // written: write now rather than later. So does a full buffer.
        if writer.pending.len() >= BUFFER_LIMIT
            || !self.is_healthy()
            || writer.file.is_none()
            || writer.lost.1.is_some()
            || self.shared.dropped.load(Ordering::Relaxed) > 0
        {
            let result = writer.append_after_gap(&event, &self.shared.syncer, &self.shared.dropped);
            return self.shared.written(&mut writer, result, 1).map(|_| ());
        }
        if let Err(e) = writer.defer(&event) {
            return self.shared.written(&mut writer, Err(e), 1).map(|_| ());
        }
        if writer.deferred == 1 {
            self.shared.syncer.flush_soon();
        }
        Ok(())
    }

    /// Serialize `event`, then take the writer: serialized before the lock, others wait only
    /// for the chain fields and the write. A failure is counted as a lost event.
    fn prepare_and_lock(
        &self,
        event: &Event,
    ) -> Result<(Prepared, MutexGuard<'_, Writer>), AuditError> {
        let prepared = prepare(event).and_then(|prepared| Ok((prepared, self.lock()?)));
        if prepared.is_err() {
            self.shared.drop_one();
        }
        prepared
    }

    /// Seal and write one event; its seq on success.
    fn append(&self, event: &Event) -> Result<u64, AuditError> {
        let (event, mut writer) = self.prepare_and_lock(event)?;
        let result = writer.append_after_gap(&event, &self.shared.syncer, &self.shared.dropped);
        self.shared.written(&mut writer, result, 1)
    }

    async fn until_synced(&self, seq: u64) -> Result<(), AuditError> {
        let (ack, done) = oneshot::channel();
        self.shared.syncer.wait_for(seq, ack);
        match done.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(AuditError::Write(e)),
            Err(_) => Err(AuditError::Unavailable),
        }
    }
}

impl Shared {
    /// An event that could not even reach the writer.
    fn drop_one(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        self.lost_total.inc();
    }

    /// Bookkeeping after a write attempt of `events` events: health, losses, the syncer.
    fn written(
        &self,
        writer: &mut Writer,
        result: Result<(), AuditError>,
        events: u64,
    ) -> Result<u64, AuditError> {
        match result {
            Ok(()) => {
                let recovered = match &writer.file {
                    Some(open) => self
                        .syncer
                        .written(open.file.clone(), writer.seq, &self.healthy),
                    None => !self.healthy.swap(true, Ordering::AcqRel),
                };
                if recovered {
                    warn!("audit log writable again");
                }
                Ok(writer.seq)
            }
            Err(e) => {
                writer.lose(events);
                writer.lost.1.get_or_insert_with(|| e.to_string());
                if self.healthy.swap(false, Ordering::AcqRel) {
                    error!(error = %e, "audit log write failed; refusing what must be audited until it works again");
                }
                Err(e)
            }
        }
    }
}

#[derive(Debug)]
struct Writer {
    settings: Settings,
    key: Option<SigningKey>,
    /// Chain position including records sealed but not yet written.
    seq: u64,
    prev_hash: String,
    /// Chain position of the last record written to the file: where to resume after a
    /// failed write, so the chain never skips.
    written: (u64, String),
    file: Option<Open>,
    /// Name of the last file written, for the next `file.start`.
    last_file: Option<String>,
    /// Events lost to failed writes since the last success, and the first error.
    lost: (u64, Option<String>),
    /// Every event this writer lost, shared with [`Shared::lost_total`].
    lost_total: Counter,
    /// Sealed lines not yet written: the record being appended, after any deferred ones.
    pending: Vec<u8>,
    /// How many records in `pending` were deferred ([`AuditLog::record_later`]).
    deferred: u64,
}

#[derive(Debug)]
struct Open {
    file: Arc<File>,
    name: String,
    size: u64,
    day: u64,
}

impl Writer {
    /// Find where the chain stands: the last record of the newest file. A partial last line
    /// (crash mid-write) is sealed with a newline and reported in a `log.recovered` record.
    fn recover(settings: Settings) -> Result<Self, AuditError> {
        // Records say who ran what from where: not for every local user, whatever the umask
        // (PostgreSQL keeps its own logs from them too). Group access stays possible for
        // reviewers (see docs/audit.md).
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(&settings.dir)
            .map_err(|e| AuditError::Io {
                action: format!("create audit directory {}", settings.dir.display()),
                source: e,
            })?;
        let files = list_files(&settings.dir)?;
        let key = match &settings.signing_key {
            None => None,
            Some(pem) => Some(SigningKey::from_pem(pem.expose()).map_err(AuditError::Key)?),
        };
        let mut writer = Self {
            key,
            settings,
            seq: 0,
            prev_hash: GENESIS.to_owned(),
            written: (0, GENESIS.to_owned()),
            file: None,
            last_file: None,
            lost: (0, None),
            lost_total: Counter::default(),
            pending: Vec::with_capacity(4096),
            deferred: 0,
        };
        let Some(last) = files.last() else {
            return Ok(writer);
        };
        let path = writer.settings.dir.join(last);
        let mut text = Vec::new();
        File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut text))
            .map_err(|e| AuditError::Io {
                action: format!("read {}", path.display()),
                source: e,
            })?;
        let complete = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let torn = text.len() - complete;
        let last_line = text[..complete.saturating_sub(1)]
            .rsplit(|&b| b == b'\n')
            .next()
            .filter(|l| !l.is_empty());
        if let Some(line) = last_line {
            let line =
                std::str::from_utf8(line).map_err(|_| AuditError::CorruptTail(path.clone()))?;
            writer.prev_hash =
                record::check(line).map_err(|_| AuditError::CorruptTail(path.clone()))?;
            writer.seq =
                super::seq_of(line).ok_or_else(|| AuditError::CorruptTail(path.clone()))?;
            // This run's checkpoints will sign the chain, and so whatever it ends with now.
            // A clean stop ends with a checkpoint: anything after it is worth a word.
            if writer.key.is_some() && !line.contains(r#""type":"checkpoint""#) {
                warn!(
                    file = %last,
                    last_seq = writer.seq,
                    "the audit log does not end with a signed checkpoint: the last run was killed or crashed (or had no signing key), or records were added since; `pgwarden audit verify` points out what no signature vouches for"
                );
            }
        }
        writer.written = (writer.seq, writer.prev_hash.clone());
        writer.last_file = Some(last.clone());
        if torn > 0 {
            warn!(file = %last, torn_bytes = torn, "audit log ended in a partial record (crash?); sealing it");
            OpenOptions::new()
                .append(true)
                .open(&path)
                .and_then(|mut f| f.write_all(b"\n").and_then(|()| f.sync_all()))
                .map_err(|e| AuditError::Io {
                    action: format!("seal {}", path.display()),
                    source: e,
                })?;
            writer.append(&prepare(&Event::LogRecovered {
                file: last.clone(),
                torn_bytes: torn as u64,
            })?)?;
            writer.sync_now()?;
        }
        Ok(writer)
    }

    /// Drop the sealed records not yet written, counting them lost, and rewind the chain to
    /// the last record written.
    fn discard_deferred(&mut self) {
        if self.deferred > 0 {
            self.lose(self.deferred);
            self.deferred = 0;
            self.pending.clear();
            (self.seq, self.prev_hash) = self.written.clone();
        }
    }

    /// Count `events` lost: reported in the next `log.write_failed` record, and in /metrics.
    fn lose(&mut self, events: u64) {
        self.lost.0 += events;
        self.lost_total.inc_by(events);
    }

    /// Append `event`, preceded, after a failure, by a record of what was lost.
    fn append_after_gap(
        &mut self,
        event: &Prepared,
        syncer: &Syncer,
        dropped: &AtomicU64,
    ) -> Result<(), AuditError> {
        // A failed fsync may have lost what it covered: continue in a new file, and count it.
        if let Some((error, at_risk)) = syncer.take_failure() {
            self.file = None;
            self.lose(at_risk);
            self.lost.1.get_or_insert(error);
            // Records sealed for that file go with it, counted before the count is written.
            self.discard_deferred();
        }
        let lost_elsewhere = dropped.load(Ordering::Relaxed);
        if self.lost.1.is_some() || lost_elsewhere > 0 {
            let error = self
                .lost
                .1
                .clone()
                .unwrap_or_else(|| "the audit log was not accepting records".to_owned());
            let lost_events = self.lost.0 + lost_elsewhere;
            self.append(&prepare(&Event::WriteFailed { lost_events, error })?)?;
            warn!(lost_events, "audit log recorded the events it lost");
            dropped.fetch_sub(lost_elsewhere, Ordering::Relaxed);
            self.lost = (0, None);
        }
        self.append(event)
    }

    /// Append a signed checkpoint; false when there is no key to sign with.
    fn append_checkpoint(&mut self) -> Result<bool, AuditError> {
        if self.key.is_none() {
            return Ok(false);
        }
        // A rotation puts a file.start first: the checkpoint must sign that record.
        let now = now_ms();
        self.rotate_if_due(now)?;
        let Some(key) = &self.key else {
            return Ok(false);
        };
        let event = Event::Checkpoint {
            covers_seq: self.seq,
            covers_hash: self.prev_hash.clone(),
            key_id: key.key_id(),
            signature: key.sign(self.seq, &self.prev_hash),
        };
        self.seal(now, &prepare(&event)?);
        self.write_pending().map(|()| true)
    }

    /// Seal `event` and write it (with any deferred records before it).
    fn append(&mut self, event: &Prepared) -> Result<(), AuditError> {
        self.seal_next(event)?;
        self.write_pending()
    }

    /// Seal `event` to be written later.
    fn defer(&mut self, event: &Prepared) -> Result<(), AuditError> {
        self.seal_next(event)?;
        self.deferred += 1;
        Ok(())
    }

    /// Seal `event` into `pending`, starting a new file first if this one is full or from
    /// another day (deferred records are written to the file they were sealed for).
    fn seal_next(&mut self, event: &Prepared) -> Result<(), AuditError> {
        let now = now_ms();
        self.rotate_if_due(now)?;
        self.seal(now, event);
        Ok(())
    }

    /// Start a new file if this one is full or from another day.
    fn rotate_if_due(&mut self, now: u64) -> Result<(), AuditError> {
        let day = now / 86_400_000;
        let rotate = match &self.file {
            None => true,
            Some(open) => {
                open.size + self.pending.len() as u64 >= self.settings.rotate_size
                    || (self.settings.rotate_daily && open.day != day)
            }
        };
        if rotate {
            if self.deferred > 0 && self.file.is_some() {
                self.write_pending()?;
            }
            self.start_file(now)?;
        }
        Ok(())
    }

    fn seal(&mut self, now: u64, event: &Prepared) {
        let seq = self.seq + 1;
        let (line, hash) = record::seal(seq, now, &self.prev_hash, event);
        self.pending.extend_from_slice(line.as_bytes());
        self.pending.push(b'\n');
        self.seq = seq;
        self.prev_hash = hash;
    }

    fn start_file(&mut self, now: u64) -> Result<(), AuditError> {
        // The finished file is made durable before the next one starts, so a reviewer never
        // finds a later file on disk behind a shorter earlier one.
        self.sync_now()?;
        self.file = None;
        // Deferred records that could not be written with their file are lost (and counted).
        self.discard_deferred();
        let name = file_name(now, self.seq + 1);
        let path: PathBuf = self.settings.dir.join(&name);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .mode(0o640)
            .open(&path)
            .map_err(|e| AuditError::Io {
                action: format!("create {}", path.display()),
                source: e,
            })?;
        sync_dir(&self.settings.dir);
        self.file = Some(Open {
            file: Arc::new(file),
            name: name.clone(),
            size: 0,
            day: now / 86_400_000,
        });
        let start = prepare(&Event::FileStart {
            previous_file: self.last_file.clone(),
        })?;
        self.seal(now, &start);
        self.write_pending()?;
        // Only a file that holds its start record is one the next file follows.
        self.last_file = Some(name);
        Ok(())
    }

    /// Write the sealed line(s) to the current file (no fsync: that is the syncer's job).
    fn write_pending(&mut self) -> Result<(), AuditError> {
        let Some(open) = self.file.as_mut() else {
            let deferred = std::mem::take(&mut self.deferred);
            self.lose(deferred);
            self.pending.clear();
            (self.seq, self.prev_hash) = self.written.clone();
            return Err(AuditError::Write("no audit file open".into()));
        };
        let start = open.size;
        if let Err(e) = (&*open.file).write_all(&self.pending) {
            // Leave no partial line behind and rewind the chain to the last record written;
            // the next attempt starts a fresh file from there. A file left with nothing in
            // it is removed: no record was ever there, and its name is free for the retry.
            let _ = open.file.set_len(start);
            let name = open.name.clone();
            if start == 0 {
                let _ = std::fs::remove_file(self.settings.dir.join(&name));
                sync_dir(&self.settings.dir);
            }
            self.file = None;
            (self.seq, self.prev_hash) = self.written.clone();
            self.pending.clear();
            let deferred = std::mem::take(&mut self.deferred);
            self.lose(deferred);
            return Err(AuditError::Io {
                action: format!("write {name}"),
                source: e,
            });
        }
        open.size += self.pending.len() as u64;
        self.written = (self.seq, self.prev_hash.clone());
        self.pending.clear();
        self.deferred = 0;
        Ok(())
    }

    /// fsync the current file on this thread.
    fn sync_now(&mut self) -> Result<(), AuditError> {
        let Some(open) = &self.file else {
            return Ok(());
        };
        if let Err(e) = open.file.sync_data() {
            let action = format!("fsync {}", open.name);
            self.file = None;
            return Err(AuditError::Io { action, source: e });
        }
        Ok(())
    }
}

/// The fsync thread: fsyncs what was written since its last fsync (one fsync covers every
/// record written meanwhile), then answers those waiting for durability.
#[derive(Debug, Default)]
struct Syncer {
    state: Mutex<SyncState>,
    wake: Condvar,
}

#[derive(Debug, Default)]
struct SyncState {
    /// The file written last and the last seq written to it, not yet fsynced.
    due: Option<(Arc<File>, u64)>,
    /// Seq covered by the last fsync (successful or not).
    synced: u64,
    /// Waiting for an fsync to cover their seq.
    waiting: Vec<(u64, Ack)>,
    /// An fsync that failed, and how many records it left at risk; taken by the writer.
    failed: Option<(String, u64)>,
    /// Deferred records wait in the writer: write them before the next fsync.
    flush: bool,
    /// The thread is between waking and finishing an fsync: no need to wake it again.
    busy: bool,
    stop: bool,
}

impl Syncer {
    /// A record up to `seq` was written to `file`: the log is `healthy` again, unless a
    /// failed fsync waits to be taken ([`Self::take_failure`]: by the next append, which
    /// moves to a new file and puts the loss on record). Decided under the lock the fsync
    /// thread records failures under, so neither overwrites the other. True when the log
    /// was unhealthy until now.
    fn written(&self, file: Arc<File>, seq: u64, healthy: &AtomicBool) -> bool {
        let Ok(mut state) = self.state.lock() else {
            healthy.store(false, Ordering::Release);
            return false;
        };
        state.due = Some((file, seq));
        // Waking a thread costs a syscall and a context switch: only when it sleeps.
        if !state.busy {
            state.busy = true;
            self.wake.notify_one();
        }
        if state.failed.is_some() {
            healthy.store(false, Ordering::Release);
            false
        } else {
            !healthy.swap(true, Ordering::AcqRel)
        }
    }

    /// Deferred records wait to be written.
    fn flush_soon(&self) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        state.flush = true;
        if !state.busy {
            state.busy = true;
            self.wake.notify_one();
        }
    }

    fn wait_for(&self, seq: u64, ack: Ack) {
        let Ok(mut state) = self.state.lock() else {
            let _ = ack.send(Err("the audit fsync thread failed".into()));
            return;
        };
        if state.synced >= seq {
            let _ = ack.send(Ok(()));
            return;
        }
        state.waiting.push((seq, ack));
        // Also when busy: the thread may be pacing, and a waiter ends the pause.
        if state.due.is_some() {
            state.busy = true;
            self.wake.notify_one();
        }
    }

    fn stop(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.stop = true;
            self.wake.notify_one();
        }
    }

    fn take_failure(&self) -> Option<(String, u64)> {
        self.state.lock().ok()?.failed.take()
    }

    fn run(&self, window: Duration, log: &std::sync::Weak<Shared>) {
        let mut last_fsync = Instant::now();
        loop {
            let Ok(mut state) = self.state.lock() else {
                return;
            };
            while state.due.is_none() && !state.flush && !state.stop {
                state.busy = false;
                state = match self.wake.wait(state) {
                    Ok(state) => state,
                    Err(_) => return,
                };
            }
            state.busy = true;
            if state.due.is_none() && !state.flush && state.stop {
                for (_, ack) in state.waiting.drain(..) {
                    let _ = ack.send(Err("the audit log is closed".into()));
                }
                return;
            }
            // Pace the fsyncs nobody waits for: each one costs I/O, and an append to a page
            // under writeback waits for it. Someone waiting (a login, a flush, a statement
            // with fsync = "always") ends the pause.
            let paced_until = last_fsync + BACKGROUND_SYNC_INTERVAL;
            while state.waiting.is_empty() && !state.stop {
                let now = Instant::now();
                if now >= paced_until {
                    break;
                }
                state = match self.wake.wait_timeout(state, paced_until - now) {
                    Ok((state, _)) => state,
                    Err(_) => return,
                };
            }
            if !window.is_zero() {
                // Let more records arrive to share this fsync.
                drop(state);
                std::thread::sleep(window);
                state = match self.state.lock() {
                    Ok(state) => state,
                    Err(_) => return,
                };
            }
            if std::mem::take(&mut state.flush) {
                // After a failed fsync, waiting records are not written into that file: the
                // next append discards and counts them as it moves to a new one.
                let failure_pending = state.failed.is_some();
                // Lock order is writer, then syncer state: let go of the state first.
                drop(state);
                if let Some(shared) = log.upgrade().filter(|_| !failure_pending) {
                    if let Ok(mut writer) = shared.writer.lock() {
                        if writer.deferred > 0 {
                            let result = writer.write_pending();
                            let _ = shared.written(&mut writer, result, 0);
                        }
                    }
                }
                state = match self.state.lock() {
                    Ok(state) => state,
                    Err(_) => return,
                };
            }
            let due = state.due.take();
            drop(state);
            let result = match &due {
                Some((file, _)) => file.sync_data().map_err(|e| format!("fsync: {e}")),
                None => Ok(()),
            };
            last_fsync = Instant::now();
            // Upgraded before the state is locked: a last handle dropped locks it.
            let shared = if result.is_err() { log.upgrade() } else { None };
            let Ok(mut state) = self.state.lock() else {
                return;
            };
            if let Some((_, seq)) = due {
                if let Err(e) = &result {
                    error!(error = %e, "audit log fsync failed; the records it covered may be lost");
                    // Unhealthy until the next append has moved to a new file and put the
                    // loss on record (with `fsync = "buffered"`, statements then write their
                    // records themselves); set under the lock that append takes the failure
                    // with, so a recovery is never overwritten.
                    if let Some(shared) = &shared {
                        shared.healthy.store(false, Ordering::Release);
                    }
                    let at_risk = seq.saturating_sub(state.synced);
                    state.failed.get_or_insert((e.clone(), 0)).1 += at_risk;
                }
                state.synced = state.synced.max(seq);
            }
            let synced = state.synced;
            let (ready, still): (Vec<_>, Vec<_>) = std::mem::take(&mut state.waiting)
                .into_iter()
                .partition(|(seq, _)| *seq <= synced);
            state.waiting = still;
            drop(state);
            drop(shared);
            for (_, ack) in ready {
                let _ = ack.send(result.clone());
            }
        }
    }
}

/// Serialize `event` for sealing.
fn prepare(event: &Event) -> Result<Prepared, AuditError> {
    record::prepare(event.ocsf(), event).map_err(|e| AuditError::Write(e.to_string()))
}

fn sync_dir(dir: &Path) {
    // Make the new file's directory entry durable too; best effort (not all filesystems).
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Milliseconds since the Unix epoch, the unit of every record's `time`.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
