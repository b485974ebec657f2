//! The Services:
//! - `<name>-headless` gives each pod a stable DNS name
//!   (`<pod>.<name>-headless.<namespace>.svc`);
//! - `<name>`, a ClusterIP Service with every listener, is what clients
//!   inside the cluster use (the `host` of users' Secrets);
//! - `<name>-external` (a LoadBalancer by default, none with `service.type`
//!   ClusterIP) carries only the external listeners: the TLS ones unless
//!   the spec says otherwise. A listener with `proxyProtocol` is reached
//!   there through its PROXY protocol port, so the in-cluster path never
//!   sees a PROXY header.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::statefulset::HTTP_PORT_NAME;
use super::{Context, ExposureWarning, HTTP_PORT};
use crate::api::ServiceType;

/// The headless Service. It lists pods before they are ready, so that
/// their DNS names resolve while they start, and also has the HTTP port
/// (for metrics scraping and in-cluster tooling).
pub(super) fn headless_service(ctx: &Context<'_>) -> Service {
    let mut ports = listener_ports(ctx);
    ports.push(port(HTTP_PORT_NAME, i32::from(HTTP_PORT), HTTP_PORT_NAME));
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

/// The in-cluster Service: every listener, no PROXY protocol.
pub(super) fn internal_service(ctx: &Context<'_>) -> Service {
    Service {
        metadata: ctx.metadata(&ctx.names.broker),
        spec: Some(ServiceSpec {
            type_: Some(ServiceType::ClusterIP.as_str().to_owned()),
            selector: Some(ctx.selector_labels()),
            ports: Some(listener_ports(ctx)),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The external Service, shaped by `spec.service`: the external listeners,
/// each on its own port number, targeting its PROXY protocol port when it
/// has one. `None` with `service.type` ClusterIP, or when no listener is
/// external.
pub(super) fn external_service(ctx: &Context<'_>) -> Option<Service> {
    let spec = &ctx.spec.service;
    if spec.type_ == ServiceType::ClusterIP {
        return None;
    }
    let ports: Vec<ServicePort> = ctx
        .listeners
        .iter()
        .filter(|listener| listener.external)
        .map(|listener| {
            port(
                listener.kind.name(),
                listener.port,
                listener.external_target(),
            )
        })
        .collect();
    if ports.is_empty() {
        return None;
    }
    let mut metadata = ctx.metadata(&ctx.names.external_service);
    metadata.annotations = (!spec.annotations.is_empty()).then(|| spec.annotations.clone());
    Some(Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(spec.type_.as_str().to_owned()),
            selector: Some(ctx.selector_labels()),
            ports: Some(ports),
            load_balancer_source_ranges: (!spec.load_balancer_source_ranges.is_empty())
                .then(|| spec.load_balancer_source_ranges.clone()),
            external_traffic_policy: spec
                .external_traffic_policy
                .map(|policy| policy.as_str().to_owned()),
            load_balancer_class: spec.load_balancer_class.clone(),
            ..ServiceSpec::default()
        }),
        status: None,
    })
}

/// The plain-text listeners the external Service opens to any address.
pub(super) fn warnings(ctx: &Context<'_>) -> Vec<ExposureWarning> {
    let spec = &ctx.spec.service;
    let open_to_all = match spec.type_ {
        ServiceType::ClusterIP => false,
        // Every node's address, on the node port.
        ServiceType::NodePort => true,
        ServiceType::LoadBalancer => {
            spec.load_balancer_source_ranges.is_empty()
                || spec
                    .load_balancer_source_ranges
                    .iter()
                    .any(|range| matches!(range.trim(), "0.0.0.0/0" | "::/0"))
        }
    };
    ctx.listeners
        .iter()
        .filter(|listener| open_to_all && listener.external && !listener.kind.is_tls())
        .map(|listener| ExposureWarning::PlainTextOpenToTheWorld {
            listener: listener.kind,
        })
        .collect()
}

/// One port per listener, targeting the pod port of the same name.
fn listener_ports(ctx: &Context<'_>) -> Vec<ServicePort> {
    ctx.listeners
        .iter()
        .map(|listener| port(listener.kind.name(), listener.port, listener.kind.name()))
        .collect()
}

/// A TCP port `name`, `number`, targeting the pod's port named `target`.
fn port(name: &str, number: i32, target: &str) -> ServicePort {
    ServicePort {
        name: Some(name.to_owned()),
        port: number,
        target_port: Some(IntOrString::String(target.to_owned())),
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
    use crate::plan::{selector_labels, ListenerKind, Plan};

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

    fn target(name: &str) -> IntOrString {
        IntOrString::String(name.to_owned())
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
                ("mqtt".into(), 1883, target("mqtt")),
                ("mqtts".into(), 8883, target("mqtts")),
                ("http".into(), 8080, target("http")),
            ]
        );
    }

    #[test]
    fn in_cluster_clients_get_every_listener_on_a_cluster_ip() {
        let plan = plan_fresh(&broker(MqttBrokerSpec::default()));
        let internal = &plan.internal_service;
        assert_eq!(internal.metadata.name.as_deref(), Some("mq"));
        assert!(internal.metadata.annotations.is_none());
        let spec = spec(internal);
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
        assert_eq!(spec.selector.clone().unwrap(), selector_labels("mq"));
        // The HTTP port (admin API) is never on a client Service.
        assert_eq!(
            port_list(internal),
            [
                ("mqtt".into(), 1883, target("mqtt")),
                ("mqtts".into(), 8883, target("mqtts")),
            ]
        );
    }

    #[test]
    fn the_load_balancer_carries_only_tls_by_default() {
        let plan = plan_fresh(&broker(MqttBrokerSpec::default()));
        let external = plan.external_service.as_ref().expect("an external Service");
        assert_eq!(external.metadata.name.as_deref(), Some("mq-external"));
        let spec = spec(external);
        assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
        assert!(spec.load_balancer_source_ranges.is_none());
        assert!(spec.external_traffic_policy.is_none());
        assert_eq!(
            port_list(external),
            [("mqtts".into(), 8883, target("mqtts"))]
        );
        // Nothing in clear is exposed, so nothing to warn about.
        assert!(plan.warnings.is_empty());
    }

    #[test]
    fn plain_mqtt_outside_is_asked_for_and_warned_about_when_open() {
        let plan = services("listeners: {mqtt: {external: true}}");
        let external = plan.external_service.as_ref().unwrap();
        assert_eq!(
            port_list(external),
            [
                ("mqtt".into(), 1883, target("mqtt")),
                ("mqtts".into(), 8883, target("mqtts")),
            ]
        );
        assert_eq!(
            plan.warnings,
            [ExposureWarning::PlainTextOpenToTheWorld {
                listener: ListenerKind::Mqtt
            }]
        );
        assert!(plan.warnings[0]
            .message()
            .contains("loadBalancerSourceRanges"));
        // Restricted: no warning; "everyone" written as a range still warns.
        let restricted = services(
            "listeners: {mqtt: {external: true}}\nservice: {loadBalancerSourceRanges: [10.0.0.0/8]}",
        );
        assert!(restricted.warnings.is_empty());
        let everyone = services(
            "listeners: {mqtt: {external: true}}\nservice: {loadBalancerSourceRanges: [0.0.0.0/0]}",
        );
        assert_eq!(everyone.warnings.len(), 1);
        // On every node's address with NodePort.
        let node_port =
            services("listeners: {ws: {enabled: true, external: true}}\nservice: {type: NodePort}");
        assert_eq!(
            node_port.warnings,
            [ExposureWarning::PlainTextOpenToTheWorld {
                listener: ListenerKind::Ws
            }]
        );
    }

    #[test]
    fn proxy_protocol_is_on_the_external_path_only() {
        let plan = services("listeners: {mqtts: {proxyProtocol: true}, wss: {enabled: true}}");
        let external = plan.external_service.as_ref().unwrap();
        assert_eq!(
            port_list(external),
            [
                ("mqtts".into(), 8883, target("mqtts-proxy")),
                ("wss".into(), 8084, target("wss")),
            ]
        );
        // In the cluster, the same ports reach the listeners without PROXY.
        assert_eq!(
            port_list(&plan.internal_service),
            [
                ("mqtt".into(), 1883, target("mqtt")),
                ("mqtts".into(), 8883, target("mqtts")),
                ("wss".into(), 8084, target("wss")),
            ]
        );
        assert!(!port_list(&plan.headless_service)
            .iter()
            .any(|(_, _, target)| *target == IntOrString::String("mqtts-proxy".into())));
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
listeners: {mqtt: {port: 11883, external: true}, mqtts: {enabled: false}, wss: {enabled: true}}
"#,
        );
        let external = plan.external_service.as_ref().unwrap();
        assert_eq!(
            external.metadata.annotations.clone().unwrap(),
            BTreeMap::from([(
                "service.beta.kubernetes.io/aws-load-balancer-type".to_owned(),
                "nlb".to_owned()
            )])
        );
        let spec = spec(external);
        assert_eq!(
            spec.load_balancer_source_ranges.clone().unwrap(),
            ["10.0.0.0/8", "192.0.2.0/24"]
        );
        assert_eq!(spec.external_traffic_policy.as_deref(), Some("Local"));
        assert_eq!(
            spec.load_balancer_class.as_deref(),
            Some("service.k8s.aws/nlb")
        );
        let ports: Vec<(String, i32)> = port_list(external)
            .into_iter()
            .map(|p| (p.0, p.1))
            .collect();
        assert_eq!(ports, [("mqtt".into(), 11883), ("wss".into(), 8084)]);
        // The other Services keep no client-facing settings.
        assert!(plan.headless_service.metadata.annotations.is_none());
        assert!(plan.internal_service.metadata.annotations.is_none());
        assert_eq!(port_list(&plan.headless_service).len(), 3);
    }

    #[test]
    fn cluster_ip_or_nothing_external_means_no_external_service() {
        assert!(services("service: {type: ClusterIP}")
            .external_service
            .is_none());
        assert!(services("listeners: {mqtts: {external: false}}")
            .external_service
            .is_none());
        let node_port = services("service: {type: NodePort, externalTrafficPolicy: Cluster}");
        assert_eq!(
            spec(node_port.external_service.as_ref().unwrap())
                .type_
                .as_deref(),
            Some("NodePort")
        );
    }
}
