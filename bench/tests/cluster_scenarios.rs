//! End-to-end runs of `kubemqtt-bench catchup`, `takeover` and `rolling`
//! against our broker, started in this test process on free loopback ports.
//!
//! Without a cluster, "another node" is a second, independent broker: a
//! client that comes back there finds no session, a takeover there closes
//! nothing. The reports must say so, which checks that the scenarios count
//! what the broker does rather than what they expect.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use kubemqtt_bench::client::{ClientOptions, Connection};
use kubemqtt_bench::codec::{self, Packet, QoS};
use kubemqtt_broker::config::{Config, ListenerConfig, LogLevel};
use kubemqtt_broker::log::Logger;
use kubemqtt_broker::server::{self, RunningBroker};
use serde_json::Value;

/// Upper bound on one bench run.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

const BENCH: &str = env!("CARGO_BIN_EXE_kubemqtt-bench");

/// A broker on `addr` (port 0: any free port).
async fn start_broker(addr: SocketAddr) -> (RunningBroker, SocketAddr) {
    let mut config = Config::local_default();
    config.listeners = vec![ListenerConfig::tcp(addr)];
    config.log.level = LogLevel::Error;
    config.sys.interval_secs = 0;
    config.drain.rate_per_sec = 0;
    let logger = Logger::new(&config.log);
    let broker = server::start(config, logger).await.expect("broker starts");
    let addr = broker.local_addrs()[0];
    (broker, addr)
}

async fn any_broker() -> (RunningBroker, SocketAddr) {
    start_broker(SocketAddr::from(([127, 0, 0, 1], 0))).await
}

