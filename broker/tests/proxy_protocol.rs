//! PROXY protocol v1 and v2 on listeners behind a load balancer: the
//! client address the header carries is the one the broker logs and
//! reports.

use crate::common;

use std::net::SocketAddr;

use common::*;
use tokio::io::AsyncWriteExt;

/// A plain TCP listener `lb` and a TLS listener `lbtls`, both expecting a
/// PROXY header.
fn proxy_listeners(dir: &std::path::Path, server: &CertKey) -> String {
    let cert = write_file(dir, "server.crt", &server.cert_pem);
    let key = write_file(dir, "server.key", &server.key_pem);
    format!(
        "[[listeners]]\nname = \"lb\"\nbind = \"127.0.0.1:{{port:lb}}\"\nproxy_protocol = true\n\
         [[listeners]]\nname = \"lbtls\"\nbind = \"127.0.0.1:{{port:lbtls}}\"\nprotocol = \"tls\"\n\
         proxy_protocol = true\n\
         [listeners.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        cert.display(),
        key.display()
    )
}

async fn start() -> Option<(OpsBroker, TestCa)> {
    let fixtures = tempfile::tempdir().unwrap();
    let ca = TestCa::new("CA");
    let broker = OpsBroker::start(BrokerOpts {
        extra_toml: proxy_listeners(fixtures.path(), &ca.server_cert()),
        ..BrokerOpts::default()
    })
    .await?;
    Some((broker, ca))
}

/// A PROXY v2 header (command PROXY, TCP) for `src` -> `dst`.
fn v2_header(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut body = Vec::new();
    let family = match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            body.extend_from_slice(&s.ip().octets());
            body.extend_from_slice(&d.ip().octets());
            0x11
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            body.extend_from_slice(&s.ip().octets());
            body.extend_from_slice(&d.ip().octets());
            0x21
        }
        _ => panic!("mixed address families"),
    };
    body.extend_from_slice(&src.port().to_be_bytes());
    body.extend_from_slice(&dst.port().to_be_bytes());
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.push(0x21); // version 2, PROXY
    header.push(family);
    header.extend_from_slice(&(body.len() as u16).to_be_bytes());
    header.extend_from_slice(&body);
    header
}

/// The LOCAL command a load balancer uses for its own health checks.
fn v2_local() -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    header
}

/// Opens a connection to `addr`, sends `header`, then CONNECT as `id`.
async fn connect_behind(addr: SocketAddr, header: &[u8], connect: &Connect) -> (Raw, ConnAck) {
    let mut raw = Raw::open_addr(addr).await;
    raw.send(header).await;
    let ack = raw.handshake(connect).await;
    (raw, ack)
}

#[tokio::test]
async fn v1_header_address_is_logged_and_reported() {
    let Some((broker, _)) = start().await else {
        return;
    };
    let mut watcher = raw_subscriber5(
        &broker,
        "watcher",
        "$SYS/brokers/+/clients/behind-lb/connected",
        0,
    )
    .await;

    let (mut raw, ack) = connect_behind(
        broker.addr_of("lb"),
        b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 1883\r\n",
        &Connect::v4("behind-lb"),
    )
    .await;
    assert_eq!(ack.code, 0);
    raw.ping().await;

    let port = broker.port_of("lb");
    let line = format!("New connection from 203.0.113.7:51234 on port {port}.");
    assert!(
        broker.wait_for_log(&line, TIMEOUT).await,
        "no log line `{line}`"
    );
    assert!(
        broker
            .wait_for_log(
                "New client connected from 203.0.113.7:51234 as behind-lb",
                TIMEOUT
            )
            .await
    );

    // The presence event carries the same address.
    let event = watcher.expect_publish().await;
    let json: serde_json::Value = serde_json::from_slice(&event.payload).unwrap();
    assert_eq!(json["ipaddress"], "203.0.113.7", "{json}");
    assert_eq!(json["port"], 51234, "{json}");
    assert_eq!(json["listener"], "lb", "{json}");
}

