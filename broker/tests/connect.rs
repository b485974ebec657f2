//! CONNECT / CONNACK: return codes (3.1.1), reason codes (5.0), client
//! identifiers, CONNACK properties and the enhanced-authentication refusal.

use crate::common;

use common::*;

#[tokio::test]
async fn v311_connect_is_accepted_without_session() {
    let broker = TestBroker::start_default().await;
    let (raw, ack) = Raw::connect(&broker, &Connect::v4("c1")).await;
    assert!(
        !ack.session_present,
        "clean session never has a session present"
    );
    raw.disconnect().await;
}

#[tokio::test]
async fn mqtt31_connect_is_accepted() {
    let broker = TestBroker::start_default().await;
    let connect = Connect {
        level: 3,
        ..Connect::v4("legacy-31")
    };
    let (mut raw, _) = Raw::connect(&broker, &connect).await;
    // The connection is usable: a subscription is granted.
    assert_eq!(raw.subscribe(1, &[("a/b", 1)]).await, vec![1]);
}

#[tokio::test]
async fn v5_connect_is_accepted_with_success_reason() {
    let broker = TestBroker::start_default().await;
    let (_raw, ack) = Raw::connect(&broker, &Connect::v5("c5")).await;
    assert!(!ack.session_present);
    // A client id was supplied, so none is assigned.
    assert!(!ack.props.has(prop::ASSIGNED_CLIENT_IDENTIFIER), "{ack:?}");
    // Any Receive Maximum the server announces must be non-zero [MQTT-3.2.2.3.3].
    if let Some(n) = ack.props.num(prop::RECEIVE_MAXIMUM) {
        assert!(n > 0, "Receive Maximum 0 is a protocol error");
    }
}

#[tokio::test]
async fn rumqttc_v311_and_v5_clients_connect() {
    let broker = TestBroker::start_default().await;
    let (c4, ack4) = Client4::connect(&broker, "rumqttc-4", |_| {}).await;
    assert_eq!(ack4.code, rumqttc::ConnectReturnCode::Success);
    let (c5, ack5) = Client5::connect(&broker, "rumqttc-5", |_| {}).await;
    assert_eq!(
        ack5.code,
        rumqttc::v5::mqttbytes::v5::ConnectReturnCode::Success
    );
    c4.disconnect().await;
    c5.disconnect().await;
}

#[tokio::test]
async fn unsupported_protocol_level_is_refused_and_closed() {
    let broker = TestBroker::start_default().await;
    let connect = Connect {
        level: 6,
        ..Connect::v4("future")
    };
    let mut raw = Raw::open(&broker).await;
    raw.send(&connect.encode()).await;
    // 3.1.1 [MQTT-3.1.2-2]: CONNACK 0x01 then close. A 5.0 server may answer
    // with 0x84 instead; the client's version is unknown, so either is right.
    let ack = raw.expect_connack().await;
    assert!(
        matches!(ack.code, 0x01 | 0x84),
        "unexpected code {:#04x}",
        ack.code
    );
    raw.expect_closed().await;
}

#[tokio::test]
async fn unknown_protocol_name_closes_the_connection() {
    let broker = TestBroker::start_default().await;
    let mut body = Vec::new();
    put_str(&mut body, "MQTX");
    body.extend_from_slice(&[4, 0x02, 0, 30]);
    put_str(&mut body, "bad-name");
    let mut raw = Raw::open(&broker).await;
    raw.send(&frame(0x10, &body)).await;
    // [MQTT-3.1.2-1]: the server MAY disconnect without CONNACK; a CONNACK,
    // if any, must be a refusal.
    match raw.recv_within(TIMEOUT).await {
        Recv::Closed => {}
        Recv::Packet(Pkt::ConnAck(a)) => {
            assert_ne!(a.code, 0, "a bad protocol name must not be accepted");
            raw.expect_closed().await;
        }
        other => panic!("expected close, got {other:?}"),
    }
}

