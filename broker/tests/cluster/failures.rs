use std::time::{Duration, Instant};

use crate::common::cluster::*;
use crate::common::*;

#[tokio::test]
async fn a_persistent_session_moves_with_what_was_published_while_away_whatever_dies() {
    let mut nats = NatsCluster::start(3).await;
    let opts = ClusterOpts {
        admin_token: true,
        ..ClusterOpts::default()
    };
    let mut cluster = BrokerCluster::start(&nats, 3, opts).await;
    let mut publisher = leave_mover_in_the_cluster(&cluster, 0, 2, "m/#").await;
    publish_qos1(&mut publisher, "m/x", "away", 20).await;
    // The node it left, and one NATS server, die.
    cluster.nodes[0].kill9();
    nats.kill(1);

    // While JetStream elects new leaders the node answers 0x88 (server
    // unavailable) rather than lose the session; a client tries again.
    let (mut mover, ack) = connect_when_available(&cluster.nodes[1], &persistent("mover")).await;
    assert!(ack.session_present, "the session moved");
    // Received one by one, so that a stall says what node 1 holds.
    let mut got = Vec::new();
    while got.len() < 20 {
        let p = match mover.recv_within(SLOW).await {
            Recv::Packet(Pkt::Publish(p)) => p,
            other => {
                let seen = cluster.nodes[1]
                    .http("GET", "/api/v1/clients/mover", Some("tok"))
                    .await;
                panic!(
                    "after {:?}, {other:?}; node 1 has: {seen:?}",
                    payloads(&got)
                );
            }
        };
        mover
            .send(&crate::common::ack(kind::PUBACK, p.pid, true, 0))
            .await;
        got.push(p);
    }
    let expected: Vec<String> = (0..20).map(|i| format!("away-{i}")).collect();
    assert_eq!(payloads(&got), expected, "everything, in order, once");
    mover.expect_nothing(QUIET).await;
    // Its subscription came along: new messages arrive here. Published
    // this soon, while JetStream may still be electing leaders after the
    // NATS server's loss, the message may go to the session's queue (the
    // other replicas may not yet have seen that the session moved) and
    // reach the client once its replica can read the queue again: on a
    // loaded machine (three copies of this suite on two cores) that took
    // more than 20 s once, so a minute is allowed.
    publish_qos1(&mut publisher, "m/y", "back", 1).await;
    match mover.recv_within(Duration::from_secs(60)).await {
        Recv::Packet(Pkt::Publish(p)) => assert_eq!(p.payload, b"back-0"),
        other => panic!(
            "expected back-0, got {other:?}; node 1:\n{}",
            cluster.nodes[1].logs().join("\n")
        ),
    }
}

#[tokio::test]
async fn the_wills_of_a_dead_nodes_clients_are_published_by_the_others() {
    let nats = NatsCluster::start(3).await;
    let mut cluster = BrokerCluster::start(&nats, 3, ClusterOpts::default()).await;
    let (mut watcher, _) = Raw::connect(&cluster.nodes[0], &Connect::v4("watcher")).await;
    watcher.subscribe(1, &[("status/#", 1)]).await;
    let (_doomed, _) = Raw::connect(
        &cluster.nodes[2],
        &Connect::v4("doomed").will(Will::new("status/doomed", b"offline")),
    )
    .await;
    // Let the will reach the clients bucket and the interest spread.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed = Instant::now();
    cluster.nodes[2].kill9();
    match watcher.recv_within(Duration::from_secs(15)).await {
        Recv::Packet(Pkt::Publish(p)) => {
            assert_eq!(
                (p.topic.as_str(), &p.payload[..]),
                ("status/doomed", &b"offline"[..])
            );
        }
        other => panic!("no will from the dead node's client: {other:?}"),
    }
    // Node timeout 3 s, checked every second (loosely bounded for busy
    // machines).
    assert!(
        killed.elapsed() < Duration::from_secs(12),
        "{:?}",
        killed.elapsed()
    );
    watcher.expect_nothing(QUIET).await;
}

