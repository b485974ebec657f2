//! Brokers and clocks for the planners' tests.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;

use super::{plan, Observed, Plan, Settings};
use crate::api::{MqttBroker, MqttBrokerSpec};

/// A broker `mq` in namespace `iot`, as the API server returns it.
pub fn broker(spec: MqttBrokerSpec) -> MqttBroker {
    MqttBroker {
        metadata: ObjectMeta {
            name: Some("mq".to_owned()),
            namespace: Some("iot".to_owned()),
            uid: Some("0b8e1f2a-5d1c-4e0f-9a43-2d6f1c7e9b10".to_owned()),
            ..ObjectMeta::default()
        },
        spec,
        status: None,
    }
}

/// A broker parsed from the YAML of its spec.
pub fn broker_yaml(spec: &str) -> MqttBroker {
    broker(serde_saphyr::from_str(spec).expect("test spec parses"))
}

/// A fixed "now".
pub fn now() -> Timestamp {
    "2025-06-01T12:00:00Z".parse().expect("valid timestamp")
}

/// Plans `broker` with nothing observed and default settings.
pub fn plan_fresh(broker: &MqttBroker) -> Plan {
    plan(broker, &Observed::default(), &Settings::default(), now()).expect("plans")
}

/// An `MqttUser` `name` in namespace `iot` created at `created`, from
/// the YAML of its spec.
pub fn user_at(name: &str, spec: &str, created: &str) -> crate::api::MqttUser {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    crate::api::MqttUser {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some("iot".to_owned()),
            uid: Some(format!("00000000-0000-4000-8000-{:0>12}", name.len())),
            creation_timestamp: Some(Time(created.parse().expect("timestamp"))),
            generation: Some(1),
            ..ObjectMeta::default()
        },
        spec: serde_saphyr::from_str(spec).expect("test user spec parses"),
        status: None,
    }
}

/// An `MqttUser` of broker `mq` created at 2025-01-01, from the YAML of
/// its spec (`brokerRef` is added).
pub fn user(name: &str, spec: &str) -> crate::api::MqttUser {
    let spec = format!("brokerRef: {{name: mq}}\n{spec}");
    user_at(name, &spec, "2025-01-01T00:00:00Z")
}
