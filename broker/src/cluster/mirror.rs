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

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{push, DeliverPolicy};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;

use super::queue::FORWARDING_END_HEADER;
use super::sessions::QueueEntry;
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
    copies: Mutex<HashMap<Arc<str>, Arc<Mutex<Copy>>>>,
    /// Payload bytes all copies hold.
    bytes: AtomicUsize,
}

impl Mirrors {
    /// Stops the copy of `client_id` and returns it, unless it had
    /// stopped already (then it may be short of the subject).
    fn take(&self, client_id: &str) -> Option<Arc<Mutex<Copy>>> {
        let copy = self.copies.lock().remove(client_id)?;
        let stopped = std::mem::replace(&mut copy.lock().stopped, true);
        (!stopped).then_some(copy)
    }

    /// `copy` no longer holds its items: their bytes are free again.
    fn release(&self, copy: &mut Copy) {
        self.bytes.fetch_sub(copy.bytes, Ordering::AcqRel);
        copy.bytes = 0;
    }
}

#[derive(Default)]
struct Copy {
    /// The subject's messages in stream order, with their sequences.
    items: Vec<(u64, Item)>,
    bytes: usize,
    /// No longer filled (too big, taken, dropped, past its time, or its
    /// consumer failed): not to be used.
    stopped: bool,
}

/// What a copy holds up to a stream sequence.
pub(super) struct Mirrored {
    /// In stream order, with their sequences.
    pub items: Vec<(u64, Item)>,
    /// The last stream sequence the items cover (0: none).
    pub up_to: u64,
}

impl Cluster {
    /// Starts copying `client_id`'s queue subject, from its first message
    /// (for at most `expiry`, and [`MIRROR_LIFETIME`]). Resolves once the
    /// consumer exists, or at once without JetStream (no copy then).
    pub async fn mirror_queue(self: &Arc<Self>, client_id: &Arc<str>, expiry: Duration) {
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
        let copy = Arc::new(Mutex::new(Copy::default()));
        self.mirrors
            .copies
            .lock()
            .insert(client_id.clone(), copy.clone());
        let until = tokio::time::Instant::now() + expiry.min(MIRROR_LIFETIME);
        tokio::spawn(
            self.clone()
                .keep_copy(client_id.clone(), copy, messages, until),
        );
    }

    /// Fills `copy` from `messages` until it is given up or `until`.
    async fn keep_copy(
        self: Arc<Self>,
        client_id: Arc<str>,
        copy: Arc<Mutex<Copy>>,
        mut messages: push::Ordered,
        until: tokio::time::Instant,
    ) {
        let max_items = usize::try_from(self.max_queued_messages).unwrap_or(usize::MAX);
        loop {
            let message = tokio::select! {
                message = messages.next() => message,
                () = tokio::time::sleep_until(until) => None,
            };
            let mut kept = copy.lock();
            if kept.stopped {
                break;
            }
            let Some(Ok(message)) = message else {
                kept.stopped = true;
                break;
            };
            let Ok(info) = message.info() else {
                kept.stopped = true;
                break;
            };
            let seq = info.stream_sequence;
            let size = message.payload.len();
            kept.bytes += size;
            let total = self.mirrors.bytes.fetch_add(size, Ordering::AcqRel) + size;
            if total > MIRRORS_MAX_BYTES || kept.items.len() >= max_items {
                kept.stopped = true;
                break;
            }
            let item = Item::decode(message.headers.as_ref(), &message.payload);
            kept.items.push((seq, item));
        }
        {
            let mut copies = self.mirrors.copies.lock();
            if copies
                .get(&client_id)
                .is_some_and(|c| Arc::ptr_eq(c, &copy))
            {
                copies.remove(&client_id);
            }
        }
        let mut copy = copy.lock();
        copy.items = Vec::new();
        self.mirrors.release(&mut copy);
    }

    /// Gives up the copy of `client_id`'s queue, if any.
    pub fn drop_mirror(&self, client_id: &str) {
        self.mirrors.take(client_id);
    }

    /// Takes the copy of `client_id`'s queue (which stops): the items it
    /// holds up to stream sequence `up_to`.
    pub(super) fn take_mirror(&self, client_id: &str, up_to: u64) -> Option<Mirrored> {
        let copy = self.mirrors.take(client_id)?;
        let mut items = {
            let mut copy = copy.lock();
            self.mirrors.release(&mut copy);
            std::mem::take(&mut copy.items)
        };
        items.truncate(items.partition_point(|(seq, _)| *seq <= up_to));
        let mirrored = Mirrored {
            up_to: items.last().map_or(0, |(seq, _)| *seq),
            items,
        };
        Some(mirrored)
    }
}