#[tokio::test]
async fn v2_headers_ipv4_ipv6_and_local() {
    let Some((broker, _)) = start().await else {
        return;
    };
    let addr = broker.addr_of("lb");
    let dst: SocketAddr = "10.0.0.1:1883".parse().unwrap();

    let src: SocketAddr = "198.51.100.9:40001".parse().unwrap();
    let (mut a, ack) = connect_behind(addr, &v2_header(src, dst), &Connect::v5("v2-ipv4")).await;
    assert_eq!(ack.code, 0);
    a.ping().await;

    let src6: SocketAddr = "[2001:db8::7]:40002".parse().unwrap();
    let dst6: SocketAddr = "[2001:db8::1]:1883".parse().unwrap();
    let (mut b, ack) = connect_behind(addr, &v2_header(src6, dst6), &Connect::v5("v2-ipv6")).await;
    assert_eq!(ack.code, 0);
    b.ping().await;

    // LOCAL: the connection's own address stands.
    let (mut c, ack) = connect_behind(addr, &v2_local(), &Connect::v5("v2-local")).await;
    assert_eq!(ack.code, 0);
    c.ping().await;

    for needle in [
        "New client connected from 198.51.100.9:40001 as v2-ipv4",
        "New client connected from 2001:db8::7:40002 as v2-ipv6",
        "New client connected from 127.0.0.1:",
    ] {
        assert!(
            broker.wait_for_log(needle, TIMEOUT).await,
            "no log line `{needle}`"
        );
    }
}

#[tokio::test]
async fn header_before_the_tls_handshake() {
    let Some((broker, ca)) = start().await else {
        return;
    };
    let mut tcp = tokio::net::TcpStream::connect(broker.addr_of("lbtls"))
        .await
        .unwrap();
    tcp.write_all(b"PROXY TCP4 192.0.2.44 10.0.0.1 6000 8883\r\n")
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(tls_client_config(&ca.cert_pem, None))
        .connect(name, tcp)
        .await
        .expect("TLS handshake after the PROXY header");
    let mut raw = Raw::from_stream(tls);
    assert_eq!(raw.handshake(&Connect::v5("lb-tls")).await.code, 0);
    raw.ping().await;
    assert!(
        broker
            .wait_for_log(
                "New client connected from 192.0.2.44:6000 as lb-tls",
                TIMEOUT
            )
            .await
    );
}

#[tokio::test]
async fn a_missing_or_bad_header_is_refused() {
    let Some((broker, _)) = start().await else {
        return;
    };
    // MQTT straight away on a listener that expects a PROXY header.
    let mut raw = Raw::open_addr(broker.addr_of("lb")).await;
    raw.send_connect(&Connect::v4("no-header")).await;
    assert!(matches!(raw.recv_within(TIMEOUT).await, Recv::Closed));
    assert!(
        broker
            .wait_for_log("Bad PROXY protocol header from 127.0.0.1:", TIMEOUT)
            .await
    );

    // A malformed v1 header.
    let mut raw = Raw::open_addr(broker.addr_of("lb")).await;
    raw.send(b"PROXY TCP4 not-an-address 10.0.0.1 1 2\r\n")
        .await;
    raw.send_connect(&Connect::v4("bad-header")).await;
    assert!(matches!(raw.recv_within(TIMEOUT).await, Recv::Closed));
    assert!(
        eventually(TIMEOUT, || broker.count_logs("Bad PROXY protocol header")
            == 2)
        .await,
        "the malformed header is logged"
    );

    // A header sent to a listener without proxy_protocol is not trusted:
    // it is not MQTT, so the connection is dropped.
    let mut raw = Raw::open(&broker).await;
    raw.send(b"PROXY TCP4 203.0.113.99 10.0.0.1 5555 1883\r\n")
        .await;
    raw.send_connect(&Connect::v4("spoofer")).await;
    match raw.recv_within(TIMEOUT).await {
        Recv::Closed => {}
        other => panic!("expected a close, got {other:?}"),
    }
    assert!(!broker.logs().iter().any(|l| l.contains("203.0.113.99")));
}
