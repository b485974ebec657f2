//! The writer thread: the only code that writes store files.
//!
//! It waits for requests, takes every request queued at that moment (group
//! commit), encodes their records into one buffer, writes it with one
//! write call, fsyncs as the policy says, applies the records to the
//! in-memory mirror and then completes all waiters. When the log has grown
//! past the compaction threshold it writes a snapshot of the mirror and
//! starts a new log.
//!
//! After a failed write or fsync the file's state is unknown, so the writer
//! fails every later request with the same error instead of appending
//! after a possibly damaged record.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::oneshot;

use super::log::{encode_frame, Log};
use super::records::{FsyncPolicy, Record};
use super::snapshot;
use super::state::State;
use super::StoreError;

/// Capacity of the group buffer kept between groups.
const MAX_IDLE_BUF: usize = 1 << 20;

/// Where the result of a request goes.
pub(super) type Reply = oneshot::Sender<Result<(), StoreError>>;

/// A request to the writer thread.
#[derive(Debug)]
pub(super) enum Request {
    /// Append records; `done` is `None` for fire-and-forget appends, whose
    /// errors are logged.
    Append {
        records: Vec<Record>,
        done: Option<Reply>,
    },
    /// Write and fsync everything requested before.
    Flush { done: Reply },
}

/// The writer thread's state.
#[derive(Debug)]
pub(super) struct Writer {
    dir: PathBuf,
    log: Log,
    state: State,
    policy: FsyncPolicy,
    compact_after_bytes: u64,
    /// Log size at which the next compaction starts.
    compact_at: u64,
    next_message_id: Arc<AtomicU64>,
    /// Written since the last fsync.
    dirty: bool,
    last_sync: Instant,
    /// The error that stopped the writer.
    failed: Option<StoreError>,
    /// Frames of the current group, reused.
    buf: Vec<u8>,
}

impl Writer {
    /// `snapshot_len` is the size of the snapshot the state was loaded
    /// from (0 if none).
    pub(super) fn new(
        dir: PathBuf,
        log: Log,
        state: State,
        policy: FsyncPolicy,
        compact_after_bytes: u64,
        snapshot_len: u64,
        next_message_id: Arc<AtomicU64>,
    ) -> Writer {
        Writer {
            dir,
            log,
            state,
            policy,
            compact_after_bytes,
            compact_at: compact_after_bytes.max(snapshot_len),
            next_message_id,
            dirty: false,
            last_sync: Instant::now(),
            failed: None,
            buf: Vec::new(),
        }
    }

    /// Serves requests until every sender is gone, then fsyncs (unless the
    /// policy is [`FsyncPolicy::Never`]) and returns.
    pub(super) fn run(mut self, requests: Receiver<Request>) {
        while let Some(first) = self.next_request(&requests) {
            let mut group = vec![first];
            group.extend(requests.try_iter());
            self.process(group);
        }
        if self.dirty && self.failed.is_none() && self.policy != FsyncPolicy::Never {
            if let Err(e) = self.log.sync() {
                tracing::error!(error = %e, "store: final fsync failed");
            }
        }
    }

