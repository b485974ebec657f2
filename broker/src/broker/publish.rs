//! Publishing: routing a message to sessions here and on other nodes,
//! queueing deliveries, retained messages, and what is dropped.

use std::sync::Arc;
use std::time::Instant;

use crate::access::AclCache;
use crate::client::{ClientHandle, Control};
use crate::codec::{QoS, ReasonCode};
use crate::config::SlowSubscriberAction;
use crate::message::Message;
use crate::queue::{DropReason, Enqueued, QueueLimits, Stall};
use crate::session::SessionState;
use crate::session::{Delivery, DeliveryFlags, Session, Unacknowledged};
use crate::store::{Record, StoreError};

use super::{Broker, ClientKey, Origin, PublishError, Publisher, Routed};

impl Broker {
    /// Routes a message to every matching session, here and on the other
    /// nodes of the cluster, and updates the retained messages. Resolves
    /// once everything that must be durable is stored (here, and in the
    /// other nodes' route streams for QoS 1/2), so the caller may
    /// acknowledge the publisher afterwards.
    pub async fn publish(
        &self,
        msg: Arc<Message>,
        publisher: Option<Publisher<'_>>,
    ) -> Result<Routed, PublishError> {
        let mut routed = self.route_message(msg, publisher, Origin::Here).await?;
        if let Some(stored) = routed.stored.take() {
            stored.wait().await?;
        }
        Ok(routed)
    }

    /// As [`Broker::publish`], without waiting for the cluster to store the
    /// message: the caller waits on [`Routed::stored`] before acknowledging
    /// its publisher (a connection waits once for a whole batch).
    pub async fn publish_pipelined(
        &self,
        msg: Arc<Message>,
        publisher: Option<Publisher<'_>>,
    ) -> Result<Routed, PublishError> {
        self.route_message(msg, publisher, Origin::Here).await
    }

    /// Delivers a message another node routed here to this node's
    /// sessions: its ordinary subscriptions, and the shared ones of
    /// `groups`. What goes on to the queues of handed-off sessions is
    /// stored once [`Routed::stored`] resolves (sent in order, so the
    /// caller may deliver the next message meanwhile).
    pub async fn deliver_routed(
        &self,
        msg: Arc<Message>,
        groups: &[String],
    ) -> Result<Routed, PublishError> {
        self.route_message(msg, None, Origin::Routed(groups)).await
    }

    /// Routes a message to this node's sessions only (and its retained
    /// messages): a figure of this node's own, such as `$SYS/broker/...`,
    /// which other nodes publish under the same topic with theirs.
    pub async fn publish_local(&self, msg: Arc<Message>) -> Result<Routed, PublishError> {
        self.route_message(msg, None, Origin::Local).await
    }

    /// Routes a message a NATS client published on a device-data subject,
    /// in the whole cluster (it is not exported back to NATS).
    pub async fn publish_imported(&self, msg: Arc<Message>) {
        let result = match self.route_message(msg, None, Origin::Imported).await {
            Ok(mut routed) => match routed.stored.take() {
                Some(stored) => stored.wait().await.map_err(PublishError::from),
                None => Ok(()),
            },
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            self.logger
                .warning(&format!("A message from NATS was not delivered: {e}."));
        }
    }

