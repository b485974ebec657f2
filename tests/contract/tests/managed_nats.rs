//! The managed NATS (`spec.cluster.nats.managed`) as the operator renders
//! it for `examples/broker-cluster.yaml`, run as three real nats-servers:
//! the ConfigMap's `nats.conf` and the servers' certificate Secret (issued
//! by the operator's CA) laid out as the StatefulSet mounts them, with
//! only ports, paths and name resolution made local
//! (`common/managed_nats.rs` says what changes and why).
//!
//! The servers must form one JetStream cluster over their verified TLS
//! routes (routes up, one meta leader), take a stream with the brokers'
//! replica count from a client using the brokers' rendered `[cluster.tls]`
//! files (and refuse one without the client certificate), and keep taking
//! writes with one server killed: quorum holds with two of three.

use crate::common;

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage, stream};
use async_nats::ServerAddr;
use k8s_openapi::jiff::Timestamp;
use kubemqtt_broker::config::Config;
use kubemqtt_contract_tests::PodFiles;
use kubemqtt_operator::plan::configmap::CONFIG_FILE;
use kubemqtt_operator::plan::nats::CLIENT_PORT;
use kubemqtt_operator::plan::{self, Observed, Settings, CONFIG_DIR};
use kubemqtt_operator::render::read_broker;

use common::managed_nats::tls::broker_tls;
use common::managed_nats::ManagedNats;