    /// Waits for the next request, doing interval fsyncs that fall due
    /// meanwhile. `None` when all senders are gone.
    fn next_request(&mut self, requests: &Receiver<Request>) -> Option<Request> {
        loop {
            let deadline = match self.policy {
                FsyncPolicy::Interval(every) if self.dirty && self.failed.is_none() => {
                    self.last_sync + every
                }
                _ => return requests.recv().ok(),
            };
            let wait = deadline.saturating_duration_since(Instant::now());
            match requests.recv_timeout(wait) {
                Ok(request) => return Some(request),
                Err(RecvTimeoutError::Timeout) => {
                    if let Err(e) = self.sync() {
                        tracing::error!(error = %e, "store: fsync failed; refusing further writes");
                        self.failed = Some(e);
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Handles one group of requests.
    fn process(&mut self, group: Vec<Request>) {
        let mut appended: Vec<(Vec<Record>, Option<Reply>)> = Vec::with_capacity(group.len());
        let mut flushes = Vec::new();
        self.buf.clear();
        for request in group {
            match request {
                Request::Append { records, done } => {
                    if let Some(err) = &self.failed {
                        reply(done, Err(err.clone()));
                        continue;
                    }
                    let start = self.buf.len();
                    let encoded = records
                        .iter()
                        .try_for_each(|record| encode_frame(record, &mut self.buf));
                    match encoded {
                        Ok(()) => appended.push((records, done)),
                        Err(e) => {
                            self.buf.truncate(start);
                            reply(done, Err(e));
                        }
                    }
                }
                Request::Flush { done } => flushes.push(done),
            }
        }

        let written = self.write_group(!flushes.is_empty());
        // Do not hold on to the memory of one exceptionally large group.
        self.buf.shrink_to(MAX_IDLE_BUF);
        if let Err(e) = written {
            tracing::error!(error = %e, "store: write failed; refusing further writes");
            self.failed = Some(e);
        }
        if let Some(err) = &self.failed {
            for (_, done) in appended {
                reply(done, Err(err.clone()));
            }
            for done in flushes {
                reply(Some(done), Err(err.clone()));
            }
            return;
        }

        let mut replies = Vec::with_capacity(appended.len());
        for (records, done) in appended {
            for record in records {
                self.state.apply(record);
            }
            replies.push(done);
        }
        self.state.end_batch();
        for done in replies.into_iter().chain(flushes.into_iter().map(Some)) {
            reply(done, Ok(()));
        }
        self.maybe_compact();
    }

    /// Writes the encoded group and fsyncs as the policy (or a flush,
    /// `force_sync`) requires.
    fn write_group(&mut self, force_sync: bool) -> Result<(), StoreError> {
        if self.failed.is_some() {
            return Ok(());
        }
        if !self.buf.is_empty() {
            self.log.append(&self.buf)?;
            self.dirty = true;
        }
        let due = match self.policy {
            FsyncPolicy::Always => true,
            FsyncPolicy::Interval(every) => self.last_sync.elapsed() >= every,
            FsyncPolicy::Never => false,
        };
        if self.dirty && (due || force_sync) {
            self.sync()?;
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        self.log.sync()?;
        self.dirty = false;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Compacts when the log has outgrown the threshold: a new snapshot of
    /// generation g+1 is installed first, then an empty log of g+1 replaces
    /// the old one. Recovery ignores a log older than the snapshot, so a
    /// crash between the two steps loses nothing.
    ///
    /// The threshold is at least the last snapshot's size, so a state
    /// larger than `compact_after_bytes` does not cause a compaction per
    /// write.
    fn maybe_compact(&mut self) {
        if self.log.len() < self.compact_at {
            return;
        }
        let generation = self.log.generation() + 1;
        let next_message_id = self.next_message_id.load(Ordering::SeqCst);
        let pending = match snapshot::write(&self.dir, generation, next_message_id, &self.state) {
            Ok(pending) => pending,
            Err(e) => {
                // Nothing changed yet: keep using the current log and try
                // again after it grew some more.
                tracing::warn!(error = %e, "store: writing a snapshot failed; compaction postponed");
                self.compact_at = self.log.len() + self.compact_after_bytes.max(1);
                return;
            }
        };
        let installed = pending
            .install()
            .and_then(|snapshot_len| Ok((snapshot_len, Log::create(&self.dir, generation)?)));
        match installed {
            Ok((snapshot_len, log)) => {
                tracing::debug!(
                    generation,
                    snapshot_len,
                    old_log_len = self.log.len(),
                    "store: compacted"
                );
                self.log = log;
                // Everything so far is in the fsynced snapshot.
                self.dirty = false;
                self.last_sync = Instant::now();
                self.compact_at = self.compact_after_bytes.max(snapshot_len);
            }
            Err(e) => {
                // The snapshot may be in place already, which would make
                // the current log obsolete: appending to it could lose data.
                tracing::error!(error = %e, "store: compaction failed; refusing further writes");
                self.failed = Some(e);
            }
        }
    }
}

/// Completes a request; results of fire-and-forget appends that failed are
/// logged.
fn reply(done: Option<Reply>, result: Result<(), StoreError>) {
    match done {
        // The waiter may have gone away; nothing to tell then.
        Some(done) => {
            let _ = done.send(result);
        }
        None => {
            if let Err(e) = result {
                tracing::error!(error = %e, "store: append failed");
            }
        }
    }
}
