//! Commands to devices: `POST /publish`, a JetStream consumer and a
//! RabbitMQ queue, each published into the real broker.

use crate::common;

use std::time::{Duration, Instant};

use common::servers::{Nats, Rabbit};
use common::*;

async fn wait_for(
    collector: &Collector,
    count: usize,
) -> Vec<(String, bytes::Bytes, Vec<(String, String)>)> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let messages = collector.messages.lock().unwrap().clone();
        if messages.len() >= count {
            return messages;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {count} commands arrived",
            messages.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_publish_reaches_the_device_and_checks_token_and_topic() {
    let broker = SourceBroker::start();
    let device = Collector::start(broker.port, "devices/#").await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let config = format!(
        "{}\n[[commands]]\nname = \"api\"\nfrom = {{ http = {{ token_file = \"{}\" }} }}\nallowed_topics = [\"devices/+/commands\"]\n",
        head(broker.port),
        token.display()
    );
    let bridge = tokio::task::block_in_place(|| Bridge::start(dir.path(), &config));
    let url = format!("http://127.0.0.1:{}/publish", bridge.http_port);
    let tls = kubemqtt_bridge::secrets::client_config(&Default::default()).unwrap();
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()
        .unwrap();
    let post = |token: &'static str, body: serde_json::Value| {
        client
            .post(&url)
            .bearer_auth(token)
            .body(body.to_string())
            .send()
    };

    let ok = post("s3cret", serde_json::json!({"topic": "devices/d1/commands", "payload": {"reboot": true}, "qos": 1, "user_properties": {"by": "ops"}}))
        .await
        .unwrap();
    assert_eq!(ok.status(), 200, "{:?}", ok.text().await);
    let messages = wait_for(&device, 1).await;
    assert_eq!(messages[0].0, "devices/d1/commands");
    assert_eq!(&messages[0].1[..], br#"{"reboot":true}"#);
    assert!(messages[0].2.contains(&("by".into(), "ops".into())));

    let wrong_token = post("guess", serde_json::json!({"topic": "devices/d1/commands"}))
        .await
        .unwrap();
    assert_eq!(wrong_token.status(), 401);
    let outside = post("s3cret", serde_json::json!({"topic": "admin/shutdown"}))
        .await
        .unwrap();
    assert_eq!(outside.status(), 403);
    let wildcard = post("s3cret", serde_json::json!({"topic": "devices/+/commands"}))
        .await
        .unwrap();
    assert_eq!(wildcard.status(), 403);
    let bad = client
        .post(&url)
        .bearer_auth("s3cret")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let bad_qos = post(
        "s3cret",
        serde_json::json!({"topic": "devices/d1/commands", "qos": 3}),
    )
    .await
    .unwrap();
    assert_eq!(bad_qos.status(), 400);

    // A last accepted command: once it arrives, any refused one published
    // before it would have arrived too.
    let last = post(
        "s3cret",
        serde_json::json!({"topic": "devices/d2/commands", "qos": 1}),
    )
    .await
    .unwrap();
    assert_eq!(last.status(), 200, "{:?}", last.text().await);
    let messages = wait_for(&device, 2).await;
    let topics: Vec<&str> = messages.iter().map(|m| m.0.as_str()).collect();
    assert_eq!(
        topics,
        ["devices/d1/commands", "devices/d2/commands"],
        "refused commands were not published"
    );
    let metrics = bridge.metrics();
    assert!(
        metrics.contains("kubemqtt_bridge_commands_total{outcome=\"published\",source=\"api\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kubemqtt_bridge_commands_total{outcome=\"refused\",source=\"api\"} 2"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_commands_are_published_then_acknowledged() {
    let Some(nats) = tokio::task::block_in_place(Nats::start) else {
        return;
    };
    let broker = SourceBroker::start();
    let device = Collector::start(broker.port, "devices/#").await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let jetstream = async_nats::jetstream::new(client);
    let stream = jetstream
        .create_stream(async_nats::jetstream::stream::Config {
            name: "CMDS".into(),
            subjects: vec!["cmd.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    for i in 0..20 {
        jetstream
            .publish(format!("cmd.dev{i}"), format!("{{\"n\": {i}}}").into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // Outside allowed_topics: terminated, not retried forever.
    jetstream
        .publish("cmd.x.y", "no".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}\n[[commands]]\nname = \"js\"\ntopic = \"'devices/' + segment(replace(subject, '.', '/'), 1) + '/commands/' + string(len(subject))\"\nallowed_topics = [\"devices/+/commands/+\"]\nfrom = {{ nats = {{ url = \"{}\", stream = \"CMDS\", consumer = \"bridge\" }} }}\n",
        head(broker.port),
        nats.url()
    );
    let bridge = tokio::task::block_in_place(|| Bridge::start(dir.path(), &config));
    let messages = wait_for(&device, 21).await;
    let topics: std::collections::BTreeSet<&str> = messages.iter().map(|m| m.0.as_str()).collect();
    assert!(topics.contains("devices/dev0/commands/8"), "{topics:?}");
    assert!(topics.contains("devices/dev19/commands/9"), "{topics:?}");
    assert!(topics.contains("devices/x/commands/7"), "{topics:?}");
    // Every command acknowledged on the JetStream side.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut consumer: async_nats::jetstream::consumer::PullConsumer =
            stream.get_consumer("bridge").await.unwrap();
        let info = consumer.info().await.unwrap();
        if info.num_ack_pending == 0 && info.num_pending == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "unacknowledged: {info:?}\n{}",
            bridge.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_commands_are_published_then_acknowledged() {
    use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
    use lapin::types::{AMQPValue, FieldTable};
    let Some(rabbit) = tokio::task::block_in_place(Rabbit::shared) else {
        return;
    };
    let broker = SourceBroker::start();
    let device = Collector::start(broker.port, "devices/#").await;
    let queue = format!("commands-{}", free_port());
    let connection = lapin::Connection::connect(&rabbit.url(), Default::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    for i in 0..10 {
        let mut headers = FieldTable::default();
        headers.insert(
            "topic".into(),
            AMQPValue::LongString(format!("devices/d{i}/commands").into()),
        );
        channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                format!("cmd {i}").as_bytes(),
                lapin::BasicProperties::default().with_headers(headers),
            )
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}\n[[commands]]\nname = \"rabbit\"\nfrom = {{ amqp = {{ url = \"{}\", queue = \"{queue}\" }} }}\n",
        head(broker.port),
        rabbit.url()
    );
    let bridge = tokio::task::block_in_place(|| Bridge::start(dir.path(), &config));
    let messages = wait_for(&device, 10).await;
    assert!(messages
        .iter()
        .any(|m| m.0 == "devices/d3/commands" && &m.1[..] == b"cmd 3"));
    let deadline = Instant::now() + PATIENCE;
    loop {
        let declared = channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        if declared.message_count() == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "commands left in the queue\n{}",
            bridge.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
