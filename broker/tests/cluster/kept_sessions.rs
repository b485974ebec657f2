//! Sessions a replica keeps because the cluster would not take them (its
//! queue stream refuses writes): the client is refused rather than given
//! an older copy, or let in once the replica lets go; a client that
//! starts clean is let in at once.

use std::time::Duration;

use crate::common::cluster::*;
use crate::common::*;

/// A replica that cannot hand a session to the cluster keeps it and says
/// so: the client, back on another replica, is refused (0x88) rather than
/// given an older copy of its session; once the cluster takes the
/// session, the client gets what that replica held (in flight, then
/// queued), in order.
#[tokio::test]
async fn a_session_the_cluster_would_not_take_stays_with_its_replica_until_it_does() {
    session_kept_by_its_replica(Answered::InTime).await;
}

/// The same when the replica answers the take-over late (it was frozen
/// for a moment): the client is let in with what the cluster has, and the
/// replica is asked again until the cluster takes the session; then what
/// it held follows.
#[tokio::test]
async fn a_session_kept_by_a_replica_that_answered_late_follows_once_the_cluster_takes_it() {
    session_kept_by_its_replica(Answered::Late).await;
}

/// A client that starts clean wants no session: the replica that keeps its
/// old one (the cluster would not take it) ends it, and the client is let
/// in at once, with nothing of the old session then or later.
#[tokio::test]
async fn a_client_that_starts_clean_is_let_in_while_a_replica_keeps_its_old_session() {
    let nats = NatsCluster::start(3).await;
    let cluster = BrokerCluster::start(&nats, 3, ClusterOpts::default()).await;
    let (mut publisher, queues) = session_kept_on_node_1(&nats, &cluster, 1).await;

    let (mut mover, ack) = Raw::connect(&cluster.nodes[0], &persistent("mover").clean(true)).await;
    assert!(!ack.session_present);
    assert!(
        cluster.nodes[1]
            .wait_for_log("connected to another node with a clean start", SLOW)
            .await,
        "node 1:\n{}",
        cluster.nodes[1].logs().join("\n")
    );
    queues.allow().await;
    mover.subscribe(1, &[("n/#", 1)]).await;
    await_routes(&mut publisher, "n/probe", &mut [&mut mover]).await;
    publish_qos1(&mut publisher, "n/z", "after", 1).await;
    assert_eq!(payloads(&receive(&mut mover, 1).await), vec!["after-0"]);
    // Node 1 hands nothing over later: back on another node, the client
    // has its new session (present, its filter only), none of the old.
    mover.send(&disconnect(true, 0, &Props::new())).await;
    drop(mover);
    tokio::time::sleep(Duration::from_secs(3)).await;
    // No one has the old filter any more (5.0: 0x10, no matching
    // subscribers).
    publisher
        .send_publish(&Pub::new("m/w", b"old-filter").qos(1, 1))
        .await;
    match publisher.recv_within(SLOW).await {
        Recv::Packet(Pkt::PubAck(ack)) => assert_eq!(ack.reason, 0x10, "{ack:?}"),
        other => panic!("expected a PUBACK, got {other:?}"),
    }
    let (mut mover, ack) = connect_when_available(&cluster.nodes[2], &persistent("mover")).await;
    assert!(ack.session_present);
    mover.expect_nothing(QUIET).await;
    publish_qos1(&mut publisher, "n/z", "back", 1).await;
    assert_eq!(
        payloads(&receive(&mut mover, 1).await),
        vec!["back-0"],
        "node 1:\n{}",
        cluster.nodes[1].logs().join("\n")
    );
}

/// When the replica that keeps a session answers the take-over request.
#[derive(PartialEq)]
enum Answered {
    InTime,
    Late,
}

