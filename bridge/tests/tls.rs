//! Every sink and command source over TLS, against the real servers with
//! certificates of a test CA (common/pki.rs): the bridge trusts that CA
//! (`tls.ca_file`), presents a client certificate where the server
//! requires one, and checks the server's name (`tls.server_name` where the
//! certificate does not name the address connected to). Each sink's
//! messages arrive with the mapping applied; with a CA it does not trust,
//! the bridge forwards nothing and reports an error naming the sink and
//! what is wrong with the certificate.

use crate::common;
mod https;
mod probes;

use std::time::{Duration, Instant};

use common::pki::{ClientTls, Pki, ServerTls};
use common::scenario::{self, Harness, Probe, SourceTls};
use common::*;
use https::HttpsTls;
use probes::{AmqpTls, MosquittoTls, NatsTls, PostgresTls};

/// What an untrusted server certificate must be reported as.
const UNTRUSTED: &str =
    "TLS handshake failed: the server's certificate is not signed by a CA in tls.ca_file";

/// A CA nobody's certificates come from: the bridge trusting only it
/// refuses every server here.
fn impostor() -> (Pki, ClientTls) {
    let pki = Pki::new("impostor");
    let tls = ClientTls::trusting(&pki.ca);
    (pki, tls)
}

/// Publishes a reading, then waits for the route's error: it names the
/// sink (`sink`) and says why (`why`); nothing is forwarded.
async fn refused(probe: &impl Probe, sink: &str, why: &str) {
    let harness = Harness::start(probe).await;
    device(harness.broker.port)
        .publish(reading(1))
        .await
        .expect("the broker acknowledges");
    let message =
        tokio::task::block_in_place(|| harness.bridge.wait_for_error("readings", &[sink, why]));
    assert!(message.starts_with(sink), "{message}");
    eprintln!("reported: {message}");
    let status = harness.bridge.status();
    assert_eq!(status["forwarded"], 0, "{status}");
    assert!(status["failed"].as_u64().unwrap_or(0) > 0, "{status}");
}

// --- PostgreSQL ----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_tls_with_a_client_certificate_and_server_name() {
    let Some((probe, _pki)) = PostgresTls::start(None).await else {
        return;
    };
    scenario::mapping(probe).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_with_an_untrusted_certificate_names_the_sink() {
    let (_impostor, untrusted) = impostor();
    let Some((probe, _pki)) = PostgresTls::start(Some(untrusted)).await else {
        return;
    };
    let sink = format!("PostgreSQL 127.0.0.1:{}", probe.server.port);
    refused(&probe, &sink, UNTRUSTED).await;
}

// --- NATS JetStream ------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_over_tls_with_a_client_certificate() {
    let Some((probe, _pki)) = NatsTls::start(None).await else {
        return;
    };
    scenario::mapping(probe).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_with_an_untrusted_certificate_names_the_sink() {
    let (_impostor, untrusted) = impostor();
    let Some((probe, _pki)) = NatsTls::start(Some(untrusted)).await else {
        return;
    };
    let sink = format!("NATS {}", probe.server.url());
    refused(&probe, &sink, UNTRUSTED).await;
}

/// A certificate for another name than `tls.server_name`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_with_a_server_name_the_certificate_lacks_says_so() {
    let Some((mut probe, _pki)) = NatsTls::start(None).await else {
        return;
    };
    probe.tls = probe.tls.named("elsewhere.kubemqtt.test");
    let sink = format!("NATS {}", probe.server.url());
    let why = "TLS handshake failed: the server's certificate does not name tls.server_name `elsewhere.kubemqtt.test`";
    refused(&probe, &sink, why).await;
}

// --- RabbitMQ ------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_over_amqps_with_a_client_certificate_and_server_name() {
    let Some(probe) = AmqpTls::start(None).await else {
        return;
    };
    scenario::mapping(probe).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_with_an_untrusted_certificate_names_the_sink() {
    let (_impostor, untrusted) = impostor();
    let Some(probe) = AmqpTls::start(Some(untrusted)).await else {
        return;
    };
    let sink = format!("AMQP 127.0.0.1:{}", probe.rabbit.tls_port);
    refused(&probe, &sink, UNTRUSTED).await;
}

