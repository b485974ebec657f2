//! `$SYS` topics, published periodically as retained messages with the same
//! names mosquitto uses, so existing dashboards keep working.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::broker::Broker;
use crate::message::Message;
use crate::stats::Stats;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Publishes the `$SYS` tree every `sys.interval_secs` until shutdown.
pub async fn run(broker: Arc<Broker>, mut shutdown: watch::Receiver<bool>) {
    let period = Duration::from_secs(broker.config.sys.interval_secs.max(1));
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
    let s = &broker.stats;
    let sessions = broker.sessions();
    let connected = Stats::get(&s.clients_connected);
    let total = sessions.len() as u64;
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
            Stats::get(&s.clients_maximum).to_string(),
        ),
        (
            "$SYS/broker/messages/received",
            Stats::get(&s.messages_received).to_string(),
        ),
        (
            "$SYS/broker/messages/sent",
            Stats::get(&s.messages_sent).to_string(),
        ),
        (
            "$SYS/broker/publish/messages/dropped",
            Stats::get(&s.dropped).to_string(),
        ),
        (
            "$SYS/broker/bytes/received",
            Stats::get(&s.bytes_received).to_string(),
        ),
        (
            "$SYS/broker/bytes/sent",
            Stats::get(&s.bytes_sent).to_string(),
        ),
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
                .map(|s| s.state.lock().queue_len())
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
