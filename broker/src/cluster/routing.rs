//! Messages between nodes, and between the cluster and NATS clients.
//!
//! A message for other nodes goes once to each node that wants it, in an
//! [`Envelope`]: QoS 0 over core NATS (`_KMQ.<name>.c.<node>`, several
//! to one NATS message under load: [`super::batch`]), QoS 1/2
//! into the route stream (`_KMQ.<name>.r.<node>`), where the node's
//! durable consumer takes it; the publisher is acknowledged once the
//! stream has stored it, so a node that dies with it unread loses nothing
//! (it reads it when it comes back). The receiving node delivers to its
//! own sessions only, and acknowledges the stream message after that.
//!
//! Device data is also published, as it arrives, on its NATS subject
//! (`<name>.<topic as subject>`, [`super::subject`]) for NATS clients; and
//! what NATS clients publish there is delivered to MQTT subscribers.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy};
use async_nats::jetstream::{self, context::PublishErrorKind};
use async_nats::{HeaderMap, Subject};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use crate::broker::Broker;
use crate::codec::QoS;
use crate::message::Message;

use super::batch;
use super::envelope::{self, Envelope};
use super::interest::Plan;
use super::plans::PlanGuard;
use super::subject;
use super::{Cluster, ClusterError};

/// Header on what this cluster exports to NATS clients: the cluster and
/// node it comes from (so importing nodes skip it).
const ORIGIN_HEADER: &str = "Kmq-Origin";
/// Routed QoS 1/2 messages a node may hold unacknowledged.
const MAX_ACK_PENDING: i64 = 10_000;
/// How long one pull for routed messages waits on the server.
const ROUTE_PULL_EXPIRY: Duration = Duration::from_secs(5);
/// How often the server says a pull is still alive (two missed: the
/// stream is opened again).
const ROUTE_PULL_HEARTBEAT: Duration = Duration::from_secs(1);

/// How long a message is sent again while its stream has no leader (the
/// JetStream election after a NATS server was lost takes seconds; a
/// loaded cluster, more) before its publisher is refused.
pub(super) const NO_LEADER_RETRY_WINDOW: Duration = Duration::from_secs(15);
/// The first wait before sending again; it doubles up to
/// [`NO_LEADER_MAX_WAIT`].
const NO_LEADER_FIRST_WAIT: Duration = Duration::from_millis(50);
const NO_LEADER_MAX_WAIT: Duration = Duration::from_secs(1);

/// Messages sent into JetStream whose acknowledgements are still to come:
/// the publisher is acknowledged once [`Stored::wait`] resolves, so a
/// connection can send many before waiting once. Holds the plans they
/// were sent with until then ([`super::plans`]).
#[must_use = "the messages are stored only once `wait` resolves"]
#[derive(Default)]
pub struct Stored {
    sent: Vec<Sent>,
    /// To send a message again (the same for all of them).
    js: Option<Arc<jetstream::Context>>,
    plans: Vec<PlanGuard>,
}

/// One message sent into JetStream, and what it takes to send it again.
pub(super) struct Sent {
    pub ack: jetstream::context::PublishAckFuture,
    pub subject: Subject,
    pub payload: Bytes,
}

