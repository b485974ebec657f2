use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::common::cluster::*;
use crate::common::*;

/// `$SYS/broker/...` is each node's own, for that node's clients only;
/// every node's figures are also under its name,
/// `$SYS/brokers/{node}/broker/...`, on every node; presence events name
/// the node the client is on (the harness publishes `$SYS` every second).
#[tokio::test]
async fn sys_figures_and_presence_events_name_their_node() {
    let nats = NatsCluster::start(3).await;
    let cluster = BrokerCluster::start(&nats, 2, ClusterOpts::default()).await;
    let (mut watcher, _) = Raw::connect(&cluster.nodes[1], &Connect::v5("watcher")).await;
    watcher
        .subscribe(
            1,
            &[
                ("$SYS/broker/clients/connected", 0),
                ("$SYS/brokers/+/broker/clients/connected", 0),
                ("$SYS/brokers/+/clients/+/connected", 0),
            ],
        )
        .await;
    // Node 0: four clients; node 1: the watcher alone. Connected once the
    // watcher's interest may have reached node 0 (their presence events
    // are QoS 0, routed only where some session wants them).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut idle = Vec::new();
    for i in 0..4 {
        let (client, _) = Raw::connect(&cluster.nodes[0], &Connect::v5(&format!("idle-{i}"))).await;
        idle.push(client);
    }

    // Live values only (a retained one may predate the clients), by topic.
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let wanted = |seen: &BTreeMap<String, BTreeSet<String>>| {
        let has = |topic: &str, value: &str| seen.get(topic).is_some_and(|v| v.contains(value));
        has("$SYS/brokers/node-0/broker/clients/connected", "4")
            && has("$SYS/brokers/node-1/broker/clients/connected", "1")
            && (0..4).all(|i| {
                seen.contains_key(&format!("$SYS/brokers/node-0/clients/idle-{i}/connected"))
            })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !wanted(&seen) && Instant::now() < deadline {
        if let Recv::Packet(Pkt::Publish(p)) = watcher.recv_within(Duration::from_millis(500)).await
        {
            if !p.retain {
                let value = String::from_utf8_lossy(&p.payload).into_owned();
                seen.entry(p.topic).or_default().insert(value);
            }
        }
    }
    assert!(
        wanted(&seen),
        "every node's figures and presence events: {seen:?}"
    );
    // A few more periods: node 0's figure never under the plain name here.
    let more = Instant::now() + Duration::from_secs(3);
    while Instant::now() < more {
        if let Recv::Packet(Pkt::Publish(p)) = watcher.recv_within(Duration::from_millis(500)).await
        {
            if !p.retain {
                let value = String::from_utf8_lossy(&p.payload).into_owned();
                seen.entry(p.topic).or_default().insert(value);
            }
        }
    }
    assert_eq!(
        seen.get("$SYS/broker/clients/connected"),
        Some(&BTreeSet::from(["1".to_string()])),
        "node 1's own figure, never node 0's: {seen:?}"
    );
    let presence = seen
        .get("$SYS/brokers/node-0/clients/idle-0/connected")
        .and_then(|v| v.iter().next())
        .cloned()
        .unwrap_or_default();
    let event: serde_json::Value = serde_json::from_str(&presence).expect("presence JSON");
    assert_eq!(event["clientid"], "idle-0");
    drop(idle);
}
