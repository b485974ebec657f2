//! How long a credentials change takes to reach a running broker.
//!
//! `cargo bench -p kubemqtt-contract-tests --bench propagation`
//! (`KUBEMQTT_BENCH_ROUNDS`, default 30). A real broker runs on files the
//! operator rendered, with one password user; each round rotates the
//! password (no grace window) and measures, from the change:
//!
//! - **push**: the operator's planners (user Secret, broker credentials
//!   file) and the push to the admin API, until the broker answers; then
//!   the first TLS login with the new password;
//! - **file only**: the credentials file replaced on disk, as the kubelet
//!   does when it refreshes the Secret volume, until a login with the new
//!   password succeeds (the broker checks the file every
//!   `reload_interval_secs`, 2 s by default). The kubelet's own delay
//!   before it writes the file (its sync period plus cache TTL, typically
//!   60-90 s) comes on top and cannot be measured without a cluster.
//!
//! The watch delay between the API server and the operator (typically tens
//! of milliseconds) is not included either.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::cluster::{Operator, Pod};
use k8s_openapi::jiff::Timestamp;
use kubemqtt_operator::plan::secrets::CREDENTIALS_KEY;
use kubemqtt_operator::plan::AUTH_DIR;

fn main() {
    let rounds: usize = std::env::var("KUBEMQTT_BENCH_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(30);
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(run(rounds));
}

async fn run(rounds: usize) {
    let mut operator = Operator::new();
    operator.put_user(
        "device-1",
        serde_json::json!({"brokerRef": {"name": "mq"}, "rotation": {"graceMinutes": 0}}),
        Timestamp::now(),
    );
    let pod = Pod::start(operator.reconcile_broker());
    login(&pod, &operator)
        .await
        .expect("the first password works");

    let mut planned = Vec::new();
    let mut pushed = Vec::new();
    let mut accepted = Vec::new();
    for round in 0..rounds {
        let start = Instant::now();
        operator.annotate("device-1", &format!("push-{round}"), Timestamp::now());
        let plan = operator.reconcile_broker().clone();
        planned.push(start.elapsed());
        pod.push(&plan).await;
        pushed.push(start.elapsed());
        login(&pod, &operator)
            .await
            .expect("the new password works right after the push");
        accepted.push(start.elapsed());
    }

    let file = pod.files.path(&format!("{AUTH_DIR}/{CREDENTIALS_KEY}"));
    let mut by_file = Vec::new();
    for round in 0..rounds.min(10) {
        operator.annotate("device-1", &format!("file-{round}"), Timestamp::now());
        let plan = operator.reconcile_broker().clone();
        let text = common::secret_text(&plan.auth_secret, CREDENTIALS_KEY);
        let start = Instant::now();
        std::fs::write(&file, text).expect("replace the credentials file");
        let deadline = start + Duration::from_secs(30);
        while login(&pod, &operator).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "the file change was not picked up"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        by_file.push(start.elapsed());
    }

    println!(
        "Credential propagation, {rounds} rotations by push, {} by file",
        by_file.len()
    );
    println!();
    println!("| path | step | median | p90 | max |");
    println!("|---|---|---:|---:|---:|");
    row(
        "push",
        "planned (user Secret + credentials file)",
        &mut planned,
    );
    row("push", "push answered by the broker", &mut pushed);
    row("push", "new password accepted (TLS login)", &mut accepted);
    row(
        "file only",
        "new password accepted after the file changed",
        &mut by_file,
    );
}

/// One login with the user's current password over TLS.
async fn login(pod: &Pod, operator: &Operator) -> Result<(), String> {
    let password = operator.secret("device-1", "password");
    pod.connect(operator, "bench", "device-1", &password)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn row(path: &str, step: &str, samples: &mut [Duration]) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "| {path} | {step} | {} | {} | {} |",
        ms(at(0.5)),
        ms(at(0.9)),
        ms(at(1.0))
    );
}

fn ms(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1000.0)
}
