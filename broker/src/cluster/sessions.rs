//! Persistent sessions, cluster-wide.
//!
//! A connected client's session lives on the node that holds the
//! connection, in memory, as on a single node. Its durable part is also in
//! NATS, so that the client can come back on any node:
//!
//! - the sessions bucket keeps each persistent session's record
//!   (subscriptions, expiry, when it went offline), rewritten whenever its
//!   subscriptions change;
//! - when the client leaves, its node *hands the session off*: what was
//!   queued or in flight goes into the session's queue subject
//!   (`_KMQ.<name>.q.<client>`, stream `KMQ_<name>_QUEUES`), and its filters
//!   become *session interest* (`=s.<client>.<filter>` in the interest
//!   bucket): from then on every node writes QoS 1/2 messages for it straight
//!   into that subject, before acknowledging their publisher, whatever node
//!   lives or dies;
//! - the node the client comes back to loads the record, replays the
//!   subject (in order, each message once: entries carry the message's
//!   cluster id), turns the session interest back into node interest, and
//!   after a short grace period picks up what was written meanwhile and
//!   empties the subject.
//!
//! When a node dies, the survivor that takes over each of its connected
//! clients also turns that client's session record into session interest,
//! so messages published from then on are kept for it.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::kv::Operation;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::message::Message;
use crate::store::{StoredMessage, StoredSubscription};

use super::backoff::Backoff;
use super::names::encode_key;
use super::{Cluster, ClusterError};

/// How long the node a client came back to keeps picking up messages
/// that other nodes still wrote for the offline session.
pub const HANDOVER_GRACE: Duration = Duration::from_secs(2);

/// How long after a session's interest left the bucket another node may
/// still write into its queue: a write planned just before that node saw
/// the change waits for a stream leader for up to the no-leader window,
/// then for its acknowledgement up to the request timeout, and the node's
/// own view of the bucket may lag as long again.
pub const LATE_WRITE_WINDOW: Duration = super::routing::NO_LEADER_RETRY_WINDOW
    .saturating_add(super::REQUEST_TIMEOUT)
    .saturating_add(super::REQUEST_TIMEOUT)
    .saturating_add(HANDOVER_GRACE);

/// A persistent session's durable part, in the sessions bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub expiry_interval: u32,
    pub subscriptions: Vec<StoredSubscription>,
    /// When the client left (unix milliseconds); `None` while connected.
    pub disconnected_at_ms: Option<u64>,
}

/// One entry of an offline session's queue subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueEntry {
    /// The message's cluster id: the same message written twice (by its
    /// publisher's node and by the node handing the session off) is
    /// delivered once.
    pub id: u64,
    pub message: StoredMessage,
    /// Set when the message was already sent to the client (in flight at
    /// hand-off): it is sent again with DUP and the same packet id.
    pub sent: Option<SentState>,
}

/// How an in-flight message was sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentState {
    pub packet_id: u16,
    pub qos: u8,
    pub retain: bool,
    pub subscription_identifiers: Vec<u32>,
    /// QoS 2: PUBREC received, PUBREL sent.
    pub released: bool,
}

impl Cluster {
    /// Queues a write of a session's record (written in order, by one task).
    pub fn save_session_later(&self, client_id: Arc<str>, record: SessionRecord) {
        let _ = self.session_writes.send((client_id, record));
    }

    /// Writes the records [`Cluster::save_session_later`] queued, each
    /// only while its client is still connected here: a record that says
    /// the client is connected, written after the session's hand-off
    /// (which says when the client left), would keep the session from
    /// ever expiring.
    pub(super) async fn write_sessions(
        self: Arc<Self>,
        mut writes: tokio::sync::mpsc::UnboundedReceiver<(Arc<str>, SessionRecord)>,
        broker: Arc<crate::broker::Broker>,
    ) {
        while let Some((client_id, record)) = writes.recv().await {
            let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
            loop {
                // Checked right before the write is sent: a hand-off
                // starts once the client has left (what is left is the
                // moment between this check and the write's send).
                let connected = broker
                    .session(&client_id)
                    .is_some_and(|session| session.is_online());
                if !connected {
                    break;
                }
                match self.save_session(&client_id, &record).await {
                    Ok(()) => break,
                    Err(ClusterError::Unavailable) if !self.is_ready() => {}
                    Err(e) => self.logger.warning(&format!(
                        "Cluster: cannot record the session of {client_id}: {e}."
                    )),
                }
                backoff.wait().await;
            }
        }
    }

