//! End-to-end runs of the `kubemqtt-bench` and `kubemqtt-bench-rumqttc`
//! binaries against our broker, started in this test process on a free
//! loopback port.
//!
//! Most runs are bounded by `--count` so their totals are exact, and by a
//! short `--duration` and `--drain` so each takes about a second. The
//! flat-out runs check what must hold whatever the speed: nothing
//! acknowledged goes undelivered, the counts are coherent.

use std::net::SocketAddr;
use std::time::Duration;

use kubemqtt_broker::config::{Config, ListenerConfig, LogLevel};
use kubemqtt_broker::log::Logger;
use kubemqtt_broker::server::{self, RunningBroker};
use serde_json::Value;

/// Upper bound on one bench run.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

async fn start_broker() -> (RunningBroker, SocketAddr) {
    let mut config = Config::local_default();
    config.listeners = vec![ListenerConfig::tcp(SocketAddr::from(([127, 0, 0, 1], 0)))];
    config.log.level = LogLevel::Error;
    config.sys.interval_secs = 0;
    let logger = Logger::new(&config.log);
    let broker = server::start(config, logger).await.expect("broker starts");
    let addr = broker.local_addrs()[0];
    (broker, addr)
}

/// The built-in generator.
const BUILTIN: &str = env!("CARGO_BIN_EXE_kubemqtt-bench");

/// The generator on rumqttc.
const RUMQTTC: &str = env!("CARGO_BIN_EXE_kubemqtt-bench-rumqttc");

/// Both generators, each run by the tests that apply to both.
const GENERATORS: [&str; 2] = [BUILTIN, RUMQTTC];

