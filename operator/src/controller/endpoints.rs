//! Where a broker's listeners are reachable, for its status: each
//! listener's in-cluster URL (through the Service `<name>`), its external
//! URL (through the load balancer of `<name>-external`, once that has an
//! address) or node port, and the one endpoint `kubectl get mqttbroker`
//! shows.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;

use super::observe::load_balancer_ingress;
use crate::api::{ListenerStatus, MqttBroker, ServiceType};
use crate::plan::{resolve_listeners, Listener, ListenerKind};

/// The order in which listeners are preferred for the endpoint.
const PREFERENCE: [ListenerKind; 4] = [
    ListenerKind::Mqtts,
    ListenerKind::Wss,
    ListenerKind::Mqtt,
    ListenerKind::Ws,
];

/// How a broker is exposed, as far as its status can tell.
#[derive(Debug, Clone)]
pub struct Exposure {
    /// The in-cluster Service's DNS name.
    pub internal_host: String,
    /// The load balancer's address, once it has one.
    pub external_host: Option<String>,
    listeners: Vec<Listener>,
    service_type: ServiceType,
    node_ports: BTreeMap<String, i32>,
}

impl Exposure {
    /// The exposure of `broker`, given its external Service as stored.
    pub fn new(broker: &MqttBroker, external_service: Option<&Service>) -> Exposure {
        let name = broker.metadata.name.as_deref().unwrap_or_default();
        let namespace = broker.metadata.namespace.as_deref().unwrap_or_default();
        let node_ports = external_service
            .and_then(|service| service.spec.as_ref())
            .and_then(|spec| spec.ports.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|port| Some((port.name.clone()?, port.node_port?)))
            .collect();
        Exposure {
            internal_host: format!("{name}.{namespace}.svc"),
            external_host: load_balancer_ingress(external_service)
                .into_iter()
                .find_map(|ingress| ingress.ip.or(ingress.hostname)),
            // An invalid spec has no listeners to report.
            listeners: resolve_listeners(&broker.spec.listeners).unwrap_or_default(),
            service_type: broker.spec.service.type_,
            node_ports,
        }
    }

    fn exposed(&self) -> impl Iterator<Item = &Listener> {
        let has_service = self.service_type != ServiceType::ClusterIP;
        self.listeners
            .iter()
            .filter(move |l| has_service && l.external)
    }

    /// Whether a load balancer is wanted and has no address yet.
    pub fn load_balancer_pending(&self) -> bool {
        self.service_type == ServiceType::LoadBalancer
            && self.exposed().next().is_some()
            && self.external_host.is_none()
    }

    /// The endpoint: the preferred external listener's URL on the load
    /// balancer, or, without a load balancer, the preferred listener's
    /// in-cluster URL; `None` while the load balancer has no address.
    pub fn endpoint(&self) -> Option<String> {
        if self.service_type == ServiceType::LoadBalancer {
            let exposed: Vec<&Listener> = self.exposed().collect();
            if let Some(listener) = preferred(&exposed) {
                let host = self.external_host.as_deref()?;
                return Some(url(listener.kind, host, listener.port));
            }
        }
        let all: Vec<&Listener> = self.listeners.iter().collect();
        let listener = preferred(&all)?;
        Some(url(listener.kind, &self.internal_host, listener.port))
    }

    /// One entry per enabled listener.
    pub fn listeners(&self) -> Vec<ListenerStatus> {
        let has_service = self.service_type != ServiceType::ClusterIP;
        self.listeners
            .iter()
            .map(|listener| {
                let exposed = has_service && listener.external;
                let external = match (exposed, self.service_type, &self.external_host) {
                    (true, ServiceType::LoadBalancer, Some(host)) => {
                        Some(url(listener.kind, host, listener.port))
                    }
                    _ => None,
                };
                ListenerStatus {
                    name: listener.kind.name().to_owned(),
                    internal: url(listener.kind, &self.internal_host, listener.port),
                    external,
                    node_port: exposed
                        .then(|| self.node_ports.get(listener.kind.name()).copied())
                        .flatten(),
                    proxy_protocol: listener.proxy_port.is_some(),
                }
            })
            .collect()
    }
}

/// The first of `listeners` in the order of [`PREFERENCE`].
fn preferred<'a>(listeners: &[&'a Listener]) -> Option<&'a Listener> {
    PREFERENCE
        .iter()
        .find_map(|kind| listeners.iter().find(|l| l.kind == *kind).copied())
}

