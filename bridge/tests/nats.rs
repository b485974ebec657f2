//! The NATS JetStream sink against a real nats-server with JetStream.

use crate::common;

use common::scenario::{self, unmappable, Probe};
use common::servers::Nats;
#[allow(unused_imports)]
use common::*;
use kubemqtt_bridge::mqtt::Outbound;
use serde_json::Value;

struct NatsProbe {
    server: Nats,
}

impl NatsProbe {
    async fn start() -> Option<NatsProbe> {
        let server = tokio::task::block_in_place(Nats::start)?;
        let client = async_nats::connect(server.url())
            .await
            .expect("the test connects");
        let jetstream = async_nats::jetstream::new(client);
        jetstream
            .create_stream(async_nats::jetstream::stream::Config {
                name: "IOT".into(),
                subjects: vec!["iot.>".into()],
                storage: async_nats::jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await
            .expect("stream created");
        Some(NatsProbe { server })
    }
}

impl Probe for NatsProbe {
    fn sink_toml(&self) -> String {
        format!(
            "[routes.sink.nats]\nurl = \"{}\"\nsubject = \"'iot.' + segment(topic, 1)\"\n",
            self.server.url()
        )
    }

    fn deduplicates(&self) -> bool {
        true
    }

    async fn rows(&mut self) -> Vec<Value> {
        let client = async_nats::connect(self.server.url())
            .await
            .expect("connects");
        let jetstream = async_nats::jetstream::new(client);
        let mut stream = jetstream.get_stream("IOT").await.expect("the stream");
        let last = stream
            .info()
            .await
            .expect("stream info")
            .state
            .last_sequence;
        let mut rows = Vec::new();
        for sequence in 1..=last {
            if let Ok(message) = stream.get_raw_message(sequence).await {
                let mut row: Value = serde_json::from_slice(&message.payload).expect("JSON");
                row["subject"] = message.subject.to_string().into();
                rows.push(row);
            }
        }
        for row in &rows {
            assert_eq!(
                row["subject"].as_str(),
                Some(format!("iot.{}", row["device"].as_str().unwrap_or("")).as_str())
            );
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
        vec![unmappable(999), unmappable(1000)]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_arrive_on_the_stream_with_the_mapping_applied() {
    let Some(probe) = NatsProbe::start().await else {
        return;
    };
    scenario::mapping(probe).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restarted_mid_stream_loses_nothing() {
    let Some(probe) = NatsProbe::start().await else {
        return;
    };
    scenario::sink_restart(probe).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_killed_mid_stream_loses_nothing() {
    let Some(probe) = NatsProbe::start().await else {
        return;
    };
    scenario::bridge_kill(probe).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmappable_messages_go_to_the_dead_letter_topic() {
    let Some(probe) = NatsProbe::start().await else {
        return;
    };
    scenario::poison(probe).await;
}
