//! The broker's shared state and the operations that span sessions:
//! publishing (routing into session queues), attaching and detaching
//! connections to sessions, session expiry, wills, and recovery from the
//! durable store.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use parking_lot::RwLock;
use tokio::sync::Mutex as AsyncMutex;

use crate::access::{Access, AclCache};
use crate::budget::MemoryBudget;
use crate::client::{ClientHandle, ClientInfo, Control};
use crate::cluster::{Cluster, ClusterError};
use crate::codec::{QoS, ReasonCode, SubscriptionOptions, Will};
use crate::config::{Config, SlowSubscriberAction};
use crate::keepalive::KeepAliveWheel;
use crate::log::Logger;
use crate::message::{now_ms, Message};
use crate::metrics::Metrics;
use crate::queue::{DropReason, Enqueued, QueueLimits, Stall};
use crate::retained::RetainedStore;
use crate::router::{Subscription, SubscriptionTable};
use crate::session::SessionState;
use crate::session::{Attachment, Delivery, Session, SessionSubscription};
use crate::store::{Record, Recovered, Store, StoreError, StoredSubscription};

/// Sessions are keyed by client id.
pub type ClientKey = Arc<str>;

const SHARDS: usize = 64;
/// How long a new connection waits for the old one to let go of a session.
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Broker {
    /// The configuration in force: [`Broker::config`] reads it, a reload
    /// (SIGHUP, `POST /api/v1/reload`) replaces it ([`crate::reload`] says
    /// which keys take effect without a restart).
    config: ArcSwap<Config>,
    pub logger: Logger,
    pub router: SubscriptionTable<ClientKey>,
    pub retained: RetainedStore<Arc<Message>>,
    pub store: Option<Store>,
    pub access: Access,
    pub metrics: Metrics,
    pub started: Instant,
    /// Set when shutdown begins: readiness turns false.
    pub draining: AtomicBool,
    /// Asks the reload task to re-read every file now (SIGHUP, admin API).
    pub reload_requested: tokio::sync::Notify,
    /// The keep-alive deadlines of every connection.
    pub keep_alive: KeepAliveWheel,
    /// The bytes queued in every session, against the memory budget.
    pub budget: MemoryBudget,
    /// This node's part in a cluster (`[cluster]`), once started.
    cluster: std::sync::OnceLock<Arc<Cluster>>,
    sessions: Vec<RwLock<HashMap<ClientKey, Arc<Session>>>>,
    /// Serialises CONNECT handling per shard of client ids, so that two
    /// connections racing for one client id take over in order.
    connect_locks: Vec<AsyncMutex<()>>,
    hasher: ahash::RandomState,
    next_connection_id: AtomicU64,
    next_will_token: AtomicU64,
}

/// Who published a message: for `noLocal`, and to pause when a
/// subscriber falls behind.
#[derive(Clone, Copy)]
pub struct Publisher<'a> {
    pub client_id: &'a ClientKey,
    pub client: &'a Arc<ClientHandle>,
}

/// Where a published message went.
#[derive(Default)]
pub struct Routed {
    /// Sessions it was routed to.
    pub matched: usize,
    /// Connected subscribers above their high-water mark: the publisher
    /// stops reading PUBLISHes until they have room.
    pub congested: Vec<Arc<Session>>,
}

/// Where a message being routed comes from.
#[derive(Clone, Copy)]
enum Origin<'a> {
    /// A client of this node, or the broker itself.
    Here,
    /// Another node, for the given shared groups here.
    Routed(&'a [String]),
    /// A NATS client, on a device-data subject.
    Imported,
}

/// Why a message could not be taken on.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cluster: {0}")]
    Cluster(#[from] ClusterError),
}

/// Result of attaching a connection to a session.
pub struct Attached {
    pub session: Arc<Session>,
    pub session_present: bool,
    /// A previous connection of the same client id was closed.
    pub took_over: bool,
}

