//! What this node does for the cluster: claiming client ids and letting
//! them go, handing persistent sessions to the cluster and loading them
//! back, and the wills of another node's clients ([`crate::cluster`]).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::Control;
use crate::cluster::clients::LateRelease;
use crate::cluster::sessions::{QueueEntry, SentState, SessionRecord, HANDOVER_GRACE};
use crate::codec::{QoS, SubscriptionOptions, Will};
use crate::message::{now_ms, Message};
use crate::queue::QueueLimits;
use crate::router::{Route, Subscription, SubscriptionTable};
use crate::session::{Delivery, Session, SessionSubscription};

use super::{stored_subscription, Broker, PublishError, TAKEOVER_TIMEOUT};

impl Broker {
    /// Tells the cluster that this node holds `client_id` now, with its
    /// will; another node that held it connected closes that connection
    /// (and hands its session over) first, within a second. Nothing to do
    /// without a cluster.
    /// When that node answers late, its answer comes back, to wait for
    /// before reading what it hands over ([`Broker::load_from_cluster`]).
    pub(super) async fn claim_in_cluster(
        &self,
        client_id: &str,
        will: Option<&Will>,
        expiry: u32,
    ) -> Option<LateRelease> {
        let cluster = self.cluster()?;
        let will = will.map(|w| crate::cluster::clients::StoredWill {
            message: Message::from_will(w.clone()).to_stored(),
            delay_secs: w.delay_interval.unwrap_or(0).min(expiry),
        });
        cluster.claim(client_id, will).await
    }

    /// Another node accepted a CONNECT for `client_id`: the connection
    /// here closes (5.0: DISCONNECT 0x8E); a persistent session is handed
    /// to the cluster (the other node loads it), any other ends here.
    /// Resolves once that is done.
    pub async fn taken_over_elsewhere(self: &Arc<Self>, client_id: &str) {
        let Some(session) = self.session(client_id) else {
            return;
        };
        let attached = session.state.lock().attachment.clone();
        if let Some(old) = attached {
            let (tx, rx) = tokio::sync::oneshot::channel();
            if old.client.mailbox.send(Control::TakenOver(tx)) {
                let _ = tokio::time::timeout(TAKEOVER_TIMEOUT, rx).await;
            }
        }
        self.logger.info(&format!(
            "Client {client_id} connected to another node; its session moves there."
        ));
        if !self.hand_off_session(&session).await {
            let mut records = Vec::new();
            self.remove_session(&session, &mut records);
            self.persist_nowait(records);
        }
    }

    /// Hands an offline persistent session to the cluster: its record, its
    /// messages (in flight first, then queued) and its filters. Messages
    /// routed here to it meanwhile follow it for a moment
    /// ([`HANDOVER_GRACE`]); then it is forgotten here. Returns false when
    /// there is nothing to hand off (or it could not be: it then stays
    /// here, with its expiry).
    pub(super) async fn hand_off_session(self: &Arc<Self>, session: &Arc<Session>) -> bool {
        let Some(cluster) = self.cluster().cloned() else {
            return false;
        };
        let shard = self.shard(&session.client_id);
        let _serial = self.connect_locks[shard].lock().await;
        if cluster.is_forwarding(&session.client_id) {
            return true;
        }
        let (record, entries) = {
            let state = session.state.lock();
            let current = self
                .session(&session.client_id)
                .is_some_and(|s| Arc::ptr_eq(&s, session));
            if state.attachment.is_some() || !state.persistent || !current {
                return false;
            }
            let record =
                session_record(&state.subscriptions, state.expiry_interval, Some(now_ms()));
            let mut entries: Vec<QueueEntry> = state
                .inflight
                .in_send_order()
                .into_iter()
                .map(|(packet_id, inflight)| QueueEntry {
                    id: cluster.message_id(&inflight.delivery.msg),
                    message: inflight.delivery.msg.to_stored(),
                    sent: Some(SentState {
                        packet_id,
                        qos: inflight.delivery.qos.as_u8(),
                        retain: inflight.delivery.retain,
                        subscription_identifiers: inflight
                            .delivery
                            .subscription_identifiers
                            .clone(),
                        released: inflight.released,
                    }),
                })
                .collect();
            entries.extend(state.queue.iter().map(|delivery| QueueEntry {
                id: cluster.message_id(&delivery.msg),
                message: delivery.msg.to_stored(),
                sent: None,
            }));
            (record, entries)
        };
        let count = entries.len();
        let handed: HashSet<u64> = entries.iter().map(|e| e.id).collect();
        if let Err(e) = cluster.hand_off(&session.client_id, &record, entries).await {
            self.logger.warning(&format!(
                "The session of {} stays on this node: cannot hand it to the cluster: {e}.",
                session.client_id
            ));
            return false;
        }
        self.logger.info(&format!(
            "Session of {} handed to the cluster with {count} message(s).",
            session.client_id
        ));
        // From now on what is routed here for it follows it; what arrived
        // while the hand-off was written follows too.
        cluster.start_forwarding(session.client_id.clone());
        let late: Vec<Arc<Message>> = {
            let state = session.state.lock();
            state
                .inflight
                .in_send_order()
                .into_iter()
                .map(|(_, i)| i.delivery.msg.clone())
                .chain(state.queue.iter().map(|d| d.msg.clone()))
                .filter(|msg| !handed.contains(&cluster.message_id(msg)))
                .collect()
        };
        for msg in late {
            let clients = [session.client_id.clone()];
            if let Ok(stored) = cluster.queue_for_offline(&msg, &clients).await {
                let _ = stored.wait().await;
            }
        }
        // The session interest written by the hand-off replaces this node's.
        for filter in &record.subscriptions {
            cluster.interest().remove_local(&filter.filter);
        }
        let broker = self.clone();
        let session = session.clone();
        tokio::spawn(async move {
            tokio::time::sleep(HANDOVER_GRACE * 2).await;
            let shard = broker.shard(&session.client_id);
            let _serial = broker.connect_locks[shard].lock().await;
            broker.forget_handed_off(&session);
        });
        true
    }

