use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::json;

use super::events::os_error_text;
use super::*;
use crate::codec::{
    Auth, Connack, Connect, Disconnect, Packet, Properties, ProtocolVersion, PubResponse, Publish,
    QoS, ReasonCode, Subscribe, SubscriptionOptions, Unsubscribe, Will,
};
use crate::config::{LogConfig, LogFormat, LogLevel};

/// 2024-11-25T21:20:00.123Z.
fn fixed_clock() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(1_732_569_600_123)
}

fn logger(config: LogConfig) -> (Logger, Arc<Mutex<Vec<String>>>) {
    let (mut logger, lines) = Logger::capture(&config);
    logger.clock = fixed_clock;
    (logger, lines)
}

/// Text lines without time stamps, at `level`.
fn text(level: LogLevel, verbose: bool) -> (Logger, Arc<Mutex<Vec<String>>>) {
    logger(LogConfig {
        level,
        format: LogFormat::Text,
        verbose,
        timestamps: false,
    })
}

fn json_logger(verbose: bool) -> (Logger, Arc<Mutex<Vec<String>>>) {
    logger(LogConfig {
        level: LogLevel::Info,
        format: LogFormat::Json,
        verbose,
        timestamps: true,
    })
}

/// Takes the captured lines.
fn take(lines: &Arc<Mutex<Vec<String>>>) -> Vec<String> {
    std::mem::take(&mut *lines.lock())
}

/// Takes the single captured JSON line, parsed.
fn take_json(lines: &Arc<Mutex<Vec<String>>>) -> Value {
    let taken = take(lines);
    assert_eq!(taken.len(), 1, "{taken:?}");
    serde_json::from_str(&taken[0]).unwrap()
}

fn peer() -> SocketAddr {
    "10.0.0.7:51234".parse().unwrap()
}

fn connect(protocol: ProtocolVersion, username: Option<&str>, will: Option<Will>) -> Connect {
    Connect {
        protocol,
        clean_start: false,
        keep_alive: 60,
        client_id: "dev-1".to_owned(),
        will,
        username: username.map(str::to_owned),
        password: None,
        properties: Properties::default(),
    }
}

fn will() -> Will {
    Will {
        topic: "w/t".to_owned(),
        payload: Bytes::from_static(b"gone!"),
        qos: QoS::AtLeastOnce,
        retain: true,
        delay_interval: None,
        properties: Default::default(),
    }
}

fn publish(qos: QoS, packet_id: Option<u16>, topic: &str, payload: &'static [u8]) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id,
        properties: Default::default(),
        payload: Bytes::from_static(payload),
    })
}

fn response(packet_id: u16, reason: u8) -> PubResponse {
    PubResponse::new(packet_id, ReasonCode(reason))
}

#[test]
fn text_lines_have_mosquittos_timestamp_prefix() {
    let (log, lines) = logger(LogConfig::default());
    log.new_connection(peer(), 1883);
    assert_eq!(
        take(&lines),
        ["1732569600: New connection from 10.0.0.7:51234 on port 1883."]
    );
}

#[test]
fn client_connected_prints_protocol_clean_keepalive_and_user() {
    let (log, lines) = text(LogLevel::Info, false);
    log.client_connected(
        peer(),
        "dev-1",
        &connect(ProtocolVersion::V311, Some("alice"), None),
        Some("alice"),
    );
    let mut v31 = connect(ProtocolVersion::V31, None, None);
    v31.clean_start = true;
    log.client_connected(peer(), "dev-1", &v31, None);
    log.client_connected(
        peer(),
        "auto-1",
        &connect(ProtocolVersion::V5, None, None),
        None,
    );
    // A certificate user: the name comes from the certificate.
    log.client_connected(
        peer(),
        "sensor-1",
        &connect(ProtocolVersion::V311, None, None),
        Some("sensor"),
    );
    assert_eq!(
        take(&lines),
        [
            "New client connected from 10.0.0.7:51234 as dev-1 (p2, c0, k60, u'alice').",
            "New client connected from 10.0.0.7:51234 as dev-1 (p1, c1, k60).",
            "New client connected from 10.0.0.7:51234 as auto-1 (p5, c0, k60).",
            "New client connected from 10.0.0.7:51234 as sensor-1 (p2, c0, k60, u'sensor').",
        ]
    );
}

