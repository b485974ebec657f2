//! A broker cluster without Kubernetes, run by the operator's own rollout
//! and rebalance code: the operator's planners render one broker's files
//! (with the MqttUser its clients log in as),
//! each replica is a `kubemqtt-broker` process on its own copy of them
//! (named `mq-<i>` through `HOSTNAME`, as a StatefulSet's pods are),
//! sharing three real `nats-server`s, behind HAProxy standing in for the
//! load balancer. [`SimCluster`] implements the operator's
//! [`ReplicaAdmin`], so [`rolling_restart`] and [`until_balanced`] drive
//! processes exactly as the controller drives pods: a restart is SIGTERM
//! (the broker drains), the exit, and a start on the same files.
//!
//! [`rolling_restart`]: kubemqtt_operator::controller::rollout::rolling_restart
//! [`until_balanced`]: kubemqtt_operator::controller::rebalance::until_balanced

#![allow(dead_code)] // the test and the benchmark use different parts

pub mod haproxy;
pub mod http;
pub mod nats;
pub mod scenario;

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kubemqtt_contract_tests::PodFiles;
use kubemqtt_operator::controller::replica_admin::{
    read_metrics, shed_answer, AdminError, AdminFuture, ReplicaAdmin,
};
use kubemqtt_operator::plan::configmap::CONFIG_FILE;
use kubemqtt_operator::plan::rebalance::{ReplicaState, Shed};
use kubemqtt_operator::plan::{Plan, CONFIG_DIR};

use self::haproxy::Backend;
use self::http::request;
use crate::common::{broker_binary, collect_lines, free_port, secret_text};

/// How long a replica may take to exit after SIGTERM: the broker's drain
/// deadline and a margin (the pod's termination grace period).
const EXIT_PATIENCE: Duration = Duration::from_secs(40);

/// How long a started replica may take to answer `/readyz` with 200.
const READY_PATIENCE: Duration = Duration::from_secs(60);

/// Whether `path` (Debian package `package`) is installed. Missing: the
/// test fails under CI (`CI=true`, where scripts/test.sh installs it),
/// and is skipped with a message elsewhere.
pub fn require(path: &str, package: &str) -> bool {
    if std::path::Path::new(path).exists() {
        return true;
    }
    let ci = std::env::var("CI").is_ok_and(|value| value == "true");
    assert!(
        !ci,
        "{path} is missing: install Debian's {package} (scripts/test.sh does)"
    );
    eprintln!(
        "SKIPPED: {path} is missing (apt-get install {package}); CI=true makes this a failure"
    );
    false
}

/// One replica: its files, ports and process.
struct Replica {
    name: String,
    mqtt_port: u16,
    http_port: u16,
    args: Vec<String>,
    child: Option<Child>,
    logs: Arc<Mutex<Vec<String>>>,
    /// Since when it answers `/readyz` with 200, as last seen.
    ready_since: Option<Instant>,
    _root: tempfile::TempDir,
}

impl Replica {
    fn spawn(&mut self) {
        let mut child = Command::new(broker_binary())
            .args(&self.args)
            .env("HOSTNAME", &self.name)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the broker starts");
        if let Some(out) = child.stdout.take() {
            collect_lines(out, self.logs.clone());
        }
        if let Some(err) = child.stderr.take() {
            collect_lines(err, self.logs.clone());
        }
        self.child = Some(child);
        self.ready_since = None;
    }

    fn log_tail(&self, lines: usize) -> String {
        self.logs
            .lock()
            .map(|logs| {
                let from = logs.len().saturating_sub(lines);
                logs[from..].join("\n")
            })
            .unwrap_or_default()
    }
}

/// The replicas of one broker, started and stopped as a StatefulSet's
/// pods would be.
pub struct SimCluster {
    replicas: Mutex<Vec<Replica>>,
    token: String,
    /// The rendered plan.
    pub plan: Plan,
}

