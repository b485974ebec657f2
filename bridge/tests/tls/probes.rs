//! What tls.rs sees of each TLS server: PostgreSQL, nats-server,
//! RabbitMQ's amqps listener and mosquitto, each with certificates of a
//! test CA and the `tls` table the bridge reaches it with.

use common::pki::{ClientTls, Pki, ServerTls};
use common::scenario::{unmappable, Probe};
use common::servers::{Mosquitto, Nats, Postgres, Rabbit, RABBIT_TLS_NAME};
use common::*;
use kubemqtt_bridge::mqtt::Outbound;
use serde_json::{json, Value};

use super::common;

// --- PostgreSQL -----------------------------------------------------------

/// The name on PostgreSQL's certificate (the bridge connects to 127.0.0.1).
pub const DB_NAME: &str = "db.kubemqtt.test";

pub struct PostgresTls {
    pub server: Postgres,
    pub tls: ClientTls,
}

impl PostgresTls {
    /// PostgreSQL with `ssl = on`, the user `bridge` let in only over TLS
    /// with a client certificate; the bridge trusts `ca` (default: the
    /// server's CA) and sends the certificate.
    pub async fn start(untrusted: Option<ClientTls>) -> Option<(PostgresTls, Pki)> {
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

// --- NATS JetStream -------------------------------------------------------

pub struct NatsTls {
    pub server: Nats,
    /// The test's own connection.
    pub test_tls: ClientTls,
    /// The bridge's.
    pub tls: ClientTls,
}

impl NatsTls {
    /// nats-server, TLS only, client certificates verified; its
    /// certificate names 127.0.0.1, so no server name is needed.
    pub async fn start(untrusted: Option<ClientTls>) -> Option<(NatsTls, Pki)> {
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

    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
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

// --- RabbitMQ -------------------------------------------------------------

pub struct AmqpTls {
    pub rabbit: &'static Rabbit,
    pub queue: String,
    pub tls: ClientTls,
    pub taken: Vec<Value>,
}

impl AmqpTls {
    /// The shared node's `amqps` listener (client certificates required,
    /// its certificate naming only [`RABBIT_TLS_NAME`]) and a queue.
    pub async fn start(untrusted: Option<ClientTls>) -> Option<AmqpTls> {
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

    pub async fn channel(&self) -> lapin::Channel {
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

// --- mosquitto ------------------------------------------------------------

pub struct MosquittoTls {
    pub server: Mosquitto,
    pub tls: ClientTls,
    pub collector: Collector,
}

impl MosquittoTls {
    /// mosquitto with a TLS listener requiring client certificates (its
    /// certificate names 127.0.0.1); the test collects on the plain one.
    pub async fn start(untrusted: Option<ClientTls>) -> Option<(MosquittoTls, Pki)> {
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

    pub fn tls_port(&self) -> u16 {
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