#[test]
fn verbose_client_connected_adds_the_will_lines() {
    let (log, lines) = text(LogLevel::Info, true);
    log.client_connected(
        peer(),
        "dev-1",
        &connect(ProtocolVersion::V311, None, Some(will())),
        None,
    );
    log.client_connected(
        peer(),
        "dev-1",
        &connect(ProtocolVersion::V311, None, None),
        None,
    );
    assert_eq!(
        take(&lines),
        [
            "New client connected from 10.0.0.7:51234 as dev-1 (p2, c0, k60).",
            "Will message specified (5 bytes) (r1, q1).",
            "\tw/t",
            "New client connected from 10.0.0.7:51234 as dev-1 (p2, c0, k60).",
            "No will message specified.",
        ]
    );
}

#[test]
fn ipv6_peers_are_printed_like_mosquitto() {
    let (log, lines) = text(LogLevel::Info, false);
    log.new_connection("[::1]:5000".parse().unwrap(), 1883);
    assert_eq!(take(&lines), ["New connection from ::1:5000 on port 1883."]);
}

#[test]
fn disconnect_events_use_mosquittos_words() {
    let (log, lines) = text(LogLevel::Info, false);
    log.already_connected("dev-1");
    log.keepalive_timeout("dev-1");
    log.disconnected("dev-1");
    log.connection_closed(Some("dev-1"));
    log.connection_closed(None);
    log.socket_error(Some("dev-1"), &std::io::ErrorKind::ConnectionReset.into());
    let timed_out = std::io::Error::new(std::io::ErrorKind::TimedOut, "Connection timed out");
    log.socket_error(Some("dev-1"), &timed_out);
    log.not_authorised(None);
    log.not_authorised(Some("dev-1"));
    log.protocol_error(Some("dev-1"), "second CONNECT");
    log.protocol_error(None, "first packet was not CONNECT");
    log.malformed_packet(Some("dev-1"), "topic is not UTF-8");
    log.oversize_packet(Some("dev-1"));
    assert_eq!(
        take(&lines),
        [
            "Client dev-1 already connected, closing old connection.",
            "Client dev-1 has exceeded timeout, disconnecting.",
            "Client dev-1 disconnected.",
            "Client dev-1 closed its connection.",
            "Client <unknown> closed its connection.",
            "Client dev-1 closed its connection.",
            "Client dev-1 disconnected: Connection timed out.",
            "Client <unknown> disconnected, not authorised.",
            "Client dev-1 disconnected, not authorised.",
            "Client dev-1 disconnected due to protocol error.",
            "Client <unknown> disconnected due to protocol error.",
            "Client dev-1 disconnected due to malformed packet.",
            "Client dev-1 disconnected due to oversize packet.",
        ]
    );
}

#[test]
fn os_errors_lose_the_rust_suffix() {
    let error = std::io::Error::from_raw_os_error(1);
    assert!(error.to_string().contains("(os error 1)"));
    let text = os_error_text(&error);
    assert!(!text.is_empty() && !text.contains("os error"), "{text}");
}

#[test]
fn lifecycle_lines() {
    let (log, lines) = text(LogLevel::Info, false);
    log.starting();
    log.config_loaded(Some(Path::new("/etc/kubemqtt/broker.toml")));
    log.config_loaded(None);
    log.listening("0.0.0.0:1883".parse().unwrap());
    log.listening("[::]:8883".parse().unwrap());
    log.running();
    log.terminating();
    assert_eq!(
        take(&lines),
        [
            format!("kubemqtt-broker version {VERSION} starting"),
            "Config loaded from /etc/kubemqtt/broker.toml.".to_owned(),
            "Using default config.".to_owned(),
            "Opening ipv4 listen socket on port 1883.".to_owned(),
            "Opening ipv6 listen socket on port 8883.".to_owned(),
            format!("kubemqtt-broker version {VERSION} running"),
            format!("kubemqtt-broker version {VERSION} terminating"),
        ]
    );
}

