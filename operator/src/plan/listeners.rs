//! The four listeners (`spec.listeners`): which are on, their ports,
//! their exposure and PROXY protocol ports.

use crate::api::{ListenerSpec, ListenersSpec};

use super::{PlanError, HTTP_PORT};

/// One of the four listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// MQTT over TCP.
    Mqtt,
    /// MQTT over TLS.
    Mqtts,
    /// MQTT over WebSocket.
    Ws,
    /// MQTT over WebSocket over TLS.
    Wss,
}

impl ListenerKind {
    /// All four, in the order of `spec.listeners`.
    pub const ALL: [ListenerKind; 4] = [
        ListenerKind::Mqtt,
        ListenerKind::Mqtts,
        ListenerKind::Ws,
        ListenerKind::Wss,
    ];

    /// The field name under `spec.listeners`, also the port name.
    pub fn name(self) -> &'static str {
        match self {
            ListenerKind::Mqtt => "mqtt",
            ListenerKind::Mqtts => "mqtts",
            ListenerKind::Ws => "ws",
            ListenerKind::Wss => "wss",
        }
    }

    /// The standard port.
    pub fn default_port(self) -> i32 {
        match self {
            ListenerKind::Mqtt => 1883,
            ListenerKind::Mqtts => 8883,
            ListenerKind::Ws => 8083,
            ListenerKind::Wss => 8084,
        }
    }

    /// Whether the listener is on when the spec does not say.
    pub fn enabled_by_default(self) -> bool {
        matches!(self, ListenerKind::Mqtt | ListenerKind::Mqtts)
    }

    /// Whether the listener carries TLS.
    pub fn is_tls(self) -> bool {
        matches!(self, ListenerKind::Mqtts | ListenerKind::Wss)
    }

    /// The URL scheme of the listener.
    pub fn scheme(self) -> &'static str {
        self.name()
    }

    /// The URL path clients use (WebSocket listeners serve `/mqtt`).
    pub fn path(self) -> &'static str {
        match self {
            ListenerKind::Ws | ListenerKind::Wss => "/mqtt",
            ListenerKind::Mqtt | ListenerKind::Mqtts => "",
        }
    }

    /// The name of the pod port that expects PROXY protocol headers.
    pub fn proxy_port_name(self) -> &'static str {
        match self {
            ListenerKind::Mqtt => "mqtt-proxy",
            ListenerKind::Mqtts => "mqtts-proxy",
            ListenerKind::Ws => "ws-proxy",
            ListenerKind::Wss => "wss-proxy",
        }
    }

    fn spec(self, listeners: &ListenersSpec) -> &ListenerSpec {
        match self {
            ListenerKind::Mqtt => &listeners.mqtt,
            ListenerKind::Mqtts => &listeners.mqtts,
            ListenerKind::Ws => &listeners.ws,
            ListenerKind::Wss => &listeners.wss,
        }
    }
}

/// How far the PROXY protocol port of a listener is from its port.
pub const PROXY_PORT_OFFSET: i32 = 10000;

/// A listener the spec turns on, with its port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listener {
    /// Which one.
    pub kind: ListenerKind,
    /// Its port on the pod and the Services.
    pub port: i32,
    /// Whether it is on the external Service.
    pub external: bool,
    /// The pod port expecting PROXY protocol headers, which the external
    /// Service targets, when the spec asks for it.
    pub proxy_port: Option<i32>,
}

impl Listener {
    /// The pod port the external Service targets, by name.
    pub fn external_target(&self) -> &'static str {
        match self.proxy_port {
            Some(_) => self.kind.proxy_port_name(),
            None => self.kind.name(),
        }
    }
}

