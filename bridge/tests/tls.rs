//! Every sink and command source over TLS, against the real servers with
//! certificates of a test CA (common/pki.rs): the bridge trusts that CA
//! (`tls.ca_file`), presents a client certificate where the server
//! requires one, and checks the server's name (`tls.server_name` where the
//! certificate does not name the address connected to). Each sink's
//! messages arrive with the mapping applied; with a CA it does not trust,
//! the bridge forwards nothing and reports an error naming the sink and
//! what is wrong with the certificate.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::post;
use axum::Router;
use common::pki::{ClientTls, Pki, ServerTls};
use common::scenario::{self, unmappable, Harness, Probe, SourceTls};
use common::servers::{Mosquitto, Nats, Postgres, Rabbit, RABBIT_TLS_NAME};
use common::*;
use kubemqtt_bridge::mqtt::Outbound;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{json, Value};

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

// --- PostgreSQL -----------------------------------------------------------

/// The name on PostgreSQL's certificate (the bridge connects to 127.0.0.1).
const DB_NAME: &str = "db.kubemqtt.test";

struct PostgresTls {
    server: Postgres,
    tls: ClientTls,
}

impl PostgresTls {
    /// PostgreSQL with `ssl = on`, the user `bridge` let in only over TLS
    /// with a client certificate; the bridge trusts `ca` (default: the
    /// server's CA) and sends the certificate.
    async fn start(untrusted: Option<ClientTls>) -> Option<(PostgresTls, Pki)> {
        let pki = Pki::new("postgres");
        let server_tls = ServerTls::new(&pki, &[DB_NAME]).requiring_clients_of(&pki);
        let server = tokio::task::block_in_place(|| Postgres::start_with(Some(&server_tls)))?;
        server
            .client()
            .await
            .batch_execute(
                "CREATE ROLE bridge LOGIN;
                 CREATE TABLE readings (id integer NOT NULL, device text, temp_f double precision, \
                   client text, mqtt_key text PRIMARY KEY);
                 GRANT ALL ON readings TO bridge;",
            )
            .await
            .expect("role and table created");
        let tls = untrusted
            .unwrap_or_else(|| ClientTls::trusting(&pki.ca))
            .with_client(&pki.client("bridge"))
            .named(DB_NAME);
        Some((PostgresTls { server, tls }, pki))
    }
}

impl Probe for PostgresTls {
    fn sink_toml(&self) -> String {
        format!(
            "[routes.sink.postgres]\nconnection = \"host=127.0.0.1 port={} user=bridge dbname=postgres\"\ntable = \"readings\"\ntls = {}\n",
            self.server.port,
            self.tls.toml()
        )
    }

    fn deduplicates(&self) -> bool {
        true
    }

    async fn rows(&mut self) -> Vec<Value> {
        let client = self.server.client().await;
        let rows = client
            .query("SELECT id, device, temp_f, client FROM readings", &[])
            .await
            .expect("select");
        if !rows.is_empty() {
            // The bridge's session, which wrote them, is TLS with its
            // client certificate (pg_hba.conf lets it in no other way;
            // this says so from the server's side).
            let sessions = client
                .query(
                    "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
                     WHERE usename = 'bridge' AND ssl AND client_dn = '/CN=bridge'",
                    &[],
                )
                .await
                .expect("pg_stat_ssl");
            assert!(
                sessions[0].get::<_, i64>(0) > 0,
                "the bridge's session is TLS"
            );
        }
        rows.iter()
            .map(|row| {
                json!({
                    "id": i64::from(row.get::<_, i32>(0)),
                    "device": row.get::<_, String>(1),
                    "temp_f": row.get::<_, f64>(2),
                    "client": row.get::<_, String>(3),
                })
            })
            .collect()
    }

    async fn stop(&mut self) {
        tokio::task::block_in_place(|| self.server.stop());
    }

    async fn start(&mut self) {
        tokio::task::block_in_place(|| self.server.resume());
    }

    fn poison(&self) -> Vec<Outbound> {
        vec![unmappable(999)]
    }
}

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

// --- NATS JetStream -------------------------------------------------------

struct NatsTls {
    server: Nats,
    /// The test's own connection.
    test_tls: ClientTls,
    /// The bridge's.
    tls: ClientTls,
}

