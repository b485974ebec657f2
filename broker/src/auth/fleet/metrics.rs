//! Per-fleet metrics: logins accepted and refused (by reason), devices
//! online, and devices disconnected by the broker (revoked, token expired).

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

use super::Refused;

/// `fleet_logins_total{fleet, result}`: `accepted` or a refusal reason.
pub const LOGIN_RESULTS: [&str; 10] = [
    "accepted",
    "malformed",
    "bad_signature",
    "unknown_key",
    "expired",
    "replayed",
    "revoked",
    "denied",
    "registry_down",
    "quota",
];

/// `fleet_disconnects_total{fleet, reason}`.
pub const DISCONNECT_REASONS: [&str; 3] = ["revoked", "token_expired", "fleet_removed"];

#[derive(Clone)]
pub struct FleetMetrics {
    pub logins: IntCounterVec,
    pub online: IntGaugeVec,
    pub disconnects: IntCounterVec,
}

impl FleetMetrics {
    /// Creates the metrics and registers them (names are static and valid).
    pub fn register(registry: &Registry) -> FleetMetrics {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let online = IntGaugeVec::new(
            Opts::new("fleet_devices_online", "Devices of each fleet connected"),
            &["fleet"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(online.clone()))
            .expect("unique metric");
        FleetMetrics {
            logins: counter(
                "fleet_logins_total",
                "Device logins per fleet: accepted, or refused and why",
                &["fleet", "result"],
            ),
            online,
            disconnects: counter(
                "fleet_disconnects_total",
                "Devices the broker disconnected, per fleet and reason",
                &["fleet", "reason"],
            ),
        }
    }

    /// Shows every label value of the fleets at 0.
    pub fn init<'a>(&self, fleets: impl IntoIterator<Item = &'a str>) {
        for fleet in fleets {
            for result in LOGIN_RESULTS {
                self.logins.with_label_values(&[fleet, result]);
            }
            for reason in DISCONNECT_REASONS {
                self.disconnects.with_label_values(&[fleet, reason]);
            }
            self.online.with_label_values(&[fleet]);
        }
    }

    pub fn accepted(&self, fleet: &str) {
        self.logins.with_label_values(&[fleet, "accepted"]).inc();
    }

    pub fn refused(&self, fleet: &str, reason: Refused) {
        self.logins
            .with_label_values(&[fleet, reason.label()])
            .inc();
    }
}
