//! Loading a persistent session from the cluster when its client comes
//! back on this node: its record and queue, then what other nodes still
//! write to the queue while they learn that this node has it, and what the
//! node it left still forwards until that node says it is done.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cluster::clients::Claimed;
use crate::cluster::sessions::{QueueEntry, HANDOVER_GRACE};
use crate::codec::{QoS, SubscriptionOptions};
use crate::message::Message;
use crate::queue::QueueLimits;
use crate::router::{Route, Subscription, SubscriptionTable};
use crate::session::{Delivery, Session};

use super::{Broker, PublishError};

/// How long the node a client went to reads what the previous node
/// forwards, at most (a little more than that node may take).
const FORWARDING_WAIT: Duration = Duration::from_secs(60);

/// A session being loaded from the cluster, for the follow-up passes.
struct Loading {
    cluster: Arc<crate::cluster::Cluster>,
    session: Arc<Session>,
    /// Its subscriptions, to give queued messages their QoS and flags.
    matcher: SubscriptionTable<u8>,
    /// Cluster ids of the messages it has.
    seen: HashSet<u64>,
    /// The queue's stream sequence read up to.
    read_up_to: u64,
    limits: QueueLimits,
    /// The previous node (`<node>/<run>`), until it has said it stopped
    /// forwarding.
    previous: Option<String>,
    /// The filters of the record it was loaded with (its session interest
    /// in the cluster).
    filters: Vec<String>,
}

impl Broker {
    /// Loads a persistent session from the cluster into `session` (new and
    /// empty): subscriptions, then its messages in order. Returns whether
    /// the cluster had it. Messages other nodes still write for it during
    /// [`HANDOVER_GRACE`] follow, and so does what the previous node
    /// (`claimed`) hands over late and forwards until it says it is done.
    pub(super) async fn load_from_cluster(
        self: &Arc<Self>,
        session: &Arc<Session>,
        limits: QueueLimits,
        claimed: Claimed,
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
        // interest, and what the previous node still forwards.
        let previous = claimed
            .previous
            .filter(|holder| !loaded.forwarding_ended.contains(holder));
        let loading = Loading {
            cluster,
            session: session.clone(),
            matcher,
            seen: ids,
            read_up_to: loaded.last_seq,
            limits,
            previous,
            filters: record
                .subscriptions
                .iter()
                .map(|s| s.filter.clone())
                .collect(),
        };
        tokio::spawn(self.clone().finish_loading(loading, claimed.late));
        Ok(true)
    }

    /// The follow-up of [`Broker::load_from_cluster`]: one pass of
    /// [`Broker::take_over_queue`]; then, when the previous node may still
    /// forward messages to the session, its late hand-over and what it
    /// forwards until it says it is done.
    async fn finish_loading(
        self: Arc<Self>,
        mut loading: Loading,
        late: Option<crate::cluster::clients::LateRelease>,
    ) {
        let (read_up_to, ended) = self.take_over_queue(&mut loading).await;
        loading.read_up_to = read_up_to;
        if let Some(late) = late {
            late.await;
        }
        if let Some(previous) = loading.previous.take() {
            if ended.contains(&previous) {
                self.logger.info(&format!(
                    "Session of {}: what node {previous} forwarded came with the rest (it is done).",
                    loading.session.client_id
                ));
            } else {
                self.follow_forwarding(&loading, &previous).await;
            }
        }
    }

