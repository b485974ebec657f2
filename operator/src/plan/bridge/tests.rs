use kubemqtt_bridge::config::{BridgeConfig, CommandSource, DeadLetterConfig, SinkConfig};

use super::*;
use crate::api::MqttBridgeSpec;

pub(crate) const SPEC: &str = r#"
brokerRef: {name: mq}
replicas: 2
routes:
  - name: readings
    filters: ["sensors/+/temp"]
    where: "payload.temp > -50"
    map: {device: "segment(topic, 1)", celsius: "payload.temp"}
    batch: {maxMessages: 500, lingerMs: 50}
    deadLetter: {mqttTopic: bridge/dead/readings}
    sink:
      postgres:
        connection: "host=db user=bridge dbname=iot"
        passwordSecretRef: {name: db, key: password}
        table: readings
        tls: {caSecretRef: {name: db-ca, key: ca.crt}}
  - name: alerts
    filters: ["alerts/#"]
    sink:
      http:
        url: https://hooks.example/alerts
        hmacSecretRef: {name: hook, key: secret}
commands:
  - name: api
    http: {tokenSecretRef: {name: api, key: token}}
    allowedTopics: ["devices/+/commands"]
"#;

pub(crate) fn bridge(spec: &str) -> MqttBridge {
    let spec: MqttBridgeSpec = serde_saphyr::from_str(spec).unwrap();
    let mut bridge = MqttBridge::new("plant", spec);
    bridge.metadata.namespace = Some("iot".into());
    bridge.metadata.uid = Some("uid-1".into());
    bridge
}

#[test]
fn the_config_map_holds_what_the_bridge_reads() {
    let plan = plan_bridge(&bridge(SPEC), None).unwrap();
    let toml = &plan.config_map.data.as_ref().unwrap()[BRIDGE_CONFIG_KEY];
    let config = BridgeConfig::from_toml(toml).unwrap();
    assert_eq!(config, plan.config);
    assert_eq!(config.name, "plant");
    assert_eq!(config.broker.host, "mq.iot.svc");
    assert_eq!(config.broker.port, 8883);
    let tls = config.broker.tls.as_ref().unwrap();
    assert_eq!(
        tls.ca_file.as_deref(),
        Some(std::path::Path::new("/var/run/kubemqtt-bridge/mqtt/ca.crt"))
    );
    assert_eq!(config.routes[0].batch.max_messages, 500);
    assert_eq!(
        config.routes[0].dead_letter,
        Some(DeadLetterConfig::MqttTopic("bridge/dead/readings".into()))
    );
    let SinkConfig::Postgres(pg) = &config.routes[0].sink else {
        panic!("postgres")
    };
    assert_eq!(
        pg.connection.password_file.as_deref(),
        Some(std::path::Path::new(
            "/var/run/kubemqtt-bridge/secrets/db/password"
        ))
    );
    let CommandSource::Http { token_file } = &config.commands[0].from else {
        panic!("http")
    };
    assert_eq!(
        token_file,
        std::path::Path::new("/var/run/kubemqtt-bridge/secrets/api/token")
    );
}

#[test]
fn every_secret_file_the_config_names_is_mounted() {
    let plan = plan_bridge(&bridge(SPEC), None).unwrap();
    let pod = plan
        .stateful_set
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap();
    let mounts: Vec<String> = pod.containers[0]
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .map(|m| m.mount_path.clone())
        .collect();
    let toml = &plan.config_map.data.as_ref().unwrap()[BRIDGE_CONFIG_KEY];
    let files: Vec<&str> = toml
        .lines()
        .filter_map(|line| {
            line.split_once(" = \"/")
                .map(|(_, path)| path.trim_end_matches('"'))
        })
        .collect();
    assert!(files.len() >= 7, "{toml}");
    for file in files {
        let file = format!("/{file}");
        assert!(
            mounts
                .iter()
                .any(|mount| file.starts_with(&format!("{mount}/"))),
            "{file} is not under a mount: {mounts:?}"
        );
    }
    let secrets: Vec<String> = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .filter_map(|v| v.secret.as_ref()?.secret_name.clone())
        .collect();
    assert_eq!(
        secrets,
        [
            "plant-bridge-mqtt-credentials",
            "api",
            "db",
            "db-ca",
            "hook"
        ]
    );
}

#[test]
fn the_bridge_user_may_use_exactly_its_topics() {
    let plan = plan_bridge(&bridge(SPEC), None).unwrap();
    assert_eq!(plan.user.metadata.name.as_deref(), Some("plant-bridge"));
    assert_eq!(plan.user.spec.broker_ref.name, "mq");
    let rules: Vec<(AclAction, &str)> = plan
        .user
        .spec
        .acl
        .iter()
        .map(|r| (r.action, r.topic.as_str()))
        .collect();
    assert_eq!(
        rules,
        [
            (AclAction::Subscribe, "sensors/+/temp"),
            (AclAction::Publish, "bridge/dead/readings"),
            (AclAction::Subscribe, "alerts/#"),
            (AclAction::Publish, "devices/+/commands"),
        ]
    );
}

