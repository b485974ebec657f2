//! The MQTT sink, with mosquitto as the remote broker.

use crate::common;

use common::scenario::{self, unmappable, Probe};
use common::servers::Mosquitto;
use common::*;
use kubemqtt_bridge::mqtt::Outbound;
use serde_json::Value;

struct MqttProbe {
    server: Mosquitto,
    collector: Collector,
}

impl MqttProbe {
    async fn start() -> Option<MqttProbe> {
        let server = tokio::task::block_in_place(Mosquitto::start)?;
        let collector = Collector::start(server.port, "plant/#").await;
        Some(MqttProbe { server, collector })
    }
}

impl Probe for MqttProbe {
    fn sink_toml(&self) -> String {
        format!(
            "[routes.sink.mqtt]\nhost = \"127.0.0.1\"\nport = {}\ntopic = \"'plant/' + topic\"\n",
            self.server.port
        )
    }

    fn deduplicates(&self) -> bool {
        false
    }

    async fn rows(&mut self) -> Vec<Value> {
        let messages = self.collector.messages.lock().unwrap().clone();
        for (topic, _, properties) in &messages {
            assert!(topic.starts_with("plant/sensors/"), "{topic}");
            assert!(
                properties.iter().any(|(name, _)| name == "kubemqtt-key"),
                "the key property"
            );
        }
        self.collector.json()
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
async fn messages_arrive_on_the_remote_broker_with_the_mapping_applied() {
    let Some(probe) = MqttProbe::start().await else {
        return;
    };
    scenario::mapping(probe).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_broker_restarted_mid_stream_loses_nothing() {
    let Some(probe) = MqttProbe::start().await else {
        return;
    };
    scenario::sink_restart(probe).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_killed_mid_stream_loses_nothing() {
    let Some(probe) = MqttProbe::start().await else {
        return;
    };
    scenario::bridge_kill(probe).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmappable_messages_go_to_the_dead_letter_topic() {
    let Some(probe) = MqttProbe::start().await else {
        return;
    };
    scenario::poison(probe).await;
}
