//! QoS 0 messages to other nodes, several to one NATS message.
//!
//! Each NATS message costs this node's NATS client, nats-server and the
//! receiving node about the same whatever it holds, and under load that
//! cost is most of what routing a QoS 0 message costs. So a publish writes
//! its envelope straight into the [`Outbox`]'s batch for the node, and one
//! task sends the batches: it takes whatever has gathered (it never waits
//! for more: at low rates a batch holds one message and nothing is
//! delayed), one NATS message per batch, in the order they were routed. A
//! batch of one is sent as it is; a batch of more carries the
//! [`BATCH_HEADER`] and each envelope behind its length.
//!
//! Core NATS has no flow control: a node that routes what it receives
//! slower than the others send (a fan-out to many subscribers) would fall
//! behind until nats-server cut it off as a slow consumer, losing
//! everything in between. So at most [`WINDOW_BYTES`] go to a node before
//! it says it has routed them: every [`ACK_EVERY_BYTES`] (and every batch
//! once half the window is used) a batch carries [`ACK_HEADER`], the bytes
//! sent to that node so far, and a reply subject; the node echoes the
//! value there once it has routed the batch ([`Outbox::acknowledged`]).
//! A full window holds the batches back, the outbox fills, and publishers
//! wait: back-pressure, as for a slow subscriber on one node. A node that
//! does not answer for [`STALL_LIMIT`] (dead, or an older version during
//! a rolling upgrade) is sent to again, and the stall logged.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::sync::Notify;

/// Header of a NATS message holding several envelopes, each behind its
/// length (4 bytes, big-endian).
pub const BATCH_HEADER: &str = "Kmq-Batch";

/// Bytes of envelopes waiting to be sent, at most: a publisher beyond it
/// waits (back-pressure, not loss).
const MAX_PENDING_BYTES: usize = 4 * 1024 * 1024;

/// Bytes of envelopes in one NATS message, at most (nats-server's default
/// `max_payload` is 1 MiB).
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// Room a new batch starts with: under load it fills before it is sent,
/// and growing it from nothing costs a copy at every doubling.
const FIRST_BATCH_BYTES: usize = 8 * 1024;

/// Header of a batch the receiving node acknowledges once routed: the
/// bytes sent to it so far, which it echoes to the reply subject.
pub const ACK_HEADER: &str = "Kmq-Ack";

/// Bytes sent to a node and not yet acknowledged, at most (nats-server
/// cuts a client off past 64 MiB pending, whatever number of nodes send).
const WINDOW_BYTES: u64 = 4 * 1024 * 1024;

/// A batch asks for an acknowledgement at least this often (in bytes).
const ACK_EVERY_BYTES: u64 = 512 * 1024;

/// How long a full window waits for the node's acknowledgement before
/// sending all the same.
const STALL_LIMIT: Duration = Duration::from_secs(1);

/// Envelopes to other nodes, gathered per node until the sending task
/// ([`send_batches`]) takes them. Dropping it ends that task.
pub struct Outbox {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    pending: Mutex<Pending>,
    /// Wakes the sending task (once per batch gathered from nothing).
    filled: Notify,
    /// Wakes publishers waiting for room.
    emptied: Notify,
    /// Per node, the bytes it said it has routed.
    acked: Mutex<HashMap<Arc<str>, u64>>,
    /// Wakes the sending task waiting for a node's acknowledgement.
    acked_changed: Notify,
}

/// Where the sending task sends, and whom it tells what went wrong.
pub struct Link<S, A, E, L> {
    pub client: async_nats::Client,
    /// The subject of QoS 0 messages routed to a node.
    pub subject: S,
    /// Where a node acknowledges what it routed (its reply subject).
    pub acks: A,
    /// A send failed.
    pub on_error: E,
    /// A node did not acknowledge within [`STALL_LIMIT`].
    pub on_stall: L,
}

/// Bytes sent to one node, and when an acknowledgement was last asked.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Flow {
    sent: u64,
    asked: u64,
}

