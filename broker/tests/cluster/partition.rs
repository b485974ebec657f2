use std::time::Duration;

use crate::common::cluster::*;
use crate::common::*;

/// A replica cut off from NATS (a TCP proxy in front of each server,
/// cut) for longer than the node timeout while the others keep NATS:
/// they take it for dead, publish its client's will and keep the client's
/// session, which takes what is published for it meanwhile. The cut-off
/// replica keeps serving the client locally; once it is back it closes
/// that connection (5.0: 0x8E, no second will), so one client id has one
/// connection again, and the client finds its session, with what was
/// published meanwhile, on any replica.
#[tokio::test]
async fn a_replica_cut_off_from_nats_lets_go_of_the_clients_the_others_took_over() {
    let nats = NatsCluster::start_unadvertised(3).await;
    let mut proxies = Vec::new();
    for url in nats.urls() {
        proxies.push(CutProxy::start(&url).await);
    }
    let cluster = BrokerCluster::start(
        &nats,
        2,
        ClusterOpts {
            node_nats_urls: vec![proxies.iter().map(|p| p.url.clone()).collect()],
            ..ClusterOpts::default()
        },
    )
    .await;
    let (mut watcher, _) = Raw::connect(&cluster.nodes[1], &Connect::v4("watcher")).await;
    watcher.subscribe(1, &[("status/#", 1)]).await;
    let persistent = |id: &str| {
        Connect::v5(id)
            .clean(false)
            .props(Props::new().four(prop::SESSION_EXPIRY_INTERVAL, 600))
    };
    let (mut device, _) = Raw::connect(
        &cluster.nodes[0],
        &persistent("device").will(Will::new("status/device", b"lost")),
    )
    .await;
    device.subscribe(1, &[("cmd/device", 1)]).await;
    let (mut commander, _) = Raw::connect(&cluster.nodes[1], &Connect::v5("commander")).await;
    await_routes(&mut commander, "cmd/device", &mut [&mut device]).await;

    for proxy in &proxies {
        proxy.cut();
    }
    // Node 1 takes node 0 for dead: the device's will.
    match watcher.recv_within(Duration::from_secs(30)).await {
        Recv::Packet(Pkt::Publish(p)) => {
            assert_eq!(
                (p.topic.as_str(), &p.payload[..]),
                ("status/device", &b"lost"[..])
            );
        }
        other => panic!("no will for the cut-off replica's client: {other:?}"),
    }
    // Node 0 still serves its client locally.
    device.ping().await;
    // For the device, kept in the cluster: its session is the cluster's now.
    let reason = commander
        .publish_qos1(&Pub::new("cmd/device", b"reboot").qos(1, 1))
        .await;
    assert_eq!(reason, 0, "the device's session in the cluster takes it");

    for proxy in &proxies {
        proxy.heal();
    }
    // Node 0 is back, sees that the device was taken over, and lets go.
    // Before that, what node 1 routed to node 0 while node 0 was taken
    // for alive may reach the device there too (it comes again from its
    // session: at least once).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut disconnect = None;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match device.recv_within(left).await {
            Recv::Packet(Pkt::Publish(p)) if p.payload == b"reboot" => device.ack_publish(&p).await,
            Recv::Packet(Pkt::Disconnect(d)) if disconnect.is_none() => disconnect = Some(d.reason),
            Recv::Closed => break,
            other => panic!(
                "expected node 0 to close the device's connection, got {other:?}; node 0:\n{}",
                cluster.nodes[0].logs().join("\n")
            ),
        }
    }
    assert_eq!(disconnect, Some(0x8E));
    // The device comes back, here to node 0: its session, with the message
    // published while it was cut off.
    let (mut device, ack) = Raw::connect(&cluster.nodes[0], &persistent("device")).await;
    assert!(ack.session_present);
    let got = receive(&mut device, 1).await;
    assert_eq!(got[0].payload, b"reboot");
    // The connection node 0 closed published no second will.
    watcher.expect_nothing(QUIET).await;
}