/// A will's delay holds for the clients of a dead replica too: the will of
/// a client that connects again (to another replica) within it is not
/// published; that of another client with the same delay is, once the
/// delay is over.
#[tokio::test]
async fn a_dead_nodes_client_back_within_its_will_delay_has_no_will_published() {
    const DELAY_SECS: u32 = 4;
    let nats = NatsCluster::start(3).await;
    let mut cluster = BrokerCluster::start(&nats, 3, ClusterOpts::default()).await;
    let (mut watcher, _) = Raw::connect(&cluster.nodes[0], &Connect::v4("watcher")).await;
    watcher.subscribe(1, &[("status/#", 1)]).await;
    let connect = |id: &str| {
        let mut will = Will::new(&format!("status/{id}"), b"offline");
        will.props = Props::new().four(prop::WILL_DELAY_INTERVAL, DELAY_SECS);
        Connect::v5(id)
            .clean(false)
            .props(Props::new().four(prop::SESSION_EXPIRY_INTERVAL, 60))
            .will(will)
    };
    let (_back, _) = Raw::connect(&cluster.nodes[2], &connect("back")).await;
    let (_gone, _) = Raw::connect(&cluster.nodes[2], &connect("gone")).await;
    // Let the wills reach the clients bucket and the interest spread.
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.nodes[2].kill9();
    // A survivor takes node 2's clients over: their wills are due after
    // their delay.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !cluster.nodes[..2].iter().any(|n| {
        n.logs()
            .iter()
            .any(|l| l.contains("will(s) of clients of node node-2"))
    }) {
        assert!(
            Instant::now() < deadline,
            "node 2's clients never taken over"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let taken_over = Instant::now();
    let (_again, _) = Raw::connect(&cluster.nodes[1], &Connect::v5("back").clean(false)).await;
    match watcher.recv_within(Duration::from_secs(15)).await {
        Recv::Packet(Pkt::Publish(p)) => {
            assert_eq!(
                p.topic, "status/gone",
                "only the will of the client not back"
            );
        }
        other => panic!("no will from the client that stayed away: {other:?}"),
    }
    assert!(
        taken_over.elapsed() >= Duration::from_secs(u64::from(DELAY_SECS) - 1),
        "published before its delay: {:?}",
        taken_over.elapsed()
    );
    watcher.expect_nothing(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn a_node_that_loses_nats_says_so_serves_its_own_clients_and_recovers() {
    let mut nats = NatsCluster::start(3).await;
    let cluster = BrokerCluster::start(&nats, 2, ClusterOpts::default()).await;
    let (mut sub, _) = Raw::connect(&cluster.nodes[0], &Connect::v5("local-sub")).await;
    sub.subscribe(1, &[("local/#", 1)]).await;
    let (mut remote, _) = Raw::connect(&cluster.nodes[1], &Connect::v5("remote-sub")).await;
    remote.subscribe(1, &[("shared/#", 1)]).await;
    let (mut publisher, _) = Raw::connect(&cluster.nodes[0], &Connect::v5("pub")).await;
    await_routes(&mut publisher, "shared/probe", &mut [&mut remote]).await;

    for i in 0..3 {
        nats.kill(i);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let ready = cluster.nodes[0].http("GET", "/readyz", None).await;
        if ready.status == 503 {
            assert_eq!(ready.body, "cluster unavailable");
            break;
        }
        assert!(Instant::now() < deadline, "still ready without NATS");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(cluster.metric(0, "kubemqtt_cluster_connected").await, 0.0);
    assert!(
        cluster.nodes[0]
            .wait_for_log("Cluster: lost NATS", SLOW)
            .await
    );
    // Its own clients are still served.
    publisher
        .send_publish(&Pub::new("local/a", b"here").qos(1, 1))
        .await;
    assert_eq!(publisher.expect_puback().await.reason, 0);
    assert_eq!(receive(&mut sub, 1).await[0].payload, b"here");
    // What must reach another node cannot be kept: refused, not lost.
    publisher
        .send_publish(&Pub::new("shared/a", b"there").qos(1, 2))
        .await;
    assert_eq!(publisher.expect_puback().await.reason, 0x80);

    for i in 0..3 {
        nats.restart(i).await;
    }
    cluster.wait_ready(0).await;
    // JetStream elects its leaders again first: give it time on a busy
    // machine. Meanwhile the node holds the PUBACK while the stream has no
    // leader (up to 15 s), and refuses once that is over.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        publisher
            .send_publish(&Pub::new("shared/a", b"again").qos(1, 3))
            .await;
        let ack = match publisher.recv_within(SLOW).await {
            Recv::Packet(Pkt::PubAck(ack)) => ack,
            other => panic!("expected a PUBACK, got {other:?}"),
        };
        if ack.reason == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The other node's consumer comes back once JetStream has recovered.
    match remote.recv_within(Duration::from_secs(60)).await {
        Recv::Packet(Pkt::Publish(p)) => assert_eq!(p.payload, b"again"),
        other => panic!("the message never reached the other node: {other:?}"),
    }
}

#[tokio::test]
async fn a_publish_while_its_stream_elects_a_leader_waits_for_it_rather_than_fail() {
    // Both brokers use NATS server 0 only, so killing another server loses
    // them no connection, only the stream's leader.
    let mut nats = NatsCluster::start(3).await;
    let opts = ClusterOpts {
        nats_servers: vec![0],
        ..ClusterOpts::default()
    };
    let cluster = BrokerCluster::start(&nats, 2, opts).await;
    let (mut sub, _) = Raw::connect(&cluster.nodes[1], &Connect::v5("sub")).await;
    sub.subscribe(1, &[("e/#", 1)]).await;
    let (mut publisher, _) = Raw::connect(&cluster.nodes[0], &Connect::v5("pub")).await;
    await_routes(&mut publisher, "e/probe", &mut [&mut sub]).await;

    // The stream that carries QoS 1 messages between nodes loses its leader.
    let stream = format!("KMQ_{}_ROUTE", cluster.name);
    let leader = stream_leader_elsewhere_than(&nats, &stream, "nats-0").await;
    let index = nats
        .servers
        .iter()
        .position(|s| s.name == leader)
        .expect("the leader is one of the servers");
    nats.kill(index);

    // Until another server leads it, the stream refuses what is sent to
    // it (nothing stored); the node sends again, and only then
    // acknowledges: every PUBACK is a success, nothing is lost.
    publish_qos1(&mut publisher, "e/x", "during", 5).await;
    let got = receive(&mut sub, 5).await;
    let expected: Vec<String> = (0..5).map(|i| format!("during-{i}")).collect();
    assert_eq!(payloads(&got), expected, "everything, in order, once");
    sub.expect_nothing(QUIET).await;
}

/// The name of the server leading JetStream stream `stream`, once it is
/// not `not`: asks the leader to step down while it is.
async fn stream_leader_elsewhere_than(nats: &NatsCluster, stream: &str, not: &str) -> String {
    let client = async_nats::connect(nats.urls()[0].as_str())
        .await
        .expect("connect to NATS");
    let js = async_nats::jetstream::new(client.clone());
    let deadline = Instant::now() + SLOW;
    loop {
        assert!(
            Instant::now() < deadline,
            "{stream} kept its leader on {not}"
        );
        let leader = match js.get_stream(stream).await {
            Ok(s) => s
                .get_info()
                .await
                .ok()
                .and_then(|info| info.cluster)
                .and_then(|c| c.leader),
            Err(_) => None,
        };
        match leader {
            Some(leader) if leader != not => return leader,
            Some(_) => {
                let _ = client
                    .request(
                        format!("$JS.API.STREAM.LEADER.STEPDOWN.{stream}"),
                        "".into(),
                    )
                    .await;
            }
            None => {}
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A client comes back to node 1, whose only NATS server then stalls for
/// longer than any NATS request waits (SIGSTOP, 25 s): node 1 cannot take
/// the session's interest over yet, so node 2 queues a new message for it
/// in the cluster. Once the server answers again the message reaches the
/// client (node 1 keeps trying: acknowledged, so delivered), and the
/// session interest is gone (nothing the client acknowledged comes again
/// when it moves on).
#[tokio::test]
async fn a_client_back_on_a_node_whose_nats_server_stalls_gets_what_was_queued_meanwhile() {
    let nats = NatsCluster::start(3).await;
    let opts = ClusterOpts {
        // Node 1 talks to server 1 only, the others never to it; a minute
        // of node timeout so that the stalled node is not taken for dead.
        node_nats_servers: vec![vec![0, 2], vec![1], vec![0, 2]],
        node_timeout_secs: Some(60),
        ..ClusterOpts::default()
    };
    let cluster = BrokerCluster::start(&nats, 3, opts).await;
    let mut publisher = leave_mover_in_the_cluster(&cluster, 0, 2, "m/#").await;
    publish_qos1(&mut publisher, "m/x", "away", 3).await;
    // Nodes 0 and 2 keep writing while server 1 stalls: no stream waits
    // for a new leader then.
    all_stream_leaders_elsewhere_than(&nats, "nats-1").await;

    let (mut mover, ack) = Raw::connect(&cluster.nodes[1], &persistent("mover")).await;
    assert!(ack.session_present);
    nats.pause(1);
    let paused = Instant::now();
    // Node 1 has not removed the session interest: written to the queue.
    publish_qos1(&mut publisher, "m/y", "stalled", 1).await;
    tokio::time::sleep_until((paused + Duration::from_secs(25)).into()).await;
    nats.resume(1);
    // Giving the session interest up, and reading the queue, need
    // JetStream's metadata leader and every stream's; on a loaded machine
    // the servers may take half a minute after the stall to agree on them
    // again (CI on 2026-12-05: 503 "JetStream system temporarily
    // unavailable" for 26 s; a whole-suite run the same day: no give-up
    // within 20 s of the stall's end). Node 1 keeps trying; both are due
    // once JetStream answers again.
    jetstream_whole_again(&nats).await;
    assert!(
        cluster.nodes[1]
            .wait_for_log(
                "Session of mover: the other nodes now route its messages here",
                SLOW
            )
            .await,
        "{}",
        cluster.nodes[1].logs().join("\n")
    );
    let got = receive(&mut mover, 4).await;
    assert_eq!(
        payloads(&got),
        vec!["away-0", "away-1", "away-2", "stalled-0"],
        "{}",
        cluster.nodes[1].logs().join("\n")
    );
    mover.expect_nothing(QUIET).await;
    // Under load JetStream may refuse requests (503) for a while after the
    // stall; a publish it refuses gets 0x80 (refused, not lost). Wait until
    // every stream answers through every server with all its replicas.
    // (A new connection: the publisher has been idle for longer than its
    // keepalive allows.)
    jetstream_whole_again(&nats).await;
    let (mut publisher, _) = Raw::connect(&cluster.nodes[2], &Connect::v5("pub")).await;
    publish_qos1(&mut publisher, "m/y", "back", 1).await;
    assert_eq!(payloads(&receive(&mut mover, 1).await), vec!["back-0"]);
    // What node 2 wrote to the queue (stalled-0, perhaps back-0 too, which
    // the client also got routed) is read and taken out of it a moment
    // later, however long JetStream still refuses requests after the
    // stall (node 1 keeps trying). (A client that leaves before that gets
    // them again on the next node: docs/clustering.md, "Known limits".)
    wait_until_queue_empty(&nats, &cluster.name, "mover").await;

    // Moving on to node 0, the client gets what was published while it
    // moved, and nothing it had.
    // (JetStream may still be settling after the stall: node 1 may keep
    // the session until node 0 takes it over, and node 0 may answer 0x88
    // for a moment.)
    mover.send(&disconnect(true, 0, &Props::new())).await;
    drop(mover);
    publish_qos1(&mut publisher, "m/z", "moved", 1).await;
    let (mut mover, ack) = connect_when_available(&cluster.nodes[0], &persistent("mover")).await;
    assert!(ack.session_present);
    assert_eq!(
        payloads(&receive(&mut mover, 1).await),
        vec!["moved-0"],
        "node 1:\n{}\nnode 0:\n{}",
        cluster.nodes[1].logs().join("\n"),
        cluster.nodes[0].logs().join("\n")
    );
    mover.expect_nothing(Duration::from_secs(3)).await;
}

/// Moves the leader of every JetStream stream off server `not`.
async fn all_stream_leaders_elsewhere_than(nats: &NatsCluster, not: &str) {
    use futures_util::StreamExt;
    let client = async_nats::connect(nats.urls()[0].as_str())
        .await
        .expect("connect to NATS");
    let js = async_nats::jetstream::new(client);
    let names: Vec<String> = js
        .stream_names()
        .filter_map(|name| async move { name.ok() })
        .collect()
        .await;
    assert!(!names.is_empty(), "the brokers made their streams");
    for name in names {
        stream_leader_elsewhere_than(nats, &name, not).await;
    }
}

/// Waits (up to a minute) until JetStream has a metadata leader and every
/// stream answers its info through every server, with a leader and every
/// replica current.
async fn jetstream_whole_again(nats: &NatsCluster) {
    use futures_util::StreamExt;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    'again: while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        for url in nats.urls() {
            let Ok(client) = async_nats::connect(url.as_str()).await else {
                last = format!("{url} does not answer");
                continue 'again;
            };
            // Account info is answered by the metadata leader alone (an
            // error when there is none). Raw: async-nats does not read
            // every field this server's answer has.
            let info = client.request("$JS.API.INFO", "".into()).await;
            let answer = info
                .as_ref()
                .ok()
                .and_then(|m| serde_json::from_slice::<serde_json::Value>(&m.payload).ok());
            if answer.is_none_or(|a| a.get("error").is_some()) {
                last = format!("account info through {url}: {info:?}");
                continue 'again;
            }
            let js = async_nats::jetstream::new(client);
            let names: Vec<_> = js.stream_names().collect().await;
            for name in names {
                let name = match name {
                    Ok(name) => name,
                    Err(e) => {
                        last = format!("stream names through {url}: {e}");
                        continue 'again;
                    }
                };
                let info = match js.get_stream(&name).await {
                    Ok(mut stream) => stream.info().await.cloned(),
                    Err(e) => {
                        last = format!("{name} through {url}: {e}");
                        continue 'again;
                    }
                };
                let whole = info
                    .as_ref()
                    .ok()
                    .and_then(|info| info.cluster.as_ref())
                    .is_some_and(|c| c.leader.is_some() && c.replicas.iter().all(|r| r.current));
                if !whole {
                    last = format!("{name} through {url}: not whole yet");
                    continue 'again;
                }
            }
        }
        return;
    }
    panic!("JetStream never answered whole again: {last}");
}

/// Waits (up to a minute) until the cluster queue of `client_id` holds no
/// message: what its replica read from it was removed.
async fn wait_until_queue_empty(nats: &NatsCluster, cluster: &str, client_id: &str) {
    use async_nats::jetstream::stream::LastRawMessageErrorKind;
    let client = async_nats::connect(nats.urls()[0].as_str())
        .await
        .expect("connect to NATS");
    let js = async_nats::jetstream::new(client);
    let subject = format!(
        "_KMQ.{cluster}.q.{}",
        kubemqtt_broker::cluster::names::encode_key(client_id)
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = match js.get_stream(format!("KMQ_{cluster}_QUEUES")).await {
            Ok(stream) => match stream.get_last_raw_message_by_subject(&subject).await {
                Ok(message) => format!("message {} is there", message.sequence),
                Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => return,
                Err(e) => e.to_string(),
            },
            Err(e) => e.to_string(),
        };
        assert!(
            Instant::now() < deadline,
            "the queue of {client_id} was never emptied: {left}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
