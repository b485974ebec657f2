//! Fleets as the fleet controller keeps them ([`Fleets`]), and what a
//! factory and a device do with them: the operator binary's offline
//! `fleet sign` and `fleet secret`, logins over TLS, and the broker's fleet
//! metrics as the controller reads them.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::ByteString;
use kubemqtt_operator::api::MqttDeviceFleet;
use kubemqtt_operator::certs::CertifiedKeyPem;
use kubemqtt_operator::plan::fleet::{plan_own_secret, BrokerFleets, FleetSources};
use rumqttc::{AsyncClient, EventLoop};

use super::cluster::{connect, Operator, Pod};
use super::{http_get, operator_binary, secret_text, tls_config_with_certificate, PATIENCE};

/// The fleets of the broker `mq` as the fleet controller keeps them: the
/// resources (oldest first), the operator's Secret of each, and the
/// team's Secrets and ConfigMaps they name.
pub struct Fleets {
    fleets: Vec<MqttDeviceFleet>,
    own: BTreeMap<String, Secret>,
    secrets: BTreeMap<String, Secret>,
    config_maps: BTreeMap<String, ConfigMap>,
}

impl Fleets {
    pub fn new() -> Fleets {
        Fleets {
            fleets: Vec::new(),
            own: BTreeMap::new(),
            secrets: BTreeMap::new(),
            config_maps: BTreeMap::new(),
        }
    }

    /// Creates or changes a fleet, and plans its own Secret (kept when it
    /// exists), as a reconcile would.
    pub fn put(&mut self, name: &str, spec: serde_json::Value) {
        let mut fleet: MqttDeviceFleet = serde_json::from_value(serde_json::json!({
            "apiVersion": "kubemqtt.io/v1alpha1",
            "kind": "MqttDeviceFleet",
            "metadata": {"name": name, "namespace": "iot"},
            "spec": spec,
        }))
        .expect("a fleet");
        fleet.metadata.uid = Some(format!("f1ee7000-0000-4000-8000-{:0>12}", name.len()));
        let planned = plan_own_secret(&fleet, self.own.get(name), Timestamp::now())
            .expect("the fleet's Secret plans");
        if let Some(secret) = planned {
            self.own.insert(name.to_owned(), secret);
        }
        match self
            .fleets
            .iter_mut()
            .find(|f| f.metadata.name == fleet.metadata.name)
        {
            Some(existing) => *existing = fleet,
            None => self.fleets.push(fleet),
        }
    }

    pub fn delete(&mut self, name: &str) {
        self.fleets
            .retain(|f| f.metadata.name.as_deref() != Some(name));
    }

    pub fn put_secret(&mut self, name: &str, data: &[(&str, &str)]) {
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some("iot".to_owned()),
                ..ObjectMeta::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Secret::default()
        };
        self.secrets.insert(name.to_owned(), secret);
    }

    pub fn put_config_map(&mut self, name: &str, key: &str, value: &str) {
        let map = ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some("iot".to_owned()),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([(key.to_owned(), value.to_owned())])),
            ..ConfigMap::default()
        };
        self.config_maps.insert(name.to_owned(), map);
    }

    /// The operator's Secret of a fleet, one key.
    pub fn own_secret(&self, fleet: &str, key: &str) -> String {
        secret_text(&self.own[fleet], key)
    }

    /// The broker's fleets Secret; every fleet must be in it.
    pub fn broker_secret(&self, operator: &Operator) -> Secret {
        self.built().secret(operator.broker())
    }

    /// The broker's fleets Secret at `revision`, as the fleet controller
    /// writes it (with its `revision` key).
    pub fn broker_secret_at(&self, operator: &Operator, revision: u64) -> Secret {
        let at = Timestamp::from_second(i64::try_from(revision).expect("a small revision"))
            .expect("a revision in Unix seconds");
        let (secret, written) = self.built().secret_after(operator.broker(), None, at);
        assert_eq!(written, revision);
        secret
    }

    /// What the fleet controller pushes to the pods at `revision`.
    pub fn revocation_push(&self, revision: u64) -> String {
        self.built().revocation_push(revision)
    }

    fn built(&self) -> BrokerFleets {
        let sources: Vec<FleetSources<'_>> = self
            .fleets
            .iter()
            .map(|fleet| FleetSources {
                fleet,
                own_secret: fleet.metadata.name.as_ref().and_then(|n| self.own.get(n)),
                secrets: &self.secrets,
                config_maps: &self.config_maps,
            })
            .collect();
        let built = BrokerFleets::build(&sources);
        assert!(built.refused.is_empty(), "refused: {:?}", built.refused);
        built
    }
}

