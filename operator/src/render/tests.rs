use super::*;
use crate::api::REPLICAS_MESSAGE;
use crate::plan::testing::now;
use crate::plan::{plan, Observed, Settings};

fn read(yaml: &str) -> Result<MqttBroker, RenderError> {
    read_broker(yaml, None)
}

const HEADER: &str =
    "apiVersion: kubemqtt.io/v1alpha1\nkind: MqttBroker\nmetadata:\n  name: broker\n";
const MINIMAL: &str =
    "apiVersion: kubemqtt.io/v1alpha1\nkind: MqttBroker\nmetadata:\n  name: broker\nspec: {}\n";

fn invalid(spec: &str) -> String {
    match read(&format!("{HEADER}spec:\n{spec}")) {
        Err(RenderError::Invalid { message, .. }) => message,
        other => panic!("expected a validation error for {spec:?}, got {other:?}"),
    }
}

#[test]
fn a_minimal_broker_reads_with_defaults() {
    let broker = read(MINIMAL).unwrap();
    assert_eq!(broker.metadata.name.as_deref(), Some("broker"));
    assert_eq!(broker.metadata.namespace.as_deref(), Some("default"));
    assert_eq!(broker.spec, Default::default());
    assert_eq!(broker.spec.replicas, 1);
    assert_eq!(
        read_broker(MINIMAL, Some("iot"))
            .unwrap()
            .metadata
            .namespace
            .as_deref(),
        Some("iot")
    );
}

#[test]
fn namespaces_must_agree() {
    let yaml = MINIMAL.replace("name: broker", "name: broker\n  namespace: a");
    assert_eq!(
        read_broker(&yaml, Some("a"))
            .unwrap()
            .metadata
            .namespace
            .as_deref(),
        Some("a")
    );
    assert!(matches!(
        read_broker(&yaml, Some("b")),
        Err(RenderError::NamespaceMismatch { .. })
    ));
}

#[test]
fn spec_is_required_as_in_the_crd() {
    assert!(matches!(read(HEADER), Err(RenderError::Parse { .. })));
}

#[test]
fn unknown_fields_are_refused_with_their_paths() {
    let yaml = format!(
        "{HEADER}spec:\n  listners: {{}}\n  persistence: {{enabled: true, sise: 1Gi}}\n  \
         tolerations: [{{key: a, colour: b}}]\n  labels: {{any: thing}}\n  \
         config: {{whatever: {{deep: 1}}}}\n  affinity: {{nodeAffinity: {{}}}}\n"
    );
    match read(&yaml) {
        Err(RenderError::UnknownFields { fields, .. }) => assert_eq!(
            fields,
            [
                "spec.listners",
                "spec.persistence.sise",
                "spec.tolerations[0].colour"
            ]
        ),
        other => panic!("expected unknown fields, got {other:?}"),
    }
}

#[test]
fn other_kinds_are_refused() {
    let error = read("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n").unwrap_err();
    assert_eq!(
        error.to_string(),
        "expected apiVersion kubemqtt.io/v1alpha1 and kind MqttBroker, found v1 ConfigMap"
    );
    assert!(matches!(read("[1, 2"), Err(RenderError::Parse { .. })));
}

#[test]
fn cel_rules_reject_what_the_apiserver_would() {
    let message = invalid("  replicas: 2\n");
    assert!(message.contains(REPLICAS_MESSAGE), "{message}");
    assert!(read(&format!("{HEADER}spec:\n  replicas: 0\n")).is_ok());

    let message = invalid("  tls: {secretName: x, generated: {}}\n");
    assert!(
        message.contains("set either tls.generated or tls.secretName"),
        "{message}"
    );

    let message = invalid("  tls: {generated: {validityDays: 30, renewBeforeDays: 30}}\n");
    assert!(
        message.contains("renewBeforeDays must be less than validityDays"),
        "{message}"
    );

    let message = invalid("  service: {type: ClusterIP, loadBalancerSourceRanges: [10.0.0.0/8]}\n");
    assert!(message.contains("need type LoadBalancer"), "{message}");
    let message = invalid("  service: {type: NodePort, loadBalancerClass: x}\n");
    assert!(message.contains("need type LoadBalancer"), "{message}");
    let message = invalid("  service: {type: ClusterIP, externalTrafficPolicy: Local}\n");
    assert!(
        message.contains("externalTrafficPolicy needs type"),
        "{message}"
    );
}

