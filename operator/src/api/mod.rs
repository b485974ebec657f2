//! The custom resources (`kubemqtt.io/v1alpha1`): `MqttBroker` and
//! `MqttUser`.
//!
//! [`spec`] holds the desired state of a broker, [`status`] what the
//! operator reports back; [`user`] holds both for `MqttUser`. Every field's doc comment becomes its description
//! in the CRD, so `kubectl explain mqttbroker.spec...` shows it: keep them
//! written for users.

pub mod bridge;
pub mod cluster;
pub mod fleet;
pub mod rebalance;
pub mod spec;
pub mod status;
pub mod user;

pub use bridge::{MqttBridge, MqttBridgeSpec, MqttBridgeStatus};
pub use cluster::*;
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
            ("Desired", "integer", ".spec.replicas"),
            ("Pods", "integer", ".status.readyReplicas"),
            ("Connections", "integer", ".status.connections"),
            ("Endpoint", "string", ".status.endpoint"),
            ("NATS", "string", ".status.nats.state"),
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

    fn spec_rules() -> Value {
        crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["x-kubernetes-validations"]
            .clone()
    }

    fn cel_errors(spec: &str) -> Option<String> {
        let spec: MqttBrokerSpec = serde_saphyr::from_str(spec).expect("test spec parses");
        MqttBroker::new("b", spec)
            .validate_cel()
            .err()
            .map(|e| e.to_string())
    }

    #[test]
    fn replicas_above_one_need_a_cluster_and_say_why() {
        let rules = spec_rules();
        assert!(
            rules
                .as_array()
                .unwrap()
                .contains(&serde_json::json!({"rule": "self.replicas <= 1 || has(self.cluster)", "message": REPLICAS_MESSAGE})),
            "{rules}"
        );
        let errors = cel_errors("replicas: 2").expect("refused");
        assert!(errors.contains(REPLICAS_MESSAGE), "{errors}");
        assert_eq!(cel_errors("replicas: 1"), None);
        assert_eq!(cel_errors("replicas: 0"), None);
        assert_eq!(
            cel_errors("replicas: 7\ncluster: {nats: {managed: {}}}"),
            None
        );
    }

    #[test]
    fn cluster_and_autoscaling_rules() {
        // Exactly one NATS.
        let both =
            cel_errors("cluster: {nats: {managed: {}, external: {urls: [\"nats://n:4222\"]}}}")
                .expect("refused");
        assert!(both.contains("exactly one"), "{both}");
        assert!(cel_errors("cluster: {nats: {}}").is_some());
        assert_eq!(
            cel_errors("cluster: {nats: {external: {urls: [\"nats://n:4222\"], credentials: {type: Token, secretName: t}}}}"),
            None
        );
        let no_user = cel_errors(
            "cluster: {nats: {external: {urls: [\"nats://n:4222\"], credentials: {type: UserPassword, secretName: t}}}}",
        )
        .expect("refused");
        assert!(no_user.contains("need user"), "{no_user}");
        // Autoscaling needs a cluster, bounds in order, and a target.
        let alone = cel_errors("autoscaling: {maxReplicas: 5, targets: {cpuUtilization: 70}}")
            .expect("refused");
        assert!(alone.contains(AUTOSCALING_MESSAGE), "{alone}");
        let cluster = "cluster: {nats: {managed: {}}}\n";
        assert_eq!(
            cel_errors(&format!(
                "{cluster}autoscaling: {{maxReplicas: 5, targets: {{cpuUtilization: 70}}}}"
            )),
            None
        );
        let inverted = cel_errors(&format!(
            "{cluster}autoscaling: {{minReplicas: 6, maxReplicas: 5, targets: {{cpuUtilization: 70}}}}"
        ))
        .expect("refused");
        assert!(inverted.contains("minReplicas"), "{inverted}");
        let no_target = cel_errors(&format!(
            "{cluster}autoscaling: {{maxReplicas: 5, targets: {{}}}}"
        ))
        .expect("refused");
        assert!(no_target.contains("at least one"), "{no_target}");
        let keda = cel_errors(&format!(
            "{cluster}autoscaling: {{maxReplicas: 5, provider: keda, targets: {{cpuUtilization: 70}}}}"
        ))
        .expect("refused");
        assert!(keda.contains("keda"), "{keda}");
    }

    #[test]
    fn cluster_defaults() {
        let spec: MqttBrokerSpec = serde_saphyr::from_str(
            "cluster: {nats: {managed: {}}}\nautoscaling: {maxReplicas: 4, targets: {connectionsPerReplica: 1000}}",
        )
        .unwrap();
        let managed = spec.cluster.unwrap().nats.managed.unwrap();
        assert_eq!(managed.storage.size.0, "10Gi");
        let autoscaling = spec.autoscaling.unwrap();
        assert_eq!(autoscaling.min_replicas, 2);
        assert_eq!(autoscaling.provider, AutoscalingProvider::Hpa);
        assert_eq!(autoscaling.behavior.scale_down_stabilization_seconds, 300);
        assert_eq!(autoscaling.behavior.scale_up_stabilization_seconds, 0);
    }
}