const EXAMPLE: &str = include_str!("../../../examples/broker-cluster.yaml");
/// How long the cluster may take to settle (routes, elections).
const SETTLE: Duration = Duration::from_secs(30);
const STREAM: &str = "KUBEMQTT_CONTRACT";
const MESSAGES: u64 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rendered_nats_is_a_jetstream_cluster_that_survives_a_server() {
    let broker = read_broker(EXAMPLE, None).expect("the example reads");
    let settings = Settings::default();
    let plan = plan::plan(&broker, &Observed::default(), &settings, Timestamp::now())
        .expect("the example plans");
    let nats_plan = plan.nats.as_ref().expect("a managed NATS");
    let mut nats = ManagedNats::start(nats_plan, &settings.cluster_domain);
    assert_eq!(nats.pods.len(), 3);

    // TLS that verifies both ends on the client and route ports, as
    // rendered; one cluster name.
    let varz: Vec<serde_json::Value> = nats.pods.iter().map(|p| p.monitor("/varz")).collect();
    let cluster_name = varz[0]["cluster"]["name"].as_str().expect("a cluster name");
    assert_eq!(cluster_name, format!("{}-nats", broker_name(&broker)));
    for (pod, varz) in nats.pods.iter().zip(&varz) {
        assert_eq!(varz["server_name"], pod.name.as_str());
        assert_eq!(varz["cluster"]["name"], cluster_name);
        for tls in [varz, &varz["cluster"]] {
            assert_eq!(tls["tls_required"], true, "{}", pod.name);
            assert_eq!(tls["tls_verify"], true, "{}", pod.name);
        }
    }

    // Every server has a route to each other one (and no other).
    let ids: Vec<String> = varz
        .iter()
        .map(|v| v["server_id"].as_str().expect("a server id").to_owned())
        .collect();
    settle("routes between every pair of servers", || {
        nats.pods.iter().zip(&ids).all(|(pod, own)| {
            let routez = pod.monitor("/routez");
            let remotes: BTreeSet<&str> = routez["routes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r["remote_id"].as_str())
                .collect();
            let others: BTreeSet<&str> = ids
                .iter()
                .filter(|id| *id != own)
                .map(String::as_str)
                .collect();
            routez["num_routes"] == 2 && remotes == others
        })
    })
    .await;
    let names: Vec<String> = nats.pods.iter().map(|p| p.name.clone()).collect();
    let leader = meta_leader(&nats, &names, cluster_name).await;
    eprintln!("meta leader: {leader}");

    // The brokers' client: the servers and TLS files of broker.toml's
    // [cluster], as a broker pod has them.
    let pod_root = tempfile::tempdir().expect("a temporary directory");
    let files = PodFiles::lay_out_with(&plan, &[&nats_plan.client_secret], pod_root.path())
        .expect("the broker pod's files");
    let config =
        Config::load(&files.path(&format!("{CONFIG_DIR}/{CONFIG_FILE}"))).expect("broker.toml");
    let cluster = config.cluster.expect("broker.toml has [cluster]");
    let tls = cluster.tls.as_ref().expect("[cluster.tls]");
    let in_pod = |path: &Option<std::path::PathBuf>, what: &str| {
        let path = path
            .as_ref()
            .unwrap_or_else(|| panic!("[cluster.tls] {what}"));
        files.path(&path.to_string_lossy())
    };
    let (ca, cert, key) = (
        in_pod(&tls.ca_file, "ca_file"),
        in_pod(&tls.cert_file, "cert_file"),
        in_pod(&tls.key_file, "key_file"),
    );
    let mut urls = Vec::new();
    let mut dialled = Vec::new();
    for server in &cluster.servers {
        let rest = server
            .strip_prefix("tls://")
            .unwrap_or_else(|| panic!("{server} is not a TLS URL"));
        let (host, port) = rest.rsplit_once(':').expect("host:port");
        assert_eq!(port.parse::<u16>().ok(), Some(CLIENT_PORT), "{server}");
        let pod = nats.by_host(host);
        urls.push(
            format!("tls://127.0.0.1:{}", pod.client_port)
                .parse::<ServerAddr>()
                .expect("a server address"),
        );
        dialled.push(host.to_owned());
    }
    assert_eq!(dialled.len(), 3, "the brokers know every server");

    // Without the client certificate: refused (the servers verify clients).
    let anonymous = async_nats::ConnectOptions::new()
        .require_tls(true)
        .tls_client_config(broker_tls(&ca, None, &dialled))
        .connection_timeout(Duration::from_secs(5))
        .connect(urls[0].clone());
    match tokio::time::timeout(SETTLE, anonymous).await {
        // The server's alert, not this client's verifier (the same
        // configuration with the certificate gets in below).
        Ok(Err(error)) => assert!(error.to_string().contains("alert"), "{error}"),
        Ok(Ok(_)) => panic!("a client without a certificate got in"),
        Err(_) => panic!("no answer to a client without a certificate"),
    }

    let client = async_nats::ConnectOptions::new()
        .require_tls(true)
        .tls_client_config(broker_tls(&ca, Some((&cert, &key)), &dialled))
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .connect(urls)
        .await
        .expect("the brokers' client connects");
    let js = jetstream::new(client);

    // A stream with the brokers' replica count: one copy on every server.
    assert_eq!(cluster.replicas, 3, "broker.toml's replicas");
    let mut stream = js
        .create_stream(stream::Config {
            name: STREAM.to_owned(),
            subjects: vec!["contract.>".to_owned()],
            num_replicas: cluster.replicas,
            ..stream::Config::default()
        })
        .await
        .expect("a stream with 3 replicas");
    let deadline = tokio::time::Instant::now() + SETTLE;
    let stream_leader = loop {
        let info = stream.info().await.expect("stream info").clone();
        let cluster = info.cluster.clone().unwrap_or_default();
        let current = cluster.replicas.iter().filter(|r| r.current).count();
        match cluster.leader {
            Some(leader) if current == 2 => break leader,
            _ => {}
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stream's replicas not current: {cluster:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for n in 1..=MESSAGES {
        let ack = publish(&js, n).await;
        assert_eq!((ack.sequence, ack.duplicate), (n, false));
    }

    // The stream's leader dies (and with it, perhaps, the client's server).
    eprintln!("killing {stream_leader}, the stream's leader");
    nats.pod_mut(&stream_leader).kill();
    for n in MESSAGES + 1..=2 * MESSAGES {
        publish(&js, n).await;
    }
    let info = stream.info().await.expect("stream info").clone();
    assert_eq!(info.state.messages, 2 * MESSAGES, "{:?}", info.state);
    assert_eq!(info.state.last_sequence, 2 * MESSAGES);
    let cluster_info = info.cluster.clone().expect("cluster info");
    let new_leader = cluster_info.leader.clone().expect("a stream leader");
    assert_ne!(new_leader, stream_leader);
    let dead = cluster_info
        .replicas
        .iter()
        .find(|r| r.name == stream_leader)
        .expect("the dead server is still a replica");
    assert!(!dead.current, "{cluster_info:?}");
    for n in 1..=2 * MESSAGES {
        let message = stream.get_raw_message(n).await.expect("a stored message");
        assert_eq!(message.payload, n.to_string().as_bytes(), "message {n}");
    }
    let survivors: Vec<String> = names
        .iter()
        .filter(|name| **name != stream_leader)
        .cloned()
        .collect();
    let leader = meta_leader(&nats, &survivors, cluster_name).await;
    eprintln!("meta leader with {stream_leader} dead: {leader}");
}

fn broker_name(broker: &kubemqtt_operator::api::MqttBroker) -> &str {
    broker.metadata.name.as_deref().expect("a name")
}

/// Polls `done` until it holds; panics after [`SETTLE`].
async fn settle(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + SETTLE;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {what} within {SETTLE:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The JetStream meta leader once every server of `alive` names the same
/// one, one of them, in cluster `cluster_name` of three.
async fn meta_leader(nats: &ManagedNats, alive: &[String], cluster_name: &str) -> String {
    let mut leader = String::new();
    settle("JetStream meta leader", || {
        let metas: Vec<serde_json::Value> = nats
            .pods
            .iter()
            .filter(|pod| alive.contains(&pod.name))
            .map(|pod| pod.monitor("/jsz")["meta_cluster"].clone())
            .collect();
        let first = metas[0]["leader"].as_str().unwrap_or_default().to_owned();
        let agreed = metas.iter().all(|meta| {
            meta["name"] == cluster_name
                && meta["cluster_size"] == 3
                && meta["leader"].as_str() == Some(first.as_str())
        });
        leader = first;
        agreed && alive.contains(&leader)
    })
    .await;
    leader
}

/// Publishes message `n` (payload `n`, message id `m-n`) and waits for
/// its acknowledgement, trying again while the stream has no leader (the
/// id makes a retry of a stored message a duplicate, not a second copy).
async fn publish(js: &jetstream::Context, n: u64) -> jetstream::publish::PublishAck {
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let message = PublishMessage::build()
            .message_id(format!("m-{n}"))
            .payload(n.to_string().into());
        let error = match js.send_publish("contract.m", message).await {
            Ok(ack) => match ack.await {
                Ok(ack) => return ack,
                Err(error) => error.to_string(),
            },
            Err(error) => error.to_string(),
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "message {n} not acknowledged within {SETTLE:?}: {error}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