    pub(super) async fn route_message(
        &self,
        msg: Arc<Message>,
        publisher: Option<Publisher<'_>>,
        origin: Origin<'_>,
    ) -> Result<Routed, PublishError> {
        // Messages routed here from another node go no further.
        let cluster = match origin {
            Origin::Routed(_) | Origin::Local => None,
            _ => self.cluster(),
        };
        let (mut plan, planned) = match cluster.map(|c| c.plan(&msg.topic, msg.qos)) {
            Some((plan, planned)) => (plan, planned),
            None => (crate::cluster::Plan::default(), None),
        };
        let mut stored = crate::cluster::Stored::default();
        if let Some(cluster) = cluster.filter(|_| !plan.remote.is_empty()) {
            if msg.qos != QoS::AtMostOnce {
                // Acknowledged means stored: the publisher is acknowledged
                // once the other nodes' streams have it (`Routed::stored`).
                stored.extend(cluster.send(&msg, &plan).await?);
            }
        }
        let mut records = Vec::new();
        if msg.retain && !matches!(origin, Origin::Routed(_)) {
            self.update_retained(&msg, &mut records);
            if let Some(cluster) = cluster.filter(|_| !msg.topic.starts_with('$')) {
                if let Err(e) = cluster.retain(&msg).await {
                    if msg.qos != QoS::AtMostOnce {
                        return Err(e.into());
                    }
                    self.logger.warning(&format!(
                        "The retained message of {} is not in the cluster: {e}.",
                        msg.topic
                    ));
                }
            }
        }
        // Shared subscriptions served elsewhere this time are left out.
        let local_groups: Option<&[String]> = match origin {
            Origin::Routed(groups) => Some(groups),
            _ if cluster.is_some() => Some(&plan.local_groups),
            _ => None,
        };
        let mut routes = Vec::new();
        let eligible = |k: &ClientKey| self.session(k).is_some_and(|s| s.is_online());
        self.router.route(
            &msg.topic,
            publisher.as_ref().map(|p| p.client_id),
            &eligible,
            &mut routes,
        );
        if let Some(groups) = local_groups {
            routes.retain(|route| {
                route
                    .shared_group
                    .as_ref()
                    .is_none_or(|group| groups.iter().any(|g| **g == **group))
            });
        }
        let mut routed = Routed {
            matched: routes.len() + plan.remote.len(),
            congested: Vec::new(),
            stored: None,
        };
        let limits = self.queue_limits();
        let client = publisher.as_ref().map(|p| p.client);
        // Offline sessions kept in the cluster take QoS 1/2 messages in
        // their queue subjects: those the cluster's session interest names,
        // and those this node handed off a moment ago.
        let mut offline = std::mem::take(&mut plan.offline);
        let following = self.cluster();
        // A session in its hand-over is given each message once: it may
        // come through its queue as well.
        let handover = following
            .filter(|c| msg.qos != QoS::AtMostOnce && c.given().any())
            .map(|c| (c.given(), c.message_id(&msg)));
        for route in routes {
            if following.is_some_and(|c| c.is_forwarding(&route.subscriber)) {
                offline.push(route.subscriber);
                continue;
            }
            let Some(session) = self.session(&route.subscriber) else {
                continue;
            };
            let flags = DeliveryFlags {
                qos: msg.qos.min(route.qos),
                retain: msg.retain && route.retain_as_published,
                subscription_identifiers: route.subscription_identifiers,
                shared_group: route.shared_group,
            };
            if handover.is_some_and(|(given, id)| !given.note(&route.subscriber, id)) {
                continue;
            }
            let outcome = self.enqueue(&session, &msg, flags, &limits, client, &mut records);
            if outcome == Some(Enqueued::QueuedPause) {
                routed.congested.push(session);
            }
        }
        if !records.is_empty() {
            if let Some(store) = &self.store {
                store.append(records).await?;
            }
        }
        if let Some(cluster) =
            following.filter(|_| msg.qos != QoS::AtMostOnce && !offline.is_empty())
        {
            offline.sort_unstable();
            offline.dedup();
            routed.matched += offline.len();
            stored.extend(cluster.queue_for_offline(&msg, &offline).await?);
        }
        if !stored.is_empty() {
            // The plan stays in flight until what it sent is stored.
            if let Some(planned) = planned {
                stored.hold(planned);
            }
            routed.stored = Some(stored);
        }
        if let Some(cluster) = cluster {
            if msg.qos == QoS::AtMostOnce && !plan.remote.is_empty() {
                if let Err(e) = cluster.send_at_most_once(&msg, &plan).await {
                    self.metrics.cluster_send_failures.inc();
                    self.logger.message(
                        crate::config::LogLevel::Debug,
                        &format!("A QoS 0 message was not sent to the other nodes: {e}."),
                    );
                }
            }
            if !matches!(origin, Origin::Imported) {
                cluster.export(&msg).await;
            }
        }
        Ok(routed)
    }

    pub(super) fn update_retained(&self, msg: &Arc<Message>, records: &mut Vec<Record>) {
        let durable = !msg.topic.starts_with('$');
        if msg.payload.is_empty() {
            if self.retained.remove(&msg.topic).is_some() && durable {
                records.push(Record::RetainClear {
                    topic: msg.topic.to_string(),
                });
            }
        } else {
            self.retained.set(&msg.topic, msg.clone());
            if durable && self.store.is_some() {
                let msg_id = self.ensure_stored(msg, records);
                records.push(Record::RetainSet {
                    topic: msg.topic.to_string(),
                    msg_id,
                });
            }
        }
    }