    /// Whether this node still routes to `client_id`'s handed-off session.
    pub fn is_forwarding(&self, client_id: &str) -> bool {
        self.forwarding_count
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
            && self.forwarding.lock().contains_key(client_id)
    }

    /// `client_id`'s session was handed off, its session interest written
    /// up to interest-bucket revision `revision` ([`Cluster::hand_off`]);
    /// messages still routed to it here go to its queue subject.
    pub fn start_forwarding(&self, client_id: Arc<str>, revision: u64) {
        if self.forwarding.lock().insert(client_id, revision).is_none() {
            self.forwarding_count
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Waits (at most two seconds) until this node's table has the
    /// session interest the hand-off of `client_id`'s session, followed
    /// here, wrote. Its client is back on this node: from when the
    /// session stops being followed until it is loaded again, what other
    /// nodes route here for it matches no session, and goes to the queues
    /// of the offline sessions the table knows (`Cluster::deliver`).
    pub async fn session_interest_applied(&self, client_id: &str) {
        let revision = self.forwarding.lock().get(client_id).copied();
        if let Some(revision) = revision {
            self.interest_applied_up_to(revision, Duration::from_secs(2))
                .await;
        }
    }

    pub fn stop_forwarding(&self, client_id: &str) {
        if self.forwarding.lock().remove(client_id).is_some() {
            self.forwarding_count
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    pub(super) fn queue_subject(&self, client_id: &str) -> String {
        format!("_KMQ.{}.q.{}", self.names.cluster, encode_key(client_id))
    }

    fn session_interest_prefix(&self, client_id: &str) -> String {
        format!("=s.{}.", encode_key(client_id))
    }

    /// Writes a session's record (connected, or offline since `at`).
    pub async fn save_session(
        &self,
        client_id: &str,
        record: &SessionRecord,
    ) -> Result<(), ClusterError> {
        let buckets = self.buckets()?;
        let bytes = postcard::to_allocvec(record).map_err(ClusterError::nats)?;
        buckets
            .sessions
            .put(encode_key(client_id), Bytes::from(bytes))
            .await
            .map(|_| ())
            .map_err(ClusterError::nats)
    }

    /// The cluster's record of `client_id`'s session (`None` when there
    /// is none, or it cannot be read as one).
    pub(super) async fn session_record(
        &self,
        client_id: &str,
    ) -> Result<Option<SessionRecord>, ClusterError> {
        let bytes = self
            .buckets()?
            .sessions
            .get(encode_key(client_id))
            .await
            .map_err(ClusterError::nats)?;
        Ok(bytes.and_then(|bytes| postcard::from_bytes::<SessionRecord>(&bytes).ok()))
    }

    /// Whether the cluster's record of `client_id`'s session says its
    /// client is connected (false when there is none, or it cannot tell).
    pub(super) async fn records_connected_session(&self, client_id: &str) -> bool {
        self.session_record(client_id)
            .await
            .is_ok_and(|record| record.is_some_and(|r| r.disconnected_at_ms.is_none()))
    }

    /// Hands an offline session to the cluster: its record, its messages
    /// (in order: in flight first, then queued) into its queue subject, and
    /// its filters as session interest. First removes what this node read
    /// from its queue and could not remove then. Resolves once all of it is
    /// stored.
    ///
    /// The record is written while the rest is; the interest (which has
    /// other nodes write new messages into the queue) only once the
    /// session's own messages are in it, all of its keys at once. A
    /// session with nothing queued and a few filters so takes one round
    /// trip to NATS, not one per write: a take-over's CONNACK waits for it.
    /// The record is written to the end even when the rest fails: it says
    /// the client left (a claim elsewhere then waits for this node's
    /// answer before its CONNACK, see [`super::clients::EarlyConnack`]).
    pub async fn hand_off(
        &self,
        client_id: &str,
        record: &SessionRecord,
        entries: Vec<QueueEntry>,
    ) -> Result<u64, ClusterError> {
        self.purge_consumed(client_id).await?;
        let queue_then_interest = async {
            self.write_queue_entries(client_id, &entries).await?;
            self.write_session_interest(client_id, record).await
        };
        let (saved, revision) =
            tokio::join!(self.save_session(client_id, record), queue_then_interest);
        saved?;
        revision
    }

    /// Writes `entries` into `client_id`'s queue subject, in order;
    /// resolves once all are stored.
    async fn write_queue_entries(
        &self,
        client_id: &str,
        entries: &[QueueEntry],
    ) -> Result<(), ClusterError> {
        let subject = self.queue_subject(client_id);
        let mut acks = Vec::with_capacity(entries.len());
        for entry in entries {
            let bytes = postcard::to_allocvec(entry).map_err(ClusterError::nats)?;
            acks.push(
                self.js
                    .publish(subject.clone(), Bytes::from(bytes))
                    .await
                    .map_err(ClusterError::nats)?,
            );
        }
        for ack in acks {
            ack.await.map_err(ClusterError::nats)?;
        }
        Ok(())
    }

    /// Writes one session-interest key per filter of `record`, all at
    /// once. Returns the newest revision written (0: no filter).
    async fn write_session_interest(
        &self,
        client_id: &str,
        record: &SessionRecord,
    ) -> Result<u64, ClusterError> {
        let buckets = self.buckets()?;
        let prefix = self.session_interest_prefix(client_id);
        let puts = record.subscriptions.iter().map(|sub| {
            buckets.interest.put(
                format!("{prefix}{}", encode_key(&sub.filter)),
                sub.filter.clone().into(),
            )
        });
        let revisions = futures_util::future::try_join_all(puts)
            .await
            .map_err(ClusterError::nats)?;
        Ok(revisions.into_iter().max().unwrap_or(0))
    }

    /// Writes `msg` into the queue subjects of offline `clients`; resolves
    /// once stored.
    pub async fn queue_for_offline(
        &self,
        msg: &Message,
        clients: &[Arc<str>],
    ) -> Result<super::routing::Stored, ClusterError> {
        if clients.is_empty() {
            return Ok(Default::default());
        }
        if !self.is_connected() {
            return Err(ClusterError::Unavailable);
        }
        let entry = QueueEntry {
            id: self.message_id(msg),
            message: msg.to_stored(),
            sent: None,
        };
        let bytes = Bytes::from(postcard::to_allocvec(&entry).map_err(ClusterError::nats)?);
        let mut sent = Vec::with_capacity(clients.len());
        for client in clients {
            let subject = async_nats::Subject::from(self.queue_subject(client));
            let ack = self
                .js
                .publish(subject.clone(), bytes.clone())
                .await
                .map_err(ClusterError::nats)?;
            sent.push(super::routing::Sent {
                ack,
                subject,
                payload: bytes.clone(),
            });
        }
        Ok(super::routing::Stored::new(&self.js, sent))
    }

    /// A message's cluster id, given on first use.
    pub fn message_id(&self, msg: &Message) -> u64 {
        *msg.route_id.get_or_init(|| {
            self.next_message_id
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        })
    }

    /// The newest revision in the interest bucket, once this node's own
    /// interest is written: session interest at or below it was written
    /// before this node took the client (see
    /// [`Cluster::remove_session_interest_up_to`]).
    pub async fn interest_written_revision(&self) -> Result<u64, ClusterError> {
        self.interest.written().await;
        self.interest_written_up_to().await
    }

    /// The keys of `client_id`'s session interest in `filters` (those of
    /// the record it was handed off with: the hand-off wrote one key per
    /// filter of it, so no listing of the whole bucket is needed).
    fn session_interest_keys<'a>(
        &self,
        client_id: &str,
        filters: impl IntoIterator<Item = &'a str>,
    ) -> Vec<String> {
        let prefix = self.session_interest_prefix(client_id);
        filters
            .into_iter()
            .map(|filter| format!("{prefix}{}", encode_key(filter)))
            .collect()
    }

    /// The client is back on this node: its session interest (its
    /// `filters`, as loaded) gives way to this node's. Only entries at
    /// revision `up_to` or older go, each only if unchanged since it was
    /// read, so a hand-off written since (the client moved on again) keeps
    /// its interest. Fails when a key it should remove may still be there
    /// (NATS did not answer): called again, it goes on.
    pub async fn remove_session_interest_up_to(
        &self,
        client_id: &str,
        filters: &[String],
        up_to: u64,
    ) -> Result<(), ClusterError> {
        let buckets = self.buckets()?;
        let stays = |entry: &Option<jetstream::kv::Entry>| {
            entry.as_ref().is_some_and(|entry| {
                !matches!(entry.operation, Operation::Delete | Operation::Purge)
                    && entry.revision <= up_to
            })
        };
        for key in self.session_interest_keys(client_id, filters.iter().map(String::as_str)) {
            let entry = buckets
                .interest
                .entry(key.clone())
                .await
                .map_err(ClusterError::nats)?;
            let Some(revision) = entry.as_ref().filter(|_| stays(&entry)).map(|e| e.revision)
            else {
                continue;
            };
            // Fails, as it should, when the key was written since: read
            // again to tell that from a delete that did not happen.
            if let Err(e) = buckets
                .interest
                .delete_expect_revision(&key, Some(revision))
                .await
            {
                let now = buckets
                    .interest
                    .entry(key.clone())
                    .await
                    .map_err(ClusterError::nats)?;
                if stays(&now) {
                    return Err(ClusterError::nats(e));
                }
            }
        }
        Ok(())
    }

    /// Deletes the session interest of `client_id`, handed off with
    /// `record`.
    /// Removes the session interest of `record`'s filters. Returns whether
    /// every key went.
    async fn remove_session_interest(&self, client_id: &str, record: &SessionRecord) -> bool {
        let Ok(buckets) = self.buckets() else {
            return false;
        };
        let filters = record.subscriptions.iter().map(|s| s.filter.as_str());
        let deletes = self
            .session_interest_keys(client_id, filters)
            .into_iter()
            .map(|key| buckets.interest.delete(key));
        futures_util::future::join_all(deletes)
            .await
            .iter()
            .all(Result::is_ok)
    }

    /// Forgets a session everywhere (clean start): its record, its session
    /// interest and its queue. One read when the cluster has none. Returns
    /// whether the cluster holds nothing of it now (false when NATS failed
    /// a step; what it could not remove expires with the record's expiry).
    pub async fn delete_session(&self, client_id: &str) -> bool {
        let Ok(buckets) = self.buckets() else {
            return false;
        };
        let key = encode_key(client_id);
        let record = match buckets.sessions.get(&key).await {
            Ok(None) => return true,
            Ok(Some(bytes)) => postcard::from_bytes::<SessionRecord>(&bytes).ok(),
            Err(e) => {
                self.logger.warning(&format!(
                    "Cluster: cannot read the session of {client_id} to delete it: {e}; its record and queue go, its interest may stay."
                ));
                None
            }
        };
        let interest_gone = async {
            match &record {
                Some(record) => self.remove_session_interest(client_id, record).await,
                None => false,
            }
        };
        let (deleted, interest_gone) = tokio::join!(buckets.sessions.delete(&key), interest_gone);
        let deleted = deleted.is_ok();
        // Last: until the interest is gone, other nodes may write to it.
        let purged = self.purge_queue(client_id).await;
        deleted && interest_gone && purged
    }

    /// A dead node's connected client: its persistent session, if any,
    /// becomes offline in the cluster (messages from now on are kept).
    pub(super) async fn adopt_session(&self, client_id: &str) {
        let Ok(buckets) = self.buckets() else { return };
        let Ok(Some(bytes)) = buckets.sessions.get(encode_key(client_id)).await else {
            return;
        };
        let Ok(mut record) = postcard::from_bytes::<SessionRecord>(&bytes) else {
            return;
        };
        // Offline since its client left that node (its record says when),
        // or since now.
        record
            .disconnected_at_ms
            .get_or_insert_with(crate::message::now_ms);
        if let Err(e) = self.hand_off(client_id, &record, Vec::new()).await {
            self.logger.warning(&format!(
                "Cluster: cannot keep the session of {client_id} of a lost node: {e}."
            ));
        }
    }

    /// Ends offline sessions whose expiry passed (every node looks; the
    /// first to delete a record also cleans up after it).
    pub(super) async fn expire_sessions(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            let Ok(buckets) = self.buckets() else {
                continue;
            };
            let keys = match super::list_keys(&buckets.sessions).await {
                Ok(keys) => keys,
                Err(e) => {
                    if self.is_connected() {
                        self.logger
                            .warning(&format!("Cluster: cannot look for expired sessions: {e}."));
                    }
                    continue;
                }
            };
            let now = crate::message::now_ms();
            for key in keys {
                let Ok(Some(entry)) = buckets.sessions.entry(key.clone()).await else {
                    continue;
                };
                let Ok(record) = postcard::from_bytes::<SessionRecord>(&entry.value) else {
                    continue;
                };
                let Some(at) = record.disconnected_at_ms else {
                    continue;
                };
                if record.expiry_interval == u32::MAX
                    || now < at + u64::from(record.expiry_interval) * 1000
                {
                    continue;
                }
                if buckets
                    .sessions
                    .delete_expect_revision(key.clone(), Some(entry.revision))
                    .await
                    .is_ok()
                {
                    if let Some(client_id) = super::names::decode_key(&key) {
                        self.remove_session_interest(&client_id, &record).await;
                        self.purge_queue(&client_id).await;
                    }
                }
            }
        }
    }
}

/// Creates the queue stream: one subject per offline session, at most
/// `max_per_session` messages each (the oldest go first).
pub(super) fn queue_stream_config(
    name: String,
    subjects: String,
    replicas: usize,
    max_per_session: i64,
) -> jetstream::stream::Config {
    jetstream::stream::Config {
        name,
        subjects: vec![subjects],
        max_messages_per_subject: max_per_session,
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoredProperties;

    #[test]
    fn records_and_entries_round_trip() {
        let record = SessionRecord {
            expiry_interval: 3600,
            subscriptions: vec![StoredSubscription {
                filter: "a/#".into(),
                qos: 1,
                no_local: false,
                retain_as_published: true,
                retain_handling: 0,
                identifier: Some(7),
            }],
            disconnected_at_ms: Some(1),
        };
        let bytes = postcard::to_allocvec(&record).unwrap();
        assert_eq!(
            postcard::from_bytes::<SessionRecord>(&bytes).unwrap(),
            record
        );
        let entry = QueueEntry {
            id: 42,
            message: StoredMessage {
                topic: "a/b".into(),
                payload: Bytes::from_static(b"x"),
                qos: 2,
                retain: false,
                properties: StoredProperties::default(),
                expires_at_ms: None,
            },
            sent: Some(SentState {
                packet_id: 9,
                qos: 2,
                retain: false,
                subscription_identifiers: vec![7],
                released: true,
            }),
        };
        let bytes = postcard::to_allocvec(&entry).unwrap();
        assert_eq!(postcard::from_bytes::<QueueEntry>(&bytes).unwrap(), entry);
    }
}
