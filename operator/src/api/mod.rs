//! The custom resources (`kubemqtt.io/v1alpha1`): `MqttBroker` and
//! `MqttUser`.
//!
//! [`spec`] holds the desired state of a broker, [`status`] what the
//! operator reports back; [`user`] holds both for `MqttUser`. Every field's doc comment becomes its description
//! in the CRD, so `kubectl explain mqttbroker.spec...` shows it: keep them
//! written for users.

pub mod bridge;
pub mod fleet;
pub mod rebalance;
pub mod spec;
pub mod status;
pub mod user;

pub use bridge::{MqttBridge, MqttBridgeSpec, MqttBridgeStatus};
pub use fleet::{MqttDeviceFleet, MqttDeviceFleetSpec, MqttDeviceFleetStatus};
pub use spec::*;
pub use status::*;
pub use user::*;

/// The API group of every KubeMQTT resource.
pub const GROUP: &str = "kubemqtt.io";

/// Annotation on an `MqttBroker`: `"true"` stops the operator from
/// reconciling that broker (its objects are left as they are).
pub const PAUSED_ANNOTATION: &str = "kubemqtt.io/paused";

/// Annotation on an `MqttBroker`: setting it to a new value (a timestamp,
/// say) re-issues the server certificate at once. The value last acted on
/// is recorded on the server certificate Secret under the same key.
pub const FORCE_RENEW_ANNOTATION: &str = "kubemqtt.io/force-renew";

/// Annotation on an `MqttBroker`: setting it to a new value starts a
/// rotation of the operator's CA at once (as when the CA nears its
/// expiry): the new CA joins the trust bundle now and signs the server
/// certificate once `spec.tls.ca.overlapDays` have passed. The value last
/// acted on is recorded on the CA Secret under the same key.
pub const ROTATE_CA_ANNOTATION: &str = "kubemqtt.io/rotate-ca";

/// Label the operator puts on Secrets it reads but does not own (a user's
/// password Secret, a team's CA or certificate), so that its watch of
/// Secrets can be limited to those: a change of one is then acted on at
/// once. Teams may set it themselves.
pub const REFERENCED_LABEL: &str = "kubemqtt.io/referenced";

/// Schema checks shared by the resources' tests.
#[cfg(test)]
pub(crate) mod schema_checks {
    use serde_json::Value;

    /// Pushes the path of every property without a description (they are
    /// what `kubectl explain` shows).
    pub fn undocumented(schema: &Value, path: &str, missing: &mut Vec<String>) {
        if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
            for (name, property) in properties {
                let child = format!("{path}.{name}");
                if property.get("description").is_none() {
                    missing.push(child.clone());
                }
                undocumented(property, &child, missing);
            }
        }
        for key in ["items", "additionalProperties"] {
            if let Some(inner) = schema.get(key).filter(|inner| inner.is_object()) {
                undocumented(inner, &format!("{path}[]"), missing);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::schema_checks::undocumented;
    use kube::CustomResourceExt;
    use serde_json::Value;

    use super::*;

    fn crd() -> Value {
        serde_json::to_value(MqttBroker::crd()).unwrap()
    }

    #[test]
    fn names_scope_and_version() {
        let crd = crd();
        assert_eq!(crd["metadata"]["name"], "mqttbrokers.kubemqtt.io");
        assert_eq!(crd["spec"]["group"], GROUP);
        assert_eq!(crd["spec"]["scope"], "Namespaced");
        assert_eq!(crd["spec"]["names"]["kind"], "MqttBroker");
        assert_eq!(
            crd["spec"]["names"]["shortNames"],
            serde_json::json!(["mqb"])
        );
        let version = &crd["spec"]["versions"][0];
        assert_eq!(version["name"], "v1alpha1");
        assert_eq!(version["served"], true);
        assert_eq!(version["storage"], true);
    }

    #[test]
    fn status_and_scale_subresources() {
        let subresources = &crd()["spec"]["versions"][0]["subresources"];
        assert_eq!(subresources["status"], serde_json::json!({}));
        assert_eq!(
            subresources["scale"],
            serde_json::json!({
                "specReplicasPath": ".spec.replicas",
                "statusReplicasPath": ".status.replicas",
                "labelSelectorPath": ".status.selector",
            })
        );
    }

    #[test]
    fn printer_columns() {
        let columns = crd()["spec"]["versions"][0]["additionalPrinterColumns"].clone();
        let columns: Vec<(String, String, String)> = columns
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap().to_owned(),
                    c["type"].as_str().unwrap().to_owned(),
                    c["jsonPath"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let expected = [
            (
                "Ready",
                "string",
                ".status.conditions[?(@.type==\"Ready\")].status",
            ),
            ("Endpoint", "string", ".status.endpoint"),
            ("Replicas", "integer", ".status.readyReplicas"),
            ("Age", "date", ".metadata.creationTimestamp"),
        ];
        let expected: Vec<(String, String, String)> = expected
            .iter()
            .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
            .collect();
        assert_eq!(columns, expected);
    }

    #[test]
    fn every_field_has_a_description_for_kubectl_explain() {
        let schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone();
        let mut missing = Vec::new();
        undocumented(&schema, "", &mut missing);
        assert_eq!(missing, Vec::<String>::new());
    }

    #[test]
    fn schema_defaults_match_the_rust_defaults() {
        let spec = &crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"];
        assert_eq!(spec["replicas"]["default"], 1);
        assert_eq!(
            spec["persistence"]["default"],
            serde_json::to_value(PersistenceSpec::default()).unwrap()
        );
        let generated = &spec["tls"]["properties"]["generated"]["properties"];
        assert_eq!(generated["validityDays"]["default"], 365);
        assert_eq!(generated["renewBeforeDays"]["default"], 30);
        assert_eq!(
            spec["service"]["properties"]["type"]["default"],
            "LoadBalancer"
        );
        assert_eq!(spec["logging"]["properties"]["level"]["default"], "info");
        assert_eq!(spec["logging"]["properties"]["format"]["default"], "text");
        assert_eq!(spec["auth"]["properties"]["anonymous"]["default"], false);
        let empty: MqttBrokerSpec = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, MqttBrokerSpec::default());
        assert_eq!(empty.service.type_, ServiceType::LoadBalancer);
        assert_eq!(empty.tls.generated, None);
        assert_eq!(GeneratedTlsSpec::default().validity_days, 365);
    }

    #[test]
    fn replicas_above_one_are_refused_with_the_reason() {
        let spec = &crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"];
        assert_eq!(
            spec["replicas"]["x-kubernetes-validations"],
            serde_json::json!([{"rule": "self <= 1", "message": REPLICAS_MESSAGE}])
        );
        let broker = MqttBroker::new(
            "b",
            MqttBrokerSpec {
                replicas: 2,
                ..MqttBrokerSpec::default()
            },
        );
        let errors = broker.validate_cel().unwrap_err().to_string();
        assert!(errors.contains(REPLICAS_MESSAGE), "{errors}");
        let single = MqttBroker::new("b", MqttBrokerSpec::default());
        assert!(single.validate_cel().is_ok());
    }
}
