//! What this node does for the cluster: claiming client ids and letting
//! them go, handing persistent sessions to the cluster and loading them
//! back, and the wills of another node's clients ([`crate::cluster`]).

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::client::Control;
use crate::cluster::backoff::Backoff;
use crate::cluster::clients::{Answer, Claimed, EarlyConnack};
use crate::cluster::sessions::{QueueEntry, SentState, SessionRecord, HANDOVER_GRACE};
use crate::cluster::ClusterError;
use crate::codec::Will;
use crate::message::{now_ms, Message};
use crate::session::{Session, SessionFlags, SessionSubscription};

use super::{stored_subscription, Broker, TAKEOVER_TIMEOUT};

/// How long a SUBACK waits for the cluster to record a new subscription.
const INTEREST_RECORD_WAIT: Duration = Duration::from_secs(5);

/// How long a node that handed a session off waits, at most, for its
/// interest to be written and for what was routed to it to be delivered,
/// before it stops following the session.
const FORWARDING_LIMIT: Duration = Duration::from_secs(30);

/// The pauses between attempts at handing a session to a cluster that
/// would not take it.
const HAND_OFF_RETRY_FIRST: Duration = Duration::from_secs(1);
const HAND_OFF_RETRY_MAX: Duration = Duration::from_secs(30);

/// What became of handing a session to the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HandOff {
    /// It is in the cluster (or on its way: this node follows it).
    Done,
    /// Nothing to hand off: not persistent, attached again, or no longer
    /// this node's.
    Nothing,
    /// The cluster would not take it: it stays here.
    Failed,
}

/// Between forgetting a handed-off session and saying so in its queue: a
/// publish that found it followed just before has written there.
const FORWARDING_SETTLE: Duration = Duration::from_millis(200);

impl Broker {
    /// Tells the cluster that this node holds `client_id` now, with its
    /// will; another node that held it connected closes that connection
    /// (and hands its session over) first, within a second. Nothing to do
    /// without a cluster.
    /// What the claim found out about that node comes back, for
    /// [`Broker::load_from_cluster`]: its late answer to wait for, and
    /// whether it may still forward messages to the session.
    /// Fails when that node keeps the client's session because the
    /// cluster would not take it (the client is refused, and retries),
    /// unless the client wants no session from the cluster (`fresh`).
    /// `early`: see [`EarlyConnack`].
    pub(super) async fn claim_in_cluster(
        &self,
        client_id: &str,
        will: Option<&Will>,
        expiry: u32,
        fresh: bool,
        early: Option<EarlyConnack>,
    ) -> Result<Claimed, ClusterError> {
        let Some(cluster) = self.cluster() else {
            return Ok(Claimed::default());
        };
        let will = will.map(|w| crate::cluster::clients::StoredWill {
            message: Message::from_will(w.clone()).to_stored(),
            delay_secs: w.delay_interval.unwrap_or(0).min(expiry),
        });
        cluster.claim(client_id, will, fresh, early).await
    }

    /// Waits until the interest bucket has this node's subscriptions made
    /// so far (at most [`INTEREST_RECORD_WAIT`]; not at all without NATS),
    /// so that a SUBACK sent after it holds for messages published on
    /// other nodes as soon as they have read the bucket.
    pub async fn interest_recorded(&self) {
        let Some(cluster) = self.cluster().filter(|c| c.is_connected()) else {
            return;
        };
        if tokio::time::timeout(INTEREST_RECORD_WAIT, cluster.interest().written())
            .await
            .is_err()
        {
            self.logger.warning(&format!(
                "Cluster: a subscription is not in the interest bucket after {} s; \
                 acknowledged anyway (this node's own publishers reach it).",
                INTEREST_RECORD_WAIT.as_secs()
            ));
        }
    }

