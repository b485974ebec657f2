//! Sessions: subscriptions, attaching and detaching connections, expiry,
//! wills, and the admin operations on connected clients.

use std::collections::hash_map::Entry;
use std::num::NonZeroU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::{ClientHandle, ClientInfo, Control};
use crate::cluster::clients::EarlyConnack;
use crate::cluster::interest::Interest;
use crate::codec::{ReasonCode, SubscriptionOptions, Will};
use crate::message::{now_ms, Message};
use crate::queue::QueueLimits;
use crate::router::Subscription;
use crate::session::{Attachment, Session, SessionFlags, SessionSubscription};
use crate::store::Record;

use super::{stored_subscription, Attached, Broker, ClientKey, PublishError, TAKEOVER_TIMEOUT};

impl Broker {
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
        let subscription = Subscription {
            options,
            identifier,
        };
        self.subscribe_with(session, filter, subscription, records, Interest::add_local)
    }

    /// [`Broker::subscribe`] for a session being loaded from the cluster:
    /// this node's interest in a filter it brings is written once it has
    /// taken its backlog ([`Interest::add_local_held`]).
    pub(super) fn subscribe_loaded(
        &self,
        session: &Session,
        filter: &str,
        subscription: Subscription,
    ) {
        let mut ignored = Vec::new();
        self.subscribe_with(
            session,
            filter,
            subscription,
            &mut ignored,
            Interest::add_local_held,
        );
    }

    fn subscribe_with(
        &self,
        session: &Session,
        filter: &str,
        subscription: Subscription,
        records: &mut Vec<Record>,
        add_interest: fn(&Interest, &str),
    ) -> bool {
        let Subscription {
            options,
            identifier,
        } = subscription;
        let is_new = self
            .router
            .subscribe(session.client_id.clone(), filter, subscription);
        if is_new {
            if let Some(cluster) = self.cluster() {
                add_interest(cluster.interest(), filter);
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
        drop(state);
        self.save_session_in_cluster(session);
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
        drop(state);
        if had {
            self.save_session_in_cluster(session);
        }
        existed || had
    }

    /// Attaches a new connection to the session of `client_id`, taking over
    /// from a connection that holds it and starting fresh when asked.
    /// `queue_limits` are those of the connection's listener.
    ///
    /// `early` is told the Session Present flag when the CONNACK may go
    /// before the session is attached: another node of the cluster has
    /// the client connected, and lets it go after the claim (see
    /// [`EarlyConnack`]). What is returned then may still be an error, or
    /// say otherwise (the session changed meanwhile): the connection is
    /// closed then.
    #[allow(clippy::too_many_arguments)]
    pub async fn attach(
        self: &Arc<Self>,
        client_id: &ClientKey,
        clean_start: bool,
        expiry_interval: u32,
        attachment: Attachment,
        queue_limits: QueueLimits,
        will: Option<&Will>,
        early: Option<EarlyConnack>,
    ) -> Result<Attached, PublishError> {
        let shard = self.shard(client_id);
        let _serial = self.connect_locks[shard].lock().await;
        // One client id, one connection, cluster-wide: the node that held
        // the client lets it go (and hands its session to the cluster)
        // first.
        // A session that ends with its connection is not taken from the
        // cluster: there it starts afresh, as with a clean start.
        let fresh_in_cluster = clean_start || expiry_interval == 0;
        // Early only with nothing of the session on this node: it is
        // loaded from the cluster below, or starts afresh.
        let early = early.filter(|_| {
            self.session(client_id).is_none() && self.handed_off_session(client_id).is_none()
        });
        let claim =
            self.claim_in_cluster(client_id, will, expiry_interval, fresh_in_cluster, early);
        // A client back on the node it left, which keeps a copy of its
        // queue: the session's record and queue's last sequence are read
        // while the claim is made (the claim says whether they are of use:
        // whether no other node had the client since). Not when this node
        // wrote the client's entry as it left: a claim that finds it
        // unchanged loads the session from the copy alone.
        let read_ahead = self.cluster().filter(|cluster| {
            !fresh_in_cluster
                && cluster.has_mirror(client_id)
                && cluster.held_revision(client_id).is_none()
                && self.handed_off_session(client_id).is_none()
        });
        let (claimed, head) = match read_ahead {
            Some(cluster) => {
                let (claimed, head) = tokio::join!(claim, cluster.session_head(client_id));
                (claimed?, head.ok())
            }
            None => (claim.await?, None),
        };
        if let Some(handed_off) = self.handed_off_session(client_id) {
            // Its state is in the cluster now: it is loaded from there.
            // Until then what is routed here for it goes to its queue.
            if let Some(cluster) = self.cluster() {
                cluster.session_interest_applied(client_id).await;
            }
            // Unless the session ends here (then its queue, deleted by the
            // claim, is to stay empty).
            if let (Some(left_over), Some(cluster)) =
                (self.forget_handed_off(&handed_off), self.cluster())
            {
                if !fresh_in_cluster {
                    self.forward(cluster, client_id, left_over).await;
                }
            }
        }
        // Claimed without a word to NATS: the session's record is written
        // once the claim is checked, after the client has its messages.
        let unconfirmed = claimed.unconfirmed.is_some();
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
        let persistent = expiry_interval > 0 && (self.store.is_some() || self.cluster().is_some());
        let session_gone = claimed.session_gone;
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
                let present = match self.cluster() {
                    Some(_) if fresh_in_cluster => false,
                    Some(_) if persistent => {
                        match self
                            .load_from_cluster(&session, queue_limits, claimed, head)
                            .await
                        {
                            Ok(present) => present,
                            Err(e) => {
                                // Not half-loaded: the next attempt starts over.
                                let mut ignored = Vec::new();
                                self.remove_session(&session, &mut ignored);
                                return Err(e);
                            }
                        }
                    }
                    _ => false,
                };
                (session, present)
            }
        };
        if let Some(cluster) = self.cluster().filter(|_| fresh_in_cluster) {
            // What the cluster holds of the client's sessions goes, unless
            // the claim saw to it already.
            let gone = session_gone || cluster.delete_session(client_id).await;
            session
                .state
                .lock()
                .flags
                .set(SessionFlags::NOTHING_IN_CLUSTER, gone && !persistent);
        }
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
            state.flags.set(SessionFlags::MOVED_AWAY, false);
            state.epoch += 1;
        }
        self.persist(records).await?;
        if persistent && !(unconfirmed && session_present) {
            self.save_session_in_cluster(&session);
        }
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
        // What came through shared subscriptions and was not acknowledged
        // goes to another member of the group.
        let mut shared = Vec::new();
        if ours {
            state.attachment = None;
            // Offline queues hold no publisher back.
            state.queue.release_publishers();
            state.disconnected_at = Some(Instant::now());
            state.epoch += 1;
            shared = state.take_shared_unacknowledged(&self.budget);
        }
        let epoch = state.epoch;
        let persistent = state.persistent;
        drop(state);
        if !shared.is_empty() {
            let broker = self.clone();
            let session = session.clone();
            tokio::spawn(async move { broker.redeliver_shared(&session, shared).await });
        }
        if let Some(cluster) = self.cluster().filter(|_| ours) {
            let cluster = cluster.clone();
            let broker = self.clone();
            let session = session.clone();
            let guard = persistent.then(|| cluster.hand_off_started());
            tokio::spawn(async move {
                let _guard = guard;
                broker.client_left(&session, persistent).await;
            });
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

    pub(super) fn schedule_expiry(
        self: &Arc<Self>,
        session: Arc<Session>,
        epoch: u64,
        after: Duration,
    ) {
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

    pub(super) fn publish_will(self: &Arc<Self>, will: Will) {
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

    /// Ends a session: its subscriptions leave the router, its queue is
    /// dropped, a pending delayed will is published now.
    pub(super) fn remove_session(&self, session: &Arc<Session>, records: &mut Vec<Record>) {
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
    /// longer exists, and fleet devices now revoked or whose fleet is gone
    /// (5.0 reason 0x87). Clients authenticated by a client certificate and
    /// anonymous clients are left alone. Returns how many.
    pub fn disconnect_removed_users(&self) -> usize {
        let fleets = self.access.fleets();
        self.metrics.fleets.init(fleets.names());
        let users = self.access.has_user_files();
        let auth = self.access.authenticator();
        let mut kicked = 0;
        for (session, client) in self.connected_clients() {
            let info = &client.info;
            if let Some(device) = &info.fleet {
                let Err(why) = fleets.check_connected(device) else {
                    continue;
                };
                self.logger.info(&format!(
                    "Client {} disconnected: device {} of fleet {} ({}).",
                    session.client_id,
                    device.device_id,
                    device.fleet,
                    why.replace('_', " ")
                ));
                if self.kick(&session.client_id, ReasonCode::NOT_AUTHORIZED) {
                    self.metrics
                        .fleets
                        .disconnects
                        .with_label_values(&[&device.fleet, why])
                        .inc();
                    kicked += 1;
                }
                continue;
            }
            if !users {
                continue;
            }
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
}