/// The enabled listeners with their ports and exposure; no two ports (a
/// listener's, its PROXY protocol port, the HTTP port) may be the same.
pub(crate) fn resolve_listeners(spec: &ListenersSpec) -> Result<Vec<Listener>, PlanError> {
    let mut listeners: Vec<Listener> = Vec::new();
    // Every port taken so far, and by what.
    let mut taken: Vec<(i32, String)> =
        vec![(i32::from(HTTP_PORT), "the broker's HTTP port".to_owned())];
    for kind in ListenerKind::ALL {
        let listener = kind.spec(spec);
        if !listener.enabled.unwrap_or(kind.enabled_by_default()) {
            continue;
        }
        let field = |name: &str| format!("listeners.{}.{name}", kind.name());
        let port = listener.port.unwrap_or(kind.default_port());
        if !(1..=65535).contains(&port) {
            return Err(PlanError::invalid(
                field("port"),
                format!("{port} is not a port number"),
            ));
        }
        let external = listener.external.unwrap_or(kind.is_tls());
        let proxy = listener.proxy_protocol.unwrap_or(false);
        if proxy && !external {
            return Err(PlanError::invalid(
                field("proxyProtocol"),
                "PROXY protocol applies to the external path only: set external: true too",
            ));
        }
        let proxy_port = proxy.then_some(port + PROXY_PORT_OFFSET);
        if proxy_port.is_some_and(|p| p > 65535) {
            return Err(PlanError::invalid(
                field("proxyProtocol"),
                format!(
                    "the PROXY protocol port would be {port} + {PROXY_PORT_OFFSET}, above \
                     65535: use a port below {}",
                    65536 - PROXY_PORT_OFFSET
                ),
            ));
        }
        let mut claim = |number: i32, what: String, field_name: &str| {
            if let Some((_, owner)) = taken.iter().find(|(other, _)| *other == number) {
                let message = match owner.as_str() {
                    "the broker's HTTP port" => format!("port {number} is the broker's HTTP port"),
                    owner => format!("port {number} is already used by {owner}"),
                };
                return Err(PlanError::invalid(field(field_name), message));
            }
            taken.push((number, what));
            Ok(())
        };
        claim(port, format!("listeners.{}", kind.name()), "port")?;
        if let Some(proxy_port) = proxy_port {
            claim(
                proxy_port,
                format!("the PROXY protocol port of listeners.{}", kind.name()),
                "proxyProtocol",
            )?;
        }
        listeners.push(Listener {
            kind,
            port,
            external,
            proxy_port,
        });
    }
    Ok(listeners)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_listeners_are_mqtt_and_mqtts() {
        let listeners = resolve_listeners(&ListenersSpec::default()).unwrap();
        let kinds: Vec<(ListenerKind, i32)> = listeners.iter().map(|l| (l.kind, l.port)).collect();
        assert_eq!(
            kinds,
            [(ListenerKind::Mqtt, 1883), (ListenerKind::Mqtts, 8883)]
        );
    }

    #[test]
    fn listeners_can_be_toggled_and_moved() {
        let spec: ListenersSpec = serde_saphyr::from_str(
            "mqtt: {port: 11883}\nmqtts: {enabled: false}\nws: {enabled: true}\nwss: {enabled: true, port: 9443}\n",
        )
        .unwrap();
        let listeners = resolve_listeners(&spec).unwrap();
        let kinds: Vec<(ListenerKind, i32)> = listeners.iter().map(|l| (l.kind, l.port)).collect();
        assert_eq!(
            kinds,
            [
                (ListenerKind::Mqtt, 11883),
                (ListenerKind::Ws, 8083),
                (ListenerKind::Wss, 9443)
            ]
        );
    }

    #[test]
    fn two_listeners_on_one_port_are_rejected() {
        let spec: ListenersSpec = serde_saphyr::from_str("mqtts: {port: 1883}\n").unwrap();
        let error = resolve_listeners(&spec).unwrap_err();
        assert_eq!(
            error.to_string(),
            "spec.listeners.mqtts.port: port 1883 is already used by listeners.mqtt"
        );
    }

    #[test]
    fn the_http_port_is_reserved() {
        let spec: ListenersSpec =
            serde_saphyr::from_str("ws: {enabled: true, port: 8080}\n").unwrap();
        assert_eq!(
            resolve_listeners(&spec).unwrap_err().to_string(),
            "spec.listeners.ws.port: port 8080 is the broker's HTTP port"
        );
    }
}
