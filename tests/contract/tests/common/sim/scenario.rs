//! The scenario of the simulated cluster, shared by the test (100
//! clients) and the benchmark (1,000): persistent QoS 1 subscribers and
//! their publishers (`kubemqtt-bench rolling`) through HAProxy while the
//! operator's rollout code restarts the three replicas one by one, then a
//! fourth replica is added and the operator's rebalance code spreads the
//! clients.

use std::time::{Duration, Instant};

use clap::Parser;
use kubemqtt_bench::cluster::rolling::{self, RollingCmd, RollingReport};
use kubemqtt_operator::controller::rebalance::{until_balanced, Balancing};
use kubemqtt_operator::controller::rollout::{rolling_restart, RestartTiming, Restarted};
use kubemqtt_operator::plan::rebalance::{Rebalance, RebalanceSettings};

use k8s_openapi::jiff::Timestamp;

use super::haproxy::{LoadBalancer, HAPROXY};
use super::nats::{NatsCluster, NATS_SERVER};
use super::{require, SimCluster};
use crate::common::cluster::Operator;

/// The load and the operator's settings.
#[derive(Debug, Clone)]
pub struct Load {
    /// Publisher/subscriber pairs (twice as many clients).
    pub pairs: u32,
    /// QoS 1 messages a second per publisher.
    pub rate: f64,
    /// The rebalance settings (`spec.cluster.rebalance`).
    pub rebalance: RebalanceSettings,
    /// How long a restarted replica stays caught up before the next one
    /// goes (the StatefulSet's `minReadySeconds`).
    pub settle: Duration,
}

/// What a run measured.
#[derive(Debug)]
pub struct Outcome {
    /// The clients' report: sent, acknowledged, lost, reconnect gaps.
    pub clients: RollingReport,
    /// Each replica's restart, in order.
    pub restarts: Vec<Restarted>,
    /// Connections per replica after the rolling restart.
    pub after_restart: Vec<(String, u64)>,
    /// The rebalance after the fourth replica became ready.
    pub balancing: Balancing,
    /// Connections per replica once balanced.
    pub balanced: Vec<(String, u64)>,
}

/// `kubemqtt-bench rolling`'s arguments.
#[derive(Parser)]
struct Bench {
    #[command(flatten)]
    rolling: RollingCmd,
}

/// The MqttUser the clients log in as (no rules: every topic).
const USER: &str = "load";

/// The broker: three replicas on an external NATS (`urls`).
fn manifest(urls: &[String]) -> String {
    let urls: Vec<String> = urls.iter().map(|url| format!("\"{url}\"")).collect();
    format!(
        "apiVersion: kubemqtt.io/v1alpha1\nkind: MqttBroker\nmetadata:\n  name: mq\n  namespace: iot\n\
         spec:\n  replicas: 3\n  cluster:\n    nats:\n      external:\n        urls: [{}]\n",
        urls.join(", ")
    )
}

/// How long setting the clients up, and each wait, may take.
const PATIENCE: Duration = Duration::from_secs(120);

/// Runs the scenario; `None` when nats-server or HAProxy is missing
/// outside CI.
pub async fn run(load: Load) -> Option<Outcome> {
    let nats_server = require(NATS_SERVER, "nats-server");
    let haproxy = require(HAPROXY, "haproxy");
    if !(nats_server && haproxy) {
        return None;
    }
    let nats = NatsCluster::start(3).await;
    // The broker controller's plan for a broker on that NATS, with the
    // user the clients log in as.
    let mut operator = Operator::with_manifest(&manifest(&nats.urls()));
    operator.put_user(
        USER,
        serde_json::json!({"brokerRef": {"name": "mq"}}),
        Timestamp::now(),
    );
    let plan = operator.reconcile_broker().clone();
    let password = operator.secret(USER, "password");
    let cluster = SimCluster::render(plan, 4);
    for i in 0..3 {
        cluster.start_replica(i).await;
    }
    let lb = LoadBalancer::start(&cluster.backends());
    let outcome = drive(&cluster, &lb, &load, &password).await;
    // The replicas' logs, to read next to the clients' report.
    let logs = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("cluster_rollout");
    if let Err(error) = cluster.write_logs(&logs) {
        eprintln!(
            "cannot write the replicas' logs to {}: {error}",
            logs.display()
        );
    }
    eprintln!("the replicas' logs: {}", logs.display());
    if outcome.is_err() {
        eprintln!("{}\n--- haproxy ---\n{}", cluster.logs(40), lb.log_text());
    }
    Some(outcome.unwrap_or_else(|error| panic!("{error}")))
}