    /// Another node accepted a CONNECT for `client_id`: the connection
    /// here closes (5.0: DISCONNECT 0x8E); a persistent session is handed
    /// to the cluster (the other node loads it), any other ends here, as
    /// does every session when the client starts clean there (`discard`).
    /// Resolves once that is done, with what became of the session:
    /// [`Answer::Kept`] when it stays here because the cluster would not
    /// take it (the other node refuses the client and asks again later),
    /// [`Answer::Ended`] when it ended here and the cluster holds nothing
    /// of it.
    pub async fn taken_over_elsewhere(self: &Arc<Self>, client_id: &str, discard: bool) -> Answer {
        let shard = self.shard(client_id);
        // Whether the session ends with nothing of it in the cluster.
        let ends_here = |state: &crate::session::SessionState| {
            discard && !state.persistent && state.flags.get(SessionFlags::NOTHING_IN_CLUSTER)
        };
        let ended = {
            // After any CONNECT of this client being handled here: the
            // connection it attaches is the one to close.
            let _serial = self.connect_locks[shard].lock().await;
            // The client goes elsewhere: a copy of its queue kept here is
            // not its session any more (`cluster::mirror`).
            if let Some(cluster) = self.cluster() {
                cluster.drop_mirror(client_id);
            }
            let Some(session) = self.session(client_id) else {
                return Answer::Released;
            };
            let (attached, ended) = {
                let mut state = session.state.lock();
                // The client is elsewhere now: no copy of its queue here.
                state.flags.set(SessionFlags::MOVED_AWAY, true);
                (state.attachment.clone(), ends_here(&state))
            };
            if let Some(old) = attached {
                let (tx, rx) = tokio::sync::oneshot::channel();
                if old.client.mailbox.send(Control::TakenOver(tx)) {
                    let _ = tokio::time::timeout(TAKEOVER_TIMEOUT, rx).await;
                }
            }
            ended
        };
        let Some(session) = self.session(client_id) else {
            // It ended with its connection.
            return if ended {
                Answer::Ended
            } else {
                Answer::Released
            };
        };
        if discard {
            self.logger.info(&format!(
                "Client {client_id} connected to another node with a clean start; its session here ends."
            ));
        } else {
            self.logger.info(&format!(
                "Client {client_id} connected to another node; its session moves there."
            ));
            match self.hand_off_session(&session, false).await {
                HandOff::Done => return Answer::Released,
                HandOff::Failed => return Answer::Kept,
                HandOff::Nothing => {}
            }
        }
        // Not handed off: it ends here, unless a connection attached to it
        // again meanwhile.
        let _serial = self.connect_locks[shard].lock().await;
        let current = self
            .session(client_id)
            .is_some_and(|s| Arc::ptr_eq(&s, &session));
        let (idle, ended) = {
            let state = session.state.lock();
            (state.attachment.is_none(), ends_here(&state))
        };
        let followed = self.cluster().is_some_and(|c| c.is_forwarding(client_id));
        if current && idle && !followed {
            let mut records = Vec::new();
            self.remove_session(&session, &mut records);
            self.persist_nowait(records);
            if ended {
                return Answer::Ended;
            }
        }
        Answer::Released
    }

    /// The client of `session` left this node: a persistent session goes
    /// to the cluster (the client may come back on any node, and this one
    /// may die meanwhile); then the client's entry says this node no
    /// longer holds it, unless it is back here. A session the cluster
    /// would not take stays here, its entry says so (a claim elsewhere
    /// asks this node, which tries again then), and it is tried again
    /// until the cluster takes it or it is no longer here.
    pub(super) async fn client_left(self: &Arc<Self>, session: &Arc<Session>, persistent: bool) {
        let Some(cluster) = self.cluster().cloned() else {
            return;
        };
        let client_id = &session.client_id;
        if persistent {
            // Should the client come back here, its queue is read from a
            // copy kept here rather than from JetStream (not when this
            // node is on its way out).
            let keep_copy = !self.draining.load(Ordering::Acquire);
            let mut said_held = false;
            let mut backoff = Backoff::new(HAND_OFF_RETRY_FIRST, HAND_OFF_RETRY_MAX);
            let mut handed_off = self.hand_off_session(session, keep_copy).await;
            while handed_off == HandOff::Failed {
                if !said_held {
                    said_held = cluster.hold(client_id).await;
                }
                backoff.wait().await;
                handed_off = self.hand_off_session(session, keep_copy).await;
            }
            if handed_off == HandOff::Nothing {
                // Back already, or gone elsewhere: no copy is of use.
                cluster.drop_mirror(client_id);
            }
        }
        // Only then is the client released: a node that finds it released
        // loads its session without asking this one. Not when it came
        // back: its entry is its new connection's.
        let shard = self.shard(client_id);
        let _serial = self.connect_locks[shard].lock().await;
        let back = self
            .session(client_id)
            .is_some_and(|s| s.state.lock().attachment.is_some());
        if !back {
            cluster.release(client_id).await;
        }
    }

