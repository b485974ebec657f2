//! The RabbitMQ sink against a real RabbitMQ node (one per test binary;
//! the tests take turns, since one of them stops the node's AMQP service).

use crate::common;

use common::scenario::{self, unmappable, Probe};
use common::servers::Rabbit;
use common::*;
use kubemqtt_bridge::mqtt::Outbound;
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde_json::Value;

static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct AmqpProbe {
    rabbit: &'static Rabbit,
    queue: String,
    taken: Vec<Value>,
}

impl AmqpProbe {
    async fn start() -> Option<AmqpProbe> {
        let rabbit = tokio::task::block_in_place(Rabbit::shared)?;
        let probe = AmqpProbe {
            rabbit,
            queue: format!("readings-{}", free_port()),
            taken: Vec::new(),
        };
        let channel = probe
            .channel()
            .await
            .expect("the test connects to RabbitMQ");
        channel
            .queue_declare(
                probe.queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("queue declared");
        Some(probe)
    }

    async fn channel(&self) -> Option<lapin::Channel> {
        let connection =
            lapin::Connection::connect(&self.rabbit.url(), lapin::ConnectionProperties::default())
                .await
                .ok()?;
        connection.create_channel().await.ok()
    }
}

impl Probe for AmqpProbe {
    fn sink_toml(&self) -> String {
        format!(
            "[routes.sink.amqp]\nurl = \"amqp://guest@127.0.0.1:{port}/%2f\"\nexchange = \"\"\nrouting_key = \"if(payload.id == 1000, 'nowhere', '{queue}')\"\n",
            port = self.rabbit.port,
            queue = self.queue
        )
    }

    fn deduplicates(&self) -> bool {
        false
    }

    /// Takes what the queue holds (messages are removed, so they are kept
    /// here).
    async fn rows(&mut self) -> Vec<Value> {
        if let Some(channel) = self.channel().await {
            while let Ok(Some(message)) = channel
                .basic_get(self.queue.as_str().into(), BasicGetOptions::default())
                .await
            {
                let row: Value = serde_json::from_slice(&message.delivery.data).expect("JSON");
                assert_eq!(
                    message.delivery.properties.delivery_mode(),
                    &Some(2),
                    "persistent"
                );
                assert!(
                    message.delivery.properties.message_id().is_some(),
                    "the key"
                );
                let _ = message.delivery.ack(BasicAckOptions::default()).await;
                self.taken.push(row);
            }
            let _ = channel.close(200, "done".into()).await;
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
        // One the mapping refuses, one no queue takes.
        vec![unmappable(999), reading(1000)]
    }
}

// The password comes from a file, as from a Secret.
fn with_password(probe: &AmqpProbe, dir: &std::path::Path) -> String {
    let file = dir.join("password");
    std::fs::write(&file, "guest\n").unwrap();
    format!(
        "{}password_file = \"{}\"\n",
        probe.sink_toml(),
        file.display()
    )
}

struct WithPassword(AmqpProbe, tempfile::TempDir);

impl Probe for WithPassword {
    fn sink_toml(&self) -> String {
        with_password(&self.0, self.1.path())
    }
    fn deduplicates(&self) -> bool {
        false
    }
    async fn rows(&mut self) -> Vec<Value> {
        self.0.rows().await
    }
    async fn stop(&mut self) {
        self.0.stop().await
    }
    async fn start(&mut self) {
        self.0.start().await
    }
    fn poison(&self) -> Vec<Outbound> {
        self.0.poison()
    }
}

async fn probe() -> Option<WithPassword> {
    Some(WithPassword(
        AmqpProbe::start().await?,
        tempfile::tempdir().unwrap(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_arrive_on_the_queue_with_the_mapping_applied() {
    let _turn = TURN.lock().await;
    let Some(probe) = probe().await else { return };
    scenario::mapping(probe).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_stopped_mid_stream_loses_nothing() {
    let _turn = TURN.lock().await;
    let Some(probe) = probe().await else { return };
    scenario::sink_restart(probe).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_killed_mid_stream_loses_nothing() {
    let _turn = TURN.lock().await;
    let Some(probe) = probe().await else { return };
    scenario::bridge_kill(probe).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_messages_go_to_the_dead_letter_topic() {
    let _turn = TURN.lock().await;
    let Some(probe) = probe().await else { return };
    scenario::poison(probe).await;
}
