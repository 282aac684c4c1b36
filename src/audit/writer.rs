//! The writer: one thread owns the files. Events arrive on a bounded channel; each batch
//! that is waiting is written with one `write` and made durable with one `fsync` (group
//! commit), or one fsync per record with `fsync = "always"`. Files rotate by size and by UTC
//! day; every file starts with a `file.start` record, and the chain continues across files.
//!
//! A dedicated thread rather than a tokio task: `fsync` blocks, and it must not stall the
//! runtime's workers. With `fsync = "batch"` a second thread (the syncer) runs the fsyncs, so
//! records keep being written while the disk flushes: a statement waits for its record to be
//! *written* (that is when a full disk or a permission problem shows), never for an fsync.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};
use tracing::{error, warn};

use super::checkpoint::SigningKey;
use super::event::Event;
use super::record::{self, GENESIS};
use super::{file_name, list_files, AuditError, FsyncPolicy, Settings};

/// Queue depth: enough to absorb bursts while an fsync runs.
const CHANNEL_CAPACITY: usize = 16 * 1024;

type Ack = oneshot::Sender<Result<(), String>>;

enum Command {
    Record(Event),
    /// Record, and answer once this record is written to the file (fsync still to come with
    /// `fsync = "batch"`).
    Written(Event, Ack),
    /// Record, and answer once this very record is on disk (same batch as the answer).
    Durable(Event, Ack),
    /// Sign the chain head (no-op without a signing key).
    Checkpoint,
    /// Answered once everything queued before it is on disk.
    Flush(Ack),
}

/// A handle to the audit log; cheap to clone.
#[derive(Debug, Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Command>,
    healthy: Arc<AtomicBool>,
    /// Events the handle turned away while the writer could not write; the writer reports
    /// them in its next `log.write_failed` record.
    dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Record(_) => f.write_str("Record"),
            Self::Written(..) => f.write_str("Written"),
            Self::Durable(..) => f.write_str("Durable"),
            Self::Checkpoint => f.write_str("Checkpoint"),
            Self::Flush(_) => f.write_str("Flush"),
        }
    }
}

impl AuditLog {
    /// Open (or create) the log in `settings.dir`, continuing the chain of what is there.
    pub fn open(settings: Settings) -> Result<(Self, std::thread::JoinHandle<()>), AuditError> {
        let healthy = Arc::new(AtomicBool::new(true));
        let dropped = Arc::new(AtomicU64::new(0));
        let mut writer = Writer::recover(settings, healthy.clone(), dropped.clone())?;
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let thread = std::thread::Builder::new()
            .name("pgwarden-audit".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| AuditError::Io {
                action: "start the audit writer".into(),
                source: e,
            })?;
        Ok((
            Self {
                tx,
                healthy,
                dropped,
            },
            thread,
        ))
    }

