//! Reading an offline session's queue subject back: on load, what other
//! nodes wrote meanwhile, and what the node the client left still forwards
//! until it says it is done ([`QueueTail`]); emptying it once read.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use bytes::Bytes;
use futures_util::StreamExt;

use crate::session::Delivery;

use super::mirror::Item;
use super::ready::ReadyEntry;
use super::sessions::{QueueEntry, SessionRecord};
use super::{Cluster, ClusterError};

/// Header of the entry a node writes into a session's queue when it stops
/// forwarding messages there (value: `<node>/<run>`); the node the client
/// went to reads the queue until it comes ([`QueueTail`]).
pub(super) const FORWARDING_END_HEADER: &str = "Kmq-Forwarding-End";

/// Fetches in a row that may bring nothing while a session's queue is read
/// (half a second each) before the read fails.
const READ_IDLE_FETCHES: u32 = 10;

/// A session read back from NATS.
#[derive(Debug, Default)]
pub struct LoadedSession {
    pub record: Option<SessionRecord>,
    /// Queue entries from this node's copy of the queue
    /// ([`super::mirror`]), made ready for the session: they come before
    /// `entries`. From [`Cluster::load_from_copy`], only those in flight
    /// (or matching nothing): the others are in `queued`.
    pub ready: Vec<ReadyEntry>,
    /// From [`Cluster::load_from_copy`]: the entries to be queued, in
    /// order, as the session's queue holds them, and their bytes.
    pub queued: VecDeque<Delivery>,
    pub queued_bytes: usize,
    /// Queue entries in order, each message once.
    pub entries: Vec<QueueEntry>,
    /// The ids of `ready` and `entries` ([`Cluster::load_session`] only).
    pub ids: HashSet<u64>,
    /// The last stream sequence read (0: none).
    pub last_seq: u64,
    /// Nodes (`<node>/<run>`) whose end of forwarding was read.
    pub forwarding_ended: Vec<String>,
    /// Entries came from this node's copy of the queue.
    pub from_copy: bool,
}

/// A session's record and its queue's last stream sequence (0: empty).
#[derive(Debug)]
pub struct SessionHead {
    pub record: Option<SessionRecord>,
    pub last_seq: u64,
}

/// Reads what a node still forwards into a session's queue, until that
/// node says it has stopped ([`Cluster::end_forwarding`]).
pub struct QueueTail {
    consumer: jetstream::consumer::Consumer<pull::Config>,
    /// The `<node>/<run>` of the node whose end is awaited.
    holder: String,
    client_id: String,
    /// The last stream sequence read.
    pub last_seq: u64,
}

impl QueueTail {
    /// The next entries (waiting up to a second for some), not in `seen`
    /// (which gains them), and whether the holder's end came with them.
    pub async fn next(
        &mut self,
        seen: &mut HashSet<u64>,
        logger: &crate::log::Logger,
    ) -> Result<(Vec<QueueEntry>, bool), ClusterError> {
        let mut batch = self
            .consumer
            .fetch()
            .max_messages(500)
            .expires(Duration::from_secs(1))
            .messages()
            .await
            .map_err(ClusterError::nats)?;
        let mut loaded = LoadedSession::default();
        while let Some(message) = batch.next().await {
            let message = message.map_err(ClusterError::nats)?;
            take_queued(&message, &self.client_id, seen, &mut loaded, logger);
        }
        self.last_seq = self.last_seq.max(loaded.last_seq);
        let ended = loaded.forwarding_ended.contains(&self.holder);
        Ok((loaded.entries, ended))
    }
}

/// Adds one message of a session's queue subject, as JetStream delivers
/// it, to `loaded`: an entry not in `seen`, or a node's end of forwarding
/// (an unreadable one is skipped, and logged).
fn take_queued(
    message: &jetstream::Message,
    client_id: &str,
    seen: &mut HashSet<u64>,
    loaded: &mut LoadedSession,
    logger: &crate::log::Logger,
) {
    if let Ok(info) = message.info() {
        loaded.last_seq = loaded.last_seq.max(info.stream_sequence);
    }
    match Item::decode(message.headers.as_ref(), &message.payload) {
        Item::Entry(entry) => {
            if seen.insert(entry.id) {
                loaded.entries.push(*entry);
            }
        }
        Item::End(holder) => loaded.forwarding_ended.push(holder),
        Item::Unreadable(e) => logger.warning(&format!(
            "Cluster: an unreadable queued message of {client_id} was skipped: {e}."
        )),
    }
}

