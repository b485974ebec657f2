//! A copy, kept by the node a client left, of its session's queue
//! subject: when the client comes back to that node, its queue is taken
//! from memory rather than read back from JetStream (which takes a while
//! for a long queue).
//!
//! The copy is an ordered consumer of the subject, made once the hand-off
//! has emptied what this node had read and before it writes anything: it
//! receives every entry the stream holds for the subject, in stream order
//! with their sequences (a gap makes the consumer start again after what
//! it has). It is used only when no other node had the session since (the
//! client's key still names this node and run: nobody else read or
//! emptied the queue); what the stream holds beyond the copy is read from
//! JetStream as before.
//!
//! While it keeps the copy, this node's entry in the clients bucket says
//! it holds the client ([`Cluster::release`]), so that a claim by another
//! node asks this one, which gives the copy up first. A client back here
//! is then let in on the copy alone, with no request to NATS before its
//! messages go ([`Cluster::resumable_here`]), unless this node may have
//! missed such a request (its NATS connection dropped, a subscription
//! dropped messages, its liveness key lapsed) or the client has a will to
//! record; the entry is checked once the client has its messages
//! (`broker/late_writes.rs`). When the copy ends by itself (its time, its
//! size, its consumer), the entry says the client is let go.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{push, DeliverPolicy};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::router::SubscriptionTable;
use crate::session::Delivery;
use crate::store::StoredSubscription;

use super::queue::{LoadedSession, FORWARDING_END_HEADER};
use super::ready::{self, ReadyEntry, ReadyKind};
use super::sessions::{QueueEntry, SessionRecord};
use super::Cluster;

/// How long a copy is kept, at most (less when the session expires
/// sooner): a client that comes back later reads its queue from
/// JetStream.
const MIRROR_LIFETIME: Duration = Duration::from_secs(600);

/// Copies a node keeps at once, at most (each is a consumer on the
/// queue stream): beyond, a client that leaves gets none.
const MAX_MIRRORS: usize = 1000;

/// How long making a copy may hold up the hand-off it comes before.
const MIRROR_SETUP_LIMIT: Duration = Duration::from_secs(1);

/// Bytes all copies hold together, at most: a copy that would go beyond
/// is given up.
const MIRRORS_MAX_BYTES: usize = 256 * 1024 * 1024;

/// One message of a queue subject.
#[derive(Debug)]
pub(super) enum Item {
    Entry(Box<QueueEntry>),
    /// A node's end of forwarding (`<node>/<run>`).
    End(String),
    /// A message that is neither (skipped, and logged).
    Unreadable(String),
}

impl Item {
    pub(super) fn decode(headers: Option<&HeaderMap>, payload: &Bytes) -> Item {
        if let Some(holder) = headers.and_then(|h| h.get(FORWARDING_END_HEADER)) {
            return Item::End(holder.as_str().to_string());
        }
        match postcard::from_bytes::<QueueEntry>(payload) {
            Ok(entry) => Item::Entry(Box::new(entry)),
            Err(e) => Item::Unreadable(e.to_string()),
        }
    }
}

/// The copies this node keeps, by client id.
#[derive(Default)]
pub(super) struct Mirrors {
    copies: Mutex<HashMap<Arc<str>, Arc<Kept>>>,
    /// Payload bytes all copies hold.
    bytes: AtomicUsize,
}

/// One copy, and the task filling it.
struct Kept {
    copy: Mutex<Copy>,
    /// Wakes the task filling the copy once it has stopped.
    stopped: Notify,
}

impl Mirrors {
    /// Stops the copy of `client_id` and returns what it held, unless it
    /// had stopped already (then it may be short of the subject).
    fn take(&self, client_id: &str) -> Option<Copy> {
        let kept = self.copies.lock().remove(client_id)?;
        let copy = self.stop(&kept);
        (!copy.stopped).then_some(copy)
    }

    /// Stops `kept` (its bytes are free again) and returns what it held.
    fn stop(&self, kept: &Kept) -> Copy {
        let copy = {
            let mut copy = kept.copy.lock();
            self.bytes.fetch_sub(copy.bytes, Ordering::AcqRel);
            std::mem::replace(&mut *copy, Copy::given_up())
        };
        kept.stopped.notify_one();
        copy
    }
}

