//! `$SYS` topics, published periodically as retained messages with the same
//! names mosquitto uses, so existing dashboards keep working.
//!
//! Each node of a cluster publishes its own figures under those names to
//! its own clients only (a dashboard connected to a replica sees that
//! replica, never a mix), and the same tree under its name,
//! `$SYS/brokers/{node_name}/broker/...`, to every node's: one
//! subscription anywhere sees every replica's figures.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::broker::Broker;
use crate::message::Message;
use crate::metrics::Metrics;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Publishes the `$SYS` tree every `sys.interval_secs` until shutdown.
pub async fn run(broker: Arc<Broker>, mut shutdown: watch::Receiver<bool>) {
    let period = Duration::from_secs(broker.config().sys.interval_secs.max(1));
    let mut ticker = tokio::time::interval(period);
    publish(
        &broker,
        "$SYS/broker/version",
        format!("kubemqtt-broker version {VERSION}"),
    )
    .await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => return,
        }
        for (topic, value) in snapshot(&broker) {
            publish(&broker, topic, value).await;
        }
    }
}

/// The current values of every periodic `$SYS` topic.
pub fn snapshot(broker: &Broker) -> Vec<(&'static str, String)> {
    let m = &broker.metrics;
    let sessions = broker.sessions();
    let connected = m.clients_connected.get().max(0) as u64;
    let total = sessions.len() as u64;
    let dropped: u64 = ["offline", "queue_full", "too_large"]
        .iter()
        .map(|r| m.dropped.with_label_values(&[r]).get())
        .sum();
    vec![
        (
            "$SYS/broker/uptime",
            format!("{} seconds", broker.started.elapsed().as_secs()),
        ),
        ("$SYS/broker/clients/connected", connected.to_string()),
        ("$SYS/broker/clients/active", connected.to_string()),
        (
            "$SYS/broker/clients/disconnected",
            total.saturating_sub(connected).to_string(),
        ),
        (
            "$SYS/broker/clients/total",
            total.max(connected).to_string(),
        ),
        (
            "$SYS/broker/clients/maximum",
            m.clients_maximum.get().to_string(),
        ),
        (
            "$SYS/broker/messages/received",
            Metrics::total(&m.messages_received).to_string(),
        ),
        (
            "$SYS/broker/messages/sent",
            Metrics::total(&m.messages_sent).to_string(),
        ),
        ("$SYS/broker/publish/messages/dropped", dropped.to_string()),
        (
            "$SYS/broker/bytes/received",
            m.bytes_received.get().to_string(),
        ),
        ("$SYS/broker/bytes/sent", m.bytes_sent.get().to_string()),
        (
            "$SYS/broker/subscriptions/count",
            broker.router.len().to_string(),
        ),
        (
            "$SYS/broker/retained messages/count",
            broker.retained.len().to_string(),
        ),
        (
            "$SYS/broker/store/messages/count",
            sessions
                .iter()
                .map(|s| s.state.lock().queue.len())
                .sum::<usize>()
                .to_string(),
        ),
    ]
}

async fn publish(broker: &Arc<Broker>, topic: &str, value: String) {
    let named = broker
        .cluster()
        .map(|_| node_topic(&broker.config().node_name, topic));
    // $SYS messages are never written to the store, so these cannot fail;
    // a QoS 0 message another node did not get is counted and logged by
    // the cluster.
    if let Some(named) = named {
        let msg = Arc::new(Message::internal(&named, value.clone(), true));
        let _ = broker.publish(msg, None).await;
    }
    let msg = Arc::new(Message::internal(topic, value, true));
    let _ = broker.publish_local(msg).await;
}

/// Where node `node` publishes its `$SYS/...` topic `topic` for the whole
/// cluster: `$SYS/brokers/{node}/...` (presence events are under
/// `$SYS/brokers/{node}/clients/`).
fn node_topic(node: &str, topic: &str) -> String {
    let rest = topic.strip_prefix("$SYS/").unwrap_or(topic);
    format!("$SYS/brokers/{node}/{rest}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nodes_figures_go_under_its_name() {
        assert_eq!(
            node_topic("broker-1", "$SYS/broker/clients/connected"),
            "$SYS/brokers/broker-1/broker/clients/connected"
        );
        assert_eq!(
            node_topic("b", "$SYS/broker/retained messages/count"),
            "$SYS/brokers/b/broker/retained messages/count"
        );
    }
}