// --- HTTPS webhook -------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_webhook_with_a_client_certificate() {
    let pki = Pki::new("webhook");
    let server_tls = ServerTls::new(&pki, &["localhost"]).requiring_clients_of(&pki);
    let tls = ClientTls::trusting(&pki.ca).with_client(&pki.client("bridge"));
    scenario::mapping(HttpsTls::start(server_tls, Some(tls)).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_webhook_with_an_untrusted_certificate_names_the_sink() {
    let pki = Pki::new("webhook");
    let (_impostor, untrusted) = impostor();
    let probe = HttpsTls::start(ServerTls::new(&pki, &["localhost"]), Some(untrusted)).await;
    let sink = format!("POST {}", probe.url());
    refused(&probe, &sink, UNTRUSTED).await;
}

/// Without a `tls` table an `https://` URL is verified against the
/// system's trust store, which `SSL_CERT_FILE` replaces here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_webhook_trusts_the_system_store_without_a_ca_file() {
    let pki = Pki::new("system");
    let mut probe = HttpsTls::start(ServerTls::new(&pki, &["localhost"]), None).await;
    let broker = SourceBroker::start();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}\n{}{}\n",
        head(broker.port),
        route("{ mqtt_topic = \"bridge/dead/readings\" }"),
        probe.sink_toml()
    );
    let mut bridge = Bridge::configure(dir.path(), &config, "system-store");
    bridge
        .env
        .push(("SSL_CERT_FILE".into(), pki.ca.display().to_string()));
    tokio::task::block_in_place(|| bridge.restart());
    let device = device(broker.port);
    for id in 0..5 {
        device.publish(reading(id)).await.expect("acknowledged");
    }
    let deadline = Instant::now() + PATIENCE;
    loop {
        let ids: std::collections::BTreeSet<i64> = probe
            .rows()
            .await
            .iter()
            .filter_map(|row| row["id"].as_i64())
            .collect();
        if ids == (0..5).collect() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "POSTed: {ids:?}; status {}\n{}",
            bridge.status(),
            bridge.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// --- MQTT: mosquitto, and the source broker ------------------------------

/// The remote broker over TLS, and the source broker too: the bridge's own
/// connection to the kubemqtt broker, whose TLS listener requires a client
/// certificate and names only `broker.kubemqtt.test`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_over_tls_and_the_source_broker_over_tls() {
    let Some((probe, _pki)) = MosquittoTls::start(None).await else {
        return;
    };
    let source_pki = Pki::new("broker");
    let server =
        ServerTls::new(&source_pki, &["broker.kubemqtt.test"]).requiring_clients_of(&source_pki);
    let client = ClientTls::trusting(&source_pki.ca)
        .with_client(&source_pki.client("bridge"))
        .named("broker.kubemqtt.test");
    scenario::mapping_with(
        probe,
        Some(SourceTls {
            server: &server,
            client: &client,
        }),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_with_an_untrusted_certificate_names_the_sink() {
    let (_impostor, untrusted) = impostor();
    let Some((probe, _pki)) = MosquittoTls::start(Some(untrusted)).await else {
        return;
    };
    let sink = format!("MQTT 127.0.0.1:{}", probe.tls_port());
    refused(&probe, &sink, UNTRUSTED).await;
}

/// mosquitto requires a client certificate the bridge was not given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_without_the_client_certificate_it_requires_says_so() {
    let Some((mut probe, pki)) = MosquittoTls::start(None).await else {
        return;
    };
    probe.tls = ClientTls::trusting(&pki.ca);
    let sink = format!("MQTT 127.0.0.1:{}", probe.tls_port());
    refused(
        &probe,
        &sink,
        "it may require a client certificate (tls.cert_file and tls.key_file)",
    )
    .await;
}

/// A source broker whose certificate the bridge does not trust: the
/// error is the source's, and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_broker_with_an_untrusted_certificate_is_reported() {
    let pki = Pki::new("broker");
    let server = ServerTls::new(&pki, &["127.0.0.1"]);
    let broker = SourceBroker::start_with(Some(&server));
    let (_impostor, untrusted) = impostor();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}tls = {}\n",
        head(broker.tls_port.expect("a TLS listener")),
        untrusted.toml()
    );
    let mut bridge = Bridge::configure(dir.path(), &config, "untrusting");
    tokio::task::block_in_place(|| {
        bridge.launch();
        let message = bridge.wait_for_error("source", &["broker connection", UNTRUSTED]);
        assert!(message.starts_with("broker connection: "), "{message}");
    });
    assert_eq!(bridge.status()["connected"], false);
}