/// The QoS 1 and 2 flows as mosquitto 2.0.11 -v printed them.
#[test]
fn verbose_publish_flows_match_mosquitto() {
    let (log, lines) = text(LogLevel::Info, true);
    assert!(log.verbose());
    let connack = Packet::Connack(Connack {
        session_present: false,
        reason: ReasonCode::SUCCESS,
        properties: Properties::default(),
    });
    log.sending("pub-2", &connack);
    log.received(
        "pub-2",
        &publish(QoS::ExactlyOnce, Some(1), "jiji/chat/9", b"hello22"),
    );
    log.sending("pub-2", &Packet::Pubrec(response(1, 0)));
    log.received("pub-2", &Packet::Pubrel(response(1, 0)));
    log.sending(
        "sub-1",
        &publish(QoS::ExactlyOnce, Some(2), "jiji/chat/9", b"hello22"),
    );
    log.sending("pub-2", &Packet::Pubcomp(response(1, 0)));
    log.received("sub-1", &Packet::Pubrec(response(2, 0)));
    log.sending("sub-1", &Packet::Pubrel(response(2, 0)));
    log.received("sub-1", &Packet::Pubcomp(response(2, 0)));
    log.received(
        "pub-0",
        &publish(QoS::AtMostOnce, None, "jiji/chat/9", b"hello"),
    );
    log.sending("pub-1", &Packet::Puback(response(7, 0)));
    log.received("dev-11", &Packet::Puback(response(1, 16)));
    assert_eq!(
        take(&lines),
        [
            "Sending CONNACK to pub-2 (0, 0)",
            "Received PUBLISH from pub-2 (d0, q2, r0, m1, 'jiji/chat/9', ... (7 bytes))",
            "Sending PUBREC to pub-2 (m1, rc0)",
            "Received PUBREL from pub-2 (Mid: 1)",
            "Sending PUBLISH to sub-1 (d0, q2, r0, m2, 'jiji/chat/9', ... (7 bytes))",
            "Sending PUBCOMP to pub-2 (m1)",
            "Received PUBREC from sub-1 (Mid: 2)",
            "Sending PUBREL to sub-1 (m2)",
            "Received PUBCOMP from sub-1 (Mid: 2, RC:0)",
            "Received PUBLISH from pub-0 (d0, q0, r0, m0, 'jiji/chat/9', ... (5 bytes))",
            "Sending PUBACK to pub-1 (m7, rc0)",
            "Received PUBACK from dev-11 (Mid: 1, RC:16)",
        ]
    );
}

#[test]
fn verbose_subscription_and_control_packets_match_mosquitto() {
    let (log, lines) = text(LogLevel::Info, true);
    let options = |qos| SubscriptionOptions {
        qos,
        ..Default::default()
    };
    log.received(
        "sub-1",
        &Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![
                ("jiji/chat/9".to_owned(), options(QoS::ExactlyOnce)),
                ("a/+".to_owned(), options(QoS::AtMostOnce)),
            ],
            properties: Properties::default(),
        }),
    );
    log.received(
        "u1",
        &Packet::Unsubscribe(Unsubscribe {
            packet_id: 5,
            filters: vec!["a/b".to_owned(), "c/#".to_owned()],
            properties: Properties::default(),
        }),
    );
    log.received("u1", &Packet::Pingreq);
    log.sending("u1", &Packet::Pingresp);
    log.received(
        "u1",
        &Packet::Disconnect(Disconnect {
            reason: ReasonCode::NORMAL_DISCONNECTION,
            properties: Properties::default(),
        }),
    );
    log.sending(
        "u2",
        &Packet::Disconnect(Disconnect {
            reason: ReasonCode::SESSION_TAKEN_OVER,
            properties: Properties::default(),
        }),
    );
    let auth = Auth {
        reason: ReasonCode::CONTINUE_AUTHENTICATION,
        properties: Properties {
            authentication_method: Some("SCRAM-SHA-1".to_owned()),
            ..Default::default()
        },
    };
    log.received("u3", &Packet::Auth(auth.clone()));
    log.sending("u3", &Packet::Auth(auth));
    assert_eq!(
        take(&lines),
        [
            "Received SUBSCRIBE from sub-1",
            "\tjiji/chat/9 (QoS 2)",
            "sub-1 2 jiji/chat/9",
            "\ta/+ (QoS 0)",
            "sub-1 0 a/+",
            "Received UNSUBSCRIBE from u1",
            "\ta/b",
            "u1 a/b",
            "\tc/#",
            "u1 c/#",
            "Received PINGREQ from u1",
            "Sending PINGRESP to u1",
            "Received DISCONNECT from u1",
            "Sending DISCONNECT to u2 (rc142)",
            "Received AUTH from u3 (rc24, SCRAM-SHA-1)",
            "Sending AUTH to u3 (rc24, SCRAM-SHA-1)",
        ]
    );
}

