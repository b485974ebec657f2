//! The broker image's default configuration (broker/dist/broker.toml,
//! installed by Dockerfile.broker as /etc/kubemqtt/broker.toml): valid,
//! listening on every interface, with anonymous access off unless
//! KUBEMQTT_ALLOW_ANONYMOUS or --allow-anonymous turns it on.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use kubemqtt_broker::config::Config;

fn shipped() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/broker.toml")
}

#[test]
fn the_shipped_configuration_passes_check_config() {
    let out = Command::new(env!("CARGO_BIN_EXE_kubemqtt-broker"))
        .env("KUBEMQTT_CONFIG", shipped())
        .arg("--check-config")
        .output()
        .expect("run --check-config");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration OK"));

    let config = Config::load(&shipped()).unwrap();
    assert!(
        !config.allow_anonymous,
        "anonymous access is off by default"
    );
    assert_eq!(config.listeners.len(), 1);
    assert_eq!(config.listeners[0].bind, "0.0.0.0:1883".parse().unwrap());
    assert_eq!(config.http.bind, Some("0.0.0.0:8080".parse().unwrap()));
    assert!(!config.persistence.enabled);
}

#[test]
fn the_image_installs_it_where_the_broker_reads_it() {
    let dockerfile =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Dockerfile.broker"))
            .unwrap();
    for line in [
        "COPY broker/dist/broker.toml /etc/kubemqtt/broker.toml",
        "ENV KUBEMQTT_CONFIG=/etc/kubemqtt/broker.toml",
    ] {
        assert!(
            dockerfile.lines().any(|l| l.trim() == line),
            "Dockerfile.broker lacks `{line}`"
        );
    }
}

/// The shipped file with its ports moved to free loopback ones, started
/// with `env` and `args`; returns whether an anonymous client got in.
async fn anonymous_login_with(env: &[(&str, &str)], args: &[&str]) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let mqtt = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let http = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (mqtt_addr, http_addr) = (mqtt.local_addr().unwrap(), http.local_addr().unwrap());
    drop((mqtt, http));
    let text = std::fs::read_to_string(shipped())
        .unwrap()
        .replace("0.0.0.0:1883", &mqtt_addr.to_string())
        .replace("0.0.0.0:8080", &http_addr.to_string());
    let config = write_file(dir.path(), "broker.toml", &text);
    let mut child = Command::new(env!("CARGO_BIN_EXE_kubemqtt-broker"))
        .env_remove("KUBEMQTT_ALLOW_ANONYMOUS")
        .env("KUBEMQTT_CONFIG", &config)
        .envs(env.iter().copied())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the broker");
    let deadline = Instant::now() + TIMEOUT;
    let connected = loop {
        if let Ok(stream) = tokio::net::TcpStream::connect(mqtt_addr).await {
            let mut raw = Raw::from_stream(stream);
            break raw.handshake(&Connect::v4("anonymous")).await.code == 0;
        }
        assert!(Instant::now() < deadline, "the broker did not listen");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let _ = child.kill();
    let _ = child.wait();
    connected
}

#[tokio::test]
async fn anonymous_access_is_off_unless_turned_on() {
    assert!(!anonymous_login_with(&[], &[]).await);
    assert!(!anonymous_login_with(&[("KUBEMQTT_ALLOW_ANONYMOUS", "false")], &[]).await);
    assert!(anonymous_login_with(&[("KUBEMQTT_ALLOW_ANONYMOUS", "true")], &[]).await);
    assert!(anonymous_login_with(&[], &["--allow-anonymous"]).await);
}
