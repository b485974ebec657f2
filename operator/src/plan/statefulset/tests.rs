use k8s_openapi::api::core::v1::{Affinity, NodeAffinity, Toleration};

use super::*;
use crate::api::MqttBrokerSpec;
use crate::plan::testing::{broker, broker_yaml, now, plan_fresh};
use crate::plan::{plan, Observed, Plan, Settings};

fn sts_spec(plan: &Plan) -> &StatefulSetSpec {
    plan.stateful_set.spec.as_ref().unwrap()
}

fn pod(plan: &Plan) -> &PodSpec {
    sts_spec(plan).template.spec.as_ref().unwrap()
}

fn broker_container(plan: &Plan) -> &Container {
    &pod(plan).containers[0]
}

fn checksum(plan: &Plan) -> String {
    let meta = sts_spec(plan).template.metadata.as_ref().unwrap();
    meta.annotations.as_ref().unwrap()[CONFIG_CHECKSUM_ANNOTATION].clone()
}

#[test]
fn defaults() {
    let plan = plan_fresh(&broker(MqttBrokerSpec::default()));
    assert_eq!(plan.stateful_set.metadata.name.as_deref(), Some("mq"));
    let spec = sts_spec(&plan);
    assert_eq!(spec.replicas, Some(1));
    assert_eq!(spec.service_name.as_deref(), Some("mq-headless"));
    let selector = spec.selector.match_labels.clone().unwrap();
    assert_eq!(selector, crate::plan::selector_labels("mq"));
    let template_labels = spec.template.metadata.as_ref().unwrap().labels.clone();
    assert_eq!(template_labels.unwrap(), crate::plan::common_labels("mq"));
    assert!(spec.volume_claim_templates.is_none());

    let pod = pod(&plan);
    // The grace period outlasts the broker's drain deadline.
    assert_eq!(pod.termination_grace_period_seconds, Some(30));
    assert!(TERMINATION_GRACE_PERIOD_SECONDS > DRAIN_DEADLINE_SECONDS as i64);
    assert_eq!(pod.automount_service_account_token, Some(false));
    assert_eq!(pod.enable_service_links, Some(false));
    let security = pod.security_context.as_ref().unwrap();
    assert_eq!(security.run_as_non_root, Some(true));
    assert_eq!(security.run_as_user, Some(65532));
    assert_eq!(security.fs_group, Some(65532));
    assert!(pod.node_selector.is_none());
    assert!(pod.tolerations.is_none());
    assert!(pod.affinity.is_none());
    assert!(pod.topology_spread_constraints.is_none());
    assert!(pod.priority_class_name.is_none());

    let volumes: Vec<(String, Option<String>, Option<String>)> = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v.name.clone(),
                v.config_map.as_ref().map(|c| c.name.clone()),
                v.secret.as_ref().and_then(|s| s.secret_name.clone()),
            )
        })
        .collect();
    assert_eq!(
        volumes,
        [
            ("config".into(), Some("mq-config".into()), None),
            ("tls".into(), None, Some("mq-tls".into())),
            ("auth".into(), None, Some("mq-auth".into())),
            ("fleets".into(), None, Some("mq-fleets".into())),
        ]
    );

    let container = broker_container(&plan);
    assert_eq!(container.name, "broker");
    assert_eq!(
        container.image.as_deref(),
        Some(Settings::default().default_image.as_str())
    );
    assert_eq!(
        container.args.clone().unwrap(),
        ["--config", "/etc/kubemqtt/config/broker.toml"]
    );
    let ports: Vec<(String, i32)> = container
        .ports
        .clone()
        .unwrap()
        .into_iter()
        .map(|p| (p.name.unwrap(), p.container_port))
        .collect();
    assert_eq!(
        ports,
        [
            ("mqtt".into(), 1883),
            ("mqtts".into(), 8883),
            ("http".into(), 8080)
        ]
    );
    assert_eq!(container.resources, Some(default_resources()));
    let mounts: Vec<(&str, &str, Option<bool>)> = container
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .map(|m| (m.name.as_str(), m.mount_path.as_str(), m.read_only))
        .collect();
    assert_eq!(
        mounts,
        [
            ("config", "/etc/kubemqtt/config", Some(true)),
            ("tls", "/etc/kubemqtt/tls", Some(true)),
            ("auth", "/etc/kubemqtt/auth", Some(true)),
            ("fleets", "/etc/kubemqtt/fleets", Some(true)),
        ]
    );
    let security = container.security_context.as_ref().unwrap();
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(
        security
            .capabilities
            .as_ref()
            .unwrap()
            .drop
            .clone()
            .unwrap(),
        ["ALL"]
    );
    for (probe, path) in [
        (&container.startup_probe, "/readyz"),
        (&container.liveness_probe, "/healthz"),
        (&container.readiness_probe, "/readyz"),
    ] {
        let http = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(http.port, IntOrString::String("http".into()));
        assert_eq!(http.path.as_deref(), Some(path));
    }

    let config = plan.config_map.data.as_ref().unwrap()[CONFIG_FILE].clone();
    assert_eq!(
        checksum(&plan),
        super::super::restart::restart_checksum(&config)
    );
    assert_eq!(checksum(&plan).len(), 64);
}