    /// Reads what node `previous` (`<node>/<run>`) still forwards into the
    /// session's queue, into the session, until that node says it is done
    /// ([`Broker::finish_forwarding`]), dies, or [`FORWARDING_WAIT`]
    /// passes; or until the client moves on (the next node reads the
    /// rest).
    async fn follow_forwarding(&self, loading: &Loading, previous: &str) {
        let Loading {
            cluster,
            session,
            matcher,
            limits,
            ..
        } = loading;
        let mut seen = loading.seen.clone();
        let client_id = &session.client_id;
        let mut tail = match cluster
            .tail_queue(client_id, loading.read_up_to, previous.to_string())
            .await
        {
            Ok(tail) => tail,
            Err(e) => {
                self.logger.warning(&format!(
                    "Cluster: cannot follow what node {previous} still forwards to {client_id}: {e}."
                ));
                return;
            }
        };
        let deadline = tokio::time::Instant::now() + FORWARDING_WAIT;
        let mut kept = true;
        let mut read = 0;
        let mut ended = false;
        loop {
            let entries;
            (entries, ended) = match tail.next(&mut seen, &self.logger).await {
                Ok(next) => next,
                Err(e) => {
                    self.logger.warning(&format!(
                        "Cluster: cannot follow what node {previous} still forwards to {client_id}: {e}."
                    ));
                    break;
                }
            };
            read += entries.len();
            kept = self
                .holds_loaded(cluster, session, |session| {
                    if !entries.is_empty() {
                        self.restore_entries(session, matcher, entries, limits);
                    }
                })
                .await;
            if ended || !kept || !cluster.is_holder_alive(previous) {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                self.logger.warning(&format!(
                    "Cluster: node {previous} did not say within {} s that it stopped forwarding to {client_id}; what it writes later waits for the next load.",
                    FORWARDING_WAIT.as_secs()
                ));
                break;
            }
        }
        let how = if ended {
            "it is done"
        } else if !kept {
            "the client moved on"
        } else {
            "it is gone or late"
        };
        self.logger.info(&format!(
            "Session of {client_id}: {read} message(s) node {previous} forwarded read ({how})."
        ));
        if kept && tail.last_seq > loading.read_up_to {
            cluster.purge_queue_up_to(client_id, tail.last_seq).await;
        }
    }

    /// The session's interest gives way to this node's, and after
    /// [`HANDOVER_GRACE`] what other nodes queued for it (stream sequence
    /// above `after`, not in `seen`) joins it. The client may have moved
    /// on meanwhile; then what a later hand-off wrote is left alone (the
    /// NATS calls run without the connect lock, which is only taken to
    /// check who holds the session). Returns the stream sequence read up
    /// to.
    /// Also returns the forwarding ends read.
    async fn take_over_queue(&self, loading: &mut Loading) -> (u64, Vec<String>) {
        let Loading {
            cluster,
            session,
            matcher,
            seen,
            read_up_to: after,
            limits,
            filters,
            ..
        } = loading;
        let (cluster, session, after) = (&**cluster, &*session, *after);
        let client_id = session.client_id.clone();
        match cluster.interest_written_revision().await {
            Ok(written) => {
                if self.holds_loaded(cluster, session, |_| ()).await {
                    cluster
                        .remove_session_interest_up_to(&client_id, filters, written)
                        .await;
                }
            }
            Err(e) => self.logger.warning(&format!(
                "Cluster: the session interest of {client_id} stays: {e}."
            )),
        }
        tokio::time::sleep(HANDOVER_GRACE).await;
        let late = cluster.read_late(&client_id, seen, after).await;
        let read_up_to = late.last_seq;
        if !late.entries.is_empty() {
            self.logger.info(&format!(
                "Session of {client_id}: {} message(s) written to its queue while it moved.",
                late.entries.len()
            ));
        }
        let kept = self
            .holds_loaded(cluster, session, |session| {
                if !late.entries.is_empty() {
                    self.restore_entries(session, matcher, late.entries, limits);
                }
            })
            .await;
        // Purged (with what was loaded) only when this node took them;
        // otherwise the next load reads them.
        if kept && read_up_to > 0 {
            cluster.purge_queue_up_to(&client_id, read_up_to).await;
        }
        (read_up_to, late.forwarding_ended)
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
                    if !state.inflight.contains(sent.packet_id) {
                        state.restore_inflight(sent.packet_id, delivery, sent.released);
                    } else if !sent.released {
                        // The connection uses that packet id already: the
                        // client never acknowledged this one, so it goes
                        // again under a new one.
                        let _ = state.enqueue(delivery, limits, None, &self.budget);
                    } else {
                        // Received by the client, only its PUBREL lost:
                        // the client has the message.
                        self.logger.warning(&format!(
                            "Session of {}: the release of QoS 2 message {} was not sent (its packet id is in use again).",
                            session.client_id, sent.packet_id
                        ));
                    }
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
}