impl NatsTls {
    /// nats-server, TLS only, client certificates verified; its
    /// certificate names 127.0.0.1, so no server name is needed.
    async fn start(untrusted: Option<ClientTls>) -> Option<(NatsTls, Pki)> {
        let pki = Pki::new("nats");
        let server_tls = ServerTls::new(&pki, &["127.0.0.1"]).requiring_clients_of(&pki);
        let server = tokio::task::block_in_place(|| Nats::start_with(Some(&server_tls)))?;
        let test_tls = ClientTls::trusting(&pki.ca).with_client(&pki.client("test"));
        let tls = untrusted
            .unwrap_or_else(|| ClientTls::trusting(&pki.ca))
            .with_client(&pki.client("bridge"));
        let probe = NatsTls {
            server,
            test_tls,
            tls,
        };
        probe
            .jetstream()
            .await
            .create_stream(async_nats::jetstream::stream::Config {
                name: "IOT".into(),
                subjects: vec!["iot.>".into()],
                ..Default::default()
            })
            .await
            .expect("stream created");
        Some((probe, pki))
    }

    async fn jetstream(&self) -> async_nats::jetstream::Context {
        let config = kubemqtt_bridge::secrets::client_config(&self.test_tls.config())
            .expect("the test's TLS");
        let client = async_nats::ConnectOptions::new()
            .tls_client_config(config)
            .require_tls(true)
            .connect(self.server.url())
            .await
            .expect("the test connects over TLS");
        async_nats::jetstream::new(client)
    }
}

impl Probe for NatsTls {
    fn sink_toml(&self) -> String {
        format!(
            "[routes.sink.nats]\nurl = \"{}\"\nsubject = \"'iot.' + segment(topic, 1)\"\ntls = {}\n",
            self.server.url(),
            self.tls.toml()
        )
    }

    fn deduplicates(&self) -> bool {
        true
    }

    async fn rows(&mut self) -> Vec<Value> {
        let mut stream = self
            .jetstream()
            .await
            .get_stream("IOT")
            .await
            .expect("stream");
        let last = stream.info().await.expect("info").state.last_sequence;
        let mut rows = Vec::new();
        for sequence in 1..=last {
            if let Ok(message) = stream.get_raw_message(sequence).await {
                rows.push(serde_json::from_slice(&message.payload).expect("JSON"));
            }
        }
        rows
    }

    async fn stop(&mut self) {
        tokio::task::block_in_place(|| self.server.stop());
    }

    async fn start(&mut self) {
        tokio::task::block_in_place(|| self.server.resume());
    }

    fn poison(&self) -> Vec<Outbound> {
        vec![unmappable(999)]
    }
}

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

// --- RabbitMQ -------------------------------------------------------------

struct AmqpTls {
    rabbit: &'static Rabbit,
    queue: String,
    tls: ClientTls,
    taken: Vec<Value>,
}

impl AmqpTls {
    /// The shared node's `amqps` listener (client certificates required,
    /// its certificate naming only [`RABBIT_TLS_NAME`]) and a queue.
    async fn start(untrusted: Option<ClientTls>) -> Option<AmqpTls> {
        let rabbit = tokio::task::block_in_place(Rabbit::shared)?;
        let probe = AmqpTls {
            rabbit,
            queue: format!("readings-{}", free_port()),
            tls: untrusted
                .unwrap_or_else(|| ClientTls::trusting(&rabbit.pki.ca))
                .with_client(&rabbit.client)
                .named(RABBIT_TLS_NAME),
            taken: Vec::new(),
        };
        probe
            .channel()
            .await
            .queue_declare(
                probe.queue.as_str().into(),
                lapin::options::QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await
            .expect("queue declared");
        Some(probe)
    }

    async fn channel(&self) -> lapin::Channel {
        lapin::Connection::connect(&self.rabbit.url(), Default::default())
            .await
            .expect("the test connects")
            .create_channel()
            .await
            .expect("a channel")
    }
}

impl Probe for AmqpTls {
    fn sink_toml(&self) -> String {
        format!(
            "[routes.sink.amqp]\nurl = \"{}\"\nexchange = \"\"\nrouting_key = \"'{}'\"\ntls = {}\n",
            self.rabbit.tls_url(),
            self.queue,
            self.tls.toml()
        )
    }

    fn deduplicates(&self) -> bool {
        false
    }

    async fn rows(&mut self) -> Vec<Value> {
        use lapin::options::{BasicAckOptions, BasicGetOptions};
        let channel = self.channel().await;
        while let Ok(Some(message)) = channel
            .basic_get(self.queue.as_str().into(), BasicGetOptions::default())
            .await
        {
            self.taken
                .push(serde_json::from_slice(&message.delivery.data).expect("JSON"));
            let _ = message.delivery.ack(BasicAckOptions::default()).await;
        }
        self.taken.clone()
    }

    async fn stop(&mut self) {
        tokio::task::block_in_place(|| self.rabbit.stop());
    }

    async fn start(&mut self) {
        tokio::task::block_in_place(|| self.rabbit.resume());
    }