#[test]
fn every_pod_field_is_applied() {
    let plan = plan_fresh(&broker_yaml(
        r#"
image: registry.example.com/kubemqtt:dev
replicas: 0
resources: {requests: {cpu: "1"}, limits: {memory: 1Gi}}
nodeSelector: {disk: ssd}
tolerations: [{key: dedicated, operator: Equal, value: mqtt, effect: NoSchedule}]
affinity: {nodeAffinity: {}}
topologySpreadConstraints:
  - {maxSkew: 1, topologyKey: topology.kubernetes.io/zone, whenUnsatisfiable: ScheduleAnyway}
priorityClassName: critical
labels: {team: iot}
annotations: {prometheus.io/scrape: "true"}
listeners: {mqtt: {port: 11883}}
"#,
    ));
    let spec = sts_spec(&plan);
    assert_eq!(spec.replicas, Some(0));
    let meta = spec.template.metadata.as_ref().unwrap();
    let labels = meta.labels.as_ref().unwrap();
    assert_eq!(labels["team"], "iot");
    assert_eq!(labels["app.kubernetes.io/instance"], "mq");
    let annotations = meta.annotations.as_ref().unwrap();
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert!(annotations.contains_key(CONFIG_CHECKSUM_ANNOTATION));
    // The selector stays the operator's.
    assert_eq!(
        spec.selector.match_labels.clone().unwrap(),
        crate::plan::selector_labels("mq")
    );

    let pod = pod(&plan);
    assert_eq!(
        pod.node_selector.clone().unwrap(),
        BTreeMap::from([("disk".to_owned(), "ssd".to_owned())])
    );
    assert_eq!(
        pod.tolerations.clone().unwrap(),
        [Toleration {
            key: Some("dedicated".into()),
            operator: Some("Equal".into()),
            value: Some("mqtt".into()),
            effect: Some("NoSchedule".into()),
            ..Toleration::default()
        }]
    );
    assert_eq!(
        pod.affinity,
        Some(Affinity {
            node_affinity: Some(NodeAffinity::default()),
            ..Affinity::default()
        })
    );
    let spread = pod.topology_spread_constraints.clone().unwrap();
    assert_eq!(spread[0].topology_key, "topology.kubernetes.io/zone");
    assert_eq!(pod.priority_class_name.as_deref(), Some("critical"));

    let container = broker_container(&plan);
    assert_eq!(
        container.image.as_deref(),
        Some("registry.example.com/kubemqtt:dev")
    );
    let resources = container.resources.clone().unwrap();
    assert_eq!(resources.requests.unwrap()["cpu"], Quantity("1".into()));
    assert_eq!(resources.limits.unwrap()["memory"], Quantity("1Gi".into()));
    assert_eq!(container.ports.clone().unwrap()[0].container_port, 11883);
}

#[test]
fn persistence_adds_a_volume_claim_per_pod() {
    let plan = plan_fresh(&broker_yaml(
        "persistence: {enabled: true, size: 20Gi, storageClassName: fast}",
    ));
    let claims = sts_spec(&plan).volume_claim_templates.clone().unwrap();
    assert_eq!(claims.len(), 1);
    let claim = &claims[0];
    assert_eq!(claim.metadata.name.as_deref(), Some("data"));
    let spec = claim.spec.as_ref().unwrap();
    assert_eq!(spec.access_modes.clone().unwrap(), ["ReadWriteOnce"]);
    assert_eq!(spec.storage_class_name.as_deref(), Some("fast"));
    let requests = spec.resources.clone().unwrap().requests.unwrap();
    assert_eq!(requests["storage"], Quantity("20Gi".into()));
    let mount = broker_container(&plan)
        .volume_mounts
        .clone()
        .unwrap()
        .into_iter()
        .find(|m| m.name == "data")
        .unwrap();
    assert_eq!(mount.mount_path, "/var/lib/kubemqtt");
    assert_eq!(mount.read_only, None);
}

#[test]
fn a_user_certificate_secret_is_mounted() {
    let plan = plan_fresh(&broker_yaml("tls: {secretName: my-cert}"));
    let tls = pod(&plan)
        .volumes
        .clone()
        .unwrap()
        .into_iter()
        .find(|v| v.name == "tls")
        .unwrap();
    assert_eq!(tls.secret.unwrap().secret_name.as_deref(), Some("my-cert"));
}

#[test]
fn checksum_changes_only_with_what_the_broker_cannot_reload() {
    let base = plan_fresh(&broker(MqttBrokerSpec::default()));
    // Not in the file: same checksum.
    for unrelated in [
        "service: {annotations: {a: b}}",
        "tls: {generated: {extraSANs: [mqtt.example.com]}}",
        "resources: {limits: {memory: 2Gi}}",
        "labels: {team: iot}",
    ] {
        let plan = plan_fresh(&broker_yaml(unrelated));
        assert_eq!(checksum(&plan), checksum(&base), "{unrelated}");
    }
    // A renewed certificate (here: a whole new set) is reloaded, not
    // rolled out.
    let renewed = plan(
        &broker(MqttBrokerSpec::default()),
        &Observed::default(),
        &Settings::default(),
        now(),
    )
    .unwrap();
    assert_ne!(renewed.server_secret, base.server_secret);
    assert_eq!(checksum(&renewed), checksum(&base));
    // In the file, applied by the broker while it runs (it re-reads
    // the file): the same checksum, no pod restarts.
    for reloaded in [
        "limits: {maxInflight: 5}",
        "logging: {level: debug}",
        "auth: {anonymous: true}",
    ] {
        let plan = plan_fresh(&broker_yaml(reloaded));
        let config = &plan.config_map.data.as_ref().unwrap()[CONFIG_FILE];
        let base_config = &base.config_map.data.as_ref().unwrap()[CONFIG_FILE];
        assert_ne!(config, base_config, "{reloaded} is in the file");
        assert_eq!(checksum(&plan), checksum(&base), "{reloaded}");
    }
    // In the file, needing a restart: a new checksum.
    for changed in [
        "listeners: {mqtt: {port: 11883}}",
        "config: {sys: {interval_secs: 0}}",
    ] {
        let plan = plan_fresh(&broker_yaml(changed));
        assert_ne!(checksum(&plan), checksum(&base), "{changed}");
    }
}