/// Runs `generator` with `args` plus the broker address and `--json`, and
/// returns its report.
async fn run_generator(generator: &str, addr: SocketAddr, args: &[&str]) -> Value {
    let run = tokio::process::Command::new(generator)
        .args(args)
        .args(["-b", &addr.to_string(), "--json", "--quiet"])
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

/// What must hold in any report of a publish/subscribe run: the counts
/// are coherent with each other.
fn assert_coherent(report: &Value) {
    let n = |field: &str| {
        report[field]
            .as_u64()
            .unwrap_or_else(|| panic!("{field} missing: {report}"))
    };
    assert!(n("delivered") <= n("expected"), "{report}");
    let fan_out = if report["scenario"] == "fanout" {
        n("subscribers")
    } else {
        1
    };
    assert_eq!(n("expected"), n("sent") * fan_out, "{report}");
    assert!(n("acked") <= n("sent"), "{report}");
    assert!(report["sent_per_sec"].as_f64().is_some_and(|r| r >= 0.0));
    assert!(report["delivered_per_sec"]
        .as_f64()
        .is_some_and(|r| r >= 0.0));
    assert!(report["delivered_pct"].as_f64().is_some_and(|p| p <= 100.0));
    if n("delivered") > 0 {
        let p50 = report["latency"]["p50_us"].as_u64().unwrap_or(0);
        let p99 = report["latency"]["p99_us"].as_u64().unwrap_or(0);
        assert!(0 < p50 && p50 <= p99, "{report}");
    }
}

/// The name each generator writes into its reports.
fn name(generator: &str) -> &'static str {
    if generator == RUMQTTC {
        "rumqttc"
    } else {
        "kubemqtt-bench"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2p_qos1_delivers_everything_it_sends() {
    let (broker, addr) = start_broker().await;
    for generator in GENERATORS {
        let args = [
            "p2p", "-n", "3", "-q", "1", "-r", "500", "--count", "100", "-d", "5", "--drain", "5",
        ];
        let report = run_generator(generator, addr, &args).await;
        assert_eq!(report["errors"], 0, "{report}");
        assert_eq!(report["generator"], name(generator));
        assert_eq!(report["scenario"], "p2p");
        assert_eq!(report["qos"], 1);
        assert_eq!(report["publishers"], 3);
        assert_eq!(report["subscribers"], 3);
        assert_eq!(report["connections"], 6);
        assert_eq!(report["sent"], 300);
        assert_eq!(report["acked"], 300);
        assert_eq!(report["expected"], 300);
        assert_eq!(report["delivered"], report["sent"]);
        assert_eq!(report["loss"], 0);
        assert_eq!(report["acked_not_delivered"], 0);
        assert_eq!(report["duplicates"], 0);
        assert_eq!(
            report["latency"]["count"], 300,
            "every payload carried its send time"
        );
        assert_coherent(&report);
    }
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_qos2_reaches_every_subscriber() {
    let (broker, addr) = start_broker().await;
    for generator in GENERATORS {
        let args = [
            "fanout", "-n", "4", "-q", "2", "-r", "500", "--count", "50", "-s", "100", "-d", "5",
        ];
        let report = run_generator(generator, addr, &args).await;
        assert_eq!(report["errors"], 0, "{report}");
        assert_eq!(report["sent"], 50);
        assert_eq!(report["acked"], 50, "PUBREC/PUBREL/PUBCOMP completed");
        assert_eq!(report["expected"], 200);
        assert_eq!(report["delivered"], 200);
        assert_eq!(report["acked_not_delivered"], 0);
        assert_eq!(report["payload_bytes"], 100);
        assert_coherent(&report);
    }
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanin_shared_subscription_delivers_each_message_once() {
    let (broker, addr) = start_broker().await;
    for generator in GENERATORS {
        let args = [
            "fanin", "-n", "4", "-m", "2", "-q", "1", "-r", "500", "--count", "50", "-d", "5",
        ];
        let report = run_generator(generator, addr, &args).await;
        assert_eq!(report["errors"], 0, "{report}");
        assert_eq!(report["sent"], 200);
        assert_eq!(report["delivered"], 200, "{report}");
        assert_eq!(
            report["duplicates"], 0,
            "no message reached two members of the group"
        );
        assert_eq!(report["acked_not_delivered"], 0);
        assert_coherent(&report);
    }
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flat_out_qos1_p2p_delivers_everything_acknowledged() {
    let (broker, addr) = start_broker().await;
    for generator in GENERATORS {
        let args = ["p2p", "-n", "2", "-q", "1", "-d", "1", "--drain", "5"];
        let report = run_generator(generator, addr, &args).await;
        assert_eq!(report["errors"], 0, "{report}");
        assert_coherent(&report);
        assert!(report["sent"].as_u64().is_some_and(|s| s > 0), "{report}");
        assert_eq!(
            report["acked"], report["sent"],
            "every PUBLISH acknowledged: {report}"
        );
        assert_eq!(report["acked_not_delivered"], 0, "{report}");
        assert_eq!(report["duplicates"], 0, "{report}");
        assert_eq!(report["delivered"], report["expected"], "{report}");
    }
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos0_has_no_acknowledgements_to_account_for() {
    let (broker, addr) = start_broker().await;
    for generator in GENERATORS {
        let args = [
            "p2p", "-n", "1", "-q", "0", "--count", "1000", "-d", "1", "--drain", "2",
        ];
        let report = run_generator(generator, addr, &args).await;
        assert_eq!(report["errors"], 0, "{report}");
        assert_eq!(report["sent"], 1000);
        assert_eq!(report["acked"], 0);
        assert_eq!(report["acked_not_delivered"], Value::Null);
        assert_coherent(&report);
    }
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conn_opens_and_holds_every_connection() {
    let (broker, addr) = start_broker().await;
    let report = run_generator(
        BUILTIN,
        addr,
        &["conn", "-n", "50", "--conn-rate", "500", "--hold", "0.5"],
    )
    .await;
    assert_eq!(report["connections"], 50, "{report}");
    assert_eq!(report["connect_failures"], 0);
    assert_eq!(report["errors"], 0);
    assert_eq!(report["connect_latency"]["count"], 50);
    broker.shutdown().await;
}

#[tokio::test]
async fn unreachable_broker_is_reported_as_connect_failures() {
    // Bind then drop a listener to get a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    for generator in GENERATORS {
        let args = ["p2p", "-n", "2", "-d", "0.2", "--connect-timeout", "2"];
        let report = run_generator(generator, addr, &args).await;
        assert_eq!(report["connections"], 0);
        assert_eq!(report["connect_failures"], 4);
        assert_eq!(report["sent"], 0);
        assert!(
            report["error_samples"][0]
                .as_str()
                .is_some_and(|e| e.contains("refused")),
            "{report}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_broker_is_where_the_subscribers_connect() {
    let (broker, addr) = start_broker().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let nobody = format!("127.0.0.1:{port}");
    let args = ["p2p", "-n", "2", "-d", "0.2", "--connect-timeout", "2"];
    for generator in GENERATORS {
        // Subscribers sent to a port nobody listens on: only they fail.
        let mut with_sub = args.to_vec();
        with_sub.extend(["--sub-broker", &nobody]);
        let report = run_generator(generator, addr, &with_sub).await;
        assert_eq!(report["connections"], 2, "the publishers: {report}");
        assert_eq!(report["connect_failures"], 2, "the subscribers: {report}");
        assert_eq!(report["sub_broker"], nobody.as_str());
        assert!(report["sent"].as_u64().is_some_and(|n| n > 0), "{report}");
        assert_eq!(report["delivered"], 0);
    }
    // The other way round: publishers nowhere, subscribers on the broker.
    let addr_text = addr.to_string();
    let mut args = args.to_vec();
    args.extend(["--sub-broker", &addr_text]);
    let port: SocketAddr = nobody.parse().expect("address");
    let report = run_generator(BUILTIN, port, &args).await;
    assert_eq!(report["connections"], 2, "the subscribers: {report}");
    assert_eq!(report["connect_failures"], 2, "the publishers: {report}");
    assert_eq!(report["sent"], 0);
    // Without --sub-broker the report names one broker.
    let report = run_generator(
        BUILTIN,
        addr,
        &["p2p", "-n", "1", "--count", "5", "-q", "1"],
    )
    .await;
    assert!(report.get("sub_broker").is_none(), "{report}");
    assert_eq!(report["delivered"], 5);
    broker.shutdown().await;
}