    /// Hand an event to the writer without waiting for it to be written. Fails (and counts
    /// the event as lost) when the writer cannot write or has stopped.
    pub async fn record(&self, event: Event) -> Result<(), AuditError> {
        let result = if self.healthy.load(Ordering::Acquire) {
            self.tx
                .send(Command::Record(event))
                .await
                .map_err(|_| AuditError::Unavailable)
        } else {
            Err(AuditError::Unavailable)
        };
        if result.is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// Record an event and wait until it is written to the file: what must be on record
    /// before the action it describes happens (a statement before it is forwarded). Every
    /// call is also an attempt to write, so the log recovers by itself once the disk does.
    pub async fn record_written(&self, event: Event) -> Result<(), AuditError> {
        self.until_written(|ack| Command::Written(event, ack)).await
    }

    /// Count an event the caller could not record and went ahead without (with
    /// `audit.on_failure = "continue"`); the log reports the count once it can write again.
    pub fn count_lost(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Record an event and wait until it is on disk. This is also how the log recovers after
    /// a failure: the writer tries again, first recording how many events were lost.
    pub async fn record_durable(&self, event: Event) -> Result<(), AuditError> {
        self.until_written(|ack| Command::Durable(event, ack)).await
    }

    /// Append a signed checkpoint of everything recorded so far.
    pub async fn checkpoint(&self) -> Result<(), AuditError> {
        self.tx
            .send(Command::Checkpoint)
            .await
            .map_err(|_| AuditError::Unavailable)
    }

    /// Wait until everything recorded so far is durable.
    pub async fn flush(&self) -> Result<(), AuditError> {
        self.until_written(Command::Flush).await
    }

    /// Send a command carrying an answer channel, and wait for the writer's answer.
    async fn until_written(&self, command: impl FnOnce(Ack) -> Command) -> Result<(), AuditError> {
        let (ack, done) = oneshot::channel();
        self.tx
            .send(command(ack))
            .await
            .map_err(|_| AuditError::Unavailable)?;
        match done.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(AuditError::Write(e)),
            Err(_) => Err(AuditError::Unavailable),
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }
}

// Items live in one reused Vec and are never moved one by one, so the size difference costs
// nothing, while boxing would allocate per event.
#[allow(clippy::large_enum_variant)]
enum Item {
    Event(Event),
    Checkpoint,
}

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
    healthy: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
    /// Runs the fsyncs with `fsync = "batch"`.
    syncer: Option<Arc<Syncer>>,
}

struct Open {
    file: Arc<File>,
    name: String,
    size: u64,
    day: u64,
}

impl Writer {
    /// Find where the chain stands: the last record of the newest file. A partial last line
    /// (crash mid-write) is sealed with a newline and reported in a `log.recovered` record.
    fn recover(
        settings: Settings,
        healthy: Arc<AtomicBool>,
        dropped: Arc<AtomicU64>,
    ) -> Result<Self, AuditError> {
        std::fs::create_dir_all(&settings.dir).map_err(|e| AuditError::Io {
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
            healthy,
            dropped,
            syncer: None,
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
            writer.append_now(&Event::LogRecovered {
                file: last.clone(),
                torn_bytes: torn as u64,
            })?;
            writer.sync_now()?;
        }
        Ok(writer)
    }

    fn run(&mut self, mut rx: mpsc::Receiver<Command>) {
        let syncer_thread = match self.settings.fsync {
            FsyncPolicy::Batch => {
                let syncer = Arc::new(Syncer::default());
                self.syncer = Some(syncer.clone());
                let healthy = self.healthy.clone();
                std::thread::Builder::new()
                    .name("pgwarden-audit-sync".into())
                    .spawn(move || syncer.run(&healthy))
                    .map_err(|e| error!(error = %e, "cannot start the audit fsync thread; the writer fsyncs itself"))
                    .ok()
            }
            FsyncPolicy::Always => None,
        };
        if syncer_thread.is_none() {
            self.syncer = None;
        }
        let mut batch = Vec::new();
        let mut written_acks = Vec::new();
        let mut durable_acks = Vec::new();
        let window = match self.settings.fsync {
            FsyncPolicy::Batch => self.settings.batch_window,
            FsyncPolicy::Always => std::time::Duration::ZERO,
        };
        while let Some(first) = rx.blocking_recv() {
            if !window.is_zero() {
                // Let more records arrive to share this batch's fsync.
                std::thread::sleep(window);
            }
            // Group commit: everything already waiting goes into this write and fsync.
            let mut next = Some(first);
            while let Some(command) = next.take().or_else(|| rx.try_recv().ok()) {
                match command {
                    Command::Record(event) => batch.push(Item::Event(event)),
                    Command::Written(event, ack) => {
                        batch.push(Item::Event(event));
                        written_acks.push(ack);
                    }
                    Command::Durable(event, ack) => {
                        batch.push(Item::Event(event));
                        durable_acks.push(ack);
                    }
                    Command::Checkpoint => batch.push(Item::Checkpoint),
                    Command::Flush(ack) => durable_acks.push(ack),
                }
                if batch.len() >= 4096 {
                    break;
                }
            }
            // After a failure, the first thing written is a record of what was lost.
            let result = self
                .take_sync_failure()
                .and_then(|()| self.write_gap())
                .and_then(|()| self.write_batch(&batch));
            match &result {
                Ok(()) => self.healthy.store(true, Ordering::Release),
                Err(e) => {
                    let lost = batch
                        .iter()
                        .filter(|item| matches!(item, Item::Event(_)))
                        .count();
                    self.lost.0 += lost as u64;
                    self.lost.1.get_or_insert_with(|| e.to_string());
                    error!(error = %e, lost_events = self.lost.0, "audit log write failed; refusing what must be audited until it works again");
                    self.healthy.store(false, Ordering::Release);
                }
            }
            batch.clear();
            let answer = result.as_ref().map(|_| ()).map_err(|e| e.to_string());
            for ack in written_acks.drain(..) {
                let _ = ack.send(answer.clone());
            }
            match (&answer, &self.syncer, &self.file) {
                // Written: the syncer answers once the fsync is done.
                (Ok(()), Some(syncer), Some(open)) => {
                    syncer.request(open.file.clone(), self.seq, &mut durable_acks)
                }
                _ => {
                    for ack in durable_acks.drain(..) {
                        let _ = ack.send(answer.clone());
                    }
                }
            }
        }
        if let Some(syncer) = &self.syncer {
            syncer.stop();
        }
        if let Some(thread) = syncer_thread {
            let _ = thread.join();
        }
        if let Err(e) = self.sync_now() {
            error!(error = %e, "final audit fsync failed");
        }
    }

    /// If the syncer's last fsync failed, the records it covered may not be on disk: count
    /// them as lost and continue in a new file (a reviewer sees the gap, if there is one, at
    /// the file boundary, and the `log.write_failed` record says why).
    fn take_sync_failure(&mut self) -> Result<(), AuditError> {
        let Some((error, at_risk)) = self.syncer.as_ref().and_then(|s| s.take_failure()) else {
            return Ok(());
        };
        self.file = None;
        self.lost.0 += at_risk;
        self.lost.1.get_or_insert(error);
        Ok(())
    }

    /// If writes failed since the last success, record how many events were lost and why.
    fn write_gap(&mut self) -> Result<(), AuditError> {
        let dropped = self.dropped.load(Ordering::Relaxed);
        if self.lost.1.is_none() && dropped == 0 {
            return Ok(());
        }
        let error = self
            .lost
            .1
            .clone()
            .unwrap_or_else(|| "the writer was not accepting records".to_owned());
        self.append_now(&Event::WriteFailed {
            lost_events: self.lost.0 + dropped,
            error,
        })?;
        warn!(
            lost_events = self.lost.0 + dropped,
            "audit log writable again"
        );
        self.dropped.fetch_sub(dropped, Ordering::Relaxed);
        self.lost = (0, None);
        Ok(())
    }

    fn write_batch(&mut self, items: &[Item]) -> Result<(), AuditError> {
        let mut pending = Vec::new();
        for item in items {
            match item {
                Item::Event(event) => self.append(event, &mut pending)?,
                Item::Checkpoint => {
                    let Some(key) = &self.key else { continue };
                    let event = Event::Checkpoint {
                        covers_seq: self.seq,
                        covers_hash: self.prev_hash.clone(),
                        key_id: key.key_id(),
                        signature: key.sign(self.seq, &self.prev_hash),
                    };
                    self.append(&event, &mut pending)?;
                }
            }
            if self.settings.fsync == FsyncPolicy::Always {
                self.write_out(&mut pending)?;
                self.sync_now()?;
            }
        }
        self.write_out(&mut pending)?;
        if self.syncer.is_none() && self.settings.fsync == FsyncPolicy::Batch {
            // No syncer thread (it could not start): fsync here instead.
            self.sync_now()?;
        }
        Ok(())
    }

    fn append_now(&mut self, event: &Event) -> Result<(), AuditError> {
        let mut pending = Vec::new();
        self.append(event, &mut pending)?;
        self.write_out(&mut pending)
    }

    /// Seal `event` into `pending`, rotating first if needed.
    fn append(&mut self, event: &Event, pending: &mut Vec<u8>) -> Result<(), AuditError> {
        let now = now_ms();
        let day = now / 86_400_000;
        let rotate = match &self.file {
            None => true,
            Some(open) => {
                open.size + pending.len() as u64 >= self.settings.rotate_size
                    || (self.settings.rotate_daily && open.day != day)
            }
        };
        if rotate {
            self.write_out(pending)?;
            self.start_file(now)?;
        }
        self.seal_into(now, event, pending)
    }

    fn seal_into(
        &mut self,
        now: u64,
        event: &Event,
        pending: &mut Vec<u8>,
    ) -> Result<(), AuditError> {
        let seq = self.seq + 1;
        let (line, hash) = record::seal(seq, now, &self.prev_hash, event.ocsf(), event)
            .map_err(|e| AuditError::Write(e.to_string()))?;
        pending.extend_from_slice(line.as_bytes());
        pending.push(b'\n');
        self.seq = seq;
        self.prev_hash = hash;
        Ok(())
    }

    fn start_file(&mut self, now: u64) -> Result<(), AuditError> {
        // The finished file is made durable before the next one starts, so a reviewer never
        // finds a later file on disk behind a shorter earlier one.
        self.sync_now()?;
        self.file = None;
        let name = file_name(now, self.seq + 1);
        let path: PathBuf = self.settings.dir.join(&name);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
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
        let previous = self.last_file.replace(name);
        let mut header = Vec::new();
        self.seal_into(
            now,
            &Event::FileStart {
                previous_file: previous,
            },
            &mut header,
        )?;
        self.write_out(&mut header)
    }

    /// Write what is pending to the current file (no fsync: see [`Self::sync_now`] and the
    /// syncer).
    fn write_out(&mut self, pending: &mut Vec<u8>) -> Result<(), AuditError> {
        if pending.is_empty() {
            return Ok(());
        }
        let Some(open) = self.file.as_mut() else {
            return Err(AuditError::Write("no audit file open".into()));
        };
        let start = open.size;
        if let Err(e) = (&*open.file).write_all(pending) {
            // Leave no half batch behind and rewind the chain to the last record written; the
            // next attempt starts a fresh file from there. The events of this batch are lost,
            // which the error reports (and the writer's health flag makes callers refuse).
            let _ = open.file.set_len(start);
            let name = open.name.clone();
            self.file = None;
            (self.seq, self.prev_hash) = self.written.clone();
            pending.clear();
            return Err(AuditError::Io {
                action: format!("write {name}"),
                source: e,
            });
        }
        open.size += pending.len() as u64;
        self.written = (self.seq, self.prev_hash.clone());
        pending.clear();
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

/// The fsync thread of `fsync = "batch"`: the writer hands it the file after each write, and
/// it fsyncs whatever was written since its last fsync (one fsync covers many batches when
/// the disk is slow), then answers those waiting for durability.
#[derive(Default)]
struct Syncer {
    state: Mutex<SyncState>,
    wake: Condvar,
}

#[derive(Default)]
struct SyncState {
    /// The file to fsync next, with the last seq written to it.
    due: Option<(Arc<File>, u64)>,
    waiting: Vec<Ack>,
    /// Seq covered by the last successful fsync.
    synced: u64,
    /// An fsync that failed, and how many records it left at risk; taken by the writer.
    failed: Option<(String, u64)>,
    stop: bool,
}

impl Syncer {
    fn request(&self, file: Arc<File>, seq: u64, acks: &mut Vec<Ack>) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        state.due = Some((file, seq));
        state.waiting.append(acks);
        self.wake.notify_one();
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

    fn run(&self, healthy: &AtomicBool) {
        loop {
            let Ok(mut state) = self.state.lock() else {
                return;
            };
            while state.due.is_none() && !state.stop {
                state = match self.wake.wait(state) {
                    Ok(state) => state,
                    Err(_) => return,
                };
            }
            let Some((file, seq)) = state.due.take() else {
                // Stopping, nothing due; the writer fsyncs the file once more itself.
                for ack in state.waiting.drain(..) {
                    let _ = ack.send(Err("the audit log is shutting down".into()));
                }
                return;
            };
            let acks = std::mem::take(&mut state.waiting);
            drop(state);
            let result = file.sync_data().map_err(|e| format!("fsync: {e}"));
            let Ok(mut state) = self.state.lock() else {
                return;
            };
            match &result {
                Ok(()) => state.synced = state.synced.max(seq),
                Err(e) => {
                    error!(error = %e, "audit log fsync failed; refusing what must be audited until a write works again");
                    healthy.store(false, Ordering::Release);
                    let at_risk = seq.saturating_sub(state.synced);
                    state.failed.get_or_insert((e.clone(), 0)).1 += at_risk;
                    state.synced = seq;
                }
            }
            drop(state);
            for ack in acks {
                let _ = ack.send(result.clone());
            }
        }
    }
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