    /// The session of `client_id` here, when it was handed off and is
    /// only being followed.
    pub(super) fn handed_off_session(&self, client_id: &str) -> Option<Arc<Session>> {
        let cluster = self.cluster()?;
        if !cluster.is_forwarding(client_id) {
            return None;
        }
        self.session(client_id)
    }

    /// Forgets a handed-off session here (its state is in the cluster).
    /// Nothing to do when it is no longer this node's session of its
    /// client: it was forgotten already, and the forwarding flag, the
    /// router's entries and the map belong to a later session of the same
    /// client id (which may be handed off in its turn).
    pub(super) fn forget_handed_off(&self, session: &Arc<Session>) {
        let Some(cluster) = self.cluster() else {
            return;
        };
        // As `remove_session`, but this node's interest in its filters was
        // given up at the hand-off already.
        let shard = self.shard(&session.client_id);
        {
            let mut map = self.sessions[shard].write();
            let current = map
                .get(&session.client_id)
                .is_some_and(|s| Arc::ptr_eq(s, session));
            if !current || !cluster.is_forwarding(&session.client_id) {
                return;
            }
            map.remove(&session.client_id);
        }
        cluster.stop_forwarding(&session.client_id);
        let filters: Vec<String> = {
            let mut state = session.state.lock();
            state.clear_messages(&self.budget);
            state.epoch += 1;
            std::mem::take(&mut state.subscriptions)
                .into_keys()
                .collect()
        };
        for filter in &filters {
            self.router.unsubscribe(&session.client_id, filter);
        }
    }