#[tokio::test]
async fn v311_empty_client_id_without_clean_session_is_rejected() {
    let broker = TestBroker::start_default().await;
    let mut raw = Raw::open(&broker).await;
    raw.send_connect(&Connect::v4("").clean(false)).await;
    let ack = raw.expect_connack().await;
    assert_eq!(ack.code, 0x02, "Identifier rejected [MQTT-3.1.3-8]");
    assert!(!ack.session_present, "[MQTT-3.2.2-4]");
    raw.expect_closed().await;
}

#[tokio::test]
async fn v311_empty_client_id_with_clean_session_is_accepted() {
    let broker = TestBroker::start_default().await;
    let (mut raw, ack) = Raw::connect(&broker, &Connect::v4("")).await;
    assert!(!ack.session_present);
    assert_eq!(raw.subscribe(1, &[("t", 0)]).await, vec![0]);
}

#[tokio::test]
async fn v5_empty_client_id_gets_an_assigned_identifier() {
    let broker = TestBroker::start_default().await;
    let (_a, ack_a) = Raw::connect(&broker, &Connect::v5("")).await;
    let (_b, ack_b) = Raw::connect(&broker, &Connect::v5("")).await;
    let id_a = ack_a
        .props
        .string(prop::ASSIGNED_CLIENT_IDENTIFIER)
        .expect("assigned client id");
    let id_b = ack_b
        .props
        .string(prop::ASSIGNED_CLIENT_IDENTIFIER)
        .expect("assigned client id");
    assert!(!id_a.is_empty());
    assert_ne!(id_a, id_b, "assigned identifiers must be unique");
}

