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
pub(crate) mod tests {
    use std::fs;

    use bytes::Bytes;

    use super::*;

    pub(crate) fn message(id: u64, topic: &str, payload: &str) -> Record {
        Record::Message {
            id,
            msg: StoredMessage {
                topic: topic.into(),
                payload: Bytes::copy_from_slice(payload.as_bytes()),
                qos: 1,
                retain: false,
                properties: StoredProperties::default(),
                expires_at_ms: None,
            },
        }
    }

    pub(crate) fn open(client_id: &str) -> Record {
        Record::SessionOpen {
            client_id: client_id.into(),
            expiry_interval: 3600,
        }
    }

    pub(crate) fn enqueue(client_id: &str, seq: u64, msg_id: u64) -> Record {
        Record::Enqueue {
            client_id: client_id.into(),
            seq,
            msg_id,
            qos: 1,
        }
    }

    fn dequeue(client_id: &str, seq: u64) -> Record {
        Record::Dequeue {
            client_id: client_id.into(),
            seq,
        }
    }

    fn subscription(filter: &str) -> StoredSubscription {
        StoredSubscription {
            filter: filter.into(),
            qos: 2,
            no_local: true,
            retain_as_published: true,
            retain_handling: 1,
            identifier: Some(7),
        }
    }

    /// Uses every record kind; see `every_kind_expected` for the result.
    pub(crate) fn every_kind_of_record() -> Vec<Record> {
        let c = |s: &str| s.to_string();
        let mut retained = message(1, "r/t", "retained");
        if let Record::Message { msg, .. } = &mut retained {
            msg.retain = true;
            msg.expires_at_ms = Some(1_700_000_000_000);
            msg.properties = StoredProperties {
                payload_format_indicator: Some(1),
                content_type: Some(c("text/plain")),
                response_topic: Some(c("reply/to")),
                correlation_data: Some(Bytes::from_static(b"\x00\x01")),
                user_properties: vec![(c("k"), c("v")), (c("k"), c("v2"))],
            };
        }
        vec![
            retained,
            Record::RetainSet {
                topic: c("r/t"),
                msg_id: 1,
            },
            message(2, "gone", "cleared"),
            Record::RetainSet {
                topic: c("gone"),
                msg_id: 2,
            },
            Record::RetainClear { topic: c("gone") },
            open("a"),
            Record::Subscribe {
                client_id: c("a"),
                sub: subscription("x/#"),
            },
            Record::Subscribe {
                client_id: c("a"),
                sub: subscription("y/+"),
            },
            Record::Unsubscribe {
                client_id: c("a"),
                filter: c("y/+"),
            },
            message(3, "x/1", "m3"),
            enqueue("a", 10, 3),
            enqueue("a", 11, 3),
            enqueue("a", 12, 3),
            enqueue("a", 13, 3),
            Record::Inflight {
                client_id: c("a"),
                seq: 10,
                packet_id: 100,
            },
            Record::Inflight {
                client_id: c("a"),
                seq: 11,
                packet_id: 101,
            },
            Record::Released {
                client_id: c("a"),
                seq: 11,
            },
            dequeue("a", 12),
            Record::InboundQos2 {
                client_id: c("a"),
                packet_id: 5,
            },
            Record::InboundQos2 {
                client_id: c("a"),
                packet_id: 6,
            },
            Record::InboundQos2Done {
                client_id: c("a"),
                packet_id: 5,
            },
            Record::SessionDisconnected {
                client_id: c("a"),
                expiry_interval: 60,
                at_ms: 1234,
            },
            open("b"),
            Record::SessionDisconnected {
                client_id: c("b"),
                expiry_interval: 60,
                at_ms: 1234,
            },
            Record::SessionResume {
                client_id: c("b"),
                expiry_interval: 90,
            },
            open("deleted"),
            Record::SessionDelete {
                client_id: c("deleted"),
            },
        ]
    }

    fn stored(record: Record) -> StoredMessage {
        match record {
            Record::Message { msg, .. } => msg,
            other => panic!("not a message: {other:?}"),
        }
    }