#[test]
fn objects_are_owned_labelled_and_named() {
    let plan = plan_bridge(&bridge(SPEC), Some("registry.local/bridge:1")).unwrap();
    for meta in [
        &plan.user.metadata,
        &plan.config_map.metadata,
        &plan.stateful_set.metadata,
        &plan.service.metadata,
        &plan.pods_service.metadata,
    ] {
        let owner = &meta.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("MqttBridge", "uid-1")
        );
        assert_eq!(meta.namespace.as_deref(), Some("iot"));
        assert_eq!(meta.labels.as_ref().unwrap()[INSTANCE_LABEL], "plant");
    }
    let spec = plan.stateful_set.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(2));
    assert_eq!(spec.service_name.as_deref(), Some("plant-bridge-pods"));
    let container = &spec.template.spec.as_ref().unwrap().containers[0];
    assert_eq!(container.image.as_deref(), Some("registry.local/bridge:1"));
    assert_eq!(
        plan.pods_service
            .spec
            .as_ref()
            .unwrap()
            .cluster_ip
            .as_deref(),
        Some("None")
    );
}

#[test]
fn a_changed_config_rolls_the_pods() {
    let hash = |spec: &str| {
        let plan = plan_bridge(&bridge(spec), None).unwrap();
        plan.stateful_set
            .spec
            .unwrap()
            .template
            .metadata
            .unwrap()
            .annotations
            .unwrap()["kubemqtt.io/config-hash"]
            .clone()
    };
    assert_eq!(hash(SPEC), hash(SPEC));
    assert_ne!(hash(SPEC), hash(&SPEC.replace("-50", "-40")));
}

#[test]
fn invalid_expressions_name_the_spec_field() {
    let cases = [
        (
            SPEC.replace("payload.temp > -50", "payload.temp >"),
            "spec.routes[0].where",
        ),
        (
            SPEC.replace("segment(topic, 1)", "segmnt(topic, 1)"),
            "spec.routes[0].map.device",
        ),
        (
            SPEC.replace("alerts/#", "alerts/#/x"),
            "spec.routes[1].filters",
        ),
        (
            SPEC.replace("devices/+/commands", "devices/#/commands"),
            "spec.commands[0].allowedTopics",
        ),
    ];
    for (spec, field) in cases {
        match plan_bridge(&bridge(&spec), None) {
            Err(BridgePlanError::Invalid {
                field: got,
                message,
            }) => {
                assert_eq!(got, field, "{message}");
                assert!(!message.is_empty());
            }
            other => panic!("{field}: {other:?}"),
        }
    }
}

#[test]
fn plain_tcp_when_tls_is_off() {
    let plan = plan_bridge(&bridge(&format!("{SPEC}broker: {{tls: false}}\n")), None).unwrap();
    assert_eq!(plan.config.broker.port, 1883);
    assert_eq!(plan.config.broker.tls, None);
}

#[test]
fn command_sources_get_their_tls() {
    let spec = r#"
brokerRef: {name: mq}
commands:
  - name: js
    nats:
      url: nats://nats.messaging.svc:4222
      stream: CMDS
      consumer: bridge
      tls:
        caSecretRef: {name: nats-ca, key: ca.crt}
        certSecretRef: {name: nats-client, key: tls.crt}
        keySecretRef: {name: nats-client, key: tls.key}
  - name: rabbit
    amqp:
      url: amqps://bridge@rabbit.messaging.svc/%2f
      queue: commands
      tls: {caSecretRef: {name: rabbit-ca, key: ca.crt}, serverName: rabbit.internal}
"#;
    let plan = plan_bridge(&bridge(spec), None).unwrap();
    let path = |p: &str| Some(std::path::PathBuf::from(p));
    let CommandSource::Nats {
        tls: Some(nats), ..
    } = &plan.config.commands[0].from
    else {
        panic!("nats with tls: {:?}", plan.config.commands[0].from)
    };
    assert_eq!(
        nats.ca_file,
        path("/var/run/kubemqtt-bridge/secrets/nats-ca/ca.crt")
    );
    assert_eq!(
        nats.cert_file,
        path("/var/run/kubemqtt-bridge/secrets/nats-client/tls.crt")
    );
    assert_eq!(
        nats.key_file,
        path("/var/run/kubemqtt-bridge/secrets/nats-client/tls.key")
    );
    let CommandSource::Amqp {
        tls: Some(amqp), ..
    } = &plan.config.commands[1].from
    else {
        panic!("amqp with tls: {:?}", plan.config.commands[1].from)
    };
    assert_eq!(
        amqp.ca_file,
        path("/var/run/kubemqtt-bridge/secrets/rabbit-ca/ca.crt")
    );
    assert_eq!(amqp.server_name.as_deref(), Some("rabbit.internal"));
    // The ConfigMap says the same, and the pod mounts each Secret.
    let toml = &plan.config_map.data.as_ref().unwrap()[BRIDGE_CONFIG_KEY];
    assert_eq!(BridgeConfig::from_toml(toml).unwrap(), plan.config);
    let secrets: Vec<String> = plan
        .stateful_set
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.volumes.as_ref())
        .unwrap()
        .iter()
        .filter_map(|v| v.secret.as_ref()?.secret_name.clone())
        .collect();
    for secret in ["nats-ca", "nats-client", "rabbit-ca"] {
        assert!(secrets.iter().any(|s| s == secret), "{secret}: {secrets:?}");
    }
}