    /// Hands an offline persistent session to the cluster: its record, its
    /// messages (in flight first, then queued) and its filters. Messages
    /// routed here to it meanwhile follow it for a moment
    /// ([`HANDOVER_GRACE`]); then it is forgotten here. When the cluster
    /// would not take it, it stays here, with its expiry. With `keep_copy`
    /// (its client left; not taken over elsewhere), this node keeps a copy
    /// of the session's queue for when the client comes back here
    /// ([`crate::cluster::mirror`]).
    pub(super) async fn hand_off_session(
        self: &Arc<Self>,
        session: &Arc<Session>,
        keep_copy: bool,
    ) -> HandOff {
        let Some(cluster) = self.cluster().cloned() else {
            return HandOff::Nothing;
        };
        let shard = self.shard(&session.client_id);
        let _serial = self.connect_locks[shard].lock().await;
        if cluster.is_forwarding(&session.client_id) {
            return HandOff::Done;
        }
        let (record, entries, copy_for) = {
            let state = session.state.lock();
            let current = self
                .session(&session.client_id)
                .is_some_and(|s| Arc::ptr_eq(&s, session));
            if state.attachment.is_some() || !state.persistent || !current {
                return HandOff::Nothing;
            }
            let copy_for = (keep_copy && !state.flags.get(SessionFlags::MOVED_AWAY))
                .then(|| Duration::from_secs(u64::from(state.expiry_interval)));
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
            (record, entries, copy_for)
        };
        if let Some(expiry) = copy_for {
            cluster
                .mirror_queue(&session.client_id, expiry, record.subscriptions.clone())
                .await;
        }
        let count = entries.len();
        let handed: HashSet<u64> = entries.iter().map(|e| e.id).collect();
        let revision = match cluster.hand_off(&session.client_id, &record, entries).await {
            Ok(revision) => revision,
            Err(e) => {
                self.logger.warning(&format!(
                    "The session of {} stays on this node: cannot hand it to the cluster: {e}.",
                    session.client_id
                ));
                // Its queue is the session's here again.
                cluster.drop_mirror(&session.client_id);
                return HandOff::Failed;
            }
        };
        self.logger.info(&format!(
            "Session of {} handed to the cluster with {count} message(s).",
            session.client_id
        ));
        // From now on what is routed here for it follows it; what arrived
        // while the hand-off was written follows too.
        cluster.start_forwarding(session.client_id.clone(), revision);
        // The session here keeps no message from now on: what a publish
        // still puts in it (having found it not yet followed) is left over
        // for `forget_handed_off` to send on.
        let late: Vec<Arc<Message>> = {
            let mut held = session.state.lock().take_messages(&self.budget);
            held.retain(|msg| !handed.contains(&cluster.message_id(msg)));
            held
        };
        self.forward(&cluster, &session.client_id, late).await;
        // The session interest written by the hand-off replaces this node's.
        for filter in &record.subscriptions {
            cluster.interest().remove_local(&filter.filter);
        }
        let broker = self.clone();
        let session = session.clone();
        tokio::spawn(async move { broker.finish_forwarding(&cluster, &session).await });
        HandOff::Done
    }

