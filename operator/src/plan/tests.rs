use super::testing::{broker, broker_yaml, now, plan_fresh};
use super::*;

/// Every object's metadata, from the JSON form.
fn all_metadata(plan: &Plan) -> Vec<ObjectMeta> {
    plan.objects()
        .unwrap()
        .into_iter()
        .map(|object| serde_json::from_value(object["metadata"].clone()).unwrap())
        .collect()
}

#[test]
fn every_object_has_labels_namespace_and_owner() {
    let broker = broker(MqttBrokerSpec::default());
    let plan = plan_fresh(&broker);
    let metadata = all_metadata(&plan);
    assert_eq!(
        metadata.len(),
        9,
        "config, ca, tls, clients ca, auth, 3 services, sts (one replica: no pdb)"
    );
    for meta in metadata {
        let name = meta.name.clone().unwrap();
        assert_eq!(meta.namespace.as_deref(), Some("iot"), "{name}");
        let labels = meta.labels.unwrap();
        assert_eq!(labels[NAME_LABEL], "kubemqtt-broker", "{name}");
        assert_eq!(labels[INSTANCE_LABEL], "mq", "{name}");
        assert_eq!(labels[MANAGED_BY_LABEL], "kubemqtt-operator", "{name}");
        if ["mq-ca", "mq-clients-ca"].contains(&name.as_str()) {
            // The CAs outlive the broker (tls.ca.deleteWithBroker).
            assert!(meta.owner_references.is_none(), "{name}");
            continue;
        }
        let owners = meta.owner_references.unwrap();
        assert_eq!(owners.len(), 1, "{name}");
        let owner = &owners[0];
        assert_eq!(owner.api_version, "kubemqtt.io/v1alpha1");
        assert_eq!(owner.kind, "MqttBroker");
        assert_eq!(owner.name, "mq");
        assert_eq!(owner.uid, "0b8e1f2a-5d1c-4e0f-9a43-2d6f1c7e9b10");
        assert_eq!(owner.controller, Some(true));
    }
}

#[test]
fn objects_come_in_apply_order_with_kinds() {
    let plan = plan_fresh(&broker(MqttBrokerSpec::default()));
    let kinds: Vec<(String, String)> = plan
        .objects()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["kind"].as_str().unwrap().to_owned(),
                o["metadata"]["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected = [
        ("ConfigMap", "mq-config"),
        ("Secret", "mq-ca"),
        ("Secret", "mq-tls"),
        ("Secret", "mq-clients-ca"),
        ("Secret", "mq-auth"),
        ("Service", "mq-headless"),
        ("Service", "mq"),
        ("Service", "mq-external"),
        ("StatefulSet", "mq"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(k, n)| (k.to_string(), n.to_string()))
        .collect();
    assert_eq!(kinds, expected);
}

#[test]
fn without_uid_there_is_no_owner() {
    let mut broker = broker(MqttBrokerSpec::default());
    broker.metadata.uid = None;
    let plan = plan_fresh(&broker);
    assert!(all_metadata(&plan)
        .iter()
        .all(|meta| meta.owner_references.is_none()));
}

#[test]
fn namespace_is_required() {
    let mut broker = broker(MqttBrokerSpec::default());
    broker.metadata.namespace = None;
    let error = plan(&broker, &Observed::default(), &Settings::default(), now()).unwrap_err();
    assert!(matches!(error, PlanError::MissingNamespace));
    assert_eq!(error.reason(), "InvalidSpec");
}

#[test]
fn names_must_fit_services_and_pods() {
    for good in ["a", "mq-1", &"b".repeat(52)] {
        assert!(valid_broker_name(good), "{good}");
    }
    for bad in [
        "",
        "1mq",
        "-mq",
        "mq-",
        "my.broker",
        "MQ",
        "mq_1",
        &"b".repeat(53),
    ] {
        assert!(!valid_broker_name(bad), "{bad}");
    }
    let mut broker = broker(MqttBrokerSpec::default());
    broker.metadata.name = Some("my.broker".to_owned());
    let error = plan(&broker, &Observed::default(), &Settings::default(), now()).unwrap_err();
    assert!(matches!(error, PlanError::InvalidName(_)));
    assert_eq!(error.reason(), "InvalidSpec");
}

#[test]
fn reserved_labels_are_rejected() {
    let error = plan(
        &broker_yaml("labels: {app.kubernetes.io/instance: other}\n"),
        &Observed::default(),
        &Settings::default(),
        now(),
    )
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "spec.labels: `app.kubernetes.io/instance` is set by the operator"
    );
}

#[test]
fn default_image_follows_the_operator_version() {
    assert_eq!(
        Settings::default().default_image,
        format!(
            "ghcr.io/kubemqtt/kubemqtt-broker:{}",
            env!("CARGO_PKG_VERSION")
        )
    );
}
