//! `kubemqtt-operator run` without a cluster stops with an error that
//! says so, instead of hanging or panicking.

use std::process::Command;

#[test]
fn run_without_a_cluster_fails_clearly() {
    let output = Command::new(env!("CARGO_BIN_EXE_kubemqtt-operator"))
        .args([
            "run",
            "--http-address",
            "127.0.0.1:0",
            "--log-format",
            "text",
        ])
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .output()
        .expect("run kubemqtt-operator");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("Error: cannot connect to Kubernetes"),
        "{stderr}"
    );
}
