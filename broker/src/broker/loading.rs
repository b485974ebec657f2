//! Loading a persistent session from the cluster when its client comes
//! back on this node: its record and queue, into the session (what comes
//! to the queue after that: `late_writes`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use crate::cluster::clients::Claimed;
use crate::cluster::sessions::QueueEntry;
use crate::codec::{QoS, SubscriptionOptions};
use crate::message::Message;
use crate::queue::{DropReason, Enqueued, QueueLimits};
use crate::router::{Route, Subscription, SubscriptionTable};
use crate::session::{Delivery, Session};

use super::late_writes::Loading;
use super::{Broker, PublishError};

impl Broker {
    /// Loads a persistent session from the cluster into `session` (new and
    /// empty): subscriptions, then its messages in order. Returns whether
    /// the cluster had it. Messages other nodes still write for it during
    /// [`crate::cluster::sessions::HANDOVER_GRACE`] follow, and so does what the previous node
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
        // A copy of its queue kept here is of use only when no other node
        // had the session since.
        if !claimed.was_here {
            cluster.drop_mirror(&session.client_id);
        }
        let loaded = cluster
            .load_session(&session.client_id, claimed.was_here)
            .await?;
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
        cluster.note_consumed(&session.client_id, loaded.last_seq);
        // Until the hand-over is over, what it is given is noted (the same
        // message may come routed and through its queue).
        let handover = cluster.given().start(&session.client_id);
        let count = loaded.entries.len();
        let restored = self.restore_entries(session, &matcher, loaded.entries, &limits);
        self.logger.info(&format!(
            "Session of {} loaded from the cluster with {} subscription(s) and {count} message(s) ({restored}){}.",
            session.client_id,
            record.subscriptions.len(),
            if loaded.from_copy {
                ", its queue from this node's copy"
            } else {
                ""
            }
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
            handover,
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

    /// Puts queue entries read from the cluster into `session`: in-flight
    /// ones with their packet ids, the others after, with the QoS and
    /// flags the session's subscriptions give them. Returns what became of
    /// them; a queue that refuses one counts and logs the drop.
    pub(super) fn restore_entries(
        &self,
        session: &Session,
        matcher: &SubscriptionTable<u8>,
        entries: Vec<QueueEntry>,
        limits: &QueueLimits,
    ) -> Restored {
        let mut restored = Restored::default();
        let given = self.cluster().map(|cluster| cluster.given());
        let mut state = session.state.lock();
        let mut dropped = Vec::new();
        for entry in entries {
            if given.is_some_and(|given| !given.note(&session.client_id, entry.id)) {
                // Routed here as well, and given to it then.
                restored.had += 1;
                continue;
            }
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
pub(super) struct Restored {
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
    /// Given to the session already (routed to it as well).
    had: usize,
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
        if self.had > 0 {
            write!(f, ", {} it had", self.had)?;
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
