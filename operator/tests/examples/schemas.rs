//! The rendered objects and the CRDs against the Kubernetes schemas.

use super::users::{example_objects, user_secrets};
use super::*;

#[test]
fn rendered_objects_and_the_crds_pass_kubernetes_validate() {
    let Some(validate) = tool("kubernetes-validate", "schema check") else {
        return;
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut files = Vec::new();
    for example in broker_examples() {
        let name = example.file_name().expect("file name");
        let rendered = dir.path().join(name);
        // cert-manager's Certificate has no schema here: checked by
        // `the_cert_manager_certificate_is_one_cert_manager_takes`.
        let documents: Vec<Value> = serde_saphyr::from_multiple(&render(&example)).unwrap();
        let built_in: Vec<Value> = documents
            .into_iter()
            .filter(|d| !d.is_null() && kind(d) != "Certificate")
            .collect();
        let yaml = serde_saphyr::to_string_multiple(&built_in).expect("YAML output");
        std::fs::write(&rendered, yaml).expect("write rendered objects");
        files.push(rendered);
    }
    // The users' credentials Secrets, as the operator would apply them.
    let secrets: Vec<Value> = user_secrets(&example_objects())
        .into_iter()
        .map(|(_, secret)| {
            let mut object = serde_json::to_value(secret).expect("a Secret serializes");
            object["apiVersion"] = json!("v1");
            object["kind"] = json!("Secret");
            object
        })
        .collect();
    let rendered = dir.path().join("user-secrets.yaml");
    let yaml = serde_saphyr::to_string_multiple(&secrets).expect("YAML output");
    std::fs::write(&rendered, yaml).expect("write the users' Secrets");
    files.push(rendered);
    // The examples themselves: their built-in objects (a user's password
    // Secret) are checked; custom resources are skipped with a warning
    // (the test above checks them against their CRD).
    files.extend(examples());
    files.extend(crd_files());
    let files: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    run(&validate, &["--strict", "-k", "1.32.0"], &files);
}

fn crd_files() -> Vec<PathBuf> {
    let mut crds: Vec<PathBuf> = std::fs::read_dir(workspace().join("crds"))
        .expect("crds/ exists")
        .map(|entry| entry.expect("readable entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    crds.sort();
    assert!(crds.len() >= 2, "expected the MqttBroker and MqttUser CRDs");
    crds
}

#[test]
fn crds_pass_the_structural_schema_check() {
    let Some(check) = tool("crd-structural-check", "schema check") else {
        return;
    };
    let crds = crd_files();
    let crds: Vec<&Path> = crds.iter().map(PathBuf::as_path).collect();
    run(&check, &[], &crds);
}

/// `examples/broker-cluster.yaml` is what its comments say: three pods on a
/// NATS the operator runs, over TLS, scaled by an HPA between 3 and 12 on
/// CPU and connections, draining 20,000 clients at 1,000 a second.
#[test]
fn the_cluster_example_runs_three_pods_on_a_managed_nats_with_an_hpa() {
    let yaml = render(&workspace().join("examples/broker-cluster.yaml"));
    let documents: Vec<Value> = serde_saphyr::from_multiple(&yaml).expect("rendered YAML");
    let find = |kind: &str, name: &str| {
        documents
            .iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{kind} {name} rendered"))
            .clone()
    };
    let broker = find("StatefulSet", "mqtt-cluster");
    assert_eq!(broker["spec"]["replicas"], 3);
    assert_eq!(
        broker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"],
        35
    );
    let config = find("ConfigMap", "mqtt-cluster-config");
    let text = config["data"]["broker.toml"].as_str().expect("broker.toml");
    let parsed = kubemqtt_broker::config::Config::from_toml_str(text, "broker.toml")
        .expect("the broker reads it");
    let cluster = parsed.cluster.expect("a [cluster] table");
    assert_eq!(cluster.servers.len(), 3);
    assert!(cluster.servers[0].starts_with("tls://mqtt-cluster-nats-0."));
    assert!(cluster.tls.is_some());
    assert_eq!(parsed.drain.rate_per_sec, 1000);
    assert_eq!(parsed.drain.deadline_secs, 30);
    assert_eq!(
        find("StatefulSet", "mqtt-cluster-nats")["spec"]["replicas"],
        3
    );
    let hpa = find("HorizontalPodAutoscaler", "mqtt-cluster");
    assert_eq!(hpa["spec"]["minReplicas"], 3);
    assert_eq!(hpa["spec"]["maxReplicas"], 12);
    assert_eq!(hpa["spec"]["metrics"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"],
        600
    );
    assert_eq!(
        find("PodDisruptionBudget", "mqtt-cluster")["spec"]["maxUnavailable"],
        1
    );
}