    fn every_kind_expected() -> Recovered {
        let records = every_kind_of_record();
        let retained = stored(records[0].clone());
        let m3 = stored(message(3, "x/1", "m3"));
        let entry = |seq, packet_id, released| QueuedEntry {
            seq,
            qos: 1,
            msg: m3.clone(),
            packet_id,
            released,
        };
        Recovered {
            retained: vec![("r/t".into(), retained)],
            sessions: vec![
                StoredSession {
                    client_id: "a".into(),
                    expiry_interval: 60,
                    disconnected_at_ms: Some(1234),
                    subscriptions: vec![subscription("x/#")],
                    queue: vec![
                        entry(10, Some(100), false),
                        entry(11, Some(101), true),
                        entry(13, None, false),
                    ],
                    inbound_qos2: vec![6],
                },
                StoredSession {
                    client_id: "b".into(),
                    expiry_interval: 90,
                    disconnected_at_ms: None,
                    subscriptions: vec![],
                    queue: vec![],
                    inbound_qos2: vec![],
                },
            ],
            next_message_id: 4,
        }
    }

    fn open_store(dir: &Path, compact_after_bytes: u64) -> (Store, Recovered) {
        Store::open(dir, FsyncPolicy::Always, compact_after_bytes).unwrap()
    }

    const NO_COMPACTION: u64 = u64::MAX;

    fn log_len(dir: &Path) -> u64 {
        fs::metadata(dir.join(log::LOG_FILE)).unwrap().len()
    }

    #[tokio::test]
    async fn every_record_kind_round_trips_through_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/store");
        let (store, recovered) = open_store(&path, NO_COMPACTION);
        assert_eq!(recovered, Recovered::default());
        store.append(every_kind_of_record()).await.unwrap();
        drop(store);