// --- Command sources ------------------------------------------------------

async fn wait_for_commands(collector: &Collector, count: usize, bridge: &Bridge) -> Vec<String> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let topics: Vec<String> = collector
            .messages
            .lock()
            .unwrap()
            .iter()
            .map(|(topic, _, _)| topic.clone())
            .collect();
        if topics.len() >= count {
            return topics;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {count} commands arrived; status {}\n{}",
            topics.len(),
            bridge.status(),
            bridge.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_commands_over_tls() {
    let Some((nats, _pki)) = NatsTls::start(None).await else {
        return;
    };
    let jetstream = nats.jetstream().await;
    jetstream
        .create_stream(async_nats::jetstream::stream::Config {
            name: "CMDS".into(),
            subjects: vec!["cmd.>".into()],
            ..Default::default()
        })
        .await
        .expect("stream created");
    for i in 0..5 {
        jetstream
            .publish(format!("cmd.dev{i}"), "reboot".into())
            .await
            .expect("published")
            .await
            .expect("stored");
    }
    let broker = SourceBroker::start();
    let device = Collector::start(broker.port, "devices/#").await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}\n[[commands]]\nname = \"js\"\ntopic = \"'devices/' + segment(replace(subject, '.', '/'), 1)\"\nfrom = {{ nats = {{ url = \"{}\", stream = \"CMDS\", consumer = \"bridge\", tls = {} }} }}\n",
        head(broker.port),
        nats.server.url(),
        nats.tls.toml()
    );
    let bridge = tokio::task::block_in_place(|| Bridge::start(dir.path(), &config));
    let topics = wait_for_commands(&device, 5, &bridge).await;
    assert!(topics.contains(&"devices/dev4".to_owned()), "{topics:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_commands_over_amqps() {
    use lapin::options::BasicPublishOptions;
    use lapin::types::{AMQPValue, FieldTable};
    let Some(rabbit) = AmqpTls::start(None).await else {
        return;
    };
    let channel = rabbit.channel().await;
    for i in 0..5 {
        let mut headers = FieldTable::default();
        headers.insert(
            "topic".into(),
            AMQPValue::LongString(format!("devices/d{i}/commands").into()),
        );
        channel
            .basic_publish(
                "".into(),
                rabbit.queue.as_str().into(),
                BasicPublishOptions::default(),
                b"reboot",
                lapin::BasicProperties::default().with_headers(headers),
            )
            .await
            .expect("published");
    }
    let broker = SourceBroker::start();
    let device = Collector::start(broker.port, "devices/#").await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}\n[[commands]]\nname = \"rabbit\"\nfrom = {{ amqp = {{ url = \"{}\", queue = \"{}\", tls = {} }} }}\n",
        head(broker.port),
        rabbit.rabbit.tls_url(),
        rabbit.queue,
        rabbit.tls.toml()
    );
    let bridge = tokio::task::block_in_place(|| Bridge::start(dir.path(), &config));
    let topics = wait_for_commands(&device, 5, &bridge).await;
    assert!(
        topics.contains(&"devices/d3/commands".to_owned()),
        "{topics:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_source_with_an_untrusted_certificate_names_it() {
    let (_impostor, untrusted) = impostor();
    let Some((nats, _pki)) = NatsTls::start(Some(untrusted)).await else {
        return;
    };
    let broker = SourceBroker::start();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}\n[[commands]]\nname = \"js\"\nfrom = {{ nats = {{ url = \"{}\", stream = \"CMDS\", consumer = \"bridge\", tls = {} }} }}\n",
        head(broker.port),
        nats.server.url(),
        nats.tls.toml()
    );
    let bridge = tokio::task::block_in_place(|| Bridge::start(dir.path(), &config));
    let sink = format!("NATS {}", nats.server.url());
    let message = tokio::task::block_in_place(|| bridge.wait_for_error("js", &[&sink, UNTRUSTED]));
    assert!(message.starts_with(&sink), "{message}");
}