impl SimCluster {
    /// Lays out `slots` replicas' files from `plan` (the broker
    /// controller's, with its `[cluster]` table); none runs yet.
    pub fn render(plan: Plan, slots: usize) -> SimCluster {
        let token = secret_text(&plan.auth_secret, "admin-token")
            .trim()
            .to_owned();
        let config_path = format!("{CONFIG_DIR}/{CONFIG_FILE}");
        let replicas = (0..slots)
            .map(|i| {
                let root = tempfile::tempdir().expect("a temporary directory");
                let files = PodFiles::lay_out(&plan, root.path()).expect("the files lay out");
                let (mqtt_port, mqtts_port, http_port) = (free_port(), free_port(), free_port());
                let config = files
                    .localize(
                        &config_path,
                        |listener| match listener {
                            "mqtt" => mqtt_port,
                            "mqtts" => mqtts_port,
                            other => panic!("unexpected listener {other}"),
                        },
                        http_port,
                    )
                    .expect("the configuration localizes");
                assert!(
                    config.cluster.is_some(),
                    "the planner wrote no [cluster] table"
                );
                Replica {
                    name: format!("mq-{i}"),
                    mqtt_port,
                    http_port,
                    args: files.args.clone(),
                    child: None,
                    logs: Arc::new(Mutex::new(Vec::new())),
                    ready_since: None,
                    _root: root,
                }
            })
            .collect();
        SimCluster {
            replicas: Mutex::new(replicas),
            token,
            plan,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Replica>> {
        self.replicas.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every slot as a load balancer backend.
    pub fn backends(&self) -> Vec<Backend> {
        self.lock()
            .iter()
            .map(|r| Backend {
                name: r.name.clone(),
                mqtt_port: r.mqtt_port,
                http_port: r.http_port,
            })
            .collect()
    }

    fn http_port(&self, name: &str) -> Option<u16> {
        self.lock()
            .iter()
            .find(|r| r.name == name)
            .map(|r| r.http_port)
    }

    /// Whether replica `i`'s process runs.
    fn running(&self, i: usize) -> bool {
        self.lock()[i].child.is_some()
    }

    /// Starts replica `i` (a pod created) and waits until it is ready.
    pub async fn start_replica(&self, i: usize) {
        let port = {
            let mut replicas = self.lock();
            replicas[i].spawn();
            replicas[i].http_port
        };
        self.wait_ready(i, port).await;
    }

    async fn wait_ready(&self, i: usize, port: u16) {
        let deadline = Instant::now() + READY_PATIENCE;
        loop {
            if let Some((200, _)) = request(port, "GET", "/readyz", None).await {
                let mut replicas = self.lock();
                replicas[i].ready_since.get_or_insert_with(Instant::now);
                return;
            }
            {
                let mut replicas = self.lock();
                let replica = &mut replicas[i];
                if let Some(Ok(Some(status))) = replica.child.as_mut().map(Child::try_wait) {
                    panic!(
                        "{} exited with {status}:\n{}",
                        replica.name,
                        replica.log_tail(40)
                    );
                }
                assert!(
                    Instant::now() < deadline,
                    "{} not ready:\n{}",
                    replica.name,
                    replica.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Each running replica's connections, by name.
    pub async fn connections(&self) -> Vec<(String, u64)> {
        let states = self.observe().await;
        states
            .into_iter()
            .map(|s| (s.name, s.connections.unwrap_or_default()))
            .collect()
    }

    /// The last `lines` log lines of every replica, for failures.
    pub fn logs(&self, lines: usize) -> String {
        self.lock()
            .iter()
            .map(|r| format!("--- {} ---\n{}", r.name, r.log_tail(lines)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Writes every replica's whole log to `<dir>/<replica>.log`.
    pub fn write_logs(&self, dir: &std::path::Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        for replica in self.lock().iter() {
            let text = replica.log_tail(usize::MAX);
            std::fs::write(dir.join(format!("{}.log", replica.name)), text)?;
        }
        Ok(())
    }

    /// What every started replica reports (slots never started are not
    /// replicas yet).
    async fn observe(&self) -> Vec<ReplicaState> {
        let ports: Vec<(usize, String, u16, bool)> = self
            .lock()
            .iter()
            .enumerate()
            .map(|(i, r)| (i, r.name.clone(), r.http_port, r.child.is_some()))
            .collect();
        let mut states = Vec::new();
        for (i, name, port, running) in ports {
            if !running && i >= self.started_slots() {
                continue;
            }
            let readyz = request(port, "GET", "/readyz", None).await;
            let ready = matches!(readyz, Some((200, _)));
            let draining = matches!(&readyz, Some((503, body)) if body.contains("draining"));
            let ready_for = {
                let mut replicas = self.lock();
                let since = &mut replicas[i].ready_since;
                if !ready {
                    *since = None;
                }
                match since {
                    Some(since) => since.elapsed(),
                    None if ready => {
                        *since = Some(Instant::now());
                        Duration::ZERO
                    }
                    None => Duration::ZERO,
                }
            };
            let (connections, cluster_connected) = match ready {
                true => match request(port, "GET", "/metrics", None).await {
                    Some((200, text)) => read_metrics(&text),
                    _ => (None, None),
                },
                false => (None, None),
            };
            states.push(ReplicaState {
                name,
                ready,
                ready_for,
                draining,
                connections,
                cluster_connected,
            });
        }
        states
    }

    /// Slots up to the last one ever started.
    fn started_slots(&self) -> usize {
        self.lock()
            .iter()
            .rposition(|r| r.child.is_some())
            .map_or(0, |i| i + 1)
    }

    /// SIGTERM to replica `name`, then waits for its exit.
    async fn stop(&self, name: &str) -> Result<(), AdminError> {
        let failed = |message: String| AdminError::Restart {
            replica: name.to_owned(),
            message,
        };
        let mut child = {
            let mut replicas = self.lock();
            let replica = replicas
                .iter_mut()
                .find(|r| r.name == name)
                .ok_or_else(|| failed("no such replica".to_owned()))?;
            replica.ready_since = None;
            replica
                .child
                .take()
                .ok_or_else(|| failed("not running".to_owned()))?
        };
        let term = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .map_err(|e| failed(format!("kill: {e}")))?;
        if !term.success() {
            return Err(failed(format!("kill -TERM exited with {term}")));
        }
        let deadline = Instant::now() + EXIT_PATIENCE;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(failed(format!(
                        "still running {EXIT_PATIENCE:?} after SIGTERM (killed)"
                    )));
                }
                Err(e) => return Err(failed(e.to_string())),
            }
        }
    }
}

impl ReplicaAdmin for SimCluster {
    fn replicas(&self) -> AdminFuture<'_, Vec<ReplicaState>> {
        Box::pin(async move { Ok(self.observe().await) })
    }

    fn shed<'a>(&'a self, shed: &'a Shed) -> AdminFuture<'a, u64> {
        Box::pin(async move {
            let port = self
                .http_port(&shed.replica)
                .ok_or_else(|| AdminError::Unreachable {
                    replica: shed.replica.clone(),
                    message: "no such replica".to_owned(),
                })?;
            let path = format!("/api/v1/shed?count={}&rate={}", shed.count, shed.rate);
            match request(port, "POST", &path, Some(&self.token)).await {
                Some((status, body)) => shed_answer(shed, status, body),
                None => Err(AdminError::Unreachable {
                    replica: shed.replica.clone(),
                    message: "no answer".to_owned(),
                }),
            }
        })
    }

    /// SIGTERM, the exit, a start on the same files (a pod deleted and
    /// created again by its StatefulSet). Returns once it was started.
    fn restart<'a>(&'a self, replica: &'a str) -> AdminFuture<'a, ()> {
        Box::pin(async move {
            self.stop(replica).await?;
            let mut replicas = self.lock();
            let slot = replicas
                .iter_mut()
                .find(|r| r.name == replica)
                .ok_or_else(|| AdminError::Restart {
                    replica: replica.to_owned(),
                    message: "no such replica".to_owned(),
                })?;
            slot.spawn();
            Ok(())
        })
    }
}

impl Drop for SimCluster {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        for replica in self.lock().iter_mut() {
            if let Some(mut child) = replica.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            if panicking {
                eprintln!("--- {} ---\n{}", replica.name, replica.log_tail(60));
            }
        }
    }
}
