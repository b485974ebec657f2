//! WebSocket (`ws`) and secure WebSocket (`wss`) listeners, exercised with a
//! real client: rumqttc's WebSocket transport.

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A `ws` listener on `{port:ws}` with the default path `/mqtt`, a `wss`
/// one on `{port:wss}` with path `/secure`, the HTTP server on
/// `{port:http}`.
fn ws_listeners(dir: &std::path::Path, server: &CertKey) -> String {
    let cert = write_file(dir, "server.crt", &server.cert_pem);
    let key = write_file(dir, "server.key", &server.key_pem);
    format!(
        "[[listeners]]\nname = \"ws\"\nbind = \"127.0.0.1:{{port:ws}}\"\nprotocol = \"ws\"\n\
         [[listeners]]\nname = \"wss\"\nbind = \"127.0.0.1:{{port:wss}}\"\nprotocol = \"wss\"\n\
         path = \"/secure\"\n\
         [listeners.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n\
         [http]\nbind = \"127.0.0.1:{{port:http}}\"\n",
        cert.display(),
        key.display()
    )
}

fn ws_options4(id: &str, port: u16) -> rumqttc::MqttOptions {
    let mut options = rumqttc::MqttOptions::new(id, format!("ws://127.0.0.1:{port}/mqtt"), port);
    options.set_transport(rumqttc::Transport::Ws);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_max_packet_size(1 << 20, 1 << 20);
    options
}

fn ws_options5(id: &str, url: String, port: u16) -> rumqttc::v5::MqttOptions {
    let mut options = rumqttc::v5::MqttOptions::new(id, url, port);
    options.set_transport(rumqttc::Transport::Ws);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_max_packet_size(Some(1 << 20));
    options
}

#[tokio::test]
async fn mqtt_311_and_5_over_websocket() {
    let fixtures = tempfile::tempdir().unwrap();
    let ca = TestCa::new("CA");
    let Some(broker) = OpsBroker::start(BrokerOpts {
        extra_toml: ws_listeners(fixtures.path(), &ca.server_cert()),
        ..BrokerOpts::default()
    })
    .await
    else {
        return;
    };
    let port = broker.port_of("ws");

    let (mut ws4, ack) = Client4::connect_options(ws_options4("ws-311", port)).await;
    assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
    let (mut ws5, _) = Client5::connect_options(ws_options5(
        "ws-5",
        format!("ws://127.0.0.1:{port}/mqtt"),
        port,
    ))
    .await;
    ws4.subscribe("to/ws", rumqttc::QoS::AtLeastOnce).await;
    ws5.subscribe("to/ws", rumqttc::v5::mqttbytes::QoS::ExactlyOnce)
        .await;
    let mut tcp = raw_subscriber5(&broker, "tcp", "from/ws", 1).await;

    // TCP -> both WebSocket clients; a payload larger than one read, so
    // that packets span WebSocket messages and socket reads.
    let big = vec![b'w'; 200_000];
    tcp.publish_qos1(&Pub::new("to/ws", &big).qos(1, 1)).await;
    assert_eq!(ws4.recv().await.payload.len(), big.len());
    assert_eq!(ws5.recv().await.payload.len(), big.len());

    // WebSocket -> TCP, QoS 1 and 2.
    ws4.publish("from/ws", rumqttc::QoS::AtLeastOnce, false, "from 3.1.1")
        .await;
    ws5.publish(
        "from/ws",
        rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
        false,
        "from 5",
        Default::default(),
    )
    .await;
    let mut payloads = Vec::new();
    for _ in 0..2 {
        let msg = tcp.expect_publish().await;
        payloads.push(String::from_utf8(msg.payload.clone()).unwrap());
        tcp.ack_publish(&msg).await;
    }
    payloads.sort();
    assert_eq!(payloads, ["from 3.1.1", "from 5"]);

    let metrics = broker.metrics().await;
    assert_eq!(
        metrics.get("kubemqtt_connections", &[("listener", "ws")]),
        Some(2.0)
    );
}

#[tokio::test]
async fn mqtt_over_secure_websocket_on_a_custom_path() {
    let fixtures = tempfile::tempdir().unwrap();
    let ca = TestCa::new("CA");
    let Some(broker) = OpsBroker::start(BrokerOpts {
        extra_toml: ws_listeners(fixtures.path(), &ca.server_cert()),
        ..BrokerOpts::default()
    })
    .await
    else {
        return;
    };
    let port = broker.port_of("wss");
    let mut options = ws_options5("wss", format!("wss://127.0.0.1:{port}/secure"), port);
    options.set_transport(rumqttc::Transport::wss_with_config(
        rumqttc::TlsConfiguration::Rustls(tls_client_config(&ca.cert_pem, None)),
    ));
    let (mut wss, _) = Client5::connect_options(options).await;
    wss.subscribe("s/#", rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        .await;
    let (mut tcp, _) = Raw::connect(&broker, &Connect::v4("tcp")).await;
    tcp.publish_qos1(&Pub::new("s/1", b"secure ws").qos(1, 1))
        .await;
    assert_eq!(wss.recv().await.payload, "secure ws");
}

/// The HTTP status of a WebSocket upgrade request for `path`, and the
/// subprotocol the server chose.
async fn upgrade(addr: SocketAddr, path: &str, protocols: &str) -> (u16, Option<String>) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: {protocols}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let read = async {
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).await.unwrap_or(0) == 1 {
            head.push(byte[0]);
        }
    };
    tokio::time::timeout(TIMEOUT, read)
        .await
        .expect("upgrade response");
    let text = String::from_utf8_lossy(&head).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad response {text:?}"));
    let protocol = text.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .starts_with("sec-websocket-protocol:")
            .then(|| l.split_once(':').unwrap().1.trim().to_owned())
    });
    (status, protocol)
}

#[tokio::test]
async fn upgrade_path_and_subprotocol() {
    let fixtures = tempfile::tempdir().unwrap();
    let ca = TestCa::new("CA");
    let Some(broker) = OpsBroker::start(BrokerOpts {
        extra_toml: ws_listeners(fixtures.path(), &ca.server_cert()),
        ..BrokerOpts::default()
    })
    .await
    else {
        return;
    };
    let addr = broker.addr_of("ws");
    assert_eq!(
        upgrade(addr, "/mqtt", "mqtt").await,
        (101, Some("mqtt".into()))
    );
    // Old clients offer `mqttv3.1`; the broker picks what it speaks.
    assert_eq!(
        upgrade(addr, "/mqtt", "wamp, mqttv3.1").await,
        (101, Some("mqttv3.1".into()))
    );
    assert_eq!(upgrade(addr, "/elsewhere", "mqtt").await.0, 404);
    assert!(
        broker.wait_for_log("WebSocket upgrade from", TIMEOUT).await,
        "a refused upgrade is logged"
    );

    // A real client pointed at the wrong path does not get in.
    let port = broker.port_of("ws");
    let mut wrong = rumqttc::MqttOptions::new("lost", format!("ws://127.0.0.1:{port}/nope"), port);
    wrong.set_transport(rumqttc::Transport::Ws);
    let (_client, mut eventloop) = rumqttc::AsyncClient::new(wrong, 10);
    let result = tokio::time::timeout(TIMEOUT, eventloop.poll())
        .await
        .expect("connection attempt ends");
    assert!(result.is_err(), "connected on a wrong path: {result:?}");
}