impl Stored {
    pub(super) fn new(js: &Arc<jetstream::Context>, sent: Vec<Sent>) -> Stored {
        Stored {
            sent,
            js: Some(js.clone()),
            plans: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }

    pub fn extend(&mut self, other: Stored) {
        self.sent.extend(other.sent);
        if self.js.is_none() {
            self.js = other.js;
        }
        self.plans.extend(other.plans);
    }

    /// Keeps `plan` in flight until these messages are stored.
    pub fn hold(&mut self, plan: PlanGuard) {
        self.plans.push(plan);
    }

    /// Resolves once JetStream stored every message. A message its stream
    /// refused for want of a leader (no server answered for the stream),
    /// or whose acknowledgement did not come in time (a leader lost
    /// meanwhile), is sent again until a leader takes it or
    /// [`NO_LEADER_RETRY_WINDOW`] passes. One that timed out may have been
    /// stored all the same: it is then delivered twice, which refusing its
    /// publisher would cause too (the client sends it again). Any other
    /// failure is returned at once.
    pub async fn wait(self) -> Result<(), ClusterError> {
        let mut deadline = None;
        for Sent {
            ack,
            subject,
            payload,
        } in self.sent
        {
            let mut result = ack.await;
            let mut pause = NO_LEADER_FIRST_WAIT;
            loop {
                let e = match result {
                    Ok(_) => break,
                    Err(e) => e,
                };
                let retried = matches!(
                    e.kind(),
                    PublishErrorKind::StreamNotFound
                        | PublishErrorKind::TimedOut
                        | PublishErrorKind::BrokenPipe
                );
                let (true, Some(js)) = (retried, &self.js) else {
                    return Err(ClusterError::nats(e));
                };
                // NATS itself is gone: refused now (it is back only when
                // a server is).
                if js.client().connection_state() != async_nats::connection::State::Connected {
                    return Err(ClusterError::nats(e));
                }
                let deadline = *deadline
                    .get_or_insert_with(|| tokio::time::Instant::now() + NO_LEADER_RETRY_WINDOW);
                if tokio::time::Instant::now() + pause > deadline {
                    return Err(ClusterError::nats(e));
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(NO_LEADER_MAX_WAIT);
                result = match js.publish(subject.clone(), payload.clone()).await {
                    Ok(ack) => ack.await,
                    Err(e) => Err(e),
                };
            }
        }
        Ok(())
    }
}

/// Routed messages delivered here whose acknowledgement to the stream
/// may wait at once for what they sent on to be stored.
const ROUTED_IN_FLIGHT: usize = 1_024;

/// Acknowledges routed messages to the route stream, in order, each once
/// what its delivery sent on is stored. One that could not be delivered or
/// stored is not acknowledged: the stream delivers it again.
async fn acknowledge_routed(
    mut delivered: tokio::sync::mpsc::Receiver<(
        async_nats::jetstream::Message,
        Result<Stored, ()>,
    )>,
    logger: crate::log::Logger,
) {
    while let Some((message, stored)) = delivered.recv().await {
        let stored = match stored {
            Ok(stored) => stored.wait().await.map_err(|e| {
                logger.error(&format!(
                    "Error storing a routed message for a session that moved: {e}; it comes again."
                ))
            }),
            Err(()) => Err(()),
        };
        if stored.is_err() {
            continue;
        }
        // Delivered here (and stored, for moved sessions): the stream
        // may forget it.
        if let Err(e) = message.ack().await {
            logger.warning(&format!(
                "Cluster: cannot acknowledge a routed message: {e}."
            ));
        }
    }
}

impl Cluster {
    /// Sends QoS 0 `msg` to the other nodes of `plan`, into their batches
    /// ([`batch::Outbox`]); waits only while the outbox is full. (Apart
    /// from [`Cluster::send`], whose future, with JetStream's in it, every
    /// QoS 0 publish would otherwise build and move.)
    pub async fn send_at_most_once(&self, msg: &Message, plan: &Plan) -> Result<(), ClusterError> {
        if !self.is_connected() {
            return Err(ClusterError::Unavailable);
        }
        for (node, groups) in &plan.remote {
            let write = |out: &mut BytesMut| envelope::encode_into(&self.node, 0, groups, msg, out);
            match self.outbox.try_push(node, write) {
                Ok(None) => {}
                Ok(Some(write)) => self
                    .outbox
                    .push(node, write)
                    .await
                    .map_err(ClusterError::nats)?,
                Err(e) => return Err(ClusterError::nats(e)),
            }
        }
        Ok(())
    }

    /// Sends `msg` to the other nodes of `plan`. For QoS 1/2, the returned
    /// [`Stored`] resolves once every target node's stream has it.
    pub async fn send(&self, msg: &Message, plan: &Plan) -> Result<Stored, ClusterError> {
        if plan.remote.is_empty() {
            return Ok(Stored::default());
        }
        if msg.qos == QoS::AtMostOnce {
            return Box::pin(self.send_at_most_once(msg, plan))
                .await
                .map(|()| Stored::default());
        }
        if !self.is_connected() {
            return Err(ClusterError::Unavailable);
        }
        let id = self.message_id(msg);
        let mut sent = Vec::new();
        for (node, groups) in &plan.remote {
            let bytes = Bytes::from(
                envelope::encode(&self.node, id, groups, msg).map_err(ClusterError::nats)?,
            );
            let subject = Subject::from(self.names.stream_route(node));
            let ack = self
                .js
                .publish(subject.clone(), bytes.clone())
                .await
                .map_err(ClusterError::nats)?;
            sent.push(Sent {
                ack,
                subject,
                payload: bytes,
            });
        }
        Ok(Stored::new(&self.js, sent))
    }

    /// Publishes `msg` on its NATS subject, for NATS clients (when
    /// `export` is on and the topic has a subject). Does not wait.
    pub async fn export(&self, msg: &Message) {
        if !self.config.export || msg.topic.starts_with('$') || !self.is_connected() {
            return;
        }
        let Ok(mapped) = subject::topic_to_subject(&msg.topic) else {
            return;
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            ORIGIN_HEADER,
            format!("{}/{}", self.names.cluster, self.node).as_str(),
        );
        let _ = self
            .client
            .publish_with_headers(
                self.names.data_subject(&mapped),
                headers,
                msg.payload.clone(),
            )
            .await;
    }

    /// Delivers QoS 0 messages routed to this node.
    pub(super) async fn receive_core(self: Arc<Self>, broker: Arc<Broker>) {
        let mut messages = match self
            .client
            .subscribe(self.names.core_route(&self.node))
            .await
        {
            Ok(subscriber) => subscriber,
            Err(e) => {
                self.logger
                    .error(&format!("Cluster: cannot receive routed messages: {e}."));
                return;
            }
        };
        while let Some(message) = messages.next().await {
            // The sender waits for this once its window is full.
            let ack = message
                .headers
                .as_ref()
                .and_then(|headers| headers.get(batch::ACK_HEADER))
                .map(|value| Bytes::copy_from_slice(value.as_str().as_bytes()))
                .zip(message.reply.clone());
            let batched = message
                .headers
                .as_ref()
                .is_some_and(|headers| headers.get(batch::BATCH_HEADER).is_some());
            // QoS 0: nothing is stored, nothing to wait for.
            if !batched {
                let _ = self.deliver(&broker, &message.payload).await;
            } else {
                self.deliver_batch(&broker, message.payload).await;
            }
            if let Some((bytes, reply)) = ack {
                let _ = self.client.publish(reply, bytes).await;
            }
        }
    }

    /// Delivers each envelope of a batch of QoS 0 messages (routing each
    /// topic once: [`crate::broker::RoutedBatch`]).
    async fn deliver_batch(&self, broker: &Arc<Broker>, payload: Bytes) {
        let received_at = std::time::Instant::now();
        let mut batch = broker.routed_batch();
        let mut delivered = 0;
        for bytes in batch::decode(payload) {
            let decoded = bytes
                .as_deref()
                .map_err(|e| e.to_string())
                .and_then(|bytes| Envelope::decode(bytes).map_err(|e| e.to_string()));
            let envelope = match decoded {
                Ok(envelope) => envelope,
                Err(e) => {
                    broker.metrics.cluster_bad_messages.inc();
                    self.logger.warning(&format!(
                        "Cluster: the rest of a batch of routed messages was dropped: {e}."
                    ));
                    break;
                }
            };
            if envelope.message.qos != QoS::AtMostOnce.as_u8() {
                // Batches carry QoS 0 only; anything else is a message of
                // its own.
                if let Ok(bytes) = &bytes {
                    let _ = self.deliver(broker, bytes).await;
                }
                continue;
            }
            let msg = Arc::new(envelope.to_message_at(received_at));
            delivered += 1;
            broker.deliver_routed_now(&msg, &envelope.shared_groups, &mut batch);
        }
        broker.metrics.cluster_received.inc_by(delivered);
        if !batch.records.is_empty() {
            if let Err(e) = broker.persist(std::mem::take(&mut batch.records)).await {
                self.logger
                    .error(&format!("Error persisting routed messages: {e}."));
            }
        }
    }

    /// Hears which QoS 0 messages sent from here the other nodes have
    /// routed (their echoes of [`batch::ACK_HEADER`]), for the outbox's
    /// windows.
    pub(super) async fn receive_core_acks(self: Arc<Self>) {
        let subject = self.names.core_acks(&self.node, self.run, "*");
        let mut acks = match self.client.subscribe(subject).await {
            Ok(subscriber) => subscriber,
            Err(e) => {
                self.logger.error(&format!(
                    "Cluster: cannot hear acknowledgements of routed messages: {e}."
                ));
                return;
            }
        };
        while let Some(ack) = acks.next().await {
            let node = ack.subject.rsplit('.').next().unwrap_or_default();
            let bytes = std::str::from_utf8(&ack.payload)
                .ok()
                .and_then(|b| b.parse().ok());
            if let Some(bytes) = bytes {
                self.outbox.acknowledged(node, bytes);
            }
        }
    }

    /// Delivers QoS 1/2 messages routed to this node, acknowledging each
    /// to the stream once delivered here.
    pub(super) async fn receive_stream(self: Arc<Self>, broker: Arc<Broker>) {
        loop {
            if let Err(e) = self.consume_route_stream(&broker).await {
                if self.is_connected() {
                    self.logger.warning(&format!(
                        "Cluster: reading routed messages failed ({e}); trying again."
                    ));
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn consume_route_stream(&self, broker: &Arc<Broker>) -> Result<(), ClusterError> {
        let stream = self
            .js
            .get_stream_no_info(self.names.route_stream())
            .await
            .map_err(ClusterError::nats)?;
        let name = self.names.route_consumer(&self.node);
        let consumer = stream
            .get_or_create_consumer(
                &name,
                pull::Config {
                    durable_name: Some(name.clone()),
                    filter_subject: self.names.stream_route(&self.node),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(30),
                    max_ack_pending: MAX_ACK_PENDING,
                    ..Default::default()
                },
            )
            .await
            .map_err(ClusterError::nats)?;
        // Short pulls with frequent heartbeats: when the consumer's leader
        // is lost (a NATS server went down) the missing heartbeats end the
        // stream within seconds and it is opened again on the new leader;
        // the client's defaults (30 s pulls, 15 s heartbeats) would leave
        // routed messages waiting half a minute.
        let mut messages = consumer
            .stream()
            .expires(ROUTE_PULL_EXPIRY)
            .heartbeat(ROUTE_PULL_HEARTBEAT)
            .messages()
            .await
            .map_err(ClusterError::nats)?;
        // Each message is delivered here in order; what it sends on to
        // handed-off sessions' queues is confirmed, and the message
        // acknowledged to the stream, by `acknowledge_routed`, so that the
        // next one need not wait for JetStream.
        let (delivered, to_acknowledge) = tokio::sync::mpsc::channel(ROUTED_IN_FLIGHT);
        let acknowledging = tokio::spawn(acknowledge_routed(to_acknowledge, self.logger.clone()));
        let result = async {
            while let Some(message) = messages.next().await {
                let message = message.map_err(ClusterError::nats)?;
                let stored = self.deliver(broker, &message.payload).await;
                if let Ok(info) = message.info() {
                    self.routed_done
                        .fetch_max(info.stream_sequence, Ordering::AcqRel);
                }
                if delivered.send((message, stored)).await.is_err() {
                    break;
                }
            }
            Ok(())
        }
        .await;
        drop(delivered);
        let _ = acknowledging.await;
        result
    }

    /// Waits (at most `limit`) until this node has delivered every QoS 1/2
    /// message other nodes had routed to it when this was called: then
    /// nothing routed here before can still reach a session here. Returns
    /// whether it has.
    pub async fn routed_caught_up(&self, limit: Duration) -> bool {
        let asked = tokio::time::Instant::now();
        let deadline = asked + limit;
        let last = loop {
            match self.last_routed_here(asked).await {
                Ok(last) => break last,
                Err(e) => {
                    if tokio::time::Instant::now() >= deadline {
                        self.logger.warning(&format!(
                            "Cluster: cannot tell how far this node read its routed messages: {e}."
                        ));
                        return false;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        while self.routed_done.load(Ordering::Acquire) < last {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// The stream sequence of the last message routed to this node, as
    /// read at `asked` or later (0: none waiting). Callers at about the
    /// same moment share one read.
    async fn last_routed_here(&self, asked: tokio::time::Instant) -> Result<u64, ClusterError> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind;
        let mut cached = self.last_routed.lock().await;
        if let Some((at, last)) = *cached {
            if at >= asked {
                return Ok(last);
            }
        }
        let at = tokio::time::Instant::now();
        let stream = self
            .js
            .get_stream_no_info(self.names.route_stream())
            .await
            .map_err(ClusterError::nats)?;
        let last = match stream
            .get_last_raw_message_by_subject(&self.names.stream_route(&self.node))
            .await
        {
            Ok(message) => message.sequence,
            // Every message routed here was delivered and acknowledged
            // (the stream forgets those).
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => 0,
            Err(e) => return Err(ClusterError::nats(e)),
        };
        *cached = Some((at, last));
        Ok(last)
    }

    /// Delivers one routed message to this node's sessions; returns what
    /// it sent on to handed-off sessions' queues, stored once that
    /// resolves. `Err` when it could not be delivered (to be redelivered).
    async fn deliver(&self, broker: &Arc<Broker>, bytes: &[u8]) -> Result<Stored, ()> {
        let envelope = match Envelope::decode(bytes) {
            Ok(envelope) => envelope,
            Err(e) => {
                broker.metrics.cluster_bad_messages.inc();
                self.logger.warning(&format!(
                    "Cluster: an unreadable routed message was dropped: {e}."
                ));
                return Ok(Stored::default());
            }
        };
        let msg = Arc::new(envelope.to_message());
        broker.metrics.cluster_received.inc();
        match broker
            .deliver_routed(msg.clone(), &envelope.shared_groups)
            .await
        {
            Ok(mut routed) => {
                let stored = routed.stored.take().unwrap_or_default();
                if routed.matched == 0 && msg.qos != QoS::AtMostOnce {
                    return self.requeue_unmatched(broker, &msg).await;
                }
                Ok(stored)
            }
            Err(e) => {
                self.logger
                    .error(&format!("Error persisting a routed message: {e}."));
                Err(())
            }
        }
    }

    /// A QoS 1/2 message routed here that no session here took: it was
    /// for a session that left (or is being loaded here again after
    /// leaving). It goes to the queues of the offline sessions the cluster
    /// knows that match it (a copy a queue has already is read once);
    /// with none, it is dropped, counted and logged.
    async fn requeue_unmatched(&self, broker: &Broker, msg: &Message) -> Result<Stored, ()> {
        let offline = self.interest.plan(&msg.topic, &|_| true).offline;
        if offline.is_empty() {
            broker.metrics.cluster_unmatched.inc();
            if let Some(count) = self.unmatched_log.note() {
                self.logger.warning(&format!(
                    "Cluster: {count} QoS 1/2 message(s) routed here from other nodes matched no session here (their subscribers had moved on); dropped."
                ));
            }
            return Ok(Stored::default());
        }
        broker.metrics.cluster_requeued.inc();
        self.queue_for_offline(msg, &offline).await.map_err(|e| {
            self.logger.error(&format!(
                "Error queueing a routed message for a session that moved: {e}; it comes again."
            ))
        })
    }

    /// Delivers what NATS clients publish on `<name>.>` to MQTT
    /// subscribers, as QoS 0 messages; each goes to one node of the
    /// cluster (a queue group), which routes it like its own.
    pub(super) async fn import(self: Arc<Self>, broker: Arc<Broker>) {
        let group = format!("{}-import", self.names.cluster);
        let mut messages = match self
            .client
            .queue_subscribe(self.names.data_wildcard(), group)
            .await
        {
            Ok(subscriber) => subscriber,
            Err(e) => {
                self.logger
                    .error(&format!("Cluster: cannot import from NATS: {e}."));
                return;
            }
        };
        while let Some(message) = messages.next().await {
            let from_this_cluster = message
                .headers
                .as_ref()
                .and_then(|h| h.get(ORIGIN_HEADER))
                .is_some_and(|origin| {
                    origin
                        .as_str()
                        .split_once('/')
                        .is_some_and(|(cluster, _)| cluster == self.names.cluster)
                });
            if from_this_cluster {
                continue;
            }
            let Some(mapped) = self.names.strip_data_prefix(message.subject.as_str()) else {
                continue;
            };
            let topic = subject::subject_to_topic(mapped);
            if topic.is_empty() || topic.contains(['+', '#']) || topic.starts_with('$') {
                continue;
            }
            broker.metrics.cluster_imported.inc();
            let msg = Arc::new(Message::internal(&topic, message.payload, false));
            broker.publish_imported(msg).await;
        }
    }
}