    /// Loads a persistent session from the cluster into `session` (new and
    /// empty): subscriptions, then its messages in order. Returns whether
    /// the cluster had it. Messages other nodes still write for it during
    /// [`HANDOVER_GRACE`] follow, and so does what the previous node hands
    /// over once its `late` release comes.
    pub(super) async fn load_from_cluster(
        self: &Arc<Self>,
        session: &Arc<Session>,
        limits: QueueLimits,
        late: Option<LateRelease>,
    ) -> Result<bool, PublishError> {
        let Some(cluster) = self.cluster().cloned() else {
            return Ok(false);
        };
        if !cluster.is_ready() {
            // Its session may be there: refuse rather than start it afresh.
            return Err(crate::cluster::ClusterError::Unavailable.into());
        }
        let loaded = cluster.load_session(&session.client_id).await?;
        let Some(record) = loaded.record else {
            return Ok(false);
        };
        let matcher = SubscriptionTable::new();
        for sub in &record.subscriptions {
            let options = SubscriptionOptions {
                qos: QoS::from_u8(sub.qos).unwrap_or(QoS::AtMostOnce),
                no_local: sub.no_local,
                retain_as_published: sub.retain_as_published,
                retain_handling: sub.retain_handling,
            };
            let mut ignored = Vec::new();
            self.subscribe(session, &sub.filter, options, sub.identifier, &mut ignored);
            matcher.subscribe(
                0u8,
                &sub.filter,
                Subscription {
                    options,
                    identifier: sub.identifier,
                },
            );
        }
        let ids: HashSet<u64> = loaded.entries.iter().map(|e| e.id).collect();
        let count = loaded.entries.len();
        self.restore_entries(session, &matcher, loaded.entries, &limits);
        self.logger.info(&format!(
            "Session of {} loaded from the cluster with {count} message(s).",
            session.client_id
        ));
        // Stragglers: what other nodes wrote before they saw this node's
        // interest.
        let broker = self.clone();
        let session = session.clone();
        let last_seq = loaded.last_seq;
        tokio::spawn(async move {
            broker
                .finish_loading(cluster, session, matcher, ids, last_seq, limits, late)
                .await;
        });
        Ok(true)
    }

    /// The follow-up of [`Broker::load_from_cluster`]: one pass of
    /// [`Broker::take_over_queue`], and another once a previous node that
    /// answered late has handed the session over.
    #[allow(clippy::too_many_arguments)]
    async fn finish_loading(
        self: Arc<Self>,
        cluster: Arc<crate::cluster::Cluster>,
        session: Arc<Session>,
        matcher: SubscriptionTable<u8>,
        mut seen: HashSet<u64>,
        last_seq: u64,
        limits: QueueLimits,
        late: Option<LateRelease>,
    ) {
        let read_up_to = self
            .take_over_queue(&cluster, &session, &matcher, &mut seen, last_seq, &limits)
            .await;
        if let Some(late) = late {
            late.await;
            self.take_over_queue(&cluster, &session, &matcher, &mut seen, read_up_to, &limits)
                .await;
        }
    }

    /// The session's interest gives way to this node's, and after
    /// [`HANDOVER_GRACE`] what other nodes queued for it (stream sequence
    /// above `after`, not in `seen`) joins it. The client may have moved
    /// on meanwhile; then what a later hand-off wrote is left alone (the
    /// NATS calls run without the connect lock, which is only taken to
    /// check who holds the session). Returns the stream sequence read up
    /// to.
    async fn take_over_queue(
        &self,
        cluster: &crate::cluster::Cluster,
        session: &Arc<Session>,
        matcher: &SubscriptionTable<u8>,
        seen: &mut HashSet<u64>,
        after: u64,
        limits: &QueueLimits,
    ) -> u64 {
        let client_id = session.client_id.clone();
        match cluster.interest_written_revision().await {
            Ok(written) => {
                if self.holds_loaded(cluster, session, |_| ()).await {
                    cluster
                        .remove_session_interest_up_to(&client_id, written)
                        .await;
                }
            }
            Err(e) => self.logger.warning(&format!(
                "Cluster: the session interest of {client_id} stays: {e}."
            )),
        }
        tokio::time::sleep(HANDOVER_GRACE).await;
        let (late, read_up_to) = cluster.read_late(&client_id, seen, after).await;
        let kept = self
            .holds_loaded(cluster, session, |session| {
                if !late.is_empty() {
                    self.restore_entries(session, matcher, late, limits);
                }
            })
            .await;
        // Purged (with what was loaded) only when this node took them;
        // otherwise the next load reads them.
        if kept && read_up_to > 0 {
            cluster.purge_queue_up_to(&client_id, read_up_to).await;
        }
        read_up_to
    }

    /// Runs `then` with `session` and returns true when this node still
    /// holds the session it loaded (not replaced, not handed off again),
    /// under the connect lock so no hand-off runs in between.
    async fn holds_loaded(
        &self,
        cluster: &crate::cluster::Cluster,
        session: &Arc<Session>,
        then: impl FnOnce(&Arc<Session>),
    ) -> bool {
        let shard = self.shard(&session.client_id);
        let _serial = self.connect_locks[shard].lock().await;
        let current = self
            .session(&session.client_id)
            .is_some_and(|s| Arc::ptr_eq(&s, session));
        if !current || cluster.is_forwarding(&session.client_id) {
            return false;
        }
        then(session);
        true
    }