    fn poison(&self) -> Vec<Outbound> {
        vec![unmappable(999)]
    }
}

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

// --- HTTPS webhook --------------------------------------------------------

/// An HTTPS server collecting the JSON bodies POSTed to `/hook`.
struct HttpsTls {
    port: u16,
    server_tls: ServerTls,
    tls: Option<ClientTls>,
    rows: Arc<Mutex<Vec<Value>>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

/// TLS connections accepted with rustls; a failed handshake (a client
/// that does not trust the server) is skipped.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, address)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, address);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

fn server_config(tls: &ServerTls) -> rustls::ServerConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.server.cert)
        .expect("the server certificate")
        .collect::<Result<_, _>>()
        .expect("PEM");
    let key = PrivateKeyDer::from_pem_file(&tls.server.key).expect("the server key");
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("TLS versions");
    let builder = match &tls.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for certificate in CertificateDer::pem_file_iter(ca).expect("the client CA") {
                roots.add(certificate.expect("PEM")).expect("a CA");
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .expect("a client verifier");
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    builder
        .with_single_cert(chain, key)
        .expect("the server's certificate and key")
}

impl HttpsTls {
    /// The server's certificate names `localhost`, the URL's host.
    async fn start(server_tls: ServerTls, tls: Option<ClientTls>) -> HttpsTls {
        let mut probe = HttpsTls {
            port: free_port(),
            server_tls,
            tls,
            rows: Arc::default(),
            server: None,
        };
        Probe::start(&mut probe).await;
        probe
    }

    fn url(&self) -> String {
        format!("https://localhost:{}/hook", self.port)
    }
}

impl Probe for HttpsTls {
    fn sink_toml(&self) -> String {
        let mut toml = format!(
            "[routes.sink.http]\nurl = \"{}\"\ntimeout_ms = 2000\n",
            self.url()
        );
        if let Some(tls) = &self.tls {
            toml.push_str(&format!("tls = {}\n", tls.toml()));
        }
        toml
    }

    fn deduplicates(&self) -> bool {
        false
    }

    async fn rows(&mut self) -> Vec<Value> {
        self.rows.lock().unwrap().clone()
    }

    async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
            let _ = server.await;
        }
    }

    async fn start(&mut self) {
        let rows = self.rows.clone();
        let app = Router::new().route(
            "/hook",
            post(move |body: String| async move {
                match serde_json::from_str::<Value>(&body) {
                    Ok(row) => {
                        rows.lock().unwrap().push(row);
                        axum::http::StatusCode::NO_CONTENT
                    }
                    Err(_) => axum::http::StatusCode::BAD_REQUEST,
                }
            }),
        );
        let listener = TlsListener {
            tcp: tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], self.port)))
                .await
                .expect("the test's HTTPS server binds"),
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server_config(&self.server_tls))),
        };
        self.server = Some(tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        }));
    }

    fn poison(&self) -> Vec<Outbound> {
        vec![unmappable(999)]
    }
}

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

// --- MQTT: mosquitto, and the source broker -------------------------------

struct MosquittoTls {
    server: Mosquitto,
    tls: ClientTls,
    collector: Collector,
}

impl MosquittoTls {
    /// mosquitto with a TLS listener requiring client certificates (its
    /// certificate names 127.0.0.1); the test collects on the plain one.
    async fn start(untrusted: Option<ClientTls>) -> Option<(MosquittoTls, Pki)> {
        let pki = Pki::new("mosquitto");
        let server_tls = ServerTls::new(&pki, &["127.0.0.1"]).requiring_clients_of(&pki);
        let server = tokio::task::block_in_place(|| Mosquitto::start_with(Some(&server_tls)))?;
        let collector = Collector::start(server.port, "plant/#").await;
        let tls = untrusted
            .unwrap_or_else(|| ClientTls::trusting(&pki.ca))
            .with_client(&pki.client("bridge"));
        Some((
            MosquittoTls {
                server,
                tls,
                collector,
            },
            pki,
        ))
    }

    fn tls_port(&self) -> u16 {
        self.server.tls_port.expect("a TLS listener")
    }
}

impl Probe for MosquittoTls {
    fn sink_toml(&self) -> String {
        format!(
            "[routes.sink.mqtt]\nhost = \"127.0.0.1\"\nport = {}\ntopic = \"'plant/' + topic\"\ntls = {}\n",
            self.tls_port(),
            self.tls.toml()
        )
    }

    fn deduplicates(&self) -> bool {
        false
    }

    async fn rows(&mut self) -> Vec<Value> {
        self.collector.json()
    }

    async fn stop(&mut self) {
        tokio::task::block_in_place(|| self.server.stop());
    }

    async fn start(&mut self) {
        tokio::task::block_in_place(|| self.server.resume());
    }

    fn poison(&self) -> Vec<Outbound> {
        vec![unmappable(999)]
    }
}

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