        let (store, recovered) = open_store(&path, NO_COMPACTION);
        assert_eq!(recovered, every_kind_expected());
        assert!(!path.join(snapshot::SNAPSHOT_FILE).exists());
        assert_eq!(store.next_message_id(), 4);
        assert_eq!(store.next_message_id(), 5);
    }

    #[tokio::test]
    async fn every_record_kind_round_trips_through_a_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open_store(dir.path(), 1);
        store.append(every_kind_of_record()).await.unwrap();
        drop(store);
        assert!(dir.path().join(snapshot::SNAPSHOT_FILE).exists());
        assert_eq!(log_len(dir.path()), log::header_len(1) as u64);

        let (_, recovered) = open_store(dir.path(), NO_COMPACTION);
        assert_eq!(recovered, every_kind_expected());
    }

    #[tokio::test]
    async fn fanned_out_message_is_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open_store(dir.path(), NO_COMPACTION);
        let payload = "a-payload-that-occurs-nowhere-else-0123456789";
        let id = store.next_message_id();
        let mut batch = vec![message(id, "fan/out", payload)];
        for i in 0..10 {
            batch.push(open(&format!("c{i}")));
            batch.push(enqueue(&format!("c{i}"), 1, id));
        }
        store.append(batch).await.unwrap();
        drop(store);

        let log = fs::read(dir.path().join(log::LOG_FILE)).unwrap();
        let occurrences = log
            .windows(payload.len())
            .filter(|w| *w == payload.as_bytes())
            .count();
        assert_eq!(occurrences, 1);

        let (_, recovered) = open_store(dir.path(), NO_COMPACTION);
        assert_eq!(recovered.sessions.len(), 10);
        let first = &recovered.sessions[0].queue[0].msg.payload;
        assert_eq!(first, payload.as_bytes());
        for session in &recovered.sessions {
            // Clones of one buffer, not ten copies.
            assert_eq!(session.queue[0].msg.payload.as_ptr(), first.as_ptr());
        }
    }

    /// A workload with a lot of churn: messages queued and acknowledged.
    fn churn(batches: usize) -> Vec<Vec<Record>> {
        let mut out = vec![vec![open("s"), open("t")]];
        for i in 0..batches as u64 {
            let mut batch = vec![
                message(i, "churn", &format!("message {i}")),
                enqueue("s", i, i),
                enqueue("t", i, i),
            ];
            if i >= 3 {
                batch.push(dequeue("s", i - 3));
                batch.push(dequeue("t", i - 2));
            }
            out.push(batch);
        }
        out
    }

    #[tokio::test]
    async fn compaction_keeps_the_state_and_shrinks_the_log() {
        let plain = tempfile::tempdir().unwrap();
        let compacted = tempfile::tempdir().unwrap();
        let (a, _) = open_store(plain.path(), NO_COMPACTION);
        let (b, _) = open_store(compacted.path(), 2048);
        for batch in churn(200) {
            a.append(batch.clone()).await.unwrap();
            b.append(batch).await.unwrap();
        }
        drop((a, b));

        let (_, from_log) = open_store(plain.path(), NO_COMPACTION);
        let (_, from_snapshot) = open_store(compacted.path(), NO_COMPACTION);
        assert_eq!(from_log, from_snapshot);
        assert_eq!(from_log.sessions[0].queue.len(), 3);
        assert!(compacted.path().join(snapshot::SNAPSHOT_FILE).exists());
        assert!(log_len(compacted.path()) < 2048 + 1024);
        assert!(log_len(compacted.path()) < log_len(plain.path()) / 4);
    }

    #[tokio::test]
    async fn acknowledged_messages_leave_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let snapshot_len = || {
            fs::metadata(dir.path().join(snapshot::SNAPSHOT_FILE))
                .unwrap()
                .len()
        };
        let (store, _) = open_store(dir.path(), 1);
        let big = "x".repeat(10_000);
        store
            .append(vec![open("s"), message(0, "t", &big), enqueue("s", 0, 0)])
            .await
            .unwrap();
        // A flush is served after the compaction that followed the append.
        store.flush().await.unwrap();
        assert!(snapshot_len() > 10_000);

        // Once acknowledged, the message has no reference left. Grow the
        // log past the snapshot's size so that it is compacted again.
        let mut batch = vec![dequeue("s", 0)];
        let filter = "f".repeat(100);
        for _ in 0..100 {
            batch.push(Record::Subscribe {
                client_id: "s".into(),
                sub: subscription(&filter),
            });
            batch.push(Record::Unsubscribe {
                client_id: "s".into(),
                filter: filter.clone(),
            });
        }
        store.append(batch).await.unwrap();
        store.flush().await.unwrap();
        assert!(snapshot_len() < 1_000);
    }

    #[tokio::test]
    async fn kill_between_compaction_steps_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open_store(dir.path(), NO_COMPACTION);
        store.append(every_kind_of_record()).await.unwrap();
        drop(store);

        // Replay what the writer does, stopping after the snapshot was
        // installed and before the log was replaced.
        let mut state = State::default();
        let log = Log::recover(dir.path(), 0, |r| state.apply(r)).unwrap();
        state.end_batch();
        snapshot::write(dir.path(), log.generation() + 1, 4, &state)
            .unwrap()
            .install()
            .unwrap();
        drop(log);
        let stale_log_len = log_len(dir.path());

        // The old log's records are all in the snapshot: it is replaced.
        let (store, recovered) = open_store(dir.path(), NO_COMPACTION);
        assert_eq!(recovered, every_kind_expected());
        assert!(log_len(dir.path()) < stale_log_len);
        store.append(vec![open("later")]).await.unwrap();
        drop(store);

        let (_, recovered) = open_store(dir.path(), NO_COMPACTION);
        let ids: Vec<_> = recovered.sessions.iter().map(|s| &s.client_id).collect();
        assert_eq!(ids, ["a", "b", "later"]);
    }

    /// Appends `first` and `last` as separate batches and returns the log
    /// size between them.
    async fn write_two_batches(dir: &Path, first: Vec<Record>, last: Vec<Record>) -> u64 {
        let (store, _) = open_store(dir, NO_COMPACTION);
        store.append(first).await.unwrap();
        let boundary = log_len(dir);
        store.append(last).await.unwrap();
        boundary
    }

    #[tokio::test]
    async fn torn_tail_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let records = every_kind_of_record();
        let boundary = write_two_batches(dir.path(), records.clone(), vec![open("torn")]).await;
        let file = fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join(log::LOG_FILE))
            .unwrap();
        file.set_len(log_len(dir.path()) - 3).unwrap();
        drop(file);

        let (store, recovered) = open_store(dir.path(), NO_COMPACTION);
        assert_eq!(recovered, every_kind_expected());
        assert_eq!(log_len(dir.path()), boundary);
        // Appending continues after the last good record.
        store.append(vec![open("after")]).await.unwrap();
        drop(store);
        let (_, recovered) = open_store(dir.path(), NO_COMPACTION);
        assert!(recovered.sessions.iter().any(|s| s.client_id == "after"));
    }

    #[tokio::test]
    async fn damaged_last_frame_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let boundary =
            write_two_batches(dir.path(), every_kind_of_record(), vec![open("damaged")]).await;
        let path = dir.path().join(log::LOG_FILE);
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 2;
        bytes[last] ^= 0x40;
        fs::write(&path, bytes).unwrap();

        let (_, recovered) = open_store(dir.path(), NO_COMPACTION);
        assert_eq!(recovered, every_kind_expected());
        assert_eq!(log_len(dir.path()), boundary);
    }

    #[tokio::test]
    async fn corrupt_snapshot_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open_store(dir.path(), 1);
        store.append(every_kind_of_record()).await.unwrap();
        drop(store);
        let path = dir.path().join(snapshot::SNAPSHOT_FILE);
        let good = fs::read(&path).unwrap();

        let mut flipped = good.clone();
        let middle = flipped.len() / 2;
        flipped[middle] ^= 1;
        fs::write(&path, &flipped).unwrap();
        let err = Store::open(dir.path(), FsyncPolicy::Always, 1).unwrap_err();
        assert!(matches!(err, StoreError::CorruptSnapshot { .. }), "{err}");

        fs::write(&path, &good[..good.len() - 1]).unwrap();
        let err = Store::open(dir.path(), FsyncPolicy::Always, 1).unwrap_err();
        assert!(matches!(err, StoreError::CorruptSnapshot { .. }), "{err}");

        let mut extended = good.clone();
        extended.push(0);
        fs::write(&path, &extended).unwrap();
        let err = Store::open(dir.path(), FsyncPolicy::Always, 1).unwrap_err();
        assert!(matches!(err, StoreError::CorruptSnapshot { .. }), "{err}");

        fs::write(&path, &good).unwrap();
        assert!(Store::open(dir.path(), FsyncPolicy::Always, 1).is_ok());
    }

    #[tokio::test]
    async fn log_without_its_snapshot_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open_store(dir.path(), 1);
        store.append(vec![open("a")]).await.unwrap();
        drop(store);
        fs::remove_file(dir.path().join(snapshot::SNAPSHOT_FILE)).unwrap();
        let err = Store::open(dir.path(), FsyncPolicy::Always, 1).unwrap_err();
        assert!(matches!(err, StoreError::Format { .. }), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_all_land() {
        let dir = tempfile::tempdir().unwrap();
        for policy in [
            FsyncPolicy::Always,
            FsyncPolicy::default(),
            FsyncPolicy::Never,
        ] {
            let path = dir.path().join(format!("{policy:?}"));
            let (store, _) = Store::open(&path, policy, 4096).unwrap();
            let tasks: Vec<_> = (0..32)
                .map(|task| {
                    let store = store.clone();
                    tokio::spawn(async move {
                        let client = format!("c{task}");
                        store.append(vec![open(&client)]).await.unwrap();
                        for seq in 0..20 {
                            let id = store.next_message_id();
                            let batch = vec![
                                message(id, "t", &format!("{task}/{seq}")),
                                enqueue(&client, seq, id),
                            ];
                            if seq % 2 == 0 {
                                store.append(batch).await.unwrap();
                            } else {
                                store.append_nowait(batch);
                            }
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
            store.flush().await.unwrap();
            drop(store);

            let (store, recovered) = Store::open(&path, policy, 4096).unwrap();
            assert_eq!(recovered.sessions.len(), 32);
            for session in &recovered.sessions {
                let task = session.client_id.trim_start_matches('c');
                let payloads: Vec<_> = session
                    .queue
                    .iter()
                    .map(|e| e.msg.payload.clone())
                    .collect();
                let expected: Vec<_> = (0..20)
                    .map(|seq| Bytes::from(format!("{task}/{seq}")))
                    .collect();
                assert_eq!(payloads, expected, "{}", session.client_id);
            }
            assert_eq!(recovered.next_message_id, 32 * 20);
            assert_eq!(store.next_message_id(), 32 * 20);
        }
    }

    // The broker shares one store among all connection tasks.
    const _: fn() = || {
        fn assert_send_sync<T: Send + Sync + Clone>() {}
        assert_send_sync::<Store>();
    };

    #[test]
    fn unsupported_log_version_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        drop(open_store(dir.path(), NO_COMPACTION));
        let path = dir.path().join(log::LOG_FILE);
        let mut bytes = fs::read(&path).unwrap();
        bytes[8] = 2;
        fs::write(&path, bytes).unwrap();
        let err = Store::open(dir.path(), FsyncPolicy::Always, NO_COMPACTION).unwrap_err();
        assert!(matches!(err, StoreError::Format { .. }), "{err}");
    }
}