    /// Puts queue entries read from the cluster into `session`: in-flight
    /// ones with their packet ids, the others after, with the QoS and
    /// flags the session's subscriptions give them.
    fn restore_entries(
        &self,
        session: &Session,
        matcher: &SubscriptionTable<u8>,
        entries: Vec<QueueEntry>,
        limits: &QueueLimits,
    ) {
        let mut state = session.state.lock();
        for entry in entries {
            let msg = Message::from_stored(entry.message);
            let _ = msg.route_id.set(entry.id);
            let msg = Arc::new(msg);
            if msg.is_expired(Instant::now()) {
                continue;
            }
            match entry.sent {
                Some(sent) => {
                    let delivery = Delivery {
                        qos: QoS::from_u8(sent.qos).unwrap_or(QoS::AtLeastOnce),
                        retain: sent.retain,
                        subscription_identifiers: sent.subscription_identifiers,
                        msg,
                        shared_group: None,
                        seq: 0,
                    };
                    state.restore_inflight(sent.packet_id, delivery, sent.released);
                }
                None => {
                    let mut routes: Vec<Route<u8>> = Vec::new();
                    matcher.route(&msg.topic, None, &|_| true, &mut routes);
                    let Some(route) = routes.into_iter().next() else {
                        continue;
                    };
                    let qos = msg.qos.min(route.qos);
                    if qos == QoS::AtMostOnce {
                        continue;
                    }
                    let delivery = Delivery {
                        qos,
                        retain: msg.retain && route.retain_as_published,
                        subscription_identifiers: route.subscription_identifiers,
                        msg,
                        shared_group: None,
                        seq: 0,
                    };
                    let _ = state.enqueue(delivery, limits, None, &self.budget);
                }
            }
        }
        drop(state);
        session.notify.notify_one();
    }

    /// Writes a persistent session's record to the cluster (in the
    /// background, in order): what a survivor needs to keep it if this
    /// node dies with the client connected.
    pub(super) fn save_session_in_cluster(&self, session: &Session) {
        let Some(cluster) = self.cluster() else {
            return;
        };
        let record = {
            let state = session.state.lock();
            if !state.persistent {
                return;
            }
            session_record(&state.subscriptions, state.expiry_interval, None)
        };
        cluster.save_session_later(session.client_id.clone(), record);
    }

    /// Sends up to `count` connected clients to other nodes, `rate` a
    /// second (5.0: DISCONNECT 0x9C; sessions handed to the cluster), to
    /// spread clients after a scale-up. Returns how many will go.
    pub fn shed(self: &Arc<Self>, count: usize, rate: u32) -> usize {
        let chosen: Vec<Arc<Session>> = self
            .connected_clients()
            .into_iter()
            .take(count)
            .map(|(session, _)| session)
            .collect();
        let n = chosen.len();
        self.logger.info(&format!(
            "Shedding {n} connection(s) at {rate} a second (admin API)."
        ));
        let broker = self.clone();
        let pause = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
        tokio::spawn(async move {
            for session in chosen {
                if session.send_control(Control::Relocate) {
                    broker.metrics.clients_shed.inc();
                    tokio::time::sleep(pause).await;
                }
            }
        });
        n
    }

    /// A node died with `client_id` connected: its will is published here,
    /// after its delay.
    pub fn publish_will_of_lost_client(
        self: &Arc<Self>,
        client_id: &str,
        msg: Message,
        delay: Duration,
    ) {
        let broker = self.clone();
        let client_id = client_id.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Err(e) = broker.publish(Arc::new(msg), None).await {
                broker.logger.error(&format!(
                    "Error publishing the will of client {client_id} of a lost node: {e}."
                ));
            }
        });
    }
}

/// A session's record: its subscriptions and expiry, and when it went
/// offline (`None`: connected).
fn session_record(
    subscriptions: &std::collections::BTreeMap<String, SessionSubscription>,
    expiry_interval: u32,
    disconnected_at_ms: Option<u64>,
) -> SessionRecord {
    SessionRecord {
        expiry_interval,
        subscriptions: subscriptions
            .iter()
            .map(|(filter, sub)| stored_subscription(filter, sub.options, sub.identifier))
            .collect(),
        disconnected_at_ms,
    }
}