    /// Writes the message body to the store once, however many sessions
    /// reference it.
    pub(super) fn ensure_stored(&self, msg: &Arc<Message>, records: &mut Vec<Record>) -> u64 {
        if let Some(id) = msg.store_id.get() {
            return *id;
        }
        let Some(store) = &self.store else { return 0 };
        let id = *msg.store_id.get_or_init(|| store.next_message_id());
        records.push(Record::Message {
            id,
            msg: msg.to_stored(),
        });
        id
    }

    /// Queues one delivery for a session (also used for retained messages on
    /// subscribe) and records it in the store when the session is durable.
    /// `publisher` is the client whose PUBLISH this is, to pause when the
    /// session's client falls behind. Returns what the queue did (None:
    /// refused by the ACL).
    pub fn enqueue(
        &self,
        session: &Session,
        msg: &Arc<Message>,
        flags: DeliveryFlags,
        limits: &QueueLimits,
        publisher: Option<&Arc<ClientHandle>>,
        records: &mut Vec<Record>,
    ) -> Option<Enqueued> {
        let qos = flags.qos;
        let mut state = session.state.lock();
        if !self.can_receive(&mut state, &session.client_id, &msg.topic) {
            drop(state);
            self.metrics
                .acl_denials
                .with_label_values(&["receive"])
                .inc();
            return None;
        }
        let durable = state.persistent && qos != QoS::AtMostOnce && self.store.is_some();
        let seq = if durable { state.take_seq() } else { 0 };
        let delivery = Delivery {
            msg: msg.clone(),
            qos,
            retain: flags.retain,
            subscription_identifiers: flags.subscription_identifiers,
            shared_group: flags.shared_group,
            seq,
        };
        let limits = state.queue_limits.unwrap_or(*limits);
        let outcome = state.enqueue(delivery, &limits, publisher, &self.budget);
        match &outcome {
            Enqueued::Dropped(reason) => {
                let log_due = state.queue.note_drop(Instant::now(), &limits);
                drop(state);
                self.dropped(&session.client_id, *reason, log_due);
                return Some(outcome);
            }
            Enqueued::QueuedDroppedOldest(old_seq) => {
                let log_due = state.queue.note_drop(Instant::now(), &limits);
                drop(state);
                self.dropped(&session.client_id, DropReason::QueueFull, log_due);
                if *old_seq != 0 {
                    records.push(Record::Dequeue {
                        client_id: session.client_id.to_string(),
                        seq: *old_seq,
                    });
                }
            }
            Enqueued::Queued | Enqueued::QueuedPause => drop(state),
        }
        if durable {
            let msg_id = self.ensure_stored(msg, records);
            records.push(Record::Enqueue {
                client_id: session.client_id.to_string(),
                seq,
                msg_id,
                qos: qos.as_u8(),
            });
        }
        session.notify.notify_one();
        Some(outcome)
    }