#[test]
fn persistence_can_change_after_creation() {
    let old = read(MINIMAL).unwrap();
    let new = read(&format!(
        "{HEADER}spec:\n  persistence: {{enabled: true}}\n"
    ))
    .unwrap();
    assert!(new.validate_cel_update(&old).is_ok());
    assert!(old.validate_cel_update(&new).is_ok());
}

#[test]
fn plan_yaml_is_one_document_per_object() {
    let broker = read(MINIMAL).unwrap();
    let plan = plan(&broker, &Observed::default(), &Settings::default(), now()).unwrap();
    let yaml = plan_yaml(&plan).unwrap();
    let documents: Vec<serde_json::Value> = serde_saphyr::from_multiple(&yaml).unwrap();
    assert_eq!(documents, plan.objects().unwrap());
}

#[test]
fn brokers_users_and_their_secrets_render_together() {
    let yaml = format!(
        "{MINIMAL}---\napiVersion: kubemqtt.io/v1alpha1\nkind: MqttUser\nmetadata: {{name: dev}}\n\
         spec: {{brokerRef: {{name: broker}}}}\n---\napiVersion: kubemqtt.io/v1alpha1\n\
         kind: MqttUser\nmetadata: {{name: app}}\nspec:\n  brokerRef: {{name: broker}}\n  \
         authentication: {{password: {{valueFrom: {{secretKeyRef: {{name: app-pw, key: pw}}}}}}}}\n\
         ---\napiVersion: v1\nkind: Secret\nmetadata: {{name: app-pw}}\nstringData: {{pw: a-long-password}}\n"
    );
    let resources = read_resources(&yaml, None).unwrap();
    assert_eq!(
        (
            resources.brokers.len(),
            resources.users.len(),
            resources.secrets.len()
        ),
        (1, 2, 1)
    );
    let out = render(&resources, &Settings::default(), now()).unwrap();
    let documents: Vec<serde_json::Value> = serde_saphyr::from_multiple(&out).unwrap();
    let names: Vec<&str> = documents
        .iter()
        .filter(|d| d["kind"] == "Secret")
        .map(|d| d["metadata"]["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"dev-mqtt-credentials"), "{names:?}");
    assert!(names.contains(&"app-mqtt-credentials"), "{names:?}");
    // The credentials file, in clear, holds both users.
    let comment: String = out
        .lines()
        .filter(|line| line.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        comment.contains("# The credentials file of MqttBroker default/broker (Secret broker-auth"),
        "{comment}"
    );
    assert!(comment.contains("username = \"dev\""), "{comment}");
    assert!(comment.contains("username = \"app\""), "{comment}");
    let app = documents
        .iter()
        .find(|d| d["metadata"]["name"] == "app-mqtt-credentials")
        .unwrap();
    assert_eq!(
        app["data"]["password"], "YS1sb25nLXBhc3N3b3Jk",
        "the Secret's password"
    );
}

#[test]
fn what_render_cannot_take_is_named() {
    let orphan = "apiVersion: kubemqtt.io/v1alpha1\nkind: MqttUser\nmetadata: {name: dev}\nspec: {brokerRef: {name: nope}}\n";
    let resources = read_resources(orphan, None).unwrap();
    assert_eq!(
        render(&resources, &Settings::default(), now())
            .unwrap_err()
            .to_string(),
        "MqttUser dev names MqttBroker nope, which is not in the file"
    );
    let other = format!("{MINIMAL}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: x}}\n");
    assert_eq!(
        read_resources(&other, None).unwrap_err().to_string(),
        "document 2: expected an MqttBroker, an MqttUser or an MqttBridge (kubemqtt.io/v1alpha1), found v1 ConfigMap"
    );
    let typo = "apiVersion: kubemqtt.io/v1alpha1\nkind: MqttUser\nmetadata: {name: dev}\nspec: {brokerRef: {name: b}, usrname: x}\n";
    assert_eq!(
        read_resources(typo, None).unwrap_err().to_string(),
        "unknown fields in the MqttUser: spec.usrname"
    );
}

#[test]
fn the_crds_round_trip() {
    let crds = crds();
    let names: Vec<&str> = crds.iter().map(|(file, _)| *file).collect();
    assert_eq!(
        names,
        [
            "mqttbroker.yaml",
            "mqttuser.yaml",
            "mqttbridge.yaml",
            "mqttdevicefleet.yaml"
        ]
    );
    for ((_, crd), short) in crds.iter().zip(["mqb", "mqu", "mqbr", "mqfleet"]) {
        let yaml = crd_yaml(crd).unwrap();
        let parsed: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(parsed, serde_json::to_value(crd).unwrap());
        assert_eq!(parsed["spec"]["names"]["shortNames"][0], short);
    }
}

const BRIDGE: &str = "apiVersion: kubemqtt.io/v1alpha1\nkind: MqttBridge\nmetadata: {name: plant}\n\
     spec:\n  brokerRef: {name: broker}\n  routes:\n  - name: readings\n    filters: [sensors/#]\n    \
     map: {celsius: payload.temp}\n    sink:\n      nats:\n        url: nats://nats:4222\n        \
     subject: \"'iot.' + segment(topic, 1)\"\n        tls: {caSecretRef: {name: nats-ca, key: ca.crt}}\n";

#[test]
fn bridges_render_with_their_user_on_the_broker() {
    let resources = read_resources(&format!("{MINIMAL}---\n{BRIDGE}"), Some("iot")).unwrap();
    assert_eq!(resources.bridges.len(), 1);
    let out = render(&resources, &Settings::default(), now()).unwrap();
    let documents: Vec<serde_json::Value> = serde_saphyr::from_multiple(&out).unwrap();
    let find = |kind: &str, name: &str| {
        documents
            .iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name} in:\n{out}"))
    };
    // The bridge's own objects, as the bridge controller applies them.
    let user = find("MqttUser", "plant-bridge");
    assert_eq!(user["apiVersion"], "kubemqtt.io/v1alpha1");
    assert_eq!(user["spec"]["brokerRef"]["name"], "broker");
    let config = find("ConfigMap", "plant-bridge-config");
    let toml = config["data"]["bridge.toml"].as_str().unwrap();
    let parsed = kubemqtt_bridge::config::BridgeConfig::from_toml(toml).unwrap();
    let kubemqtt_bridge::config::SinkConfig::Nats(nats) = &parsed.routes[0].sink else {
        panic!("a NATS sink: {toml}")
    };
    assert_eq!(
        nats.tls.as_ref().and_then(|tls| tls.ca_file.as_deref()),
        Some(std::path::Path::new(
            "/var/run/kubemqtt-bridge/secrets/nats-ca/ca.crt"
        ))
    );
    let set = find("StatefulSet", "plant-bridge");
    assert_eq!(set["metadata"]["namespace"], "iot");
    assert!(
        set["metadata"].get("ownerReferences").is_none(),
        "no owner offline: {set}"
    );
    find("Service", "plant-bridge");
    find("Service", "plant-bridge-pods");
    // Its MQTT identity: a credentials Secret, and a line in the
    // broker's credentials file.
    find("Secret", "plant-bridge-mqtt-credentials");
    assert!(out.contains("#   username = \"plant-bridge\""), "{out}");
}

#[test]
fn what_render_cannot_take_of_a_bridge_is_named() {
    let orphan = read_resources(BRIDGE, None).unwrap();
    assert_eq!(
        render(&orphan, &Settings::default(), now())
            .unwrap_err()
            .to_string(),
        "MqttBridge plant names MqttBroker broker, which is not in the file"
    );
    let bad_expression = BRIDGE.replace("payload.temp", "payload.temp +");
    let resources = read_resources(&format!("{MINIMAL}---\n{bad_expression}"), None).unwrap();
    let error = render(&resources, &Settings::default(), now())
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("MqttBridge plant: spec.routes[0].map.celsius: "),
        "{error}"
    );
    let typo = BRIDGE.replace("filters:", "filter: [a]\n    filters:");
    assert_eq!(
        read_resources(&typo, None).unwrap_err().to_string(),
        "unknown fields in the MqttBridge: spec.routes[0].filter"
    );
    let no_key = BRIDGE.replace(
        "tls: {caSecretRef",
        "tls: {certSecretRef: {name: c, key: tls.crt}, caSecretRef",
    );
    let error = read_resources(&no_key, None).unwrap_err().to_string();
    assert!(
        error.contains("certSecretRef and keySecretRef go together"),
        "{error}"
    );
}
