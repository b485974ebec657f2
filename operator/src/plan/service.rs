//! The Services: `<name>-headless`, which gives each pod a stable DNS name
//! (`<pod>.<name>-headless.<namespace>.svc`), and `<name>`, which clients
//! connect to (a LoadBalancer by default).

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::statefulset::HTTP_PORT_NAME;
use super::{Context, HTTP_PORT};

/// The headless Service. It lists pods before they are ready, so that
/// their DNS names resolve while they start, and also has the HTTP port
/// (for metrics scraping and in-cluster tooling).
pub(super) fn headless_service(ctx: &Context<'_>) -> Service {
    let mut ports = listener_ports(ctx);
    ports.push(port(HTTP_PORT_NAME, i32::from(HTTP_PORT)));
    Service {
        metadata: ctx.metadata(&ctx.names.headless_service),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_owned()),
            publish_not_ready_addresses: Some(true),
            selector: Some(ctx.selector_labels()),
            ports: Some(ports),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The client Service, shaped by `spec.service`.
pub(super) fn client_service(ctx: &Context<'_>) -> Service {
    let spec = &ctx.spec.service;
    let mut metadata = ctx.metadata(&ctx.names.broker);
    metadata.annotations = (!spec.annotations.is_empty()).then(|| spec.annotations.clone());
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(spec.type_.as_str().to_owned()),
            selector: Some(ctx.selector_labels()),
            ports: Some(listener_ports(ctx)),
            load_balancer_source_ranges: (!spec.load_balancer_source_ranges.is_empty())
                .then(|| spec.load_balancer_source_ranges.clone()),
            external_traffic_policy: spec
                .external_traffic_policy
                .map(|policy| policy.as_str().to_owned()),
            load_balancer_class: spec.load_balancer_class.clone(),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// One port per listener.
fn listener_ports(ctx: &Context<'_>) -> Vec<ServicePort> {
    ctx.listeners
        .iter()
        .map(|listener| port(listener.kind.name(), listener.port))
        .collect()
}

/// A TCP port targeting the pod's port of the same name.
fn port(name: &str, number: i32) -> ServicePort {
    ServicePort {
        name: Some(name.to_owned()),
        port: number,
        target_port: Some(IntOrString::String(name.to_owned())),
        protocol: Some("TCP".to_owned()),
        ..ServicePort::default()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::api::MqttBrokerSpec;
    use crate::plan::testing::{broker, broker_yaml, plan_fresh};
    use crate::plan::{selector_labels, Plan};

    fn spec(service: &Service) -> &ServiceSpec {
        service.spec.as_ref().unwrap()
    }

    fn port_list(service: &Service) -> Vec<(String, i32, IntOrString)> {
        spec(service)
            .ports
            .clone()
            .unwrap()
            .into_iter()
            .map(|p| (p.name.unwrap(), p.port, p.target_port.unwrap()))
            .collect()
    }

    fn services(yaml: &str) -> Plan {
        plan_fresh(&broker_yaml(yaml))
    }

    #[test]
    fn headless_service_defaults() {
        let plan = plan_fresh(&broker(MqttBrokerSpec::default()));
        let headless = &plan.headless_service;
        assert_eq!(headless.metadata.name.as_deref(), Some("mq-headless"));
        let spec = spec(headless);
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.publish_not_ready_addresses, Some(true));
        assert_eq!(spec.selector.clone().unwrap(), selector_labels("mq"));
        assert_eq!(
            port_list(headless),
            [
                ("mqtt".into(), 1883, IntOrString::String("mqtt".into())),
                ("mqtts".into(), 8883, IntOrString::String("mqtts".into())),
                ("http".into(), 8080, IntOrString::String("http".into())),
            ]
        );
    }

    #[test]
    fn client_service_defaults_to_a_load_balancer() {
        let plan = plan_fresh(&broker(MqttBrokerSpec::default()));
        let client = &plan.client_service;
        assert_eq!(client.metadata.name.as_deref(), Some("mq"));
        assert!(client.metadata.annotations.is_none());
        let spec = spec(client);
        assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
        assert_eq!(spec.selector.clone().unwrap(), selector_labels("mq"));
        assert!(spec.load_balancer_source_ranges.is_none());
        assert!(spec.external_traffic_policy.is_none());
        assert!(spec.load_balancer_class.is_none());
        assert!(spec.cluster_ip.is_none());
        // The HTTP port (admin API) is never on the client Service.
        assert_eq!(
            port_list(client),
            [
                ("mqtt".into(), 1883, IntOrString::String("mqtt".into())),
                ("mqtts".into(), 8883, IntOrString::String("mqtts".into())),
            ]
        );
    }

    #[test]
    fn every_service_field_is_applied() {
        let plan = services(
            r#"
service:
  type: LoadBalancer
  annotations: {service.beta.kubernetes.io/aws-load-balancer-type: nlb}
  loadBalancerSourceRanges: [10.0.0.0/8, 192.0.2.0/24]
  externalTrafficPolicy: Local
  loadBalancerClass: service.k8s.aws/nlb
listeners: {mqtt: {port: 11883}, mqtts: {enabled: false}, wss: {enabled: true}}
"#,
        );
        let client = &plan.client_service;
        assert_eq!(
            client.metadata.annotations.clone().unwrap(),
            BTreeMap::from([(
                "service.beta.kubernetes.io/aws-load-balancer-type".to_owned(),
                "nlb".to_owned()
            )])
        );
        let spec = spec(client);
        assert_eq!(
            spec.load_balancer_source_ranges.clone().unwrap(),
            ["10.0.0.0/8", "192.0.2.0/24"]
        );
        assert_eq!(spec.external_traffic_policy.as_deref(), Some("Local"));
        assert_eq!(
            spec.load_balancer_class.as_deref(),
            Some("service.k8s.aws/nlb")
        );
        let ports: Vec<(String, i32)> = port_list(client).into_iter().map(|p| (p.0, p.1)).collect();
        assert_eq!(ports, [("mqtt".into(), 11883), ("wss".into(), 8084)]);
        // The headless Service keeps no client-facing settings.
        assert!(plan.headless_service.metadata.annotations.is_none());
        assert_eq!(port_list(&plan.headless_service).len(), 3);
    }

    #[test]
    fn other_service_types() {
        for (yaml, expected) in [
            ("service: {type: ClusterIP}", "ClusterIP"),
            (
                "service: {type: NodePort, externalTrafficPolicy: Cluster}",
                "NodePort",
            ),
        ] {
            let plan = services(yaml);
            assert_eq!(spec(&plan.client_service).type_.as_deref(), Some(expected));
        }
    }
}
