use kubemqtt_broker::cluster::clients::ClientRecord;
use kubemqtt_broker::cluster::sessions::SessionRecord;

use crate::common::cluster::*;
use crate::common::*;

/// A client back on the replica it left gets its queue from that
/// replica's copy, not read back from JetStream: what was published on
/// every replica meanwhile, in order per publisher, each once.
#[tokio::test]
async fn a_client_back_on_the_replica_it_left_gets_its_queue_from_that_replicas_copy() {
    let nats = NatsCluster::start(3).await;
    let cluster = BrokerCluster::start(&nats, 3, ClusterOpts::default()).await;
    leave_with_a_session(&cluster, 0).await;
    // While node 0 keeps the copy, the client's entry says node 0 holds
    // it: a claim elsewhere asks node 0 first.
    let entry = client_entry(&nats, &cluster.name, "phone").await;
    assert!(entry.held && entry.node == "node-0", "{entry:?}");
    // And the session's record says when the client left (it expires
    // from then): no write of its connected record came after.
    let record = session_record(&nats, &cluster.name, "phone").await;
    assert!(record.disconnected_at_ms.is_some(), "{record:?}");
    let (mut here, _) = Raw::connect(&cluster.nodes[0], &Connect::v5("here")).await;
    let (mut there, _) = Raw::connect(&cluster.nodes[1], &Connect::v5("there")).await;
    publish_qos1(&mut here, "p/here", "here", 20).await;
    publish_qos1(&mut there, "p/there", "there", 20).await;
    let (mut phone, ack) = Raw::connect(&cluster.nodes[0], &persistent("phone")).await;
    assert!(ack.session_present);
    let got = payloads(&receive(&mut phone, 40).await);
    for publisher in ["here", "there"] {
        let from: Vec<&String> = got
            .iter()
            .filter(|p| p.starts_with(&format!("{publisher}-")))
            .collect();
        let sent: Vec<String> = (0..20).map(|i| format!("{publisher}-{i}")).collect();
        assert_eq!(from, sent.iter().collect::<Vec<_>>(), "all of {got:?}");
    }
    phone.expect_nothing(QUIET).await;
    // Nobody claimed the client elsewhere (that would have asked node 0,
    // which its entry names): the copy is the session, and the client is
    // let in with nothing asked of NATS.
    assert_logged(
        &cluster,
        0,
        "its queue from this node's copy (claimed with nothing asked of NATS)",
    )
    .await;
}

/// The copy is not used once the client was on another replica in
/// between (that replica read the queue, and emptied it): back on the
/// first one, the client gets only what was published since, once.
#[tokio::test]
async fn a_client_back_after_another_replica_gets_nothing_twice() {
    let nats = NatsCluster::start(3).await;
    let cluster = BrokerCluster::start(&nats, 3, ClusterOpts::default()).await;
    leave_with_a_session(&cluster, 0).await;
    let (mut publisher, _) = Raw::connect(&cluster.nodes[2], &Connect::v5("pub")).await;
    publish_qos1(&mut publisher, "p/x", "first", 5).await;
    let (mut phone, ack) = Raw::connect(&cluster.nodes[1], &persistent("phone")).await;
    assert!(ack.session_present);
    assert_eq!(
        payloads(&receive(&mut phone, 5).await),
        (0..5).map(|i| format!("first-{i}")).collect::<Vec<_>>()
    );
    phone.send(&disconnect(true, 0, &Props::new())).await;
    drop(phone);
    assert_logged(&cluster, 1, "Session of phone no longer followed here").await;
    let before = interest_and_logs(&nats, &cluster).await;
    publish_qos1_or_say(&mut publisher, "p/x", "then", 5, &before).await;
    let (mut phone, ack) = Raw::connect(&cluster.nodes[0], &persistent("phone")).await;
    assert!(ack.session_present);
    assert_eq!(
        payloads(&receive(&mut phone, 5).await),
        (0..5).map(|i| format!("then-{i}")).collect::<Vec<_>>()
    );
    phone.expect_nothing(QUIET).await;
}

/// Subscribes `phone` (persistent) to `p/#` on node `node`, disconnects,
/// and waits until that node has handed its session to the cluster and
/// stopped following it.
async fn leave_with_a_session(cluster: &BrokerCluster, node: usize) {
    let (mut phone, _) = Raw::connect(&cluster.nodes[node], &persistent("phone")).await;
    phone.subscribe(1, &[("p/#", 1)]).await;
    phone.send(&disconnect(true, 0, &Props::new())).await;
    drop(phone);
    assert_logged(cluster, node, "Session of phone no longer followed here").await;
}