async fn drive(
    cluster: &SimCluster,
    lb: &LoadBalancer,
    load: &Load,
    password: &str,
) -> Result<Outcome, String> {
    let work = tempfile::tempdir().map_err(|e| e.to_string())?;
    let stop_file = work.path().join("stop");
    let pairs = load.pairs.to_string();
    let rate = load.rate.to_string();
    let broker = format!("127.0.0.1:{}", lb.port);
    let stop = stop_file.display().to_string();
    let args = [
        "rolling",
        "-n",
        &pairs,
        "-r",
        &rate,
        "-d",
        "900",
        "--drain",
        "30",
        "--stop-file",
        &stop,
        "-b",
        &broker,
        "--client-prefix",
        "sim",
        "-u",
        USER,
        "-P",
        password,
        "--quiet",
    ];
    let cmd = Bench::try_parse_from(args)
        .map_err(|e| format!("bench arguments: {e}"))?
        .rolling;
    let clients = tokio::spawn(rolling::run(cmd));

    // Every client connected (publishers come once every subscriber is).
    let want = 2 * u64::from(load.pairs);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let total: u64 = cluster.connections().await.iter().map(|(_, c)| c).sum();
        if total >= want {
            break;
        }
        if Instant::now() > deadline {
            // What the clients saw.
            let _ = std::fs::write(&stop_file, b"");
            let report = tokio::time::timeout(PATIENCE, clients).await;
            return Err(format!(
                "{total} of {want} clients connected; the clients report: {report:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Some messages flow before the first restart.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The rollout: highest ordinal first, as a StatefulSet rolls.
    let order: Vec<String> = (0..3).rev().map(|i| format!("mq-{i}")).collect();
    let restarts = rolling_restart(
        cluster,
        &order,
        RestartTiming {
            deadline: Duration::from_secs(60),
            settle: load.settle,
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    let after_restart = settle_connections(cluster, want).await?;

    // The scale-up: a fourth replica, then the operator's rebalance.
    cluster.start_replica(3).await;
    let balancing = until_balanced(cluster, &load.rebalance, PATIENCE)
        .await
        .map_err(|e| e.to_string())?;
    let balanced = cluster.connections().await;

    std::fs::write(&stop_file, b"").map_err(|e| e.to_string())?;
    let clients = clients
        .await
        .map_err(|e| format!("the clients' task: {e}"))??;
    Ok(Outcome {
        clients,
        restarts,
        after_restart,
        balancing,
        balanced,
    })
}

/// The connections once every client is back (after the last restart's
/// clients reconnected).
async fn settle_connections(cluster: &SimCluster, want: u64) -> Result<Vec<(String, u64)>, String> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let counts = cluster.connections().await;
        let total: u64 = counts.iter().map(|(_, c)| c).sum();
        if total >= want {
            return Ok(counts);
        }
        if Instant::now() > deadline {
            return Err(format!("{total} of {want} clients back: {counts:?}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl Outcome {
    /// Whether the rebalance ended within the tolerance.
    pub fn balanced(&self) -> bool {
        matches!(&self.balancing.last, Rebalance::Balanced(spread) if spread.within_tolerance())
    }

    /// The longest reconnect gap, milliseconds.
    pub fn longest_gap_ms(&self) -> f64 {
        self.clients
            .reconnect_gap
            .as_ref()
            .map_or(0.0, |gap| gap.max_us as f64 / 1000.0)
    }

    /// The measurements as JSON, for scripts/bench-operator-cluster.sh.
    pub fn to_json(&self) -> serde_json::Value {
        let counts = |counts: &[(String, u64)]| -> serde_json::Value {
            counts
                .iter()
                .map(|(name, count)| serde_json::json!({"replica": name, "connections": count}))
                .collect()
        };
        serde_json::json!({
            "clients": serde_json::to_value(&self.clients).unwrap_or_default(),
            "restarts": self.restarts.iter().map(|r| serde_json::json!({
                "replica": r.replica,
                "restart_secs": r.restart.as_secs_f64(),
                "catch_up_secs": r.catch_up.as_secs_f64(),
            })).collect::<Vec<_>>(),
            "after_restart": counts(&self.after_restart),
            "rebalance": {
                "rounds": self.balancing.rounds,
                "shed": self.balancing.shed,
                "secs_to_balance": self.balancing.elapsed.as_secs_f64(),
                "within_tolerance": self.balanced(),
                "connections": counts(&self.balanced),
            },
        })
    }

    /// A summary for the test's output and the benchmark's page.
    pub fn summary(&self) -> String {
        let c = &self.clients;
        let restarts: Vec<String> = self
            .restarts
            .iter()
            .map(|r| {
                format!(
                    "{} {:.1} s + {:.1} s",
                    r.replica,
                    r.restart.as_secs_f64(),
                    r.catch_up.as_secs_f64()
                )
            })
            .collect();
        format!(
            "clients {} pairs at {} msg/s: sent {} acked {} lost {} duplicates {} sessions lost {} \
             reconnects {}+{} longest gap {:.0} ms\n\
             restarts (SIGTERM to start, start to caught up): {}\n\
             after the restarts: {:?}\n\
             rebalance: {} round(s), {} client(s) shed, {:.1} s from the new replica ready to balanced: {:?}",
            c.pairs,
            c.rate,
            c.sent,
            c.acked,
            c.lost,
            c.duplicates,
            c.sessions_lost,
            c.publisher_reconnects,
            c.subscriber_reconnects,
            self.longest_gap_ms(),
            restarts.join(", "),
            self.after_restart,
            self.balancing.rounds,
            self.balancing.shed,
            self.balancing.elapsed.as_secs_f64(),
            self.balanced,
        )
    }
}
