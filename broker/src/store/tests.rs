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