impl Cluster {
    /// What loading `client_id`'s session reads first: its record and
    /// its queue's last sequence, asked for at once.
    pub async fn session_head(&self, client_id: &str) -> Result<SessionHead, ClusterError> {
        let (record, last_seq) = tokio::try_join!(
            self.session_record(client_id),
            self.queue_last_seq(client_id)
        )?;
        Ok(SessionHead { record, last_seq })
    }

    /// Reads a session back: its record and every queued entry, each
    /// message once, in order, from `head` when it was read already. An
    /// empty queue costs no consumer; with `mirrored`, what this node's
    /// copy of the queue holds is not read again (without, the copy is
    /// dropped).
    pub async fn load_session(
        &self,
        client_id: &str,
        mirrored: bool,
        head: Option<SessionHead>,
    ) -> Result<LoadedSession, ClusterError> {
        let head = match head {
            Some(head) => head,
            None => self.session_head(client_id).await?,
        };
        let last_seq = head.last_seq;
        let mut loaded = LoadedSession {
            record: head.record,
            ..LoadedSession::default()
        };
        let mut seen = HashSet::new();
        let mut read_from = 1;
        let copy = match &loaded.record {
            Some(record) if mirrored => {
                self.take_mirror(client_id, last_seq, &record.subscriptions)
            }
            _ => {
                self.drop_mirror(client_id);
                None
            }
        };
        if let Some(copy) = copy {
            loaded.ready = copy.entries;
            seen = copy.ids;
            loaded.forwarding_ended = copy.ended;
            loaded.last_seq = copy.up_to;
            loaded.from_copy = copy.up_to > 0;
            read_from = copy.up_to + 1;
        }
        if last_seq >= read_from {
            self.read_queue(client_id, read_from, &mut seen, &mut loaded)
                .await?;
        }
        loaded.ids = seen;
        Ok(loaded)
    }

