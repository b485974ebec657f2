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
use crate::queue::{DropReason, Enqueued, QueueLimits};
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
        let restored = self.restore_entries(session, &matcher, loaded.entries, &limits);
        self.logger.info(&format!(
            "Session of {} loaded from the cluster with {} subscription(s) and {count} message(s) ({restored}).",
            session.client_id,
            record.subscriptions.len()
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
                        let restored = self.restore_entries(session, matcher, entries, limits);
                        self.logger.info(&format!(
                            "Session of {client_id}: forwarded by node {previous}: {restored}."
                        ));
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
        let written = late.entries.len();
        let kept = self
            .holds_loaded(cluster, session, |session| {
                if written > 0 {
                    let restored = self.restore_entries(session, matcher, late.entries, limits);
                    self.logger.info(&format!(
                        "Session of {client_id}: {written} message(s) written to its queue while it moved ({restored})."
                    ));
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
    /// flags the session's subscriptions give them. Returns what became of
    /// them; a queue that refuses one counts and logs the drop.
    fn restore_entries(
        &self,
        session: &Session,
        matcher: &SubscriptionTable<u8>,
        entries: Vec<QueueEntry>,
        limits: &QueueLimits,
    ) -> Restored {
        let mut restored = Restored::default();
        let mut state = session.state.lock();
        let mut dropped = Vec::new();
        for entry in entries {
            let msg = Message::from_stored(entry.message);
            let _ = msg.route_id.set(entry.id);
            let msg = Arc::new(msg);
            if msg.is_expired(Instant::now()) {
                restored.expired += 1;
                continue;
            }
            let delivery = match entry.sent {
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
                        restored.in_flight += 1;
                        continue;
                    }
                    if sent.released {
                        // Received by the client, only its PUBREL lost:
                        // the client has the message.
                        self.logger.warning(&format!(
                            "Session of {}: the release of QoS 2 message {} was not sent (its packet id is in use again).",
                            session.client_id, sent.packet_id
                        ));
                        continue;
                    }
                    // The connection uses that packet id already: the
                    // client never acknowledged this one, so it goes again
                    // under a new one.
                    delivery
                }
                None => {
                    let mut routes: Vec<Route<u8>> = Vec::new();
                    matcher.route(&msg.topic, None, &|_| true, &mut routes);
                    let Some(route) = routes.into_iter().next() else {
                        restored.unmatched += 1;
                        continue;
                    };
                    let qos = msg.qos.min(route.qos);
                    if qos == QoS::AtMostOnce {
                        restored.unmatched += 1;
                        continue;
                    }
                    Delivery {
                        qos,
                        retain: msg.retain && route.retain_as_published,
                        subscription_identifiers: route.subscription_identifiers,
                        msg,
                        shared_group: None,
                        seq: 0,
                    }
                }
            };
            match state.enqueue(delivery, limits, None, &self.budget) {
                Enqueued::Queued | Enqueued::QueuedPause => restored.queued += 1,
                Enqueued::QueuedDroppedOldest(_) => {
                    restored.queued += 1;
                    let log_due = state.queue.note_drop(Instant::now(), limits);
                    dropped.push((DropReason::QueueFull, log_due));
                }
                Enqueued::Dropped(reason) => {
                    restored.dropped += 1;
                    let log_due = state.queue.note_drop(Instant::now(), limits);
                    dropped.push((reason, log_due));
                }
            }
        }
        drop(state);
        for (reason, log_due) in dropped {
            self.dropped(&session.client_id, reason, log_due);
        }
        session.notify.notify_one();
        restored
    }
}

/// What [`Broker::restore_entries`] did with the queue entries it was given.
#[derive(Debug, Default)]
struct Restored {
    /// Queued to be sent.
    queued: usize,
    /// Back in flight under their packet ids (sent before, not acknowledged).
    in_flight: usize,
    /// Matching none of the session's subscriptions (or only at QoS 0).
    unmatched: usize,
    /// Past their message expiry.
    expired: usize,
    /// Refused by the session's queue (counted and logged as drops).
    dropped: usize,
}

impl std::fmt::Display for Restored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} queued, {} in flight", self.queued, self.in_flight)?;
        if self.unmatched > 0 {
            write!(f, ", {} matching no subscription", self.unmatched)?;
        }
        if self.expired > 0 {
            write!(f, ", {} expired", self.expired)?;
        }
        if self.dropped > 0 {
            write!(f, ", {} dropped", self.dropped)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::Access;
    use crate::config::{AuthConfig, Config, Limits, LogConfig};
    use crate::log::Logger;

    fn entry(id: u64, topic: &str, qos: u8) -> QueueEntry {
        let mut message = Message::internal(topic, "x", false).to_stored();
        message.qos = qos;
        QueueEntry {
            id,
            message,
            sent: None,
        }
    }

    #[test]
    fn restored_entries_are_counted_and_a_full_queue_drop_is_logged() {
        let (logger, lines) = Logger::capture(&LogConfig {
            timestamps: false,
            ..LogConfig::default()
        });
        let access = Access::load(&AuthConfig::default()).expect("no auth files");
        let broker = Broker::new(Config::local_default(), logger, None, access);
        let session = Session::new(Arc::from("mover"), 60, true);
        let matcher = SubscriptionTable::new();
        matcher.subscribe(
            0u8,
            "m/#",
            Subscription {
                options: SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..SubscriptionOptions::default()
                },
                identifier: None,
            },
        );
        let limits = QueueLimits {
            max_messages: 2,
            ..QueueLimits::from_limits(&Limits::default())
        };
        let entries = vec![
            entry(1, "m/1", 1),
            entry(2, "other/1", 1),
            entry(3, "m/2", 0),
            entry(4, "m/3", 1),
            entry(5, "m/4", 1),
        ];
        let restored = broker.restore_entries(&session, &matcher, entries, &limits);
        assert_eq!(
            (restored.queued, restored.unmatched, restored.dropped),
            (2, 2, 1)
        );
        assert_eq!(
            restored.to_string(),
            "2 queued, 0 in flight, 2 matching no subscription, 1 dropped"
        );
        assert_eq!(session.state.lock().queue.len(), 2);
        assert_eq!(
            broker
                .metrics
                .dropped
                .with_label_values(&["queue_full"])
                .get(),
            1
        );
        assert!(
            lines.lock().iter().any(|l| l.contains("mover")),
            "the drop is logged: {:?}",
            lines.lock()
        );
    }
}
