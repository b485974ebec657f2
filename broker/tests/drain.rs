//! Graceful shutdown on SIGTERM: readiness goes false, no new connections,
//! 5.0 clients get DISCONNECT 0x8B (Server shutting down) at the configured
//! pace, and the process exits by the drain deadline.

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use tokio::task::JoinHandle;

/// Waits (in a task) for the broker to close `raw`; yields the DISCONNECT
/// it sent, if any, and when the close was seen.
fn watch_close(mut raw: Raw) -> JoinHandle<(Option<ReasonOnly>, Instant)> {
    tokio::spawn(async move {
        let disconnect = raw.expect_closed_within(Duration::from_secs(20)).await;
        (disconnect, Instant::now())
    })
}

/// Extra time allowed past `deadline_secs` for the process to finish
/// closing sockets and exit.
const EXIT_MARGIN: Duration = Duration::from_secs(4);

#[tokio::test]
async fn sigterm_disconnects_clients_and_exits() {
    let Some(mut broker) = OpsBroker::start(BrokerOpts {
        extra_toml: "[drain]\nrate_per_sec = 500\ndeadline_secs = 3\n".into(),
        ..BrokerOpts::default()
    })
    .await
    else {
        return;
    };
    let mut watchers = Vec::new();
    for id in ["five-a", "five-b"] {
        watchers.push((
            5,
            watch_close(Raw::connect(&broker, &Connect::v5(id)).await.0),
        ));
    }
    watchers.push((
        4,
        watch_close(Raw::connect(&broker, &Connect::v4("four")).await.0),
    ));

    broker.signal("TERM");
    let status = broker
        .wait_exit(Instant::now() + Duration::from_secs(3) + EXIT_MARGIN)
        .await
        .expect("the broker exits within the drain deadline");
    assert!(status.success(), "exit status {status}");
    for (version, watcher) in watchers {
        let (disconnect, _) = watcher.await.unwrap();
        match version {
            5 => assert_eq!(disconnect.map(|d| d.reason), Some(0x8B)),
            _ => assert!(disconnect.is_none(), "3.1.1 has no DISCONNECT"),
        }
    }
    assert!(broker.logs().iter().any(|l| l.ends_with(" terminating")));
}

/// One client a second against a 2 s deadline: the drain is paced, the
/// readiness probe fails meanwhile, new connections are refused, and the
/// deadline closes whoever is left (still with 0x8B).
#[tokio::test]
async fn drain_is_paced_and_bounded_by_its_deadline() {
    let Some(mut broker) = OpsBroker::start(BrokerOpts {
        extra_toml: "[http]\nbind = \"127.0.0.1:{port:http}\"\n\
                     [drain]\nrate_per_sec = 1\ndeadline_secs = 2\n"
            .into(),
        ..BrokerOpts::default()
    })
    .await
    else {
        return;
    };
    let mut watchers = Vec::new();
    for i in 0..5 {
        let (raw, _) = Raw::connect(&broker, &Connect::v5(&format!("c{i}"))).await;
        watchers.push(watch_close(raw));
    }
    assert_eq!(broker.http("GET", "/readyz", None).await.status, 200);

    broker.signal("TERM");
    let started = Instant::now();

    // While draining: not ready, and not accepting.
    let mut not_ready = false;
    while started.elapsed() < Duration::from_secs(2) {
        let ready = broker.http("GET", "/readyz", None).await;
        if ready.status == 503 {
            assert_eq!(ready.body, "draining");
            not_ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(not_ready, "/readyz stayed ready while draining");
    let refused = eventually(Duration::from_secs(2), || {
        std::net::TcpStream::connect(broker.addr()).is_err()
    })
    .await;
    assert!(refused, "new connections still accepted while draining");

    let status = broker
        .wait_exit(started + Duration::from_secs(2) + EXIT_MARGIN)
        .await
        .expect("the broker exits by the drain deadline");
    assert!(status.success(), "exit status {status}");
    let mut closed_at = Vec::new();
    for watcher in watchers {
        let (disconnect, at) = watcher.await.unwrap();
        assert_eq!(disconnect.map(|d| d.reason), Some(0x8B));
        closed_at.push(at);
    }
    closed_at.sort();
    let spread = closed_at[closed_at.len() - 1] - closed_at[0];
    assert!(
        spread >= Duration::from_millis(800),
        "all clients were dropped at once ({spread:?})"
    );
    assert!(
        broker
            .logs()
            .iter()
            .any(|l| l.contains("Drain deadline reached")),
        "the deadline was not reported"
    );
}

/// A connection that has not sent CONNECT yet does not keep the listening
/// socket open: from the start of the drain new connections are refused at
/// once (a client then tries another replica) rather than queued and left
/// unanswered until the drain ends.
#[tokio::test]
async fn a_connection_in_its_handshake_does_not_keep_the_port_open_while_draining() {
    let Some(mut broker) = OpsBroker::start(BrokerOpts {
        extra_toml: "[drain]\nrate_per_sec = 1\ndeadline_secs = 4\n".into(),
        ..BrokerOpts::default()
    })
    .await
    else {
        return;
    };
    // Three clients at one a second: the drain lasts two seconds or more.
    let mut watchers = Vec::new();
    for i in 0..3 {
        let (raw, _) = Raw::connect(&broker, &Connect::v5(&format!("c{i}"))).await;
        watchers.push(watch_close(raw));
    }
    // Connected, but its CONNECT not sent: the broker waits for it.
    let silent = tokio::net::TcpStream::connect(broker.addr())
        .await
        .expect("a TCP connection before the drain");

    broker.signal("TERM");
    let started = Instant::now();
    let refused = eventually(Duration::from_secs(1), || {
        std::net::TcpStream::connect(broker.addr()).is_err()
    })
    .await;
    let refused_at = Instant::now();
    assert!(
        refused,
        "new connections still accepted {:?} into the drain",
        started.elapsed()
    );
    let mut last_closed = started;
    for watcher in watchers {
        let (disconnect, at) = watcher.await.unwrap();
        assert_eq!(disconnect.map(|d| d.reason), Some(0x8B));
        last_closed = last_closed.max(at);
    }
    assert!(
        last_closed > refused_at,
        "the drain was over before new connections were refused"
    );
    let status = broker
        .wait_exit(started + Duration::from_secs(4) + EXIT_MARGIN)
        .await
        .expect("the broker exits by the drain deadline");
    assert!(status.success(), "exit status {status}");
    drop(silent);
}
