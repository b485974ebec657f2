//! Delivering a batch of QoS 0 messages another node routed here
//! (`cluster/batch.rs`): each to this node's matching sessions, as
//! [`Broker::deliver_routed`] does, without a future per message, and
//! routing each topic of the batch once.

use std::collections::HashMap;
use std::sync::Arc;

use crate::codec::QoS;
use crate::message::Message;
use crate::queue::QueueLimits;
use crate::router::Route;
use crate::session::{DeliveryFlags, Session};
use crate::store::Record;

use super::{Broker, ClientKey};

/// How many topics a [`RoutedBatch`] remembers the routes of; past that
/// it forgets them all and starts over (a batch of ever new topics).
const REMEMBERED_TOPICS: usize = 256;

/// Where a message goes here: its route, and the route's session.
type LocalRoute = (Route<ClientKey>, Arc<Session>);

/// One batch of routed QoS 0 messages being delivered: the routes of the
/// topics seen in it so far, with their sessions. A batch is delivered at
/// once, so a subscription made meanwhile counts from the next batch, as
/// it would for a message routed a moment earlier.
pub struct RoutedBatch {
    routes: HashMap<Arc<str>, Vec<LocalRoute>, ahash::RandomState>,
    limits: QueueLimits,
    /// What the store must record (durable sessions' deliveries).
    pub records: Vec<Record>,
}

impl Broker {
    /// Starts delivering a batch of routed QoS 0 messages.
    pub fn routed_batch(&self) -> RoutedBatch {
        RoutedBatch {
            routes: HashMap::default(),
            limits: self.queue_limits(),
            records: Vec::new(),
        }
    }

    /// Delivers one QoS 0 message of `batch` routed here from another node
    /// to this node's sessions: its ordinary subscriptions, and the shared
    /// ones of `groups`. Returns how many sessions it was given to.
    pub fn deliver_routed_now(
        &self,
        msg: &Arc<Message>,
        groups: &[String],
        batch: &mut RoutedBatch,
    ) -> usize {
        debug_assert_eq!(msg.qos, QoS::AtMostOnce);
        // A shared subscription's member is chosen per message: such
        // routes are never remembered.
        if groups.is_empty() {
            if let Some(routes) = batch.routes.get(&msg.topic) {
                return self.enqueue_routes(msg, routes, &batch.limits, &mut batch.records);
            }
        }
        let routes = self.routes_here(msg, groups);
        let matched = self.enqueue_routes(msg, &routes, &batch.limits, &mut batch.records);
        if groups.is_empty() && routes.iter().all(|(r, _)| r.shared_group.is_none()) {
            if batch.routes.len() >= REMEMBERED_TOPICS {
                batch.routes.clear();
            }
            batch.routes.insert(msg.topic.clone(), routes);
        }
        matched
    }

    /// The routes of `msg` to sessions here (shared subscriptions only of
    /// `groups`), with their sessions; those a hand-off follows are left
    /// out (their QoS 0 messages are not kept in the cluster).
    fn routes_here(&self, msg: &Message, groups: &[String]) -> Vec<LocalRoute> {
        let mut routes = Vec::new();
        let eligible = |k: &ClientKey| self.session(k).is_some_and(|s| s.is_online());
        self.router.route(&msg.topic, None, &eligible, &mut routes);
        let following = self.cluster();
        routes
            .into_iter()
            .filter(|route| {
                route
                    .shared_group
                    .as_ref()
                    .is_none_or(|group| groups.iter().any(|g| **g == **group))
            })
            .filter(|route| !following.is_some_and(|c| c.is_forwarding(&route.subscriber)))
            .filter_map(|route| {
                let session = self.session(&route.subscriber)?;
                Some((route, session))
            })
            .collect()
    }