#[derive(Default)]
struct Copy {
    /// The subscriptions the entries were made ready for (the session's
    /// when its client left).
    subscriptions: Vec<StoredSubscription>,
    /// The session's expiry interval when its client left (seconds).
    expiry_interval: u32,
    /// The subject's entries in stream order, each message once, with
    /// their sequences: those sent before (in flight) and those matching
    /// no subscription. The others are in `queued`.
    entries: Vec<(u64, ReadyEntry)>,
    /// The subject's entries to be queued, in stream order, as the
    /// session's queue holds them: restoring them is a move of the whole
    /// queue, with nothing done per message before the CONNACK.
    queued: VecDeque<Delivery>,
    /// The sequence and id of each of `queued`.
    queued_seqs: Vec<(u64, u64)>,
    /// Their bytes, as the session's queue counts them.
    queued_bytes: usize,
    /// The ids of `entries` and `queued`.
    ids: HashSet<u64>,
    /// Nodes' ends of forwarding (`<node>/<run>`), with their sequences.
    ended: Vec<(u64, String)>,
    /// The sequence of the last message received (0: none).
    last_seq: u64,
    /// The revision of the client's entry in the clients bucket that this
    /// node wrote when the client left, saying it holds the client
    /// ([`Cluster::note_held`]).
    held: Option<u64>,
    /// [`Cluster::interruptions`] when the client left.
    interruptions: u64,
    /// Holds a QoS 2 message: not let in on the copy alone (should the
    /// check after the delivery fail, it would go twice).
    exactly_once: bool,
    bytes: usize,
    /// No longer filled (too big, taken, dropped, past its time, or its
    /// consumer failed): not to be used.
    stopped: bool,
}

impl Copy {
    /// What is left of a copy taken or given up.
    fn given_up() -> Copy {
        Copy {
            stopped: true,
            ..Copy::default()
        }
    }
}

/// What a copy holds up to a stream sequence.
pub(super) struct Mirrored {
    /// In stream order, each message once.
    pub entries: Vec<ReadyEntry>,
    /// The ids of `entries`.
    pub ids: HashSet<u64>,
    /// The nodes whose end of forwarding it holds.
    pub ended: Vec<String>,
    /// The last stream sequence the copy covers (0: none).
    pub up_to: u64,
}

impl Cluster {
    /// Starts copying `client_id`'s queue subject, from its first message
    /// (for at most `expiry`, and [`MIRROR_LIFETIME`]). Resolves once the
    /// consumer exists, or at once without JetStream (no copy then).
    /// Its entries are made ready for a session with `subscriptions`.
    pub async fn mirror_queue(
        self: &Arc<Self>,
        client_id: &Arc<str>,
        expiry: Duration,
        subscriptions: Vec<StoredSubscription>,
    ) {
        {
            let copies = self.mirrors.copies.lock();
            if copies.len() >= MAX_MIRRORS || copies.contains_key(client_id) {
                return;
            }
        }
        if !self.is_ready() {
            return;
        }
        // Still picking up its queue from an earlier load here: what that
        // reads is removed from the queue later, and must not be copied.
        if self.given.has(client_id) {
            return;
        }
        let messages = async {
            // What the session had read from the queue goes first: the
            // copy starts after it.
            self.purge_consumed(client_id).await?;
            let stream = self
                .js
                .get_stream_no_info(self.names.queue_stream())
                .await?;
            let consumer = stream
                .create_consumer(push::OrderedConfig {
                    deliver_subject: self.client.new_inbox(),
                    filter_subject: self.queue_subject(client_id),
                    deliver_policy: DeliverPolicy::All,
                    ..Default::default()
                })
                .await?;
            Ok::<_, async_nats::Error>(consumer.messages().await?)
        };
        let messages = match tokio::time::timeout(MIRROR_SETUP_LIMIT, messages).await {
            Ok(Ok(messages)) => messages,
            Err(_) => {
                self.logger.warning(&format!(
                    "Cluster: no copy of the queue of {client_id}: JetStream did not make its consumer within {MIRROR_SETUP_LIMIT:?}."
                ));
                return;
            }
            Ok(Err(e)) => {
                self.logger.warning(&format!(
                    "Cluster: cannot keep a copy of the queue of {client_id}: {e}."
                ));
                return;
            }
        };
        let matcher = ready::matcher(&subscriptions);
        let kept = Arc::new(Kept {
            copy: Mutex::new(Copy {
                subscriptions,
                expiry_interval: u32::try_from(expiry.as_secs()).unwrap_or(u32::MAX),
                ..Copy::default()
            }),
            stopped: Notify::new(),
        });
        self.mirrors
            .copies
            .lock()
            .insert(client_id.clone(), kept.clone());
        let until = tokio::time::Instant::now() + expiry.min(MIRROR_LIFETIME);
        tokio::spawn(
            self.clone()
                .keep_copy(client_id.clone(), kept, matcher, messages, until),
        );
    }