    /// Gives the shared-subscription messages a client left without
    /// acknowledging to another member of each one's group: here, or on
    /// another node. Without another member, a session that outlives its
    /// connection keeps them for its client's return (still stored, when
    /// it is persisted); otherwise they are dropped (counted).
    pub(super) async fn redeliver_shared(
        &self,
        leaving: &Arc<Session>,
        unacknowledged: Vec<Unacknowledged>,
    ) {
        let limits = self.queue_limits();
        let now = Instant::now();
        let mut records = Vec::new();
        let mut redelivered = 0;
        let mut kept = 0;
        for message in unacknowledged {
            let delivery = &message.delivery;
            let (Some(group), msg) = (delivery.shared_group.clone(), delivery.msg.clone()) else {
                continue;
            };
            if msg.is_expired(now) {
                records.extend(leaving.dequeue_record(delivery.seq));
                continue;
            }
            let others = |k: &ClientKey| {
                *k != leaving.client_id && self.session(k).is_some_and(|s| s.is_online())
            };
            let mut routes = Vec::new();
            self.router.route(&msg.topic, None, &others, &mut routes);
            let member = routes
                .into_iter()
                .find(|r| r.shared_group.as_deref() == Some(&*group) && others(&r.subscriber));
            if let Some(route) = member {
                if let Some(session) = self.session(&route.subscriber) {
                    let flags = DeliveryFlags {
                        qos: msg.qos.min(route.qos),
                        retain: msg.retain && route.retain_as_published,
                        subscription_identifiers: route.subscription_identifiers,
                        shared_group: Some(group),
                    };
                    self.enqueue(&session, &msg, flags, &limits, None, &mut records);
                    records.extend(leaving.dequeue_record(delivery.seq));
                    redelivered += 1;
                    continue;
                }
            }
            if let Some(cluster) = self.cluster() {
                if let Some(node) = cluster.other_node_serving(&msg.topic, &group) {
                    let plan = crate::cluster::Plan {
                        remote: vec![(node, vec![group.to_string()])],
                        ..Default::default()
                    };
                    let sent = match cluster.send(&msg, &plan).await {
                        Ok(stored) => stored.wait().await.is_ok(),
                        Err(_) => false,
                    };
                    if sent {
                        records.extend(leaving.dequeue_record(delivery.seq));
                        redelivered += 1;
                        continue;
                    }
                }
            }
            // Not `persistent` (that is: stored): a session kept in memory
            // also waits for its client.
            let mut state = leaving.state.lock();
            if state.expiry_interval > 0 {
                state.keep_unacknowledged(message, &self.budget);
                kept += 1;
            } else {
                drop(state);
                records.extend(leaving.dequeue_record(message.delivery.seq));
                self.metrics.drop(DropReason::Offline.label());
            }
        }
        if kept > 0 {
            // Its client may be back already.
            leaving.notify.notify_one();
        }
        if let Err(e) = self.persist(records).await {
            self.logger.error(&format!("Error persisting: {e}."));
        }
        if redelivered > 0 {
            self.logger.info(&format!(
                "{redelivered} unacknowledged shared-subscription message(s) of {} went to other members.",
                leaving.client_id
            ));
        }
    }

    /// Counts a dropped delivery, and logs it when `log_due` carries the
    /// session's count (mosquitto's line, once per client per interval).
    pub fn dropped(&self, client_id: &str, reason: DropReason, log_due: Option<u64>) {
        self.metrics.drop(reason.label());
        if let Some(count) = log_due {
            self.logger
                .dropping_messages(client_id, reason.label(), count);
        }
    }

    /// Whether the session's client may receive a message on `topic`,
    /// re-resolving its rules after an ACL reload.
    pub(super) fn can_receive(
        &self,
        state: &mut SessionState,
        client_id: &str,
        topic: &str,
    ) -> bool {
        let Some(client) = &state.last_client else {
            return true;
        };
        let info = &client.info;
        // Not cloned: without an ACL every client shares one `ClientAcl`,
        // and a reference count touched by every delivery would be contended.
        let cache = state
            .acl
            .get_or_insert_with(|| AclCache::resolve(&self.access, info, client_id));
        cache
            .current(&self.access, info, client_id)
            .can_receive(topic)
    }

    /// Records for the store without waiting (acknowledgement bookkeeping,
    /// whose loss on a crash only means a harmless re-delivery).
    pub fn persist_nowait(&self, records: Vec<Record>) {
        if let Some(store) = &self.store {
            if !records.is_empty() {
                store.append_nowait(records);
            }
        }
    }

    pub async fn persist(&self, records: Vec<Record>) -> Result<(), StoreError> {
        match &self.store {
            Some(store) if !records.is_empty() => store.append(records).await,
            _ => Ok(()),
        }
    }

    /// A connected subscriber above its mark took nothing for its stall
    /// timeout (found by a publisher waiting for it, once per stall):
    /// counted, logged, and disconnected (5.0: 0x97 Quota exceeded) or left
    /// connected with its further messages dropped.
    pub fn slow_subscriber(&self, session: &Session, stall: Stall) {
        let action = match stall.action {
            SlowSubscriberAction::Disconnect => "disconnect",
            SlowSubscriberAction::Drop => "drop",
        };
        self.metrics
            .slow_subscribers
            .with_label_values(&[action])
            .inc();
        self.logger.slow_subscriber(
            &session.client_id,
            stall.idle.as_secs_f64(),
            stall.queued,
            action,
        );
        if stall.action == SlowSubscriberAction::Disconnect {
            session.send_control(Control::Disconnect(ReasonCode::QUOTA_EXCEEDED));
        }
    }
}
