//! `examples/fleet-*.yaml`: one example per mode, each a valid
//! `MqttDeviceFleet` (its CEL rules hold; `examples.rs` checks the schema),
//! planned into the broker's fleets Secret with the Secrets it names stood
//! in for, and loaded from that Secret's files by the broker itself. The
//! Secrets the operator writes pass `kubernetes-validate --strict`.

use crate::common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use common::{tool, workspace};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::ByteString;
use kube::CustomResourceExt;
use kubemqtt_operator::api::{MqttBroker, MqttDeviceFleet};
use kubemqtt_operator::plan::fleet::{plan_own_secret, BrokerFleets, FleetSources};
use serde_json::{json, Value};

fn fleet_examples() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(workspace().join("examples"))
        .expect("examples/")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("fleet-") && n.ends_with(".yaml"))
        })
        .collect();
    files.sort();
    files
}

fn fleets() -> Vec<(PathBuf, MqttDeviceFleet)> {
    fleet_examples()
        .into_iter()
        .map(|file| {
            let text = std::fs::read_to_string(&file).expect("readable");
            let mut fleet: MqttDeviceFleet =
                serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            fleet.metadata.namespace = Some("default".into());
            fleet.metadata.uid = Some(format!("uid-{}", fleet.metadata.name.clone().unwrap()));
            (file, fleet)
        })
        .collect()
}

/// Stand-ins for the Secrets the examples name (their comments say how a
/// team makes them).
fn referenced_secrets() -> BTreeMap<String, Secret> {
    let secret = |name: &str, key: &str, value: String| {
        (
            name.to_owned(),
            Secret {
                metadata: ObjectMeta {
                    name: Some(name.to_owned()),
                    namespace: Some("default".to_owned()),
                    ..ObjectMeta::default()
                },
                data: Some(BTreeMap::from([(
                    key.to_owned(),
                    ByteString(value.into_bytes()),
                )])),
                ..Secret::default()
            },
        )
    };
    let key = rcgen::KeyPair::generate().expect("a key");
    BTreeMap::from([
        secret("vehicles-jwt-keys", "keys.pem", key.public_key_pem()),
        secret("vending-registry", "token", "registry-token".to_owned()),
    ])
}

fn broker() -> MqttBroker {
    serde_json::from_value(json!({
        "apiVersion": "kubemqtt.io/v1alpha1", "kind": "MqttBroker",
        "metadata": {"name": "broker", "namespace": "default", "uid": "uid-broker"},
        "spec": {},
    }))
    .expect("a broker")
}

fn build() -> (BrokerFleets, Vec<Secret>) {
    let now: Timestamp = "2026-12-01T00:00:00Z".parse().unwrap();
    let fleets = fleets();
    let own: Vec<Option<Secret>> = fleets
        .iter()
        .map(|(file, fleet)| {
            plan_own_secret(fleet, None, now).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
        })
        .collect();
    let secrets = referenced_secrets();
    let config_maps = BTreeMap::new();
    let sources: Vec<FleetSources<'_>> = fleets
        .iter()
        .zip(&own)
        .map(|((_, fleet), own)| FleetSources {
            fleet,
            own_secret: own.as_ref(),
            secrets: &secrets,
            config_maps: &config_maps,
        })
        .collect();
    let built = BrokerFleets::build(&sources);
    (built, own.into_iter().flatten().collect())
}

#[test]
fn one_example_per_mode_each_valid_and_loaded_by_the_broker() {
    let mut modes: Vec<String> = Vec::new();
    for (file, fleet) in fleets() {
        fleet
            .validate_cel()
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        modes.push(
            serde_json::to_value(fleet.spec.mode)
                .unwrap()
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    modes.sort();
    assert_eq!(modes, ["certificate", "derived", "hook", "jwt"]);

    let (built, _) = build();
    assert!(built.refused.is_empty(), "{:?}", built.refused);
    assert_eq!(built.included.len(), 4);
    assert_eq!(
        built.revoked["meters"], 2,
        "the certificate example's revocations"
    );
    // The broker reads the Secret's files as its pods see them.
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in &built.files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let configs = kubemqtt_broker::auth::fleet::config::all_fleets(&[], Some(dir.path()))
        .expect("the broker reads the fleet files");
    let loaded = kubemqtt_broker::auth::fleet::Fleets::load(&configs, None)
        .expect("the broker loads the fleets");
    let mut names: Vec<&str> = loaded.names().collect();
    names.sort();
    assert_eq!(names, ["meters", "sensors", "vehicles", "vending"]);
    assert_eq!(MqttDeviceFleet::crd().spec.names.kind, "MqttDeviceFleet");
}

#[test]
fn the_secrets_pass_kubernetes_validate() {
    let Some(validate) = tool("kubernetes-validate", "schema check") else {
        return;
    };
    let (built, own) = build();
    let mut objects: Vec<Value> = own
        .iter()
        .chain([&built.secret(&broker())])
        .map(|secret| {
            let mut object = serde_json::to_value(secret).unwrap();
            object["apiVersion"] = json!("v1");
            object["kind"] = json!("Secret");
            object
        })
        .collect();
    objects.sort_by_key(|o| o["metadata"]["name"].to_string());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fleet-secrets.yaml");
    std::fs::write(&file, serde_saphyr::to_string_multiple(&objects).unwrap()).unwrap();
    let output = std::process::Command::new(&validate)
        .args(["--strict", "-k", "1.32.0"])
        .arg(&file)
        .output()
        .expect("kubernetes-validate runs");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