    fn enqueue_routes(
        &self,
        msg: &Arc<Message>,
        routes: &[LocalRoute],
        limits: &QueueLimits,
        records: &mut Vec<Record>,
    ) -> usize {
        for (route, session) in routes {
            let flags = DeliveryFlags {
                qos: QoS::AtMostOnce,
                retain: msg.retain && route.retain_as_published,
                subscription_identifiers: route.subscription_identifiers.clone(),
                shared_group: route.shared_group.clone(),
            };
            self.enqueue(session, msg, flags, limits, None, records);
        }
        routes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::Access;
    use crate::client::ClientHandle;
    use crate::codec::SubscriptionOptions;
    use crate::config::{AuthConfig, Config, Limits, LogConfig};
    use crate::log::Logger;
    use crate::session::Attachment;

    fn broker() -> Arc<Broker> {
        let (logger, _) = Logger::capture(&LogConfig::default());
        let access = Access::load(&AuthConfig::default()).expect("no auth files");
        Arc::new(Broker::new(Config::local_default(), logger, None, access))
    }

    async fn subscriber(broker: &Arc<Broker>, id: &str, filter: &str) -> Arc<Session> {
        let attached = broker
            .attach(
                &Arc::from(id),
                true,
                0,
                Attachment {
                    connection_id: broker.next_connection_id(),
                    client: Arc::new(ClientHandle::for_tests()),
                },
                QueueLimits::from_limits(&Limits::default()),
                None,
                None,
            )
            .await
            .expect("attached");
        let mut records = Vec::new();
        broker.subscribe(
            &attached.session,
            filter,
            SubscriptionOptions::default(),
            None,
            &mut records,
        );
        attached.session
    }

    fn queued(session: &Session) -> Vec<String> {
        let state = session.state.lock();
        state
            .queue
            .iter()
            .map(|delivery| delivery.msg.topic.to_string())
            .collect()
    }

    fn msg(topic: &str) -> Arc<Message> {
        Arc::new(Message::internal(topic, "x", false))
    }

    #[tokio::test]
    async fn each_message_of_a_batch_reaches_the_sessions_of_its_topic() {
        let broker = broker();
        let a = subscriber(&broker, "a", "t/1").await;
        let b = subscriber(&broker, "b", "t/#").await;
        let mut batch = broker.routed_batch();
        for topic in ["t/1", "t/2", "t/1", "u/1", "t/2"] {
            broker.deliver_routed_now(&msg(topic), &[], &mut batch);
        }
        assert_eq!(queued(&a), vec!["t/1", "t/1"]);
        assert_eq!(queued(&b), vec!["t/1", "t/2", "t/1", "t/2"]);
        assert!(batch.records.is_empty());
    }

    #[tokio::test]
    async fn shared_members_take_turns_and_only_the_groups_named_get_them() {
        let broker = broker();
        let one = subscriber(&broker, "one", "$share/g/s").await;
        let two = subscriber(&broker, "two", "$share/g/s").await;
        let other = subscriber(&broker, "other", "$share/h/s").await;
        let mut batch = broker.routed_batch();
        let groups = vec!["g".to_string()];
        for _ in 0..4 {
            broker.deliver_routed_now(&msg("s"), &groups, &mut batch);
        }
        // Not named: this node serves that group elsewhere this time.
        broker.deliver_routed_now(&msg("s"), &[], &mut batch);
        assert_eq!(queued(&one).len(), 2, "members take turns");
        assert_eq!(queued(&two).len(), 2, "members take turns");
        assert!(queued(&other).is_empty());
    }

    #[tokio::test]
    async fn a_remembered_topic_is_forgotten_with_the_batch() {
        let broker = broker();
        let a = subscriber(&broker, "a", "t").await;
        let mut batch = broker.routed_batch();
        broker.deliver_routed_now(&msg("t"), &[], &mut batch);
        let late = subscriber(&broker, "late", "t").await;
        let mut batch = broker.routed_batch();
        broker.deliver_routed_now(&msg("t"), &[], &mut batch);
        assert_eq!(queued(&a).len(), 2);
        assert_eq!(queued(&late).len(), 1, "the next batch routes afresh");
    }
}
