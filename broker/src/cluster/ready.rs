//! A queue entry made ready for its session: its message built, and
//! matched against the session's subscriptions, so that putting it back
//! in the session ([`crate::broker::Broker::restore_ready`]) only queues
//! it. The copy a node keeps of a queue ([`super::mirror`]) makes its
//! entries ready as they arrive, while the client is away.

use std::sync::Arc;

use crate::codec::{QoS, SubscriptionOptions};
use crate::message::Message;
use crate::router::{Route, Subscription, SubscriptionTable};
use crate::session::Delivery;
use crate::store::StoredSubscription;

use super::sessions::QueueEntry;

/// A queue entry, ready to go back into its session.
#[derive(Debug)]
pub struct ReadyEntry {
    /// The message's cluster id.
    pub id: u64,
    pub kind: ReadyKind,
    /// Its bytes as a session's queue counts them
    /// ([`crate::queue::size_of`]; 0 when unmatched): counted while the
    /// message is at hand, so that restoring a long queue does not read
    /// every message again.
    pub bytes: usize,
}

#[derive(Debug)]
pub enum ReadyKind {
    /// Sent to the client before and not acknowledged: back in flight
    /// under its packet id.
    InFlight {
        packet_id: u16,
        delivery: Delivery,
        /// QoS 2: PUBREC received, PUBREL sent.
        released: bool,
    },
    /// To be queued.
    Queued(Delivery),
    /// Matching none of the session's subscriptions, or only at QoS 0.
    Unmatched,
}

/// The matcher of a session with `subscriptions` (as its record keeps
/// them): what [`ready`] matches queued messages against.
pub fn matcher(subscriptions: &[StoredSubscription]) -> SubscriptionTable<u8> {
    let matcher = SubscriptionTable::new();
    for sub in subscriptions {
        matcher.subscribe(
            0u8,
            &sub.filter,
            Subscription {
                options: subscription_options(sub),
                identifier: sub.identifier,
            },
        );
    }
    matcher
}

/// The options of a subscription as its record keeps them.
pub fn subscription_options(sub: &StoredSubscription) -> SubscriptionOptions {
    SubscriptionOptions {
        qos: QoS::from_u8(sub.qos).unwrap_or(QoS::AtMostOnce),
        no_local: sub.no_local,
        retain_as_published: sub.retain_as_published,
        retain_handling: sub.retain_handling,
    }
}

/// A session's subscriptions as [`matcher`] holds them: `filter` alone,
/// at `qos` (for tests).
#[cfg(test)]
pub fn matcher_of(filter: &str, qos: u8) -> SubscriptionTable<u8> {
    matcher(&[StoredSubscription {
        filter: filter.to_string(),
        qos,
        no_local: false,
        retain_as_published: false,
        retain_handling: 0,
        identifier: None,
    }])
}

/// Whether `entry` goes to the session at QoS 2.
pub fn is_exactly_once(entry: &ReadyEntry) -> bool {
    match &entry.kind {
        ReadyKind::InFlight { delivery, .. } | ReadyKind::Queued(delivery) => {
            delivery.qos == QoS::ExactlyOnce
        }
        ReadyKind::Unmatched => false,
    }
}

/// Makes `entry` ready for the session `matcher` stands for: an entry
/// sent before keeps how it was sent; any other goes with the QoS and
/// flags of the first subscription it matches.
pub fn ready(entry: QueueEntry, matcher: &SubscriptionTable<u8>) -> ReadyEntry {
    let id = entry.id;
    let msg = Message::from_stored(entry.message);
    let _ = msg.route_id.set(id);
    let msg = Arc::new(msg);
    let kind = match entry.sent {
        Some(sent) => ReadyKind::InFlight {
            packet_id: sent.packet_id,
            delivery: Delivery {
                qos: QoS::from_u8(sent.qos).unwrap_or(QoS::AtLeastOnce),
                retain: sent.retain,
                subscription_identifiers: sent.subscription_identifiers,
                msg,
                shared_group: None,
                seq: 0,
            },
            released: sent.released,
        },
        None => {
            let mut routes: Vec<Route<u8>> = Vec::new();
            matcher.route(&msg.topic, None, &|_| true, &mut routes);
            match routes.into_iter().next() {
                Some(route) if msg.qos.min(route.qos) != QoS::AtMostOnce => {
                    ReadyKind::Queued(Delivery {
                        qos: msg.qos.min(route.qos),
                        retain: msg.retain && route.retain_as_published,
                        subscription_identifiers: route.subscription_identifiers,
                        msg,
                        shared_group: None,
                        seq: 0,
                    })
                }
                _ => ReadyKind::Unmatched,
            }
        }
    };
    let bytes = match &kind {
        ReadyKind::InFlight { delivery, .. } | ReadyKind::Queued(delivery) => {
            crate::queue::size_of(delivery)
        }
        ReadyKind::Unmatched => 0,
    };
    ReadyEntry { id, kind, bytes }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::sessions::SentState;

    fn subscription(filter: &str, qos: u8, identifier: Option<u32>) -> StoredSubscription {
        StoredSubscription {
            filter: filter.to_string(),
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: 0,
            identifier,
        }
    }

    fn entry(id: u64, topic: &str, qos: u8, sent: Option<SentState>) -> QueueEntry {
        let mut message = Message::internal(topic, "x", true).to_stored();
        message.qos = qos;
        QueueEntry { id, message, sent }
    }

    #[test]
    fn a_queued_entry_takes_the_qos_and_flags_of_the_subscription_it_matches() {
        let matcher = matcher(&[
            subscription("m/#", 1, Some(4)),
            subscription("low/#", 0, None),
        ]);
        let ready_entry = ready(entry(9, "m/1", 2, None), &matcher);
        assert_eq!(ready_entry.id, 9);
        let ReadyKind::Queued(delivery) = ready_entry.kind else {
            panic!("queued: {:?}", ready_entry.kind);
        };
        assert_eq!(crate::queue::size_of(&delivery), "m/1".len() + "x".len());
        assert_eq!(delivery.qos, QoS::AtLeastOnce, "min of 2 and 1");
        assert!(!delivery.retain, "not retain-as-published");
        assert_eq!(delivery.subscription_identifiers, vec![4]);
        assert_eq!(delivery.msg.route_id.get(), Some(&9));
        assert!(matches!(
            ready(entry(10, "low/1", 1, None), &matcher).kind,
            ReadyKind::Unmatched
        ));
        assert!(matches!(
            ready(entry(11, "other", 1, None), &matcher).kind,
            ReadyKind::Unmatched
        ));
    }

    #[test]
    fn an_entry_sent_before_keeps_how_it_was_sent() {
        let sent = SentState {
            packet_id: 7,
            qos: 2,
            retain: true,
            subscription_identifiers: vec![1],
            released: true,
        };
        let ready_entry = ready(entry(3, "no/subscription", 2, Some(sent)), &matcher(&[]));
        let ReadyKind::InFlight {
            packet_id,
            delivery,
            released,
        } = ready_entry.kind
        else {
            panic!("in flight: {:?}", ready_entry.kind);
        };
        assert_eq!((packet_id, released), (7, true));
        assert_eq!((delivery.qos, delivery.retain), (QoS::ExactlyOnce, true));
        assert_eq!(delivery.subscription_identifiers, vec![1]);
    }
}