    /// Fills the copy `kept` from `messages`, each entry made ready for
    /// the session `matcher` stands for, until it is stopped or `until`.
    async fn keep_copy(
        self: Arc<Self>,
        client_id: Arc<str>,
        kept: Arc<Kept>,
        matcher: SubscriptionTable<u8>,
        mut messages: push::Ordered,
        until: tokio::time::Instant,
    ) {
        let max_entries = usize::try_from(self.max_queued_messages).unwrap_or(usize::MAX);
        // Stopped from outside (the copy taken, or dropped): otherwise it
        // ended by itself, and the client is let go.
        let mut stopped = false;
        loop {
            let message = tokio::select! {
                message = messages.next() => message,
                () = tokio::time::sleep_until(until) => None,
                () = kept.stopped.notified() => {
                    stopped = true;
                    None
                }
            };
            let received = match &message {
                Some(Ok(message)) => message.info().ok().map(|info| info.stream_sequence),
                _ => None,
            };
            let (Some(Ok(message)), Some(seq)) = (message, received) else {
                break;
            };
            // Made ready before the copy is locked: the node taking it
            // waits for nothing but the lock.
            let item = match Item::decode(message.headers.as_ref(), &message.payload) {
                Item::Entry(entry) => Some(Ok(ready::ready(*entry, &matcher))),
                Item::End(holder) => Some(Err(holder)),
                Item::Unreadable(e) => {
                    self.logger.warning(&format!(
                        "Cluster: an unreadable queued message of {client_id} is left out of this node's copy of its queue: {e}."
                    ));
                    None
                }
            };
            let mut copy = kept.copy.lock();
            if copy.stopped {
                stopped = true;
                break;
            }
            let size = message.payload.len();
            copy.bytes += size;
            let total = self.mirrors.bytes.fetch_add(size, Ordering::AcqRel) + size;
            if total > MIRRORS_MAX_BYTES || copy.entries.len() + copy.queued.len() >= max_entries {
                break;
            }
            copy.last_seq = seq;
            match item {
                Some(Ok(entry)) if copy.ids.insert(entry.id) => {
                    copy.exactly_once |= ready::is_exactly_once(&entry);
                    match entry.kind {
                        ReadyKind::Queued(delivery) => {
                            copy.queued_bytes += entry.bytes;
                            copy.queued_seqs.push((seq, entry.id));
                            copy.queued.push_back(delivery);
                        }
                        kind => copy.entries.push((
                            seq,
                            ReadyEntry {
                                id: entry.id,
                                kind,
                                bytes: entry.bytes,
                            },
                        )),
                    }
                }
                Some(Err(holder)) => copy.ended.push((seq, holder)),
                // A message it has already, or an unreadable one.
                Some(Ok(_)) | None => {}
            }
        }
        {
            let mut copies = self.mirrors.copies.lock();
            if copies
                .get(&client_id)
                .is_some_and(|c| Arc::ptr_eq(c, &kept))
            {
                copies.remove(&client_id);
            }
        }
        let held = kept.copy.lock().held;
        self.mirrors.stop(&kept);
        if let Some(revision) = held.filter(|_| !stopped) {
            self.let_go_held(&client_id, revision).await;
        }
    }

    /// Whether this node keeps a copy of `client_id`'s queue.
    pub fn has_mirror(&self, client_id: &str) -> bool {
        self.mirrors.copies.lock().contains_key(client_id)
    }

    /// This node wrote `client_id`'s entry in the clients bucket as held
    /// here, at `revision`, when the client left: noted with the copy of
    /// its queue, for the client's claim when it comes back here.
    pub(super) fn note_held(&self, client_id: &str, revision: u64) {
        if let Some(kept) = self.mirrors.copies.lock().get(client_id) {
            let mut copy = kept.copy.lock();
            copy.held = Some(revision);
            copy.interruptions = self.interruptions();
        }
    }