/// Runs the operator binary; returns what it printed.
pub fn operator_command(args: &[&str]) -> String {
    let output = Command::new(operator_binary())
        .args(args)
        .output()
        .expect("the operator binary runs");
    assert!(
        output.status.success(),
        "kubemqtt-operator {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8")
}

/// The factory signs a device certificate with a fleet CA: `fleet sign`.
/// Returns the certificate and key.
pub fn factory_sign(dir: &Path, ca: &CertifiedKeyPem, device: &str) -> (String, String) {
    let (ca_cert, ca_key) = (dir.join("fleet-ca.crt"), dir.join("fleet-ca.key"));
    std::fs::write(&ca_cert, &ca.cert_pem).expect("write the CA");
    std::fs::write(&ca_key, &ca.key_pem).expect("write the CA key");
    operator_command(&[
        "fleet",
        "sign",
        "--ca-cert",
        &ca_cert.display().to_string(),
        "--ca-key",
        &ca_key.display().to_string(),
        "--device",
        device,
        "--out",
        &dir.display().to_string(),
    ]);
    let read = |ext: &str| {
        std::fs::read_to_string(dir.join(format!("{device}.{ext}"))).expect("the signed files")
    };
    (read("crt"), read("key"))
}

/// The factory derives a device's secret: `fleet secret`; with a client
/// id, the login password signed at `timestamp` (now when `None`).
pub fn factory_password(
    dir: &Path,
    fleet_secret: &str,
    device: &str,
    client_id: &str,
    timestamp: Option<u64>,
) -> String {
    let file = dir.join("fleet.secret");
    std::fs::write(&file, fleet_secret).expect("write the fleet secret");
    let file = file.display().to_string();
    let mut args = vec![
        "fleet",
        "secret",
        "--secret-file",
        file.as_str(),
        "--device",
        device,
        "--client-id",
        client_id,
    ];
    let at = timestamp.map(|t| t.to_string());
    if let Some(at) = &at {
        args.extend(["--timestamp", at.as_str()]);
    }
    let printed = operator_command(&args);
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(
        lines.len(),
        2,
        "the device secret and a password: {printed}"
    );
    lines[1].to_owned()
}

pub fn now_secs() -> u64 {
    Timestamp::now().as_second() as u64
}

/// A device of a password fleet logs in over TLS.
pub async fn login(
    pod: &Pod,
    operator: &Operator,
    client_id: &str,
    username: &str,
    password: &str,
) -> Result<(AsyncClient, EventLoop), rumqttc::ConnectionError> {
    pod.connect(operator, client_id, username, password).await
}

/// A device of a certificate fleet logs in with its certificate only.
pub async fn login_with_certificate(
    pod: &Pod,
    operator: &Operator,
    client_id: &str,
    (cert, key): &(String, String),
) -> Result<(AsyncClient, EventLoop), rumqttc::ConnectionError> {
    let tls = tls_config_with_certificate(&operator.trust_bundle(), cert, key);
    connect(pod.options(client_id, tls)).await
}

/// The value of `kubemqtt_fleet_logins_total` for a fleet and result.
pub fn logins(metrics: &str, fleet: &str, result: &str) -> Option<f64> {
    metrics
        .lines()
        .filter(|line| line.starts_with("kubemqtt_fleet_logins_total{"))
        .find(|line| {
            line.contains(&format!("fleet=\"{fleet}\""))
                && line.contains(&format!("result=\"{result}\""))
        })
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

/// Polls the broker's `/metrics` until `ready` holds.
pub fn wait_for_metrics(pod: &Pod, what: &str, ready: impl Fn(&str) -> bool) {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let (_, metrics) = http_get(pod.http_port, "/metrics", None);
        if ready(&metrics) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not within {PATIENCE:?}: {what}\n{metrics}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
