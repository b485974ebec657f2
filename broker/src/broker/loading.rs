//! Loading a persistent session from the cluster when its client comes
//! back on this node: its record and queue, into the session (what comes
//! to the queue after that: `late_writes`).

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use crate::cluster::clients::Claimed;
use crate::cluster::queue::SessionHead;
use crate::cluster::ready::{self, ReadyEntry, ReadyKind};
use crate::cluster::sessions::QueueEntry;
use crate::queue::{DropReason, Enqueued, QueueLimits};
use crate::router::{Subscription, SubscriptionTable};
use crate::session::{Delivery, Session};

use super::late_writes::Loading;
use super::{Broker, PublishError};

impl Broker {
    /// Loads a persistent session from the cluster into `session` (new and
    /// empty): subscriptions, then its messages in order. Returns whether
    /// the cluster had it. Messages other nodes still write for it during
    /// [`crate::cluster::sessions::HANDOVER_GRACE`] follow, and so does what the previous node
    /// (`claimed`) hands over late and forwards until it says it is done.
    /// `head` is the session's record and queue's last sequence when they
    /// were read alongside the claim (of use only if the client was here
    /// last).
    pub(super) async fn load_from_cluster(
        self: &Arc<Self>,
        session: &Arc<Session>,
        limits: QueueLimits,
        claimed: Claimed,
        head: Option<SessionHead>,
    ) -> Result<bool, PublishError> {
        let Some(cluster) = self.cluster().cloned() else {
            return Ok(false);
        };
        if !cluster.is_ready() {
            // Its session may be there: refuse rather than start it afresh.
            return Err(crate::cluster::ClusterError::Unavailable.into());
        }
        // A copy of its queue kept here is of use only when no other node
        // had the session since (otherwise `load_session` drops it). When
        // nobody even wrote the client's entry since it left here, the
        // copy is the session: nothing is read before the CONNACK, and
        // what the queue holds beyond the copy is read right after
        // (`late_writes`), before the session interest gives way.
        let from_copy = claimed
            .unchanged
            .then(|| cluster.load_from_copy(&session.client_id))
            .flatten();
        let tail_unread = from_copy.is_some();
        let loaded = match from_copy {
            Some(loaded) => loaded,
            None => {
                cluster
                    .load_session(
                        &session.client_id,
                        claimed.was_here,
                        head.filter(|_| claimed.was_here),
                    )
                    .await?
            }
        };
        let Some(record) = loaded.record else {
            return Ok(false);
        };
        for sub in &record.subscriptions {
            let subscription = Subscription {
                options: ready::subscription_options(sub),
                identifier: sub.identifier,
            };
            self.subscribe_loaded(session, &sub.filter, subscription);
        }
        let matcher = ready::matcher(&record.subscriptions);
        let mut entries = loaded.ready;
        entries.extend(
            loaded
                .entries
                .into_iter()
                .map(|entry| ready::ready(entry, &matcher)),
        );
        cluster.note_consumed(&session.client_id, loaded.last_seq);
        // Until the hand-over is over, what it is given is noted (the same
        // message may come routed and through its queue).
        let handover = cluster.given().start(&session.client_id);
        let count = entries.len();
        let unconfirmed = claimed.unconfirmed;
        let queued = Queued {
            deliveries: loaded.queued,
            bytes: loaded.queued_bytes,
        };
        let restored = self.restore_ready(session, entries, queued, &loaded.ids, &limits);
        self.logger.info(&format!(
            "Session of {} loaded from the cluster with {} subscription(s) and {count} message(s) ({restored}){}.",
            session.client_id,
            record.subscriptions.len(),
            match (loaded.from_copy, tail_unread, unconfirmed.is_some()) {
                (true, true, true) => {
                    ", its queue from this node's copy (claimed with nothing asked of NATS)"
                }
                (true, true, false) => ", its queue from this node's copy (claimed in one write)",
                (true, false, _) => ", its queue from this node's copy",
                (false, _, _) => "",
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
            unconfirmed,
            matcher,
            seen: loaded.ids,
            handover,
            read_up_to: loaded.last_seq,
            tail_unread,
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

    /// Puts queue entries read from the cluster into `session` (see
    /// [`Broker::restore_ready`]), matched against the session's
    /// subscriptions as `matcher` holds them.
    pub(super) fn restore_entries(
        &self,
        session: &Session,
        matcher: &SubscriptionTable<u8>,
        entries: Vec<QueueEntry>,
        limits: &QueueLimits,
    ) -> Restored {
        let ids: HashSet<u64> = entries.iter().map(|entry| entry.id).collect();
        let entries = entries
            .into_iter()
            .map(|entry| ready::ready(entry, matcher))
            .collect();
        self.restore_ready(session, entries, Queued::default(), &ids, limits)
    }

    /// Puts queue entries made ready for `session` into it: in-flight ones
    /// with their packet ids, the others after, then `premade` (deliveries
    /// queued already, in order). `ids` are the ids of both. Returns what
    /// became of them; a queue that refuses one counts and logs the drop.
    pub(super) fn restore_ready(
        &self,
        session: &Session,
        entries: Vec<ReadyEntry>,
        premade: Queued,
        ids: &HashSet<u64>,
        limits: &QueueLimits,
    ) -> Restored {
        let mut restored = Restored::default();
        // Routed here as well during the hand-over, and given to it then.
        let had = match self.cluster() {
            Some(cluster) => cluster.given().note_all(&session.client_id, ids),
            None => HashSet::new(),
        };
        let now = Instant::now();
        let mut state = session.state.lock();
        let mut dropped = Vec::new();
        // Queued together after the loop: most often all at once.
        let mut queued = VecDeque::with_capacity(entries.len());
        let mut queued_bytes = 0;
        for entry in entries {
            if !had.is_empty() && had.contains(&entry.id) {
                restored.had += 1;
                continue;
            }
            match entry.kind {
                ReadyKind::Unmatched => restored.unmatched += 1,
                // Expired ones are let go when their turn comes.
                ReadyKind::Queued(delivery) => {
                    queued_bytes += entry.bytes;
                    queued.push_back(delivery);
                }
                ReadyKind::InFlight { delivery, .. } if delivery.msg.is_expired(now) => {
                    restored.expired += 1;
                }
                ReadyKind::InFlight {
                    packet_id,
                    delivery,
                    released,
                } => {
                    if !state.inflight.contains(packet_id) {
                        state.restore_inflight(packet_id, delivery, released);
                        restored.in_flight += 1;
                    } else if released {
                        // Received by the client, only its PUBREL lost:
                        // the client has the message.
                        self.logger.warning(&format!(
                            "Session of {}: the release of QoS 2 message {} was not sent (its packet id is in use again).",
                            session.client_id, packet_id
                        ));
                    } else {
                        // The connection uses that packet id already: the
                        // client never acknowledged this one, so it goes
                        // again under a new one.
                        queued_bytes += entry.bytes;
                        queued.push_back(delivery);
                    }
                }
            }
        }
        let Queued {
            deliveries: mut premade,
            bytes: mut premade_bytes,
        } = premade;
        if !had.is_empty() {
            let before = premade.len();
            premade.retain(|delivery| {
                let given = delivery
                    .msg
                    .route_id
                    .get()
                    .is_some_and(|id| had.contains(id));
                if given {
                    premade_bytes -= crate::queue::size_of(delivery);
                }
                !given
            });
            restored.had += before - premade.len();
        }
        if queued.is_empty() {
            // Most often all of them: the queue moves whole.
            queued = premade;
            queued_bytes = premade_bytes;
        } else {
            queued.extend(premade);
            queued_bytes += premade_bytes;
        }
        let count = queued.len();
        let refused = match state
            .queue
            .offer_all(queued, queued_bytes, limits, &self.budget)
        {
            Ok(()) => {
                restored.queued += count;
                VecDeque::new()
            }
            // Not all fit: one at a time, as a publish would.
            Err(refused) => refused,
        };
        for delivery in refused {
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

/// Deliveries made ready to be queued, in order, and their bytes as a
/// session's queue counts them ([`crate::queue::size_of`]).
#[derive(Default)]
pub(super) struct Queued {
    pub deliveries: VecDeque<Delivery>,
    pub bytes: usize,
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
    /// In flight and past their message expiry (queued ones are let go
    /// when their turn comes).
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
    use crate::codec::{QoS, SubscriptionOptions};
    use crate::config::{AuthConfig, Config, Limits, LogConfig};
    use crate::log::Logger;
    use crate::message::Message;
    use crate::router::Subscription;

    /// A broker without a cluster, logging nowhere.
    fn test_broker() -> Broker {
        let access = Access::load(&AuthConfig::default()).expect("no auth files");
        let (logger, _) = Logger::capture(&LogConfig::default());
        Broker::new(Config::local_default(), logger, None, access)
    }

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

    #[test]
    fn restored_entries_that_fit_are_queued_in_order_and_in_flight_ones_keep_their_ids() {
        let broker = test_broker();
        let session = Session::new(Arc::from("mover"), 60, true);
        let matcher = ready::matcher_of("m/#", 2);
        let mut sent = entry(1, "m/0", 1);
        sent.sent = Some(crate::cluster::sessions::SentState {
            packet_id: 9,
            qos: 1,
            retain: false,
            subscription_identifiers: Vec::new(),
            released: false,
        });
        let entries = vec![
            sent,
            entry(2, "m/1", 1),
            entry(3, "x", 1),
            entry(4, "m/2", 2),
        ];
        let limits = QueueLimits::from_limits(&Limits::default());
        let restored = broker.restore_entries(&session, &matcher, entries, &limits);
        assert_eq!(
            restored.to_string(),
            "2 queued, 1 in flight, 1 matching no subscription"
        );
        let state = session.state.lock();
        assert!(state.inflight.contains(9));
        let queued: Vec<(&str, QoS)> = state.queue.iter().map(|d| (&*d.msg.topic, d.qos)).collect();
        assert_eq!(
            queued,
            [("m/1", QoS::AtLeastOnce), ("m/2", QoS::ExactlyOnce)]
        );
        assert_eq!(state.queue.bytes(), "m/1x".len() + "m/2x".len());
    }

    #[test]
    fn premade_deliveries_are_queued_whole_in_their_order() {
        let broker = test_broker();
        let session = Session::new(Arc::from("mover"), 60, true);
        let matcher = ready::matcher_of("m/#", 1);
        let mut premade = Queued::default();
        for id in 1..=3 {
            let ReadyKind::Queued(delivery) =
                ready::ready(entry(id, &format!("m/{id}"), 1), &matcher).kind
            else {
                panic!("entry {id} is to be queued");
            };
            premade.bytes += crate::queue::size_of(&delivery);
            premade.deliveries.push_back(delivery);
        }
        let ids: HashSet<u64> = (1..=3).collect();
        let limits = QueueLimits::from_limits(&Limits::default());
        let restored = broker.restore_ready(&session, Vec::new(), premade, &ids, &limits);
        assert_eq!(restored.to_string(), "3 queued, 0 in flight");
        let topics: Vec<String> = session
            .state
            .lock()
            .queue
            .iter()
            .map(|d| d.msg.topic.to_string())
            .collect();
        assert_eq!(topics, ["m/1", "m/2", "m/3"]);
        assert_eq!(session.state.lock().queue.bytes(), 3 * "m/1x".len());
    }
}