impl Flow {
    /// Whether another batch may go, the node having acknowledged `acked`.
    fn has_room(&self, acked: u64) -> bool {
        self.sent.saturating_sub(acked) < WINDOW_BYTES
    }

    /// Counts a batch of `len` bytes; `Some(bytes sent so far)` when it
    /// asks for an acknowledgement.
    fn send(&mut self, len: u64, acked: u64) -> Option<u64> {
        self.sent += len;
        let ask = self.sent - self.asked >= ACK_EVERY_BYTES
            || self.sent.saturating_sub(acked) >= WINDOW_BYTES / 2;
        ask.then(|| {
            self.asked = self.sent;
            self.sent
        })
    }
}

#[derive(Default)]
struct Pending {
    batches: Vec<Batch>,
    bytes: usize,
    closed: bool,
}

/// Envelopes for one node, each behind its length, for one NATS message.
struct Batch {
    node: Arc<str>,
    count: usize,
    envelopes: BytesMut,
}

impl Outbox {
    /// An outbox, and the task that sends what it gathers over `link`
    /// (to spawn).
    pub fn new<S, A, E, L>(
        link: Link<S, A, E, L>,
    ) -> (Outbox, impl std::future::Future<Output = ()>)
    where
        S: Fn(&str) -> String,
        A: Fn(&str) -> String,
        E: Fn(async_nats::PublishError),
        L: Fn(&str),
    {
        let shared = Arc::new(Shared::default());
        let task = send_batches(shared.clone(), link);
        (Outbox { shared }, task)
    }

    /// `node` has routed what was sent to it up to `bytes` (its echo of an
    /// [`ACK_HEADER`]).
    pub fn acknowledged(&self, node: &str, bytes: u64) {
        let mut acked = self.shared.acked.lock();
        match acked.get_mut(node) {
            Some(known) => *known = (*known).max(bytes),
            None => {
                acked.insert(Arc::from(node), bytes);
            }
        }
        drop(acked);
        self.shared.acked_changed.notify_waiters();
    }

    /// Adds the envelope `write` appends (as
    /// [`super::envelope::encode_into`]) to the batch for `node`; waits
    /// while the outbox is full.
    pub async fn push<E, W: FnOnce(&mut BytesMut) -> Result<(), E>>(
        &self,
        node: &Arc<str>,
        write: W,
    ) -> Result<(), E> {
        let mut write = match self.try_push(node, write) {
            Ok(None) => return Ok(()),
            Ok(Some(write)) => Some(write),
            Err(e) => return Err(e),
        };
        loop {
            let emptied = self.shared.emptied.notified();
            {
                let mut pending = self.shared.pending.lock();
                if let Some(write) = write.take_if(|_| pending.bytes < MAX_PENDING_BYTES) {
                    let was_empty = pending.batches.is_empty();
                    pending.append(node, write)?;
                    drop(pending);
                    if was_empty {
                        self.shared.filled.notify_one();
                    }
                    return Ok(());
                }
            }
            emptied.await;
        }
    }
}

impl Outbox {
    /// As [`Outbox::push`] without waiting: `write` comes back when the
    /// outbox is full.
    pub fn try_push<E, W: FnOnce(&mut BytesMut) -> Result<(), E>>(
        &self,
        node: &Arc<str>,
        write: W,
    ) -> Result<Option<W>, E> {
        let mut pending = self.shared.pending.lock();
        if pending.bytes >= MAX_PENDING_BYTES {
            return Ok(Some(write));
        }
        let was_empty = pending.batches.is_empty();
        pending.append(node, write)?;
        drop(pending);
        if was_empty {
            self.shared.filled.notify_one();
        }
        Ok(None)
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.shared.pending.lock().closed = true;
        self.shared.filled.notify_one();
    }
}

