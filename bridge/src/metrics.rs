//! Prometheus metrics and the status the operator reads (`GET /status`).
//!
//! Labels are bounded: `route` and `source` take the names from the
//! configuration file, `outcome` a fixed set.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};
use serde_json::{json, Value};

use crate::message::rfc3339;

/// Every metric of the bridge.
pub struct Metrics {
    registry: Registry,
    /// Messages received from the source broker.
    pub received: IntCounter,
    /// Of those, marked DUP by the broker (sent again after a reconnect):
    /// where the sink cannot deduplicate, the possible duplicates.
    pub redelivered: IntCounter,
    /// Messages committed by the sink.
    pub forwarded: IntCounterVec,
    /// Messages whose write failed (each failed attempt counts).
    pub failed: IntCounterVec,
    /// Messages sent to the dead-letter destination.
    pub dead_lettered: IntCounterVec,
    /// Messages a route's `where` did not select.
    pub filtered: IntCounterVec,
    /// Messages the sink recognised as already written (idempotency key).
    pub deduplicated: IntCounterVec,
    /// Messages sent again after a failed attempt to a sink that cannot
    /// deduplicate: possible duplicates.
    pub resent: IntCounterVec,
    /// Messages received and not yet acknowledged to the broker.
    pub lag: IntGauge,
    /// Unix time of each route's last error.
    pub last_error_time: prometheus::GaugeVec,
    /// Time to write one batch.
    pub batch_seconds: HistogramVec,
    /// Commands published into the broker, by outcome.
    pub commands: IntCounterVec,
    connected: AtomicBool,
    last_errors: Mutex<BTreeMap<String, (SystemTime, String)>>,
}

impl Metrics {
    /// A fresh set of metrics.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            let metric = IntCounter::with_opts(Opts::new(name, help)).expect("valid metric");
            registry
                .register(Box::new(metric.clone()))
                .expect("registered once");
            metric
        };
        let by = |name: &str, help: &str, labels: &[&str]| {
            let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(metric.clone()))
                .expect("registered once");
            metric
        };
        let route = &["route"];
        let lag = IntGauge::new(
            "kubemqtt_bridge_lag_messages",
            "Messages received from the broker and not yet acknowledged to it.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(lag.clone()))
            .expect("registered once");
        let last_error_time = prometheus::GaugeVec::new(
            Opts::new(
                "kubemqtt_bridge_last_error_timestamp_seconds",
                "Unix time of the route's last failed write.",
            ),
            route,
        )
        .expect("valid metric");
        registry
            .register(Box::new(last_error_time.clone()))
            .expect("registered once");
        let batch_seconds = HistogramVec::new(
            HistogramOpts::new(
                "kubemqtt_bridge_batch_seconds",
                "Time to write one batch to the sink, retries included.",
            )
            .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0]),
            route,
        )
        .expect("valid metric");
        registry
            .register(Box::new(batch_seconds.clone()))
            .expect("registered once");
        Metrics {
            received: counter(
                "kubemqtt_bridge_received_total",
                "Messages received from the source broker.",
            ),
            redelivered: counter(
                "kubemqtt_bridge_redelivered_total",
                "Messages the broker sent again (DUP) after a reconnect.",
            ),
            forwarded: by(
                "kubemqtt_bridge_forwarded_total",
                "Messages committed by the route's sink.",
                route,
            ),
            failed: by(
                "kubemqtt_bridge_failed_total",
                "Messages whose write failed, per failed attempt.",
                route,
            ),
            dead_lettered: by(
                "kubemqtt_bridge_dead_lettered_total",
                "Messages sent to the route's dead-letter destination.",
                route,
            ),
            filtered: by(
                "kubemqtt_bridge_filtered_total",
                "Messages the route's condition did not select.",
                route,
            ),
            deduplicated: by(
                "kubemqtt_bridge_deduplicated_total",
                "Messages the sink already had (same idempotency key).",
                route,
            ),
            resent: by(
                "kubemqtt_bridge_resent_total",
                "Messages sent again after a failed attempt to a sink that cannot deduplicate.",
                route,
            ),
            lag,
            last_error_time,
            batch_seconds,
            commands: by(
                "kubemqtt_bridge_commands_total",
                "Commands from a command source, by outcome (published, refused, failed).",
                &["source", "outcome"],
            ),
            connected: AtomicBool::new(false),
            last_errors: Mutex::new(BTreeMap::new()),
            registry,
        }
    }

    /// Creates each route's series at zero, so they show before traffic.
    pub fn declare_routes<'a>(&self, routes: impl IntoIterator<Item = &'a str>) {
        for route in routes {
            for metric in [
                &self.forwarded,
                &self.failed,
                &self.dead_lettered,
                &self.filtered,
                &self.deduplicated,
                &self.resent,
            ] {
                metric.with_label_values(&[route]);
            }
        }
    }

    /// Records a route's failure.
    pub fn error(&self, route: &str, message: String) {
        let now = SystemTime::now();
        let unix = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.last_error_time.with_label_values(&[route]).set(unix);
        if let Ok(mut errors) = self.last_errors.lock() {
            errors.insert(route.to_owned(), (now, message));
        }
    }

    /// Whether the source session is connected and subscribed.
    pub fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
    }

    /// See [`Metrics::set_connected`].
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// The Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// Totals and the last error, as JSON (`GET /status`).
    pub fn status(&self, routes: &[String]) -> Value {
        let sum = |metric: &IntCounterVec| -> u64 {
            routes
                .iter()
                .map(|r| metric.with_label_values(&[r.as_str()]).get())
                .sum()
        };
        let errors = self
            .last_errors
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default();
        let last = errors
            .iter()
            .max_by_key(|(_, (at, _))| *at)
            .map(|(route, (at, message))| {
                json!({"route": route, "message": message, "time": rfc3339(*at)})
            });
        let per_route: serde_json::Map<String, Value> = routes
            .iter()
            .map(|route| {
                let r = &[route.as_str()];
                (
                    route.clone(),
                    json!({
                        "forwarded": self.forwarded.with_label_values(r).get(),
                        "failed": self.failed.with_label_values(r).get(),
                        "deadLettered": self.dead_lettered.with_label_values(r).get(),
                        "filtered": self.filtered.with_label_values(r).get(),
                        "deduplicated": self.deduplicated.with_label_values(r).get(),
                        "resent": self.resent.with_label_values(r).get(),
                    }),
                )
            })
            .collect();
        json!({
            "connected": self.connected(),
            "received": self.received.get(),
            "redelivered": self.redelivered.get(),
            "forwarded": sum(&self.forwarded),
            "failed": sum(&self.failed),
            "deadLettered": sum(&self.dead_lettered),
            "lag": self.lag.get(),
            "lastError": last,
            "routes": per_route,
        })
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