async fn session_kept_by_its_replica(answered: Answered) {
    let nats = NatsCluster::start(3).await;
    let opts = ClusterOpts {
        // Node 1 is frozen for a moment in one case: not taken for dead.
        node_timeout_secs: Some(15),
        ..ClusterOpts::default()
    };
    let mut cluster = BrokerCluster::start(&nats, 3, opts).await;
    let (mut publisher, queues) = session_kept_on_node_1(&nats, &cluster, 2).await;

    let mut mover = if answered == Answered::Late {
        // Node 1 does not answer within the second the claim waits: the
        // client is let in with what the cluster has, none of it new.
        cluster.nodes[1].freeze(true);
        let (mover, ack) = Raw::connect(&cluster.nodes[0], &persistent("mover")).await;
        cluster.nodes[1].freeze(false);
        assert!(ack.session_present);
        assert!(
            cluster.nodes[0]
                .wait_for_log("node node-1 keeps the session of mover", SLOW)
                .await,
            "node 0:\n{}",
            cluster.nodes[0].logs().join("\n")
        );
        queues.allow().await;
        mover
    } else {
        // On node 0 the client is refused while node 1 keeps its session.
        let mut refused = Raw::open(&cluster.nodes[0]).await;
        refused.send_connect(&persistent("mover")).await;
        match refused.recv_within(SLOW).await {
            Recv::Packet(Pkt::ConnAck(ack)) => assert_eq!(
                ack.code,
                0x88,
                "node 0:\n{}",
                cluster.nodes[0].logs().join("\n")
            ),
            other => panic!("expected CONNACK, got {other:?}"),
        }
        drop(refused);
        queues.allow().await;
        let (mover, ack) = connect_when_available(&cluster.nodes[0], &persistent("mover")).await;
        assert!(ack.session_present);
        mover
    };
    // What node 1 held (in flight, then queued) reaches the client, in
    // order, and nothing else.
    assert_eq!(
        payloads(&receive(&mut mover, 3).await),
        vec!["sent-0", "sent-1", "held-0"],
        "node 1:\n{}\nnode 0:\n{}",
        cluster.nodes[1].logs().join("\n"),
        cluster.nodes[0].logs().join("\n")
    );
    mover.expect_nothing(QUIET).await;
    publish_qos1(&mut publisher, "m/z", "after", 1).await;
    assert_eq!(payloads(&receive(&mut mover, 1).await), vec!["after-0"]);
    // A late hand-off wrote the session interest again after node 0 had
    // removed it: it goes again, or the other nodes would queue the
    // client's messages in the cluster for good.
    let deadline = tokio::time::Instant::now() + SLOW;
    loop {
        let left = session_interest_keys(&nats, &cluster.name, "mover").await;
        if left.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "session interest left behind: {left:?}\nnode 0:\n{}",
            cluster.nodes[0].logs().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Leaves the persistent session of "mover" on node 1 with `in_flight`
/// QoS 1 messages ("sent-<i>") received and not acknowledged, and then
/// one more ("held-0") routed to it, while the cluster's queue stream
/// refuses writes: node 1 keeps the session. Returns the publisher (on
/// node 2) and the refusal to lift.
async fn session_kept_on_node_1(
    nats: &NatsCluster,
    cluster: &BrokerCluster,
    in_flight: u16,
) -> (Raw, QueueWrites) {
    let (mut mover, ack) = Raw::connect(&cluster.nodes[1], &persistent("mover")).await;
    assert!(!ack.session_present);
    mover.subscribe(1, &[("m/#", 1)]).await;
    let (mut publisher, _) = Raw::connect(&cluster.nodes[2], &Connect::v5("pub")).await;
    await_routes(&mut publisher, "m/probe", &mut [&mut mover]).await;
    // Received, not acknowledged: in flight when the client leaves.
    publish_qos1(&mut publisher, "m/x", "sent", in_flight).await;
    for i in 0..in_flight {
        let expected = format!("sent-{i}");
        match mover.recv_within(SLOW).await {
            Recv::Packet(Pkt::Publish(p)) => assert_eq!(p.payload, expected.as_bytes()),
            other => panic!("expected {expected}, got {other:?}"),
        }
    }
    let queues = QueueWrites::refuse(nats, &cluster.name).await;
    mover.send(&disconnect(true, 0, &Props::new())).await;
    drop(mover);
    assert!(
        cluster.nodes[1]
            .wait_for_log("The session of mover stays on this node", SLOW)
            .await
    );
    // Routed to node 1, which holds the session.
    publish_qos1(&mut publisher, "m/y", "held", 1).await;
    (publisher, queues)
}

/// The keys of `client`'s session interest (written when its session is
/// handed to the cluster) in the interest bucket of cluster `cluster`.
async fn session_interest_keys(nats: &NatsCluster, cluster: &str, client: &str) -> Vec<String> {
    use base64::Engine;
    use futures_util::StreamExt;
    let nc = async_nats::connect(nats.urls()[0].as_str())
        .await
        .expect("connect to NATS");
    let js = async_nats::jetstream::new(nc);
    let bucket = js
        .get_key_value(format!("KMQ_{cluster}_interest"))
        .await
        .expect("the interest bucket");
    let prefix = format!(
        "=s.{}.",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(client)
    );
    let mut keys = bucket.keys().await.expect("list the interest bucket");
    let mut found = Vec::new();
    while let Some(key) = keys.next().await {
        let key = key.expect("an interest key");
        if key.starts_with(&prefix) {
            found.push(key);
        }
    }
    found
}

/// The cluster's queue stream made to refuse every write (at most one
/// byte, new messages discarded) until [`QueueWrites::allow`]: a session
/// cannot be handed to the cluster meanwhile.
struct QueueWrites {
    js: async_nats::jetstream::Context,
    config: async_nats::jetstream::stream::Config,
}

impl QueueWrites {
    async fn refuse(nats: &NatsCluster, cluster: &str) -> QueueWrites {
        let client = async_nats::connect(nats.urls()[0].as_str())
            .await
            .expect("connect to NATS");
        let js = async_nats::jetstream::new(client);
        let mut stream = js
            .get_stream(format!("KMQ_{cluster}_QUEUES"))
            .await
            .expect("the queue stream");
        let config = stream.info().await.expect("stream info").config.clone();
        let refusing = async_nats::jetstream::stream::Config {
            max_bytes: 1,
            discard: async_nats::jetstream::stream::DiscardPolicy::New,
            ..config.clone()
        };
        js.update_stream(refusing)
            .await
            .expect("make the queue stream refuse writes");
        QueueWrites { js, config }
    }

    async fn allow(self) {
        self.js
            .update_stream(self.config)
            .await
            .expect("let the queue stream take writes again");
    }
}