/// `scheme://host:port[/path]`, with an IPv6 address in brackets.
pub fn url(kind: ListenerKind, host: &str, port: i32) -> String {
    let host = match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(ip)) => format!("[{ip}]"),
        _ => host.to_owned(),
    };
    format!("{}://{host}:{port}{}", kind.scheme(), kind.path())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        LoadBalancerIngress, LoadBalancerStatus, ServicePort, ServiceSpec, ServiceStatus,
    };

    use super::*;
    use crate::plan::testing::broker_yaml;

    fn load_balancer(address: Option<&str>, node_ports: &[(&str, i32)]) -> Service {
        Service {
            metadata: Default::default(),
            spec: Some(ServiceSpec {
                ports: Some(
                    node_ports
                        .iter()
                        .map(|(name, port)| ServicePort {
                            name: Some((*name).to_owned()),
                            node_port: Some(*port),
                            ..ServicePort::default()
                        })
                        .collect(),
                ),
                ..ServiceSpec::default()
            }),
            status: Some(ServiceStatus {
                load_balancer: Some(LoadBalancerStatus {
                    ingress: address.map(|ip| {
                        vec![LoadBalancerIngress {
                            ip: Some(ip.to_owned()),
                            ..LoadBalancerIngress::default()
                        }]
                    }),
                }),
                ..ServiceStatus::default()
            }),
        }
    }

    #[test]
    fn urls_carry_scheme_port_and_path() {
        assert_eq!(
            url(ListenerKind::Mqtts, "203.0.113.7", 8883),
            "mqtts://203.0.113.7:8883"
        );
        assert_eq!(
            url(ListenerKind::Wss, "mq.example.com", 443),
            "wss://mq.example.com:443/mqtt"
        );
        assert_eq!(
            url(ListenerKind::Mqtt, "2001:db8::1", 1883),
            "mqtt://[2001:db8::1]:1883"
        );
    }

    #[test]
    fn a_load_balancer_with_an_address() {
        let broker = broker_yaml("listeners: {wss: {enabled: true}, mqtts: {proxyProtocol: true}}");
        let service = load_balancer(Some("203.0.113.7"), &[("mqtts", 31883)]);
        let exposure = Exposure::new(&broker, Some(&service));
        assert!(!exposure.load_balancer_pending());
        assert_eq!(
            exposure.endpoint().as_deref(),
            Some("mqtts://203.0.113.7:8883")
        );
        assert_eq!(
            exposure.listeners(),
            [
                ListenerStatus {
                    name: "mqtt".into(),
                    internal: "mqtt://mq.iot.svc:1883".into(),
                    external: None,
                    node_port: None,
                    proxy_protocol: false,
                },
                ListenerStatus {
                    name: "mqtts".into(),
                    internal: "mqtts://mq.iot.svc:8883".into(),
                    external: Some("mqtts://203.0.113.7:8883".into()),
                    node_port: Some(31883),
                    proxy_protocol: true,
                },
                ListenerStatus {
                    name: "wss".into(),
                    internal: "wss://mq.iot.svc:8084/mqtt".into(),
                    external: Some("wss://203.0.113.7:8084/mqtt".into()),
                    node_port: None,
                    proxy_protocol: false,
                },
            ]
        );
    }

    #[test]
    fn no_endpoint_while_the_load_balancer_is_pending() {
        let broker = broker_yaml("{}");
        let exposure = Exposure::new(&broker, Some(&load_balancer(None, &[])));
        assert!(exposure.load_balancer_pending());
        assert_eq!(exposure.endpoint(), None);
        let exposure = Exposure::new(&broker, None);
        assert!(exposure.load_balancer_pending());
    }

    #[test]
    fn without_a_load_balancer_the_endpoint_is_in_the_cluster() {
        let inside = Exposure::new(&broker_yaml("service: {type: ClusterIP}"), None);
        assert!(!inside.load_balancer_pending());
        assert_eq!(
            inside.endpoint().as_deref(),
            Some("mqtts://mq.iot.svc:8883")
        );
        assert!(inside.listeners().iter().all(|l| l.external.is_none()));
        // Nothing external: no load balancer to wait for.
        let plain = Exposure::new(&broker_yaml("listeners: {mqtts: {enabled: false}}"), None);
        assert!(!plain.load_balancer_pending());
        assert_eq!(plain.endpoint().as_deref(), Some("mqtt://mq.iot.svc:1883"));
        let node_port = Exposure::new(
            &broker_yaml("service: {type: NodePort}"),
            Some(&load_balancer(None, &[("mqtts", 30883)])),
        );
        assert!(!node_port.load_balancer_pending());
        assert_eq!(node_port.listeners()[1].node_port, Some(30883));
    }
}
