//! Prometheus metrics. Counters are updated where things happen; gauges
//! that describe the whole broker (sessions, subscriptions, retained
//! messages, queue depth) are computed when `/metrics` is scraped.
//!
//! Every label value the broker uses is listed here and shown at 0 from the
//! start ([`Metrics::init_known_labels`]): a counter that is absent until it
//! first counts cannot be graphed or alerted on.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::codec::QoS;
use crate::queue::DropReason;

pub struct Metrics {
    registry: Registry,
    pub connections: IntGaugeVec,
    pub connections_total: IntCounterVec,
    pub connections_refused: IntCounterVec,
    pub tls_handshake_failures: IntCounterVec,
    /// By QoS 0, 1, 2 (resolved once: these are on the publish path).
    pub messages_received: [IntCounter; 3],
    pub messages_sent: [IntCounter; 3],
    pub clients_connected: IntGauge,
    pub clients_maximum: IntGauge,
    pub bytes_received: IntCounter,
    pub bytes_sent: IntCounter,
    pub dropped: IntCounterVec,
    pub auth_failures: IntCounterVec,
    pub acl_denials: IntCounterVec,
    pub quota_refusals: IntCounterVec,
    pub delivery_latency: Histogram,
    pub retained: IntGauge,
    pub sessions: IntGaugeVec,
    pub subscriptions: IntGauge,
    pub queued: IntGauge,
    pub queued_bytes: IntGauge,
    pub queued_bytes_budget: IntGauge,
    pub slow_subscribers: IntCounterVec,
    pub publishers_paused: IntGauge,
    pub publisher_pauses: IntCounter,
    pub cluster_connected: IntGauge,
    pub cluster_nodes: IntGauge,
    pub cluster_received: IntCounter,
    pub cluster_imported: IntCounter,
    pub cluster_bad_messages: IntCounter,
    pub cluster_unmatched: IntCounter,
    pub cluster_requeued: IntCounter,
    pub cluster_send_failures: IntCounter,
    pub cluster_receive_drops: IntCounter,
    pub clients_shed: IntCounter,
    /// Device fleets: logins, devices online, disconnects.
    pub fleets: crate::auth::fleet::FleetMetrics,
}

/// `quota_refusals_total{quota}`.
pub const QUOTAS: [&str; 5] = [
    "connections",
    "packet_size",
    "publish_rate",
    "receive_maximum",
    "subscriptions",
];

/// `auth_failures_total{reason}`.
pub const AUTH_FAILURE_REASONS: [&str; 5] = [
    "anonymous",
    "no_users",
    "unknown_user",
    "bad_password",
    "password_expired",
];

/// `acl_denials_total{action}`.
pub const ACL_ACTIONS: [&str; 4] = ["publish", "receive", "subscribe", "will"];

/// `slow_subscribers_total{action}`.
pub const SLOW_SUBSCRIBER_ACTIONS: [&str; 2] = ["disconnect", "drop"];

/// `connections_refused_total{reason}`, per listener.
pub const REFUSAL_REASONS: [&str; 2] = ["max_connections", "connection_rate"];