impl Broker {
    pub fn new(config: Config, logger: Logger, store: Option<Store>, access: Access) -> Broker {
        let budget = usize::try_from(config.limits.memory_budget_bytes).unwrap_or(usize::MAX);
        Broker {
            config: ArcSwap::from_pointee(config),
            logger,
            router: SubscriptionTable::new(),
            retained: RetainedStore::new(),
            store,
            access,
            metrics: Metrics::new(),
            started: Instant::now(),
            draining: AtomicBool::new(false),
            reload_requested: tokio::sync::Notify::new(),
            keep_alive: KeepAliveWheel::default(),
            budget: MemoryBudget::new(budget),
            cluster: std::sync::OnceLock::new(),
            sessions: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            connect_locks: (0..SHARDS).map(|_| AsyncMutex::new(())).collect(),
            hasher: ahash::RandomState::new(),
            next_connection_id: AtomicU64::new(1),
            next_will_token: AtomicU64::new(1),
        }
    }

    /// The configuration in force. Cheap; do not hold it across an await.
    pub fn config(&self) -> arc_swap::Guard<Arc<Config>> {
        self.config.load()
    }

    /// Puts a reloaded configuration in force ([`crate::reload`]).
    pub fn replace_config(&self, config: Config) {
        self.config.store(Arc::new(config));
    }