/// Runs the bench with `args` plus `--json --quiet` and returns its report.
async fn bench(args: &[&str]) -> Value {
    let run = tokio::process::Command::new(BENCH)
        .args(args)
        .args(["--json", "--quiet"])
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(RUN_TIMEOUT, run)
        .await
        .expect("bench finishes in time")
        .expect("bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "bench failed: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("bad JSON ({e}): {stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catchup_delivers_every_queued_message_once() {
    let (broker, addr) = any_broker().await;
    let a = addr.to_string();
    // 3 messages arrive in the same segment as the CONNACK.
    for count in [3u64, 500] {
        let n = count.to_string();
        let report = bench(&[
            "catchup", "-b", &a, "--count", &n, "--settle", "0.1", "--drain", "10",
        ])
        .await;
        assert_eq!(report["error"], Value::Null, "{report}");
        assert_eq!(
            (report["sent"].as_u64(), report["acked"].as_u64()),
            (Some(count), Some(count))
        );
        assert_eq!(report["session_present"], true);
        assert_eq!(report["distinct"], count, "{report}");
        assert_eq!(
            (report["missing"].as_u64(), report["duplicates"].as_u64()),
            (Some(0), Some(0))
        );
        assert_eq!(report["out_of_order"], 0);
        assert!(report["delivered_per_sec"]
            .as_f64()
            .is_some_and(|r| r > 0.0));
        assert!(report["catchup_ms"].as_f64() >= report["first_delivery_ms"].as_f64());
    }
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catchup_on_a_broker_without_the_session_counts_everything_missing() {
    let (first, a) = any_broker().await;
    let (second, b) = any_broker().await;
    let (a, b) = (a.to_string(), b.to_string());
    let args = [
        "catchup",
        "-b",
        &a,
        "--resume-broker",
        &b,
        "--count",
        "200",
        "--settle",
        "0.1",
        "--drain",
        "1",
    ];
    let report = bench(&args).await;
    assert_eq!(report["acked"], 200, "{report}");
    assert_eq!(report["session_present"], false, "{report}");
    assert_eq!(
        (report["distinct"].as_u64(), report["missing"].as_u64()),
        (Some(0), Some(200))
    );
    assert_eq!(report["delivered_per_sec"], Value::Null);
    first.shutdown().await;
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_closes_the_first_connection_every_round() {
    let (broker, addr) = any_broker().await;
    let a = addr.to_string();
    for clean in ["true", "false"] {
        let args = [
            "takeover",
            "-b",
            &a,
            "--rounds",
            "3",
            "--pause",
            "0.05",
            "--clean-session",
            clean,
        ];
        let report = bench(&args).await;
        assert_eq!(report["completed"], 3, "{report}");
        assert_eq!(report["persistent"], clean == "false");
        assert_eq!(report["connack"]["count"], 3);
        assert_eq!(report["old_closed"]["count"], 3);
        for failure in ["refused", "not_closed", "closed_early", "setup_failures"] {
            assert_eq!(report[failure], 0, "{failure}: {report}");
        }
    }
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_on_an_unrelated_broker_closes_nothing() {
    let (first, a) = any_broker().await;
    let (second, b) = any_broker().await;
    let (a, b) = (a.to_string(), b.to_string());
    let args = [
        "takeover",
        "-b",
        &a,
        "--takeover-broker",
        &b,
        "--rounds",
        "2",
        "--pause",
        "0.05",
        "--close-timeout",
        "0.3",
    ];
    let report = bench(&args).await;
    assert_eq!(report["not_closed"], 2, "{report}");
    assert_eq!(report["completed"], 0);
    assert_eq!(report["connack"]["count"], 2, "the second broker accepts");
    assert_eq!(report["old_closed"], Value::Null);
    first.shutdown().await;
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_without_restarts_delivers_every_acknowledged_message() {
    let (broker, addr) = any_broker().await;
    let a = addr.to_string();
    let report = bench(&[
        "rolling", "-b", &a, "-n", "3", "-r", "200", "-d", "1", "--drain", "5",
    ])
    .await;
    let n = |field: &str| {
        report[field]
            .as_u64()
            .unwrap_or_else(|| panic!("{field}: {report}"))
    };
    assert!(n("sent") >= 3 * 150, "about 200 a second each: {report}");
    assert_eq!(n("acked"), n("sent"), "{report}");
    assert_eq!(n("distinct"), n("sent"), "{report}");
    assert_eq!(
        (n("lost"), n("duplicates"), n("unacked")),
        (0, 0, 0),
        "{report}"
    );
    assert_eq!(
        (n("publisher_reconnects"), n("subscriber_reconnects")),
        (0, 0)
    );
    assert_eq!(n("publishes"), n("sent"), "nothing sent again");
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_rides_through_a_restart_and_sees_the_sessions_gone() {
    let (broker, addr) = any_broker().await;
    let stop_file =
        std::env::temp_dir().join(format!("kubemqtt-bench-stop-{}", std::process::id()));
    let _ = std::fs::remove_file(&stop_file);
    let args: Vec<String> = [
        "rolling",
        "-b",
        &addr.to_string(),
        "-n",
        "2",
        "-r",
        "100",
        "-d",
        "30",
        "--drain",
        "3",
        "--stop-file",
        stop_file.to_str().expect("UTF-8 path"),
    ]
    .map(String::from)
    .into();
    let run = tokio::spawn(async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        bench(&args).await
    });
    // Waits on what the broker sees, not on the clock: a busy CI machine
    // can take seconds to get the bench's clients going.
    watch_publishes(addr, 100).await;
    // A restart without persistence: the sessions are gone.
    broker.shutdown().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (broker, _) = start_broker(addr).await;
    // Publishing goes on after the restart: 250 per pair through the new
    // broker.
    watch_publishes(addr, 2 * 250).await;
    touch(&stop_file);
    let report = run.await.expect("bench task");
    let n = |field: &str| {
        report[field]
            .as_u64()
            .unwrap_or_else(|| panic!("{field}: {report}"))
    };
    assert_eq!(n("subscriber_reconnects"), 2, "{report}");
    assert_eq!(n("publisher_reconnects"), 2, "{report}");
    assert_eq!(
        n("sessions_lost"),
        2,
        "the new broker knows no session: {report}"
    );
    assert!(
        n("connect_failures") > 0,
        "refused while the broker was down"
    );
    assert!(
        report["reconnect_gap"]["max_us"].as_u64() >= Some(300_000),
        "{report}"
    );
    assert_eq!(
        n("unacked"),
        0,
        "everything is acknowledged by the new broker"
    );
    let samples = report["lost_samples"].as_array().map_or(0, Vec::len) as u64;
    assert_eq!(n("lost").min(2_000), samples, "the first 2,000 are named");
    assert!(n("distinct") + n("lost") >= n("acked"), "{report}");
    assert!(
        n("sent") >= 2 * 250,
        "publishing went on after the restart: {report}"
    );
    broker.shutdown().await;
    let _ = std::fs::remove_file(&stop_file);
}

/// Waits until `count` PUBLISHes on any topic went through the broker at
/// `addr`, as a QoS 0 subscriber to `#` sees them; fails after
/// [`RUN_TIMEOUT`].
async fn watch_publishes(addr: SocketAddr, count: usize) {
    let options = ClientOptions {
        addr,
        keep_alive: 0,
        clean_session: true,
        username: None,
        password: None,
        timeout: Duration::from_secs(10),
        max_packet_size: 1 << 20,
    };
    let mut seen = 0;
    let watch = async {
        let (mut connection, _) = Connection::open(&options, "watcher")
            .await
            .expect("the watcher connects");
        codec::encode_subscribe(&mut connection.writer.buf, 1, "#", QoS::AtMostOnce)
            .expect("encode SUBSCRIBE");
        connection.writer.flush().await.expect("send SUBSCRIBE");
        while seen < count {
            match connection.reader.read_packet().await {
                Ok(Packet::Publish(_)) => seen += 1,
                Ok(_) => {}
                Err(e) => panic!("the watcher lost its connection after {seen} messages: {e}"),
            }
        }
        connection.disconnect().await;
    };
    if tokio::time::timeout(RUN_TIMEOUT, watch).await.is_err() {
        panic!("{seen} of {count} messages went through the broker in {RUN_TIMEOUT:?}");
    }
}

fn touch(path: &Path) {
    std::fs::write(path, b"").expect("create the stop file");
}