fn by_qos(vec: IntCounterVec) -> [IntCounter; 3] {
    ["0", "1", "2"].map(|qos| vec.with_label_values(&[qos]))
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some("kubemqtt".into()), None)
            .expect("static registry prefix is valid");
        // The names and labels below are static and valid, so creating and
        // registering them cannot fail.
        fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            r.register(Box::new(c.clone())).expect("unique metric");
            c
        }
        fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            r.register(Box::new(g.clone())).expect("unique metric");
            g
        }
        fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
            let c = IntCounter::new(name, help).expect("valid metric");
            r.register(Box::new(c.clone())).expect("unique metric");
            c
        }
        fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
            let g = IntGauge::new(name, help).expect("valid metric");
            r.register(Box::new(g.clone())).expect("unique metric");
            g
        }
        let r = &registry;
        let delivery_latency = Histogram::with_opts(
            HistogramOpts::new(
                "delivery_latency_seconds",
                "Time from a PUBLISH arriving to its delivery being written to a subscriber",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 5.0,
            ]),
        )
        .expect("valid metric");
        r.register(Box::new(delivery_latency.clone()))
            .expect("unique metric");
        Metrics {
            connections: gauge_vec(r, "connections", "Open client connections", &["listener"]),
            connections_total: counter_vec(
                r,
                "connections_total",
                "Connections accepted",
                &["listener"],
            ),
            connections_refused: counter_vec(
                r,
                "connections_refused_total",
                "Connections refused before MQTT, by reason",
                &["listener", "reason"],
            ),
            tls_handshake_failures: counter_vec(
                r,
                "tls_handshake_failures_total",
                "Failed TLS handshakes",
                &["listener"],
            ),
            messages_received: by_qos(counter_vec(
                r,
                "messages_received_total",
                "PUBLISH packets received from clients",
                &["qos"],
            )),
            messages_sent: by_qos(counter_vec(
                r,
                "messages_sent_total",
                "PUBLISH packets sent to clients",
                &["qos"],
            )),
            clients_connected: gauge(r, "clients_connected", "Clients connected now"),
            clients_maximum: gauge(
                r,
                "clients_maximum",
                "Most clients connected at once since start",
            ),
            bytes_received: counter(r, "bytes_received_total", "Bytes received from clients"),
            bytes_sent: counter(r, "bytes_sent_total", "Bytes sent to clients"),
            dropped: counter_vec(
                r,
                "messages_dropped_total",
                "Deliveries dropped, by reason",
                &["reason"],
            ),
            auth_failures: counter_vec(
                r,
                "auth_failures_total",
                "Refused logins, by reason",
                &["reason"],
            ),
            acl_denials: counter_vec(
                r,
                "acl_denials_total",
                "Operations refused by ACL rules",
                &["action"],
            ),
            quota_refusals: counter_vec(
                r,
                "quota_refusals_total",
                "Operations refused by quotas",
                &["quota"],
            ),
            delivery_latency,
            retained: gauge(r, "retained_messages", "Retained messages"),
            sessions: gauge_vec(r, "sessions", "Sessions, by state", &["state"]),
            subscriptions: gauge(r, "subscriptions", "Subscriptions"),
            queued: gauge(r, "queued_messages", "Messages queued in sessions"),
            queued_bytes: gauge(
                r,
                "queued_bytes",
                "Payload and topic bytes queued in every session",
            ),
            queued_bytes_budget: gauge(
                r,
                "queued_bytes_budget",
                "The budget of queued bytes (limits.memory_budget_bytes); 0 for none",
            ),
            slow_subscribers: counter_vec(
                r,
                "slow_subscribers_total",
                "Connected subscribers found to have stopped taking messages, by the action taken",
                &["action"],
            ),
            publishers_paused: gauge(
                r,
                "publishers_paused",
                "Publishers paused now until their subscribers catch up",
            ),
            publisher_pauses: counter(
                r,
                "publisher_pauses_total",
                "Times a publisher was paused for its subscribers",
            ),
            cluster_connected: gauge(
                r,
                "cluster_connected",
                "1 while connected to the cluster's NATS (0 without [cluster], or when lost)",
            ),
            cluster_nodes: gauge(r, "cluster_nodes", "Nodes of the cluster seen alive"),
            cluster_received: counter(
                r,
                "cluster_received_total",
                "Messages routed here from other nodes",
            ),
            cluster_imported: counter(
                r,
                "cluster_imported_total",
                "Messages NATS clients published on device-data subjects, routed here",
            ),
            cluster_bad_messages: counter(
                r,
                "cluster_bad_messages_total",
                "Routed messages that could not be read (dropped)",
            ),
            cluster_unmatched: counter(
                r,
                "cluster_routed_unmatched_total",
                "QoS 1/2 messages routed here by another node that no session here took (dropped: the subscriber had moved on)",
            ),
            cluster_requeued: counter(
                r,
                "cluster_routed_requeued_total",
                "QoS 1/2 messages routed here by another node that no session here took, put in the queues of offline sessions that match them (sessions that moved)",
            ),
            clients_shed: counter(
                r,
                "clients_shed_total",
                "Clients sent to other nodes by the admin API's shed",
            ),
            fleets: crate::auth::fleet::FleetMetrics::register(r),
            cluster_send_failures: counter(
                r,
                "cluster_send_failures_total",
                "QoS 0 messages that could not be sent to other nodes",
            ),
            cluster_receive_drops: counter(
                r,
                "cluster_receive_drops_total",
                "QoS 0 messages from other nodes dropped because this node read them slower than they came (a lower bound)",
            ),
            registry,
        }
    }

    /// Shows every known label value at 0: the broker-wide ones, and for
    /// each listener (`name`, whether it is TLS) its connection counters.
    pub fn init_known_labels<'a>(&self, listeners: impl IntoIterator<Item = (&'a str, bool)>) {
        let zero = |vec: &IntCounterVec, values: &[&str]| {
            for value in values {
                vec.with_label_values(&[value]);
            }
        };
        zero(&self.quota_refusals, &QUOTAS);
        zero(&self.auth_failures, &AUTH_FAILURE_REASONS);
        zero(&self.acl_denials, &ACL_ACTIONS);
        zero(&self.slow_subscribers, &SLOW_SUBSCRIBER_ACTIONS);
        zero(&self.dropped, &DropReason::ALL.map(DropReason::label));
        for (listener, tls) in listeners {
            self.connections.with_label_values(&[listener]);
            self.connections_total.with_label_values(&[listener]);
            for reason in REFUSAL_REASONS {
                self.connections_refused
                    .with_label_values(&[listener, reason]);
            }
            if tls {
                self.tls_handshake_failures.with_label_values(&[listener]);
            }
        }
    }

    pub fn refused(&self, listener: &str, reason: &str) {
        self.connections_refused
            .with_label_values(&[listener, reason])
            .inc();
    }

    pub fn tls_handshake_failed(&self, listener: &str) {
        self.tls_handshake_failures
            .with_label_values(&[listener])
            .inc();
    }

    pub fn received(&self, qos: QoS) {
        self.messages_received[qos as usize].inc();
    }

    pub fn sent(&self, qos: QoS) {
        self.messages_sent[qos as usize].inc();
    }

    /// Messages sent, counted per QoS (indexed by QoS).
    pub fn sent_many(&self, counts: &[u64; 3]) {
        for (counter, &count) in self.messages_sent.iter().zip(counts) {
            if count > 0 {
                counter.inc_by(count);
            }
        }
    }

    /// Total over every QoS.
    pub fn total(counters: &[IntCounter; 3]) -> u64 {
        counters.iter().map(IntCounter::get).sum()
    }

    pub fn client_connected(&self, listener: &str) {
        self.connections.with_label_values(&[listener]).inc();
        self.connections_total.with_label_values(&[listener]).inc();
        self.clients_connected.inc();
        let now = self.clients_connected.get();
        if now > self.clients_maximum.get() {
            self.clients_maximum.set(now);
        }
    }

    pub fn client_disconnected(&self, listener: &str) {
        self.connections.with_label_values(&[listener]).dec();
        self.clients_connected.dec();
    }

    pub fn drop(&self, reason: &str) {
        self.dropped.with_label_values(&[reason]).inc();
    }

    /// A publisher paused for its subscribers.
    pub fn publisher_paused(&self) {
        self.publishers_paused.inc();
        self.publisher_pauses.inc();
    }

    /// A paused publisher goes on (or its connection ended).
    pub fn publisher_resumed(&self) {
        self.publishers_paused.dec();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let encoder = TextEncoder::new();
        if encoder.encode(&self.registry.gather(), &mut out).is_err() {
            return String::new();
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The string literals passed to `.{counter}` ... `with_label_values(&["x"])`
    /// in the broker's sources.
    fn labels_in_sources(counter: &str) -> Vec<String> {
        let mut found = Vec::new();
        let mut stack = vec![std::path::PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src"
        ))];
        while let Some(path) = stack.pop() {
            if path.is_dir() {
                stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") || path.ends_with("metrics.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for (at, _) in text.match_indices(&format!(".{counter}")) {
                let rest = &text[at..text.len().min(at + 200)];
                if let Some(start) = rest.find("with_label_values(&[\"") {
                    let value = &rest[start + "with_label_values(&[\"".len()..];
                    found.push(value[..value.find('"').unwrap()].to_owned());
                }
            }
        }
        found
    }

    #[test]
    fn every_label_value_in_the_sources_is_known() {
        for (counter, known) in [
            ("quota_refusals", &QUOTAS[..]),
            ("acl_denials", &ACL_ACTIONS[..]),
        ] {
            let used = labels_in_sources(counter);
            assert!(!used.is_empty(), "no {counter} labels found");
            for value in used {
                assert!(
                    known.contains(&value.as_str()),
                    "{counter}: `{value}` is not listed"
                );
            }
        }
    }

    #[test]
    fn known_labels_show_at_zero() {
        let metrics = Metrics::new();
        metrics.init_known_labels([("mqtt", false), ("mqtts", true)]);
        let text = metrics.render();
        for line in [
            "kubemqtt_quota_refusals_total{quota=\"publish_rate\"} 0",
            "kubemqtt_auth_failures_total{reason=\"no_users\"} 0",
            "kubemqtt_messages_dropped_total{reason=\"memory_budget\"} 0",
            "kubemqtt_connections_refused_total{listener=\"mqtt\",reason=\"connection_rate\"} 0",
            "kubemqtt_tls_handshake_failures_total{listener=\"mqtts\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing in:\n{text}"
            );
        }
        assert!(!text.contains("kubemqtt_tls_handshake_failures_total{listener=\"mqtt\"}"));
    }
}
