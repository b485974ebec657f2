//! mosquitto users write a `0.0.0.0` listener and a `[::]` listener on the
//! same port; on Linux a `[::]` socket is dual-stack and would collide with
//! the IPv4 one, so the broker makes it IPv6-only. Both must start and
//! accept clients of their own family.

use crate::common;

use common::*;

#[tokio::test]
async fn ipv4_and_ipv6_wildcards_on_one_port_both_accept_clients() {
    let Some(broker) = OpsBroker::start(BrokerOpts {
        extra_toml: concat!(
            "[[listeners]]\nname = \"v4\"\nbind = \"0.0.0.0:{port:dual}\"\n",
            "[[listeners]]\nname = \"v6\"\nbind = \"[::]:{port:dual}\"\n",
        )
        .to_owned(),
        ..BrokerOpts::default()
    })
    .await
    else {
        return;
    };
    let port = broker.port_of("dual");
    assert!(
        broker.count_logs(&format!("Opening ipv4 listen socket on port {port}.")) == 1
            && broker.count_logs(&format!("Opening ipv6 listen socket on port {port}.")) == 1,
        "{}",
        broker.logs().join("\n")
    );
    for (addr, id) in [
        (format!("127.0.0.1:{port}"), "over-ipv4"),
        (format!("[::1]:{port}"), "over-ipv6"),
    ] {
        let mut raw = Raw::open_addr(addr.parse().unwrap()).await;
        let connack = raw.handshake(&Connect::v4(id)).await;
        assert_eq!(connack.code, 0, "CONNACK over {addr}");
        raw.disconnect().await;
    }
    // Each connection was accepted by the listener of its family.
    eventually(TIMEOUT, || {
        broker.count_logs("New client connected from ") == 2
    })
    .await;
    assert!(
        broker.count_logs("New client connected from 127.0.0.1:") == 1
            && broker.count_logs("New client connected from ::1:") == 1,
        "{}",
        broker.logs().join("\n")
    );
}