#[test]
fn received_connect_has_no_line() {
    let (log, lines) = text(LogLevel::Debug, false);
    let connect = connect(ProtocolVersion::V311, None, None);
    log.received("dev-1", &Packet::Connect(Box::new(connect)));
    assert!(take(&lines).is_empty());
}

#[test]
fn apply_changes_level_and_format_of_every_clone() {
    let (log, lines) = text(LogLevel::Info, false);
    let clone = log.clone();
    clone.received("dev-1", &Packet::Pingreq);
    assert!(take(&lines).is_empty());
    log.apply(&LogConfig {
        level: LogLevel::Debug,
        format: LogFormat::Json,
        verbose: false,
        timestamps: false,
    });
    assert!(clone.verbose());
    clone.received("dev-1", &Packet::Pingreq);
    let lines = take(&lines);
    assert_eq!(lines.len(), 1);
    assert!(
        lines[0].contains("\"event\":\"packet_received\""),
        "{lines:?}"
    );
}

#[test]
fn packet_lines_need_verbose_or_debug() {
    let (quiet, lines) = text(LogLevel::Info, false);
    assert!(!quiet.verbose());
    quiet.received("dev-1", &Packet::Pingreq);
    quiet.sending("dev-1", &Packet::Pingresp);
    assert!(take(&lines).is_empty());

    let (debug, lines) = text(LogLevel::Debug, false);
    assert!(debug.verbose());
    debug.received("dev-1", &Packet::Pingreq);
    assert_eq!(take(&lines), ["Received PINGREQ from dev-1"]);

    // verbose wins over a stricter level, as `mosquitto -v` does.
    let (verbose, lines) = text(LogLevel::Error, true);
    verbose.received("dev-1", &Packet::Pingreq);
    verbose.disconnected("dev-1");
    assert_eq!(
        take(&lines),
        ["Received PINGREQ from dev-1", "Client dev-1 disconnected."]
    );
}

#[test]
fn level_filters_less_severe_events() {
    let (log, lines) = text(LogLevel::Notice, false);
    log.starting();
    log.info("hello");
    log.new_connection(peer(), 1883);
    log.warning("careful");
    assert_eq!(
        take(&lines),
        [
            "New connection from 10.0.0.7:51234 on port 1883.",
            "careful"
        ]
    );

    let (log, lines) = text(LogLevel::Error, false);
    log.new_connection(peer(), 1883);
    log.disconnected("dev-1");
    log.warning("careful");
    log.already_connected("dev-1");
    log.error("broken");
    assert_eq!(
        take(&lines),
        [
            "Client dev-1 already connected, closing old connection.",
            "broken"
        ]
    );
}

