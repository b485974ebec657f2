//! `$SYS` topics, published periodically as retained messages with the same
//! names mosquitto uses, so existing dashboards keep working.

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
    let msg = Arc::new(Message::internal(topic, value, true));
    // $SYS messages are never written to the store, so this cannot fail.
    let _ = broker.publish(msg, None).await;
}