    /// Stops following a handed-off session once nothing routed here can
    /// still be for it: the other nodes know this node's interest went
    /// (written, then [`HANDOVER_GRACE`] for them to read it), and every
    /// message they had routed here is delivered (to the session, which
    /// sends it on to its queue). Then the session is forgotten here and
    /// its queue says this node is done, for the node the client went to
    /// ([`Broker::follow_forwarding`]).
    async fn finish_forwarding(&self, cluster: &crate::cluster::Cluster, session: &Arc<Session>) {
        let client_id = &session.client_id;
        let written =
            tokio::time::timeout(FORWARDING_LIMIT, cluster.interest_written_revision()).await;
        // Every other node has read that this node's interest went (asked
        // each); one that does not answer gets the grace period.
        let told = match written {
            // This node too: once the session is forgotten here, its own
            // publishes find it through the table (its session interest).
            Ok(Ok(revision)) => {
                let (here, others) = tokio::join!(
                    cluster.interest_settled_here(revision, FORWARDING_LIMIT),
                    cluster.others_applied_interest(revision)
                );
                here && others
            }
            _ => {
                self.logger.warning(&format!(
                    "Cluster: this node's interest in the filters of {client_id} may still be unwritten; it stops following the session all the same."
                ));
                false
            }
        };
        if !told {
            tokio::time::sleep(HANDOVER_GRACE).await;
        }
        if !cluster.routed_caught_up(FORWARDING_LIMIT).await {
            self.logger.warning(&format!(
                "Cluster: messages routed here may still be on their way to {client_id}; it is no longer followed here after {} s.",
                FORWARDING_LIMIT.as_secs()
            ));
        }
        let left_over = {
            let shard = self.shard(client_id);
            let _serial = self.connect_locks[shard].lock().await;
            self.forget_handed_off(session)
        };
        let Some(left_over) = left_over else {
            // The client came back here, or the session was forgotten by
            // another path: no node waits for this one.
            return;
        };
        self.forward(cluster, client_id, left_over).await;
        // A publish that found the session followed a moment ago may still
        // be writing to its queue: the end comes after it.
        tokio::time::sleep(FORWARDING_SETTLE).await;
        // Tried again for a while: until the end is read, the node the
        // client went to keeps following the queue.
        let give_up = tokio::time::Instant::now() + FORWARDING_LIMIT;
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
        loop {
            match cluster.end_forwarding(client_id).await {
                Ok(()) => {
                    self.logger.info(&format!(
                        "Session of {client_id} no longer followed here (its queue says so)."
                    ));
                    return;
                }
                Err(e) if tokio::time::Instant::now() >= give_up => {
                    self.logger.warning(&format!(
                        "Cluster: cannot say this node stopped following {client_id}: {e}; the node it went to waits for it a while."
                    ));
                    return;
                }
                Err(_) => backoff.wait().await,
            }
        }
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
    /// Returns the messages a publish put in it after the hand-off (to
    /// send on to its queue), or `None` when it was not forgotten.
    pub(super) fn forget_handed_off(&self, session: &Arc<Session>) -> Option<Vec<Arc<Message>>> {
        let cluster = self.cluster()?;
        // As `remove_session`, but this node's interest in its filters was
        // given up at the hand-off already.
        let shard = self.shard(&session.client_id);
        {
            let mut map = self.sessions[shard].write();
            let current = map
                .get(&session.client_id)
                .is_some_and(|s| Arc::ptr_eq(s, session));
            if !current || !cluster.is_forwarding(&session.client_id) {
                return None;
            }
            map.remove(&session.client_id);
        }
        cluster.stop_forwarding(&session.client_id);
        let (filters, left_over) = {
            let mut state = session.state.lock();
            let left_over = state.take_messages(&self.budget);
            state.epoch += 1;
            let filters: Vec<String> = std::mem::take(&mut state.subscriptions)
                .into_keys()
                .collect();
            (filters, left_over)
        };
        for filter in &filters {
            self.router.unsubscribe(&session.client_id, filter);
        }
        Some(left_over)
    }

    /// Writes `messages` into the queue of `client_id`'s handed-off session.
    pub(super) async fn forward(
        &self,
        cluster: &crate::cluster::Cluster,
        client_id: &Arc<str>,
        messages: Vec<Arc<Message>>,
    ) {
        if !messages.is_empty() {
            self.logger.info(&format!(
                "Session of {client_id}: {} message(s) that came after its hand-off sent on to the cluster.",
                messages.len()
            ));
        }
        for msg in messages {
            let clients = [client_id.clone()];
            let stored = match cluster.queue_for_offline(&msg, &clients).await {
                Ok(stored) => stored.wait().await,
                Err(e) => Err(e),
            };
            if let Err(e) = stored {
                self.metrics.cluster_send_failures.inc();
                self.logger.error(&format!(
                    "Cluster: a message for the handed-off session of {client_id} was lost: {e}."
                ));
            }
        }
    }

    /// Writes a persistent session's record to the cluster (in the
    /// background, in order): what a survivor needs to keep it if this
    /// node dies with the client connected. Only while a client is
    /// connected to it (the record says so): an offline session's record
    /// is its hand-off's.
    pub(super) fn save_session_in_cluster(&self, session: &Session) {
        let Some(cluster) = self.cluster() else {
            return;
        };
        let record = {
            let state = session.state.lock();
            if !state.persistent || state.attachment.is_none() {
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
    /// after its delay (the smaller of the will delay and the session
    /// expiry), unless the client connected again meanwhile: another node
    /// claimed it since this one wrote its entry (at `released_at`).
    pub fn publish_will_of_lost_client(
        self: &Arc<Self>,
        client_id: &str,
        msg: Message,
        delay: Duration,
        released_at: u64,
    ) {
        let broker = self.clone();
        let client_id = client_id.to_string();
        tokio::spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
                if broker.back_within_will_delay(&client_id, released_at).await {
                    return;
                }
            }
            if let Err(e) = broker.publish(Arc::new(msg), None).await {
                broker.logger.error(&format!(
                    "Error publishing the will of client {client_id} of a lost node: {e}."
                ));
            }
        });
    }

    /// Closes the connection (5.0: 0x8E, no will) of each client here that
    /// another node took over while this one was cut off from the cluster
    /// ([`crate::cluster::Cluster::claimed_elsewhere`]); its session ends
    /// here with nothing written to the cluster. Returns how many. A
    /// client whose entry cannot be read stays (the next pass looks
    /// again).
    pub(crate) async fn let_go_clients_claimed_elsewhere(self: &Arc<Self>) -> usize {
        let Some(cluster) = self.cluster().cloned() else {
            return 0;
        };
        let mut ended = 0;
        for session in self.sessions() {
            let connection = session
                .state
                .lock()
                .attachment
                .as_ref()
                .map(|a| a.connection_id);
            let Some(connection) = connection else {
                continue;
            };
            match cluster.claimed_elsewhere(&session.client_id).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    self.logger.warning(&format!(
                        "Cluster: cannot tell whether client {} was taken over elsewhere: {e}.",
                        session.client_id
                    ));
                    continue;
                }
            }
            let shard = self.shard(&session.client_id);
            let _serial = self.connect_locks[shard].lock().await;
            // Not if it connected again meanwhile (that claim is its own).
            let same_connection = session
                .state
                .lock()
                .attachment
                .as_ref()
                .is_some_and(|a| a.connection_id == connection);
            let current = self
                .session(&session.client_id)
                .is_some_and(|s| Arc::ptr_eq(&s, &session));
            if !same_connection || !current {
                continue;
            }
            let mut ignored = Vec::new();
            self.remove_session(&session, &mut ignored);
            session.send_control(Control::ClaimedElsewhere);
            ended += 1;
        }
        ended
    }

    /// Whether the client of a lost node whose will is due connected again
    /// (anywhere in the cluster) since its entry was released at
    /// `released_at`: then its will is not published. When that cannot be
    /// read, the will goes.
    async fn back_within_will_delay(&self, client_id: &str, released_at: u64) -> bool {
        let Some(cluster) = self.cluster() else {
            return false;
        };
        match cluster.claimed_since(client_id, released_at).await {
            Ok(true) => {
                self.logger.info(&format!(
                    "The will of client {client_id} of a lost node is not published: it connected again within its will delay."
                ));
                true
            }
            Ok(false) => false,
            Err(e) => {
                self.logger.warning(&format!(
                    "Cannot tell whether client {client_id} of a lost node connected again ({e}): its will is published."
                ));
                false
            }
        }
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