impl Pending {
    fn append<E>(
        &mut self,
        node: &Arc<str>,
        write: impl FnOnce(&mut BytesMut) -> Result<(), E>,
    ) -> Result<(), E> {
        // The node's latest batch, unless full: a new one goes after it,
        // so the node's envelopes stay in order.
        let open = self
            .batches
            .iter()
            .rposition(|b| b.node == *node)
            .filter(|&i| self.batches[i].envelopes.len() < MAX_BATCH_BYTES);
        let i = match open {
            Some(i) => i,
            None => {
                self.batches.push(Batch {
                    node: node.clone(),
                    count: 0,
                    envelopes: BytesMut::with_capacity(FIRST_BATCH_BYTES),
                });
                self.batches.len() - 1
            }
        };
        let batch = &mut self.batches[i];
        let start = batch.envelopes.len();
        batch.envelopes.put_u32(0);
        if let Err(e) = write(&mut batch.envelopes) {
            batch.envelopes.truncate(start);
            return Err(e);
        }
        let len = batch.envelopes.len() - start - 4;
        // An envelope is smaller than a NATS message (at most 64 MiB).
        batch.envelopes[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
        batch.count += 1;
        self.bytes += len + 4;
        Ok(())
    }
}

/// Sends what `shared` gathers, batch after batch, until its outbox is
/// dropped.
async fn send_batches<S, A, E, L>(shared: Arc<Shared>, link: Link<S, A, E, L>)
where
    S: Fn(&str) -> String,
    A: Fn(&str) -> String,
    E: Fn(async_nats::PublishError),
    L: Fn(&str),
{
    let mut flows: HashMap<Arc<str>, Flow> = HashMap::new();
    loop {
        shared.filled.notified().await;
        let (batches, closed) = {
            let mut pending = shared.pending.lock();
            pending.bytes = 0;
            (std::mem::take(&mut pending.batches), pending.closed)
        };
        shared.emptied.notify_waiters();
        for batch in batches {
            let flow = flows.entry(batch.node.clone()).or_default();
            let acked = room_for(&shared, &batch.node, flow, &link.on_stall).await;
            let ask = flow.send(batch.envelopes.len() as u64, acked);
            let subject = (link.subject)(&batch.node);
            let mut envelopes = batch.envelopes.freeze();
            let mut headers = HeaderMap::new();
            if batch.count == 1 {
                envelopes.advance(4);
            } else {
                headers.insert(BATCH_HEADER, batch.count.to_string().as_str());
            }
            let client = &link.client;
            let sent = match ask {
                Some(bytes) => {
                    headers.insert(ACK_HEADER, bytes.to_string().as_str());
                    let reply = (link.acks)(&batch.node);
                    client
                        .publish_with_reply_and_headers(subject, reply, headers, envelopes)
                        .await
                }
                None if batch.count == 1 => client.publish(subject, envelopes).await,
                None => {
                    client
                        .publish_with_headers(subject, headers, envelopes)
                        .await
                }
            };
            if let Err(e) = sent {
                (link.on_error)(e);
            }
        }
        if closed {
            return;
        }
    }
}

/// Waits until `flow` has room in `node`'s window, or [`STALL_LIMIT`]
/// (then the node is taken to have routed everything sent, and
/// `on_stall` told). Returns what the node acknowledged.
async fn room_for(shared: &Shared, node: &Arc<str>, flow: &Flow, on_stall: &impl Fn(&str)) -> u64 {
    let deadline = tokio::time::Instant::now() + STALL_LIMIT;
    loop {
        let changed = shared.acked_changed.notified();
        let acked = shared.acked.lock().get(node).copied().unwrap_or(0);
        if flow.has_room(acked) {
            return acked;
        }
        if tokio::time::timeout_at(deadline, changed).await.is_err() {
            on_stall(node);
            let mut known = shared.acked.lock();
            let acked = known.entry(node.clone()).or_default();
            *acked = (*acked).max(flow.sent);
            return *acked;
        }
    }
}

/// The envelopes of a batch's payload; `Err` at the first one cut short
/// (those before it are returned in the `Ok` part of the iterator).
pub fn decode(mut payload: Bytes) -> impl Iterator<Item = Result<Bytes, &'static str>> {
    std::iter::from_fn(move || {
        if payload.is_empty() {
            return None;
        }
        if payload.len() < 4 {
            payload.clear();
            return Some(Err("a batch ends inside a length"));
        }
        let len = payload.get_u32() as usize;
        if payload.len() < len {
            payload.clear();
            return Some(Err("a batch ends inside an envelope"));
        }
        Some(Ok(payload.split_to(len)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The payload of a batch: each envelope behind its length.
    fn encode(envelopes: &[Bytes]) -> Bytes {
        let mut out = BytesMut::new();
        for envelope in envelopes {
            out.put_u32(envelope.len() as u32);
            out.put_slice(envelope);
        }
        out.freeze()
    }

    #[test]
    fn a_batch_gives_back_its_envelopes_in_order() {
        let envelopes = vec![
            Bytes::from_static(b"first"),
            Bytes::new(),
            Bytes::from(vec![7u8; 70_000]),
        ];
        let decoded: Result<Vec<Bytes>, _> = decode(encode(&envelopes)).collect();
        assert_eq!(decoded.unwrap(), envelopes);
    }

    #[test]
    fn a_cut_batch_is_an_error_after_the_whole_envelopes() {
        let payload = encode(&[Bytes::from_static(b"whole"), Bytes::from_static(b"cut")]);
        let cut = payload.slice(..payload.len() - 1);
        let decoded: Vec<_> = decode(cut).collect();
        assert_eq!(decoded.len(), 2);
        assert_eq!(decoded[0], Ok(Bytes::from_static(b"whole")));
        assert!(decoded[1].is_err());
        let decoded: Vec<_> = decode(Bytes::from_static(&[0, 0])).collect();
        assert_eq!(decoded, vec![Err("a batch ends inside a length")]);
    }

    #[test]
    fn envelopes_are_gathered_per_node_in_order() {
        let mut pending = Pending::default();
        for (node, body) in [("b", "1"), ("c", "2"), ("b", "3")] {
            let write = |out: &mut BytesMut| -> Result<(), ()> {
                out.put_slice(body.as_bytes());
                Ok(())
            };
            pending.append(&Arc::from(node), write).unwrap();
        }
        let failed = pending.append(&Arc::from("b"), |out: &mut BytesMut| {
            out.put_slice(b"half");
            Err(())
        });
        assert!(failed.is_err(), "an envelope that failed is left out");
        let view: Vec<(&str, usize, Vec<Bytes>)> = pending
            .batches
            .iter()
            .map(|b| {
                let envelopes = decode(b.envelopes.clone().freeze()).map(Result::unwrap);
                (&*b.node, b.count, envelopes.collect())
            })
            .collect();
        assert_eq!(
            view,
            vec![
                ("b", 2, vec![Bytes::from("1"), Bytes::from("3")]),
                ("c", 1, vec![Bytes::from("2")])
            ]
        );
        assert_eq!(pending.bytes, 3 * (4 + 1));
    }

    #[test]
    fn a_full_batch_is_followed_by_a_new_one_for_the_same_node() {
        let mut pending = Pending::default();
        let big = vec![7u8; MAX_BATCH_BYTES];
        for _ in 0..2 {
            let write = |out: &mut BytesMut| -> Result<(), ()> {
                out.put_slice(&big);
                Ok(())
            };
            pending.append(&Arc::from("b"), write).unwrap();
        }
        let counts: Vec<usize> = pending.batches.iter().map(|b| b.count).collect();
        assert_eq!(counts, vec![1, 1]);
    }

    #[tokio::test]
    async fn a_publisher_waits_while_the_outbox_is_full_and_goes_on_once_it_is_sent() {
        let outbox = Outbox {
            shared: Arc::new(Shared::default()),
        };
        let chunk = vec![1u8; MAX_BATCH_BYTES];
        let node: Arc<str> = Arc::from("b");
        while outbox.shared.pending.lock().bytes < MAX_PENDING_BYTES {
            let write = |out: &mut BytesMut| -> Result<(), ()> {
                out.put_slice(&chunk);
                Ok(())
            };
            outbox.push(&node, write).await.unwrap();
        }
        let write = |out: &mut BytesMut| -> Result<(), ()> {
            out.put_slice(b"one more");
            Ok(())
        };
        let mut waiting = Box::pin(outbox.push(&node, write));
        let short = std::time::Duration::from_millis(50);
        assert!(
            tokio::time::timeout(short, &mut waiting).await.is_err(),
            "no room: the publisher waits"
        );
        // What the sending task does: take everything, say so.
        let taken = std::mem::take(&mut *outbox.shared.pending.lock());
        outbox.shared.pending.lock().bytes = 0;
        outbox.shared.emptied.notify_waiters();
        assert!(taken.batches.len() > 1);
        tokio::time::timeout(std::time::Duration::from_secs(1), waiting)
            .await
            .expect("woken once there is room")
            .unwrap();
        assert_eq!(outbox.shared.pending.lock().batches[0].count, 1);
    }

    #[test]
    fn a_node_is_asked_to_acknowledge_every_so_often_and_each_batch_near_a_full_window() {
        let mut flow = Flow::default();
        assert_eq!(flow.send(1000, 0), None, "a small batch asks nothing");
        let asked = flow.send(ACK_EVERY_BYTES, 0);
        assert_eq!(asked, Some(1000 + ACK_EVERY_BYTES));
        assert_eq!(flow.send(1000, asked.unwrap()), None);
        // Past half the window unacknowledged, every batch asks.
        let acked = flow.sent;
        flow.sent += WINDOW_BYTES / 2;
        flow.asked = flow.sent;
        assert!(flow.send(10, acked).is_some());
        assert!(flow.send(10, acked).is_some());
        assert!(flow.has_room(acked));
        flow.sent = acked + WINDOW_BYTES;
        assert!(!flow.has_room(acked), "a full window");
        assert!(flow.has_room(acked + 1));
    }

    #[tokio::test]
    async fn a_full_window_waits_for_the_node_and_no_longer_than_the_stall_limit() {
        let (outbox, _task) = Outbox::new(Link {
            client: never_connected().await,
            subject: |node: &str| node.to_string(),
            acks: |node: &str| node.to_string(),
            on_error: |_| {},
            on_stall: |_: &str| {},
        });
        let node: Arc<str> = Arc::from("b");
        let flow = Flow {
            sent: WINDOW_BYTES + 100,
            asked: WINDOW_BYTES + 100,
        };
        let stalls = std::sync::atomic::AtomicUsize::new(0);
        let on_stall = |_: &str| {
            stalls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        };
        let shared = outbox.shared.clone();
        let waiting = room_for(&shared, &node, &flow, &on_stall);
        tokio::pin!(waiting);
        let short = Duration::from_millis(50);
        assert!(tokio::time::timeout(short, &mut waiting).await.is_err());
        outbox.acknowledged("b", 200);
        assert_eq!(waiting.await, 200, "room once the node acknowledged");
        assert_eq!(stalls.load(std::sync::atomic::Ordering::Relaxed), 0);
        // Nothing comes: sent all the same after the limit, and said.
        let flow = Flow {
            sent: 200 + WINDOW_BYTES,
            asked: 200 + WINDOW_BYTES,
        };
        let started = tokio::time::Instant::now();
        assert_eq!(room_for(&shared, &node, &flow, &on_stall).await, flow.sent);
        assert!(started.elapsed() >= STALL_LIMIT);
        assert_eq!(stalls.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    /// A client for tests that send nothing.
    async fn never_connected() -> async_nats::Client {
        async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect("nats://127.0.0.1:1")
            .await
            .unwrap()
    }
}