    /// This node's part in a cluster, when there is one.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.get()
    }

    /// Joins the cluster (at start, before sessions are restored).
    pub fn set_cluster(&self, cluster: Arc<Cluster>) {
        let _ = self.cluster.set(cluster);
    }

    fn shard(&self, client_id: &str) -> usize {
        (self.hasher.hash_one(client_id) as usize) % SHARDS
    }

    pub fn next_connection_id(&self) -> u64 {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn session(&self, client_id: &str) -> Option<Arc<Session>> {
        self.sessions[self.shard(client_id)]
            .read()
            .get(client_id)
            .cloned()
    }

    /// All sessions (for `$SYS` counts and the admin API).
    pub fn sessions(&self) -> Vec<Arc<Session>> {
        self.sessions
            .iter()
            .flat_map(|shard| shard.read().values().cloned().collect::<Vec<_>>())
            .collect()
    }

    pub fn queue_limits(&self) -> QueueLimits {
        QueueLimits::from_limits(&self.config().limits)
    }

    // ----- publishing -------------------------------------------------------

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
        self.route_message(msg, publisher, Origin::Here).await
    }

    /// Delivers a message another node routed here to this node's
    /// sessions: its ordinary subscriptions, and the shared ones of
    /// `groups`.
    pub async fn deliver_routed(
        &self,
        msg: Arc<Message>,
        groups: &[String],
    ) -> Result<Routed, PublishError> {
        self.route_message(msg, None, Origin::Routed(groups)).await
    }

    /// Routes a message a NATS client published on a device-data subject,
    /// in the whole cluster (it is not exported back to NATS).
    pub async fn publish_imported(&self, msg: Arc<Message>) {
        if let Err(e) = self.route_message(msg, None, Origin::Imported).await {
            self.logger
                .warning(&format!("A message from NATS was not delivered: {e}."));
        }
    }

    async fn route_message(
        &self,
        msg: Arc<Message>,
        publisher: Option<Publisher<'_>>,
        origin: Origin<'_>,
    ) -> Result<Routed, PublishError> {
        // Messages routed here from another node go no further.
        let cluster = match origin {
            Origin::Routed(_) => None,
            _ => self.cluster(),
        };
        let plan = cluster.map(|c| c.plan(&msg.topic)).unwrap_or_default();
        if let Some(cluster) = cluster {
            if msg.qos != QoS::AtMostOnce {
                // Acknowledged means stored: the other nodes' streams have
                // it before anything is delivered here.
                cluster.send(&msg, &plan).await?;
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
        };
        let limits = self.queue_limits();
        let client = publisher.as_ref().map(|p| p.client);
        for route in routes {
            let Some(session) = self.session(&route.subscriber) else {
                continue;
            };
            let qos = msg.qos.min(route.qos);
            let retain = msg.retain && route.retain_as_published;
            let outcome = self.enqueue(
                &session,
                &msg,
                qos,
                retain,
                route.subscription_identifiers,
                &limits,
                client,
                &mut records,
            );
            if outcome == Some(Enqueued::QueuedPause) {
                routed.congested.push(session);
            }
        }
        if !records.is_empty() {
            if let Some(store) = &self.store {
                store.append(records).await?;
            }
        }
        if let Some(cluster) = cluster {
            if msg.qos == QoS::AtMostOnce {
                if let Err(e) = cluster.send(&msg, &plan).await {
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

    fn update_retained(&self, msg: &Arc<Message>, records: &mut Vec<Record>) {
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
    fn ensure_stored(&self, msg: &Arc<Message>, records: &mut Vec<Record>) -> u64 {
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
    #[allow(clippy::too_many_arguments)]
    pub fn enqueue(
        &self,
        session: &Session,
        msg: &Arc<Message>,
        qos: QoS,
        retain: bool,
        subscription_identifiers: Vec<u32>,
        limits: &QueueLimits,
        publisher: Option<&Arc<ClientHandle>>,
        records: &mut Vec<Record>,
    ) -> Option<Enqueued> {
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
            retain,
            subscription_identifiers,
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
    fn can_receive(&self, state: &mut SessionState, client_id: &str, topic: &str) -> bool {
        let Some(client) = &state.last_client else {
            return true;
        };
        let username = client.info.username.as_deref();
        // Not cloned: without an ACL every client shares one `ClientAcl`,
        // and a reference count touched by every delivery would be contended.
        let cache = state
            .acl
            .get_or_insert_with(|| AclCache::resolve(&self.access, username, client_id));
        cache
            .current(&self.access, username, client_id)
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

    // ----- subscriptions ----------------------------------------------------

    /// Adds a subscription to a session and the router. Returns whether it
    /// is new (for Retain Handling 1).
    pub fn subscribe(
        &self,
        session: &Session,
        filter: &str,
        options: SubscriptionOptions,
        identifier: Option<u32>,
        records: &mut Vec<Record>,
    ) -> bool {
        let is_new = self.router.subscribe(
            session.client_id.clone(),
            filter,
            Subscription {
                options,
                identifier,
            },
        );
        if is_new {
            if let Some(cluster) = self.cluster() {
                cluster.interest().add_local(filter);
            }
        }
        let mut state = session.state.lock();
        state.subscriptions.insert(
            filter.to_string(),
            SessionSubscription {
                options,
                identifier,
            },
        );
        if state.persistent {
            records.push(Record::Subscribe {
                client_id: session.client_id.to_string(),
                sub: stored_subscription(filter, options, identifier),
            });
        }
        is_new
    }

    pub fn unsubscribe(&self, session: &Session, filter: &str, records: &mut Vec<Record>) -> bool {
        let existed = self.router.unsubscribe(&session.client_id, filter);
        if existed {
            if let Some(cluster) = self.cluster() {
                cluster.interest().remove_local(filter);
            }
        }
        let mut state = session.state.lock();
        let had = state.subscriptions.remove(filter).is_some();
        if had && state.persistent {
            records.push(Record::Unsubscribe {
                client_id: session.client_id.to_string(),
                filter: filter.to_string(),
            });
        }
        existed || had
    }

    // ----- sessions ---------------------------------------------------------

    /// Attaches a new connection to the session of `client_id`, taking over
    /// from a connection that holds it and starting fresh when asked.
    /// `queue_limits` are those of the connection's listener.
    pub async fn attach(
        &self,
        client_id: &ClientKey,
        clean_start: bool,
        expiry_interval: u32,
        attachment: Attachment,
        queue_limits: QueueLimits,
    ) -> Result<Attached, StoreError> {
        let shard = self.shard(client_id);
        let _serial = self.connect_locks[shard].lock().await;
        let mut took_over = false;
        if let Some(existing) = self.session(client_id) {
            let control = existing.state.lock().attachment.clone();
            if let Some(old) = control {
                took_over = true;
                let (tx, rx) = tokio::sync::oneshot::channel();
                if old.client.mailbox.send(Control::TakenOver(tx)) {
                    // The old connection detaches itself, then confirms.
                    let _ = tokio::time::timeout(TAKEOVER_TIMEOUT, rx).await;
                }
                // Whatever happened, it no longer owns the session.
                let mut state = existing.state.lock();
                if state
                    .attachment
                    .as_ref()
                    .is_some_and(|a| a.connection_id == old.connection_id)
                {
                    state.attachment = None;
                    old.client.mailbox.send(Control::Detached);
                }
            }
        }
        let persistent = expiry_interval > 0 && self.store.is_some();
        let mut records = Vec::new();
        let existing = self.session(client_id);
        let (session, session_present) = match existing {
            Some(session) if !clean_start => {
                let mut state = session.state.lock();
                if persistent && !state.persistent {
                    records.push(Record::SessionOpen {
                        client_id: client_id.to_string(),
                        expiry_interval,
                    });
                    for (filter, sub) in &state.subscriptions {
                        records.push(Record::Subscribe {
                            client_id: client_id.to_string(),
                            sub: stored_subscription(filter, sub.options, sub.identifier),
                        });
                    }
                } else if !persistent && state.persistent {
                    records.push(Record::SessionDelete {
                        client_id: client_id.to_string(),
                    });
                } else if persistent {
                    records.push(Record::SessionResume {
                        client_id: client_id.to_string(),
                        expiry_interval,
                    });
                }
                state.persistent = persistent;
                drop(state);
                (session, true)
            }
            other => {
                if let Some(old) = other {
                    self.remove_session(&old, &mut records);
                }
                // The connection's copy of the client id is shared.
                let session =
                    Arc::new(Session::new(client_id.clone(), expiry_interval, persistent));
                self.sessions[shard]
                    .write()
                    .insert(session.client_id.clone(), session.clone());
                if persistent {
                    records.push(Record::SessionOpen {
                        client_id: client_id.to_string(),
                        expiry_interval,
                    });
                }
                (session, false)
            }
        };
        {
            let mut state = session.state.lock();
            state.last_client = Some(attachment.client.clone());
            state.queue_limits = Some(queue_limits);
            state.acl = None;
            state.attachment = Some(attachment);
            state.queue.release_publishers();
            state.expiry_interval = expiry_interval;
            state.disconnected_at = None;
            state.pending_will = None;
            state.epoch += 1;
        }
        self.persist(records).await?;
        Ok(Attached {
            session,
            session_present,
            took_over,
        })
    }

    /// Detaches a connection from its session when the connection ends.
    /// `will` is published (possibly after its delay) when given.
    pub fn detach(
        self: &Arc<Self>,
        session: &Arc<Session>,
        connection_id: u64,
        will: Option<Will>,
    ) {
        let mut state = session.state.lock();
        let ours = state
            .attachment
            .as_ref()
            .is_some_and(|a| a.connection_id == connection_id);
        let expiry = state.expiry_interval;
        if ours {
            state.attachment = None;
            // Offline queues hold no publisher back.
            state.queue.release_publishers();
            state.disconnected_at = Some(Instant::now());
            state.epoch += 1;
        }
        let epoch = state.epoch;
        let persistent = state.persistent;
        drop(state);
        if let Some(cluster) = self.cluster().filter(|_| ours) {
            let cluster = cluster.clone();
            let client_id = session.client_id.clone();
            tokio::spawn(async move { cluster.release(&client_id).await });
        }

        if let Some(will) = will {
            let delay = will.delay_interval.unwrap_or(0).min(expiry);
            if delay == 0 || !ours {
                self.publish_will(will);
            } else {
                // Tokens start at 1 and a u64 does not wrap in practice.
                let token = NonZeroU64::new(self.next_will_token.fetch_add(1, Ordering::Relaxed))
                    .unwrap_or(NonZeroU64::MIN);
                session.state.lock().pending_will = Some(token);
                let broker = self.clone();
                let session = session.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(u64::from(delay))).await;
                    let due = {
                        let mut state = session.state.lock();
                        if state.pending_will == Some(token) {
                            state.pending_will = None;
                            true
                        } else {
                            false
                        }
                    };
                    if due {
                        broker.publish_will(will);
                    }
                });
            }
        }

        if !ours {
            return;
        }
        if expiry == 0 {
            let mut records = Vec::new();
            self.remove_session(session, &mut records);
            self.persist_nowait(records);
            return;
        }
        if persistent {
            self.persist_nowait(vec![Record::SessionDisconnected {
                client_id: session.client_id.to_string(),
                expiry_interval: expiry,
                at_ms: now_ms(),
            }]);
        }
        self.schedule_expiry(
            session.clone(),
            epoch,
            Duration::from_secs(u64::from(expiry)),
        );
    }

    fn schedule_expiry(self: &Arc<Self>, session: Arc<Session>, epoch: u64, after: Duration) {
        if after.as_secs() >= u64::from(u32::MAX) {
            return; // never expires
        }
        let broker = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let expired = {
                let state = session.state.lock();
                state.epoch == epoch && state.attachment.is_none()
            };
            if expired {
                let mut records = Vec::new();
                broker.remove_session(&session, &mut records);
                broker.persist_nowait(records);
            }
        });
    }

    fn publish_will(self: &Arc<Self>, will: Will) {
        let msg = Arc::new(Message::from_will(will));
        let broker = self.clone();
        tokio::spawn(async move {
            if let Err(e) = broker.publish(msg, None).await {
                broker
                    .logger
                    .error(&format!("Error publishing a will message: {e}."));
            }
        });
    }

    // ----- the cluster --------------------------------------------------------

    /// Tells the cluster that this node holds `client_id` now, with its
    /// will; another node that held it connected closes that connection
    /// first (within a second). Nothing to do without a cluster.
    pub async fn claim_in_cluster(&self, client_id: &str, will: Option<&Will>, expiry: u32) {
        let Some(cluster) = self.cluster() else {
            return;
        };
        let will = will.map(|w| crate::cluster::clients::StoredWill {
            message: Message::from_will(w.clone()).to_stored(),
            delay_secs: w.delay_interval.unwrap_or(0).min(expiry),
        });
        cluster.claim(client_id, will).await;
    }

    /// Another node accepted a CONNECT for `client_id`: the connection
    /// here closes (5.0: DISCONNECT 0x8E), and the session here ends; it
    /// lives on the other node now.
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
            "Client {client_id} connected to another node; its session here ends."
        ));
        let mut records = Vec::new();
        self.remove_session(&session, &mut records);
        self.persist_nowait(records);
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

    /// Ends a session: its subscriptions leave the router, its queue is
    /// dropped, a pending delayed will is published now.
    fn remove_session(&self, session: &Arc<Session>, records: &mut Vec<Record>) {
        let shard = self.shard(&session.client_id);
        {
            let mut map = self.sessions[shard].write();
            if let Entry::Occupied(e) = map.entry(session.client_id.clone()) {
                if Arc::ptr_eq(e.get(), session) {
                    e.remove();
                }
            }
        }
        // Never hold a session lock while calling into the router: routing
        // calls back into sessions under the router's locks.
        let (filters, persistent) = {
            let mut state = session.state.lock();
            let filters: Vec<String> = std::mem::take(&mut state.subscriptions)
                .into_keys()
                .collect();
            state.clear_messages(&self.budget);
            state.epoch += 1;
            (filters, state.persistent)
        };
        for filter in &filters {
            if self.router.unsubscribe(&session.client_id, filter) {
                if let Some(cluster) = self.cluster() {
                    cluster.interest().remove_local(filter);
                }
            }
        }
        if persistent {
            records.push(Record::SessionDelete {
                client_id: session.client_id.to_string(),
            });
        }
    }

    /// Asks the connection attached to `client_id` to disconnect.
    pub fn kick(&self, client_id: &str, reason: ReasonCode) -> bool {
        let Some(session) = self.session(client_id) else {
            return false;
        };
        session.send_control(Control::Disconnect(reason))
    }

    /// Connected clients, with who they are.
    pub fn connected_clients(&self) -> Vec<(Arc<Session>, Arc<ClientHandle>)> {
        self.sessions()
            .into_iter()
            .filter_map(|s| s.attached_client().map(|client| (s, client)))
            .collect()
    }

    /// After the credentials changed: disconnects clients whose user no
    /// longer exists (5.0 reason 0x87). Clients authenticated by a client
    /// certificate and anonymous clients are left alone. Returns how many.
    pub fn disconnect_removed_users(&self) -> usize {
        if !self.access.has_user_files() {
            return 0;
        }
        let auth = self.access.authenticator();
        let mut kicked = 0;
        for (session, client) in self.connected_clients() {
            let info = &client.info;
            let Some(username) = &info.username else {
                continue;
            };
            let allowed = if info.cert_authenticated {
                self.access.certificate_user_allowed(username)
            } else {
                auth.has_user(username)
            };
            if allowed {
                continue;
            }
            self.logger.info(&format!(
                "Client {} disconnected: user {username} was removed.",
                session.client_id
            ));
            if self.kick(&session.client_id, ReasonCode::NOT_AUTHORIZED) {
                kicked += 1;
            }
        }
        kicked
    }

    /// Publishes a presence event (`connected` / `disconnected`) for
    /// backends, as JSON under `$SYS/brokers/{node}/clients/{clientid}/`.
    pub fn presence(
        self: &Arc<Self>,
        client_id: &str,
        info: &ClientInfo,
        event: &str,
        reason: &str,
    ) {
        let config = self.config();
        if !config.presence_events {
            return;
        }
        let topic = format!(
            "$SYS/brokers/{}/clients/{client_id}/{event}",
            config.node_name
        );
        drop(config);
        let payload = serde_json::json!({
            "clientid": client_id,
            "username": info.username.as_deref(),
            "ipaddress": info.address.ip().to_string(),
            "port": info.address.port(),
            "protocol": info.protocol.level(),
            "keepalive": info.keep_alive,
            "listener": &*info.listener,
            "reason": reason,
            "timestamp": crate::message::now_ms(),
        });
        let msg = Arc::new(Message::internal(&topic, payload.to_string(), false));
        let broker = self.clone();
        tokio::spawn(async move {
            let _ = broker.publish(msg, None).await;
        });
    }

    // ----- recovery ---------------------------------------------------------

    /// Rebuilds retained messages and persistent sessions from the store.
    pub fn restore(self: &Arc<Self>, recovered: Recovered) {
        for (topic, stored) in recovered.retained {
            self.retained
                .set(&topic, Arc::new(Message::from_stored(stored)));
        }
        let now = now_ms();
        for stored in recovered.sessions {
            let client_id: ClientKey = Arc::from(stored.client_id.as_str());
            let session = Arc::new(Session::new(
                client_id.clone(),
                stored.expiry_interval,
                true,
            ));
            {
                let mut state = session.state.lock();
                for sub in &stored.subscriptions {
                    let options = SubscriptionOptions {
                        qos: QoS::from_u8(sub.qos).unwrap_or(QoS::AtMostOnce),
                        no_local: sub.no_local,
                        retain_as_published: sub.retain_as_published,
                        retain_handling: sub.retain_handling,
                    };
                    let is_new = self.router.subscribe(
                        client_id.clone(),
                        &sub.filter,
                        Subscription {
                            options,
                            identifier: sub.identifier,
                        },
                    );
                    if let Some(cluster) = self.cluster().filter(|_| is_new) {
                        cluster.interest().add_local(&sub.filter);
                    }
                    state.subscriptions.insert(
                        sub.filter.clone(),
                        SessionSubscription {
                            options,
                            identifier: sub.identifier,
                        },
                    );
                }
                let mut max_seq = 0;
                for entry in stored.queue {
                    max_seq = max_seq.max(entry.seq);
                    let retain = entry.msg.retain;
                    let delivery = Delivery {
                        msg: Arc::new(Message::from_stored(entry.msg)),
                        qos: QoS::from_u8(entry.qos).unwrap_or(QoS::AtLeastOnce),
                        retain,
                        subscription_identifiers: Vec::new(),
                        seq: entry.seq,
                    };
                    match entry.packet_id {
                        Some(pid) => state.restore_inflight(pid, delivery, entry.released),
                        None => state.restore_queued(delivery, &self.budget),
                    }
                }
                state.next_seq = max_seq + 1;
                state.inbound_qos2 = stored.inbound_qos2.into_iter().collect();
                state.disconnected_at = Some(Instant::now());
            }
            let elapsed_ms = stored
                .disconnected_at_ms
                .map(|at| now.saturating_sub(at))
                .unwrap_or(0);
            let remaining = Duration::from_secs(u64::from(stored.expiry_interval))
                .saturating_sub(Duration::from_millis(elapsed_ms));
            let shard = self.shard(&client_id);
            self.sessions[shard]
                .write()
                .insert(client_id, session.clone());
            if stored.expiry_interval != u32::MAX {
                self.schedule_expiry(session, 0, remaining);
            }
        }
    }
}

pub fn stored_subscription(
    filter: &str,
    options: SubscriptionOptions,
    identifier: Option<u32>,
) -> StoredSubscription {
    StoredSubscription {
        filter: filter.to_string(),
        qos: options.qos.as_u8(),
        no_local: options.no_local,
        retain_as_published: options.retain_as_published,
        retain_handling: options.retain_handling,
        identifier,
    }
}