    /// The revision noted by [`Cluster::note_held`], while this node
    /// keeps a copy of `client_id`'s queue: unless the entry changed since,
    /// no other node had the client.
    pub fn held_revision(&self, client_id: &str) -> Option<u64> {
        let kept = self.mirrors.copies.lock().get(client_id).cloned()?;
        let copy = kept.copy.lock();
        copy.held.filter(|_| !copy.stopped)
    }

    /// The revision noted by [`Cluster::note_held`] when the copy of
    /// `client_id`'s queue is the session for sure, with nothing asked of
    /// NATS: since the client left, no other node can have claimed it
    /// without asking this one (which would have given the copy up), as
    /// this node has had no interruption and its liveness key is current;
    /// and the copy holds no QoS 2 message. Its entry is checked all the
    /// same once the client has its messages.
    pub(super) fn resumable_here(&self, client_id: &str) -> Option<u64> {
        let kept = self.mirrors.copies.lock().get(client_id).cloned()?;
        let copy = kept.copy.lock();
        let uninterrupted = copy.interruptions == self.interruptions() && self.liveness_current();
        copy.held
            .filter(|_| !copy.stopped && uninterrupted && !copy.exactly_once)
    }

    /// Gives up the copy of `client_id`'s queue, if any.
    pub fn drop_mirror(&self, client_id: &str) {
        self.mirrors.take(client_id);
    }

    /// Takes the copy of `client_id`'s queue (which stops): what it
    /// holds up to stream sequence `up_to`. Nothing when its entries were
    /// made ready for other subscriptions than `subscriptions` (the
    /// session's now).
    pub(super) fn take_mirror(
        &self,
        client_id: &str,
        up_to: u64,
        subscriptions: &[StoredSubscription],
    ) -> Option<Mirrored> {
        let mut copy = self.mirrors.take(client_id)?;
        if copy.subscriptions != subscriptions {
            return None;
        }
        // One list again, in stream order.
        let queued = copy
            .queued
            .into_iter()
            .zip(copy.queued_seqs)
            .map(|(delivery, (seq, id))| {
                let bytes = crate::queue::size_of(&delivery);
                (
                    seq,
                    ReadyEntry {
                        id,
                        kind: ReadyKind::Queued(delivery),
                        bytes,
                    },
                )
            });
        copy.entries.extend(queued);
        copy.entries.sort_by_key(|(seq, _)| *seq);
        while copy.entries.last().is_some_and(|(seq, _)| *seq > up_to) {
            if let Some((_, entry)) = copy.entries.pop() {
                copy.ids.remove(&entry.id);
            }
        }
        copy.ended.retain(|(seq, _)| *seq <= up_to);
        Some(Mirrored {
            entries: copy.entries.into_iter().map(|(_, entry)| entry).collect(),
            ids: copy.ids,
            ended: copy.ended.into_iter().map(|(_, holder)| holder).collect(),
            up_to: copy.last_seq.min(up_to),
        })
    }

    /// Takes the whole copy of `client_id`'s queue as the session it
    /// stands for, when no other node had the client since it left here
    /// (the claim replaced the entry this node wrote then): the session's
    /// record is still the one this node handed off, whose subscriptions
    /// the copy keeps, and nobody read or emptied the queue. What the
    /// subject holds beyond the copy (written there after the copy last
    /// heard) is for the caller to read afterwards. Nothing without a copy
    /// that is still filled.
    pub fn load_from_copy(&self, client_id: &str) -> Option<LoadedSession> {
        let copy = self.mirrors.take(client_id)?;
        Some(LoadedSession {
            record: Some(SessionRecord {
                expiry_interval: copy.expiry_interval,
                subscriptions: copy.subscriptions,
                disconnected_at_ms: None,
            }),
            ready: copy.entries.into_iter().map(|(_, entry)| entry).collect(),
            queued: copy.queued,
            queued_bytes: copy.queued_bytes,
            entries: Vec::new(),
            ids: copy.ids,
            last_seq: copy.last_seq,
            forwarding_ended: copy.ended.into_iter().map(|(_, holder)| holder).collect(),
            from_copy: copy.last_seq > 0,
        })
    }
}