/// A client that comes back with a will is claimed with one write (the
/// entry is to carry the will, for the other replicas should this one
/// die): its session still comes from the copy.
#[tokio::test]
async fn a_client_back_with_a_will_is_claimed_in_one_write() {
    let nats = NatsCluster::start(3).await;
    let cluster = BrokerCluster::start(&nats, 2, ClusterOpts::default()).await;
    leave_with_a_session(&cluster, 0).await;
    let (mut publisher, _) = Raw::connect(&cluster.nodes[1], &Connect::v5("pub")).await;
    publish_qos1(&mut publisher, "p/x", "away", 5).await;
    let with_will = persistent("phone").will(Will::new("status/phone", b"gone"));
    let (mut phone, ack) = Raw::connect(&cluster.nodes[0], &with_will).await;
    assert!(ack.session_present);
    assert_eq!(
        payloads(&receive(&mut phone, 5).await),
        (0..5).map(|i| format!("away-{i}")).collect::<Vec<_>>()
    );
    assert_logged(
        &cluster,
        0,
        "its queue from this node's copy (claimed in one write)",
    )
    .await;
    let entry = client_entry(&nats, &cluster.name, "phone").await;
    assert!(entry.held && entry.will.is_some(), "{entry:?}");
}

/// Should another node claim the client without asking the replica that
/// kept its session (it took that replica for gone, or the replica
/// answered too late), a client let in there on the copy alone is found
/// out once it has its messages: that session ends (5.0: 0x8E), and the
/// session in the cluster is whole, the messages in it again.
#[tokio::test]
async fn a_claim_the_replica_missed_ends_the_session_it_let_in_on_its_copy() {
    let nats = NatsCluster::start(3).await;
    let cluster = BrokerCluster::start(&nats, 2, ClusterOpts::default()).await;
    leave_with_a_session(&cluster, 0).await;
    let (mut publisher, _) = Raw::connect(&cluster.nodes[1], &Connect::v5("pub")).await;
    publish_qos1(&mut publisher, "p/x", "away", 5).await;
    // The entry rewritten behind node 0's back, as a claim that did not
    // ask it would.
    rewrite_client_entry(&nats, &cluster.name, "phone").await;
    let (mut phone, ack) = Raw::connect(&cluster.nodes[0], &persistent("phone")).await;
    assert!(ack.session_present);
    let sent: Vec<String> = (0..5).map(|i| format!("away-{i}")).collect();
    assert_eq!(payloads(&receive(&mut phone, 5).await), sent);
    let disconnect = phone.expect_closed_within(SLOW).await;
    assert_eq!(disconnect.map(|d| d.reason), Some(0x8E));
    assert_logged(
        &cluster,
        0,
        "was claimed by another node while it came back here",
    )
    .await;
    // Nothing of the session here reached the cluster: it is as the
    // client left it, its messages in it (again: at least once).
    let (mut phone, ack) = Raw::connect(&cluster.nodes[1], &persistent("phone")).await;
    assert!(ack.session_present);
    assert_eq!(payloads(&receive(&mut phone, 5).await), sent);
    phone.expect_nothing(QUIET).await;
}

/// The clients bucket of cluster `cluster`.
async fn clients_bucket(nats: &NatsCluster, cluster: &str) -> async_nats::jetstream::kv::Store {
    let nc = async_nats::connect(nats.urls()[0].as_str())
        .await
        .expect("connect to NATS");
    async_nats::jetstream::new(nc)
        .get_key_value(format!("KMQ_{cluster}_clients"))
        .await
        .expect("the clients bucket")
}

fn client_key(client: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(client)
}

/// `client`'s entry in the clients bucket.
async fn client_entry(nats: &NatsCluster, cluster: &str, client: &str) -> ClientRecord {
    let bucket = clients_bucket(nats, cluster).await;
    let value = bucket
        .get(client_key(client))
        .await
        .expect("read the clients bucket")
        .expect("an entry for the client");
    postcard::from_bytes(&value).expect("a client record")
}

/// `client`'s session record in the sessions bucket.
async fn session_record(nats: &NatsCluster, cluster: &str, client: &str) -> SessionRecord {
    let nc = async_nats::connect(nats.urls()[0].as_str())
        .await
        .expect("connect to NATS");
    let bucket = async_nats::jetstream::new(nc)
        .get_key_value(format!("KMQ_{cluster}_sessions"))
        .await
        .expect("the sessions bucket");
    let value = bucket
        .get(client_key(client))
        .await
        .expect("read the sessions bucket")
        .expect("a record of the session");
    postcard::from_bytes(&value).expect("a session record")
}

/// Writes `client`'s entry again as it is (a new revision).
async fn rewrite_client_entry(nats: &NatsCluster, cluster: &str, client: &str) {
    let bucket = clients_bucket(nats, cluster).await;
    let value = bucket
        .get(client_key(client))
        .await
        .expect("read the clients bucket")
        .expect("an entry for the client");
    bucket
        .put(client_key(client), value)
        .await
        .expect("write the clients bucket");
}

/// Waits (up to [`SLOW`]) until node `node` logs `text`; fails with its log.
async fn assert_logged(cluster: &BrokerCluster, node: usize, text: &str) {
    assert!(
        cluster.nodes[node].wait_for_log(text, SLOW).await,
        "node {node}:\n{}",
        cluster.nodes[node].logs().join("\n")
    );
}
