//! Keepalive: enforced at 1.5 x the client's value, kept alive by PINGREQ,
//! disabled by 0, and the 5.0 Server Keep Alive.

use crate::common;

use std::time::Duration;

use common::*;

#[tokio::test]
async fn silent_client_is_disconnected_after_keepalive_expires() {
    let broker = TestBroker::start_default().await;
    for connect in [
        Connect::v4("silent4").keepalive(1),
        Connect::v5("silent5").keepalive(1),
    ] {
        let (mut raw, _) = Raw::connect(&broker, &connect).await;
        // 5.0 allows a DISCONNECT 0x8D before the close; nothing else.
        if let Some(d) = raw.expect_closed_within(KEEPALIVE_BOUND).await {
            assert_eq!(d.reason, 0x8D, "Keep Alive timeout");
        }
    }
}

#[tokio::test]
async fn pingreq_keeps_the_connection_alive() {
    let broker = TestBroker::start_default().await;
    let (mut raw, _) = Raw::connect(&broker, &Connect::v4("pinger").keepalive(2)).await;
    // Four seconds, twice the keepalive, with a PINGREQ every second.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        raw.send(&pingreq()).await;
        assert!(matches!(raw.recv().await, Pkt::PingResp));
    }
}

#[tokio::test]
async fn any_control_packet_counts_as_activity() {
    let broker = TestBroker::start_default().await;
    let (mut raw, _) = Raw::connect(&broker, &Connect::v4("busy").keepalive(2)).await;
    for pid in 1..=4u16 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        raw.publish_qos1(&Pub::new("busy", b"x").qos(1, pid)).await;
    }
}

#[tokio::test]
async fn keepalive_is_not_enforced_before_one_and_a_half_times() {
    let broker = TestBroker::start_default().await;
    let (mut raw, _) = Raw::connect(&broker, &Connect::v4("patient").keepalive(2)).await;
    // 1.2 x keepalive of silence is still within the 1.5 x grace period.
    raw.expect_nothing(Duration::from_millis(2400)).await;
    raw.send(&pingreq()).await;
    assert!(matches!(raw.recv().await, Pkt::PingResp));
}

#[tokio::test]
async fn keepalive_zero_disables_the_timeout() {
    let broker = TestBroker::start_default().await;
    let (mut raw, _) = Raw::connect(&broker, &Connect::v4("forever").keepalive(0)).await;
    raw.expect_nothing(Duration::from_secs(3)).await;
    raw.send(&pingreq()).await;
    assert!(matches!(raw.recv().await, Pkt::PingResp));
}

#[tokio::test]
async fn v5_server_keep_alive_caps_the_client_value() {
    let broker = TestBroker::start(BrokerOpts {
        max_keepalive: Some(10),
        ..BrokerOpts::default()
    })
    .await;
    let (_raw, ack) = Raw::connect(&broker, &Connect::v5("long").keepalive(60)).await;
    assert_eq!(ack.props.num(prop::SERVER_KEEP_ALIVE), Some(10), "{ack:?}");

    // A value within the limit is left alone (absent, or echoed unchanged).
    let (_raw, ack) = Raw::connect(&broker, &Connect::v5("short").keepalive(5)).await;
    if let Some(v) = ack.props.num(prop::SERVER_KEEP_ALIVE) {
        assert_eq!(v, 5);
    }
}

#[tokio::test]
async fn v5_server_keep_alive_is_enforced() {
    // mosquitto does not accept max_keepalive below 10 s, so this test
    // waits for a 10 s server keepalive (15 s grace) under both brokers.
    let broker = TestBroker::start(BrokerOpts {
        max_keepalive: Some(10),
        ..BrokerOpts::default()
    })
    .await;
    let (mut raw, ack) = Raw::connect(&broker, &Connect::v5("capped").keepalive(0)).await;
    let keepalive = ack
        .props
        .num(prop::SERVER_KEEP_ALIVE)
        .expect("keepalive 0 exceeds max_keepalive");
    assert_eq!(keepalive, 10);
    match raw.recv_within(Duration::from_secs(25)).await {
        Recv::Closed => {}
        Recv::Packet(Pkt::Disconnect(d)) => assert_eq!(d.reason, 0x8D),
        other => panic!("server keep alive not enforced: {other:?}"),
    }
}
