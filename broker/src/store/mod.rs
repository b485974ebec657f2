//! Durable storage of retained messages and persistent sessions.
//!
//! The store is an append-only log of [`Record`]s plus periodic snapshots,
//! in one directory:
//!
//! - `snapshot.bin`: the whole state as of some generation (`snapshot.rs`);
//! - `log.bin`: the records appended since that snapshot (`log.rs`).
//!
//! One dedicated writer thread does all file IO (`writer.rs`); the
//! in-memory mirror it keeps for compaction is in `state.rs`. The
//! broker calls [`Store::append`], which resolves once the records were
//! written to the operating system (and fsynced under
//! [`FsyncPolicy::Always`]); records survive a crash of the process from
//! then on. Recovery loads the snapshot, replays the log (cutting off a
//! torn tail) and returns a [`Recovered`] state. The format and the
//! guarantees are described in `docs/persistence.md`.
//!
//! Messages fanned out to many sessions are stored once: a
//! [`Record::Message`] stores it under an id from
//! [`Store::next_message_id`], and `RetainSet` / `Enqueue` records refer to
//! that id.

mod log;
mod records;
mod snapshot;
mod state;
mod writer;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};

use tokio::sync::oneshot;

pub use records::{
    FsyncPolicy, QueuedEntry, Record, Recovered, StoredMessage, StoredProperties, StoredSession,
    StoredSubscription,
};

use log::Log;
use state::State;
use writer::{Request, Writer};

/// Errors of the store. Cloneable because one failed write fails every
/// append that shared it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// A file system operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done ("write", "fsync", ...).
        op: &'static str,
        path: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },
    /// The snapshot fails its checks. Snapshots are never torn by a crash,
    /// so this means the file was damaged or altered; the store refuses to
    /// guess.
    #[error("{}: corrupt snapshot: {reason}", path.display())]
    CorruptSnapshot { path: PathBuf, reason: String },
    /// A file is not a store file of a version this build reads, its
    /// records do not decode, or log and snapshot do not belong together.
    #[error("{}: {reason}", path.display())]
    Format { path: PathBuf, reason: String },
    /// A record could not be serialized.
    #[error("cannot encode a record: {0}")]
    Encode(#[source] postcard::Error),
    /// A record's encoding exceeds the 4 GiB frame limit.
    #[error("a record of {0} bytes is too large to store")]
    RecordTooLarge(usize),
    /// The writer thread is gone (it panicked).
    #[error("the store's writer thread has stopped")]
    Closed,
}

/// Builds the error mapper for an IO operation on `path`.
fn io_error<'a>(op: &'static str, path: &'a Path) -> impl Fn(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_path_buf(),
        source: Arc::new(source),
    }
}

/// Handle to an open store. Cheap to clone; all clones share one writer
/// thread. Dropping the last clone blocks until the writer has written
/// everything queued and stopped; call [`Store::flush`] first at shutdown.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    requests: mpsc::Sender<Request>,
    next_message_id: Arc<AtomicU64>,
    // Declared after `requests`, so it is dropped after it: dropping the
    // sender ends the writer's loop, then `WriterThread` waits for it.
    _writer: WriterThread,
}

/// Joins the writer thread on drop, so that everything queued is written
/// by the time the last [`Store`] is gone.
#[derive(Debug)]
struct WriterThread(Option<JoinHandle<()>>);

impl Drop for WriterThread {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            if handle.join().is_err() {
                tracing::error!("store: the writer thread panicked");
            }
        }
    }
}

impl Store {
    /// Opens (creating if needed) the store in `dir`, recovers its state and
    /// starts the writer thread. Blocking; call it before serving clients.
    ///
    /// The log is compacted into a new snapshot once it reaches
    /// `compact_after_bytes` (or the size of the last snapshot, if that is
    /// larger).
    pub fn open(
        dir: &Path,
        policy: FsyncPolicy,
        compact_after_bytes: u64,
    ) -> Result<(Store, Recovered), StoreError> {
        std::fs::create_dir_all(dir).map_err(io_error("create directory", dir))?;
        let mut state = State::default();
        let snapshot = snapshot::read(dir, |record| state.apply(record))?;
        let generation = snapshot.map_or(0, |s| s.generation);
        let log = Log::recover(dir, generation, |record| state.apply(record))?;
        state.end_batch();

        let next_message_id = snapshot
            .map_or(0, |s| s.next_message_id)
            .max(state.unused_message_id());
        let recovered = state.recovered(next_message_id);
        let next_message_id = Arc::new(AtomicU64::new(next_message_id));
        let writer = Writer::new(
            dir.to_path_buf(),
            log,
            state,
            policy,
            compact_after_bytes,
            snapshot.map_or(0, |s| s.len),
            Arc::clone(&next_message_id),
        );
        let (requests, receiver) = mpsc::channel();
        let handle = thread::Builder::new()
            .name("kubemqtt-store".into())
            .spawn(move || writer.run(receiver))
            .map_err(io_error("start writer thread for", dir))?;
        let store = Store {
            inner: Arc::new(Inner {
                requests,
                next_message_id,
                _writer: WriterThread(Some(handle)),
            }),
        };
        Ok((store, recovered))
    }

    /// Appends `records` as one batch. Resolves once they were written to
    /// the operating system (so they survive a crash of the process), and
    /// fsynced under [`FsyncPolicy::Always`].
    pub async fn append(&self, records: Vec<Record>) -> Result<(), StoreError> {
        let (done, result) = oneshot::channel();
        self.send(Request::Append {
            records,
            done: Some(done),
        })?;
        result.await.map_err(|_| StoreError::Closed)?
    }

    /// Appends `records` without waiting. Ordered with [`Store::append`];
    /// errors are logged.
    pub fn append_nowait(&self, records: Vec<Record>) {
        if let Err(e) = self.send(Request::Append {
            records,
            done: None,
        }) {
            tracing::error!(error = %e, "store: append failed");
        }
    }

    /// Writes and fsyncs everything appended before, whatever the policy.
    /// For shutdown.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (done, result) = oneshot::channel();
        self.send(Request::Flush { done })?;
        result.await.map_err(|_| StoreError::Closed)?
    }

    /// A fresh id for a [`Record::Message`]; ids continue after those found
    /// on recovery.
    pub fn next_message_id(&self) -> u64 {
        self.inner.next_message_id.fetch_add(1, Ordering::Relaxed)
    }

    fn send(&self, request: Request) -> Result<(), StoreError> {
        self.inner
            .requests
            .send(request)
            .map_err(|_| StoreError::Closed)
    }
}

#[cfg(test)]
pub(crate) mod tests;