#[test]
fn json_line_has_fixed_key_order_and_the_text_as_message() {
    let (log, lines) = json_logger(false);
    log.client_connected(
        peer(),
        "dev-1",
        &connect(ProtocolVersion::V311, Some("alice"), Some(will())),
        Some("alice"),
    );
    assert_eq!(
        take(&lines),
        [concat!(
            r#"{"ts":"2024-11-25T21:20:00.123Z","level":"notice","event":"client_connected","#,
            r#""message":"New client connected from 10.0.0.7:51234 as dev-1 (p2, c0, k60, u'alice').","#,
            r#""client_id":"dev-1","address":"10.0.0.7","port":51234,"protocol":"3.1.1","#,
            r#""clean_start":false,"keepalive":60,"username":"alice","#,
            r#""will":{"payload_len":5,"qos":1,"retain":true,"topic":"w/t"}}"#
        )]
    );
}

#[test]
fn json_events_carry_their_fields() {
    let (log, lines) = json_logger(false);
    log.new_connection(peer(), 1883);
    assert_eq!(
        take_json(&lines),
        json!({
            "ts": "2024-11-25T21:20:00.123Z",
            "level": "notice",
            "event": "new_connection",
            "message": "New connection from 10.0.0.7:51234 on port 1883.",
            "address": "10.0.0.7",
            "port": 51234,
            "local_port": 1883,
        })
    );

    log.protocol_error(None, "first packet was not CONNECT");
    let line = take_json(&lines);
    assert_eq!(line["event"], "protocol_error");
    assert_eq!(
        line["message"],
        "Client <unknown> disconnected due to protocol error."
    );
    assert_eq!(line["reason"], "first packet was not CONNECT");
    assert!(line.get("client_id").is_none());

    log.already_connected("dev-1");
    let line = take_json(&lines);
    assert_eq!(
        (&line["level"], &line["event"]),
        (&json!("error"), &json!("already_connected"))
    );
    assert_eq!(line["client_id"], "dev-1");

    log.starting();
    let line = take_json(&lines);
    assert_eq!(
        (&line["level"], &line["event"]),
        (&json!("info"), &json!("starting"))
    );
    assert_eq!(line["version"], VERSION);

    log.warning("say \"hi\"\n");
    let line = take_json(&lines);
    assert_eq!(
        (&line["level"], &line["event"]),
        (&json!("warning"), &json!("message"))
    );
    assert_eq!(line["message"], "say \"hi\"\n");
}

#[test]
fn json_packet_events_are_one_object_each() {
    let (log, lines) = json_logger(true);
    log.received(
        "sub-1",
        &Packet::Subscribe(Subscribe {
            packet_id: 3,
            filters: vec![(
                "a/+".to_owned(),
                SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..Default::default()
                },
            )],
            properties: Properties::default(),
        }),
    );
    assert_eq!(
        take_json(&lines),
        json!({
            "ts": "2024-11-25T21:20:00.123Z",
            "level": "debug",
            "event": "packet_received",
            "message": "Received SUBSCRIBE from sub-1",
            "client_id": "sub-1",
            "packet": "SUBSCRIBE",
            "packet_id": 3,
            "filters": [{ "filter": "a/+", "qos": 1 }],
        })
    );

    log.sending(
        "sub-1",
        &publish(QoS::AtLeastOnce, Some(3), "a/b", b"hello"),
    );
    assert_eq!(
        take_json(&lines),
        json!({
            "ts": "2024-11-25T21:20:00.123Z",
            "level": "debug",
            "event": "packet_sent",
            "message": "Sending PUBLISH to sub-1 (d0, q1, r0, m3, 'a/b', ... (5 bytes))",
            "client_id": "sub-1",
            "packet": "PUBLISH",
            "dup": false,
            "qos": 1,
            "retain": false,
            "packet_id": 3,
            "topic": "a/b",
            "payload_len": 5,
        })
    );
}

#[test]
fn rfc3339_dates() {
    assert_eq!(rfc3339_millis(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    assert_eq!(rfc3339_millis(fixed_clock()), "2024-11-25T21:20:00.123Z");
    let leap_day = UNIX_EPOCH + Duration::from_secs(951_868_799);
    assert_eq!(rfc3339_millis(leap_day), "2000-02-29T23:59:59.000Z");
    let new_year = UNIX_EPOCH + Duration::from_secs(4_102_444_800);
    assert_eq!(rfc3339_millis(new_year), "2100-01-01T00:00:00.000Z");
}