#[tokio::test]
async fn v5_assigned_identifier_is_usable_with_rumqttc() {
    let broker = TestBroker::start_default().await;
    let (mut c, ack) = Client5::connect(&broker, "", |_| {}).await;
    let assigned = ack.properties.and_then(|p| p.assigned_client_identifier);
    assert!(assigned.is_some_and(|id| !id.is_empty()));
    // The session works: the client receives what it subscribed to.
    c.subscribe("x/y", rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        .await;
    c.publish(
        "x/y",
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        false,
        "hi",
        Default::default(),
    )
    .await;
    assert_eq!(&c.recv().await.payload[..], b"hi");
}

#[tokio::test]
async fn username_and_password_are_accepted_when_anonymous_is_allowed() {
    let broker = TestBroker::start_default().await;
    let connect = Connect {
        username: Some("alice".into()),
        password: Some(b"secret".to_vec()),
        ..Connect::v4("with-creds")
    };
    Raw::connect(&broker, &connect).await;
}

#[tokio::test]
async fn v311_password_without_username_is_a_protocol_violation() {
    let broker = TestBroker::start_default().await;
    let connect = Connect {
        password: Some(b"secret".to_vec()),
        ..Connect::v4("pw-only")
    };
    let mut raw = Raw::open(&broker).await;
    raw.send_connect(&connect).await;
    // [MQTT-3.1.2-22]: the server closes; a CONNACK, if sent, is a refusal.
    match raw.recv_within(TIMEOUT).await {
        Recv::Closed => {}
        Recv::Packet(Pkt::ConnAck(a)) => {
            assert_ne!(a.code, 0);
            raw.expect_closed().await;
        }
        other => panic!("expected close, got {other:?}"),
    }
}

#[tokio::test]
async fn anonymous_client_is_refused_when_anonymous_is_not_allowed() {
    let broker = TestBroker::start(BrokerOpts {
        deny_anonymous: true,
        ..BrokerOpts::default()
    })
    .await;
    let mut raw = Raw::open(&broker).await;
    raw.send_connect(&Connect::v4("anon4")).await;
    assert_eq!(raw.expect_connack().await.code, 0x05, "Not authorized");
    raw.expect_closed().await;

    let mut raw = Raw::open(&broker).await;
    raw.send_connect(&Connect::v5("anon5")).await;
    assert_eq!(raw.expect_connack().await.code, 0x87, "Not authorized");
    raw.expect_closed().await;
}

#[tokio::test]
async fn v5_authentication_method_without_enhanced_auth_is_refused() {
    let broker = TestBroker::start_default().await;
    let connect = Connect::v5("scram").props(
        Props::new()
            .str(prop::AUTHENTICATION_METHOD, "SCRAM-SHA-1")
            .bin(prop::AUTHENTICATION_DATA, b"client-first"),
    );
    let mut raw = Raw::open(&broker).await;
    raw.send_connect(&connect).await;
    let ack = raw.expect_connack().await;
    assert_eq!(ack.code, 0x8C, "Bad authentication method");
    raw.expect_closed().await;
}

#[tokio::test]
async fn v5_malformed_connect_flags_are_refused() {
    let broker = TestBroker::start_default().await;
    // Reserved flag bit 0 set [MQTT-3.1.2-3].
    let mut bytes = Connect::v5("reserved").encode();
    let flags_at = 2 + 6 + 1; // fixed header, "MQTT", level
    bytes[flags_at] |= 0x01;
    let mut raw = Raw::open(&broker).await;
    raw.v5 = true;
    raw.send(&bytes).await;
    raw.expect_connect_refused(0x81).await;
}

#[tokio::test]
async fn v5_will_qos_3_is_malformed() {
    let broker = TestBroker::start_default().await;
    let connect = Connect::v5("will-qos3").will(Will {
        qos: 3,
        ..Will::new("w", b"x")
    });
    let mut raw = Raw::open(&broker).await;
    raw.send_connect(&connect).await;
    raw.expect_connect_refused(0x81).await;
}

#[tokio::test]
async fn v5_duplicate_connect_property_is_a_protocol_error() {
    let broker = TestBroker::start_default().await;
    let connect = Connect::v5("dup-prop").props(
        Props::new()
            .four(prop::SESSION_EXPIRY_INTERVAL, 10)
            .four(prop::SESSION_EXPIRY_INTERVAL, 20),
    );
    let mut raw = Raw::open(&broker).await;
    raw.send_connect(&connect).await;
    raw.expect_connect_refused(0x82).await;
}

#[tokio::test]
async fn v5_receive_maximum_zero_is_a_protocol_error() {
    let broker = TestBroker::start_default().await;
    let connect = Connect::v5("rm0").props(Props::new().two(prop::RECEIVE_MAXIMUM, 0));
    let mut raw = Raw::open(&broker).await;
    raw.send_connect(&connect).await;
    raw.expect_connect_refused(0x82).await;
}

#[tokio::test]
async fn new_connections_are_logged() {
    let broker = TestBroker::start_default().await;
    let (_raw, _) = Raw::connect(&broker, &Connect::v4("log-probe-7")).await;
    // mosquitto-style event line: "New client connected from ... as log-probe-7 (...)".
    assert!(
        broker.wait_for_log("log-probe-7", TIMEOUT).await,
        "no log line names the client"
    );
    let logs = broker.logs();
    assert!(
        logs.iter()
            .any(|l| l.contains("New client connected") && l.contains("log-probe-7")),
        "{logs:#?}"
    );
}

#[tokio::test]
async fn client_identifier_over_the_configured_limit_is_refused() {
    if skip_on_mosquitto("mosquitto has no client identifier length limit") {
        return;
    }
    let broker = TestBroker::start(BrokerOpts {
        max_client_id_len: Some(23),
        ..BrokerOpts::default()
    })
    .await;
    let mut raw = Raw::open(&broker).await;
    raw.send_connect(&Connect::v4("twenty-four-characters-x"))
        .await;
    assert_eq!(raw.expect_connack().await.code, 0x02, "Identifier rejected");
    raw.expect_closed().await;

    let mut raw = Raw::open(&broker).await;
    raw.send_connect(&Connect::v5("twenty-four-characters-x"))
        .await;
    assert_eq!(
        raw.expect_connack().await.code,
        0x85,
        "Client Identifier not valid"
    );
    raw.expect_closed().await;

    // At the limit is fine.
    Raw::connect(&broker, &Connect::v5("twenty-three-characters")).await;
}
