//! Recovery from the durable store at start.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::codec::{QoS, SubscriptionOptions};
use crate::message::{now_ms, Message};
use crate::router::Subscription;
use crate::session::{Delivery, Session, SessionSubscription};
use crate::store::{Recovered, StoredSubscription};

use super::{Broker, ClientKey};

impl Broker {
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
                        shared_group: None,
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
