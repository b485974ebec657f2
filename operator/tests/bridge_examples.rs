//! `examples/bridge-*.yaml`: each is a valid `MqttBridge` (its CEL rules
//! hold), plans without error, renders a `bridge.toml` that the bridge
//! itself reads back, and its objects pass `kubernetes-validate --strict`
//! (the bridge's MqttUser against the MqttUser CRD too). One example per
//! sink.

use crate::common;

use std::path::PathBuf;

use common::{tool, workspace};
use kube::CustomResourceExt;
use kubemqtt_bridge::config::BridgeConfig;
use kubemqtt_operator::api::{MqttBridge, MqttUser};
use kubemqtt_operator::plan::bridge::{plan_bridge, BridgePlan, BRIDGE_CONFIG_KEY};
use serde_json::{json, Value};

fn bridge_examples() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(workspace().join("examples"))
        .expect("examples/")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("bridge-") && n.ends_with(".yaml"))
        })
        .collect();
    files.sort();
    files
}

fn plans() -> Vec<(PathBuf, MqttBridge, BridgePlan)> {
    bridge_examples()
        .into_iter()
        .map(|file| {
            let text = std::fs::read_to_string(&file).expect("readable");
            let mut bridge: MqttBridge =
                serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            bridge.metadata.namespace = Some("iot".into());
            bridge.metadata.uid = Some("00000000-0000-0000-0000-000000000001".into());
            let plan =
                plan_bridge(&bridge, None).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            (file, bridge, plan)
        })
        .collect()
}

#[test]
fn one_example_per_sink_each_valid_and_planned() {
    let mut sinks = Vec::new();
    for (file, bridge, plan) in plans() {
        bridge
            .validate_cel()
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let toml = &plan.config_map.data.as_ref().expect("data")[BRIDGE_CONFIG_KEY];
        let config = BridgeConfig::from_toml(toml)
            .unwrap_or_else(|e| panic!("{}: the bridge refuses its config: {e}", file.display()));
        sinks.extend(config.routes.iter().map(|r| r.sink.kind()));
    }
    sinks.sort();
    sinks.dedup();
    assert_eq!(sinks, ["amqp", "http", "mqtt", "nats", "postgres"]);
}

#[test]
fn rendered_objects_pass_kubernetes_validate() {
    let Some(validate) = tool("kubernetes-validate", "schema check") else {
        return;
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut files = Vec::new();
    for (file, _, plan) in plans() {
        let mut objects: Vec<Value> = vec![
            serde_json::to_value(&plan.config_map).unwrap(),
            serde_json::to_value(&plan.service).unwrap(),
            serde_json::to_value(&plan.pods_service).unwrap(),
            serde_json::to_value(&plan.stateful_set).unwrap(),
        ];
        for (object, (api_version, kind)) in objects.iter_mut().zip([
            ("v1", "ConfigMap"),
            ("v1", "Service"),
            ("v1", "Service"),
            ("apps/v1", "StatefulSet"),
        ]) {
            object["apiVersion"] = json!(api_version);
            object["kind"] = json!(kind);
        }
        let rendered = dir.path().join(file.file_name().expect("name"));
        std::fs::write(
            &rendered,
            serde_saphyr::to_string_multiple(&objects).unwrap(),
        )
        .unwrap();
        files.push(rendered);
    }
    let output = std::process::Command::new(&validate)
        .args(["--strict", "-k", "1.32.0"])
        .args(&files)
        .output()
        .expect("kubernetes-validate runs");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_bridge_users_are_valid_mqtt_users() {
    for (file, _, plan) in plans() {
        let user: Value = serde_json::to_value(&plan.user).unwrap();
        assert_eq!(user["kind"], "MqttUser", "{}", file.display());
        let typed: MqttUser = serde_json::from_value(user).unwrap();
        typed
            .validate_cel()
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(!typed.spec.acl.is_empty());
    }
    // The CRD the examples are checked against is the generated one.
    assert_eq!(MqttBridge::crd().spec.names.kind, "MqttBridge");
}