    /// Appends the entries of `client_id`'s subject from stream sequence
    /// `from` on, skipping messages in `seen`.
    async fn read_queue(
        &self,
        client_id: &str,
        from: u64,
        seen: &mut HashSet<u64>,
        loaded: &mut LoadedSession,
    ) -> Result<(), ClusterError> {
        let stream = self
            .js
            .get_stream_no_info(self.names.queue_stream())
            .await
            .map_err(ClusterError::nats)?;
        let subject = self.queue_subject(client_id);
        let consumer = stream
            .create_consumer(pull::Config {
                filter_subject: subject,
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: from.max(1),
                },
                ack_policy: AckPolicy::None,
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            })
            .await
            .map_err(ClusterError::nats)?;
        // Everything the subject held when the consumer was made, however
        // slowly the server hands it out: a short or empty batch is not
        // the end of it.
        let want = consumer.cached_info().num_pending;
        let mut read = 0;
        let mut idle_fetches = 0;
        while read < want {
            let mut batch = consumer
                .fetch()
                .max_messages(500)
                .expires(Duration::from_millis(500))
                .messages()
                .await
                .map_err(ClusterError::nats)?;
            let mut got = 0;
            while let Some(message) = batch.next().await {
                let message = message.map_err(ClusterError::nats)?;
                got += 1;
                take_queued(&message, client_id, seen, loaded, &self.logger);
            }
            read += got;
            idle_fetches = if got == 0 { idle_fetches + 1 } else { 0 };
            if idle_fetches >= READ_IDLE_FETCHES {
                // Purged meanwhile (a clean start elsewhere), or NATS is
                // stuck: the caller refuses rather than load half of it.
                return Err(ClusterError::nats(format!(
                    "read {read} of the {want} queued messages of {client_id}"
                )));
            }
        }
        Ok(())
    }

    /// Appends to `late` what was written into `client_id`'s queue after
    /// stream sequence `after` (and after what `late` already holds), not
    /// in `seen` (which gains it). A read that fails part-way keeps what it
    /// read: called again with the same `late`, it goes on from there.
    pub async fn read_late(
        &self,
        client_id: &str,
        seen: &mut HashSet<u64>,
        late: &mut LoadedSession,
        after: u64,
    ) -> Result<(), ClusterError> {
        let from = late.last_seq.max(after) + 1;
        let result = match self.queue_last_seq(client_id).await {
            // Nothing after `from`: no consumer needed.
            Ok(last) if last < from => Ok(()),
            Ok(_) => self.read_queue(client_id, from, seen, late).await,
            Err(e) => Err(e),
        };
        late.last_seq = late.last_seq.max(after);
        result
    }

    /// The stream sequence of the last message in `client_id`'s queue (0:
    /// none): one request, so a node can tell whether anything was written
    /// there since it last read without reading it.
    pub async fn queue_last_seq(&self, client_id: &str) -> Result<u64, ClusterError> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind;
        let stream = self
            .js
            .get_stream_no_info(self.names.queue_stream())
            .await
            .map_err(ClusterError::nats)?;
        match stream
            .get_last_raw_message_by_subject(&self.queue_subject(client_id))
            .await
        {
            Ok(message) => Ok(message.sequence),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(0),
            Err(e) => Err(ClusterError::nats(e)),
        }
    }

    /// Follows `client_id`'s queue after stream sequence `after` until the
    /// node `holder` (`<node>/<run>`) says it stopped forwarding there.
    pub async fn tail_queue(
        &self,
        client_id: &str,
        after: u64,
        holder: String,
    ) -> Result<QueueTail, ClusterError> {
        let stream = self
            .js
            .get_stream_no_info(self.names.queue_stream())
            .await
            .map_err(ClusterError::nats)?;
        let consumer = stream
            .create_consumer(pull::Config {
                filter_subject: self.queue_subject(client_id),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: after + 1,
                },
                ack_policy: AckPolicy::None,
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            })
            .await
            .map_err(ClusterError::nats)?;
        Ok(QueueTail {
            consumer,
            holder,
            client_id: client_id.to_string(),
            last_seq: after,
        })
    }

    /// This node (this run) writes nothing more into `client_id`'s queue:
    /// says so there, after what it forwarded.
    pub async fn end_forwarding(&self, client_id: &str) -> Result<(), ClusterError> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(FORWARDING_END_HEADER, self.holder_tag().as_str());
        self.js
            .publish_with_headers(self.queue_subject(client_id), headers, Bytes::new())
            .await
            .map_err(ClusterError::nats)?
            .await
            .map_err(ClusterError::nats)?;
        Ok(())
    }

    /// This node and run, as a forwarding end names it.
    pub fn holder_tag(&self) -> String {
        format!("{}/{}", self.node, self.run)
    }

    /// Notes that this node read `client_id`'s queue into the session up
    /// to stream sequence `seq`: [`Cluster::purge_consumed`] removes those
    /// entries, and until it could, a hand-off of the session does it first
    /// (the node it goes to must not deliver them again).
    pub fn note_consumed(&self, client_id: &Arc<str>, seq: u64) {
        if seq == 0 {
            return;
        }
        let mut consumed = self.consumed.lock();
        let up_to = consumed.entry(client_id.clone()).or_default();
        *up_to = (*up_to).max(seq);
    }

    /// Removes the entries of `client_id`'s queue that this node read
    /// ([`Cluster::note_consumed`]); anything written since stays. Fails
    /// when NATS did not answer: they are still to be removed.
    pub async fn purge_consumed(&self, client_id: &str) -> Result<(), ClusterError> {
        let Some(seq) = self.consumed.lock().get(client_id).copied() else {
            return Ok(());
        };
        let stream = self
            .js
            .get_stream_no_info(self.names.queue_stream())
            .await
            .map_err(ClusterError::nats)?;
        stream
            .purge()
            .filter(self.queue_subject(client_id))
            .sequence(seq + 1)
            .await
            .map_err(ClusterError::nats)?;
        let mut consumed = self.consumed.lock();
        if consumed.get(client_id).is_some_and(|up_to| *up_to <= seq) {
            consumed.remove(client_id);
        }
        Ok(())
    }

    /// Empties a session's queue subject. Returns whether it did.
    pub async fn purge_queue(&self, client_id: &str) -> bool {
        self.consumed.lock().remove(client_id);
        let stream = match self.js.get_stream_no_info(self.names.queue_stream()).await {
            Ok(stream) => stream,
            Err(e) => {
                self.logger.warning(&format!(
                    "Cluster: cannot empty the queue of {client_id}: {e}."
                ));
                return false;
            }
        };
        if let Err(e) = stream.purge().filter(self.queue_subject(client_id)).await {
            self.logger.warning(&format!(
                "Cluster: cannot empty the queue of {client_id}: {e}."
            ));
            return false;
        }
        true
    }
}
