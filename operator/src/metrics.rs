//! The operator's Prometheus metrics, served on `/metrics`.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `kubemqtt_operator_reconciles_total` | counter | `result`: `applied`, `invalid`, `paused`, `deleting`, `error` |
//! | `kubemqtt_operator_reconcile_errors_total` | counter | `stage`: `observe`, `apply`, `status` |
//! | `kubemqtt_operator_reconcile_duration_seconds` | histogram | |
//! | `kubemqtt_operator_leader` | gauge | 1 while this replica holds the lease |
//! | `kubemqtt_operator_user_reconciles_total` | counter | `result`, as for brokers |
//! | `kubemqtt_operator_credential_pushes_total` | counter | `result`: `ok`, `unreachable`, `refused` |

use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

/// How a reconcile ended, for the `result` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReconcileResult {
    /// Every object was applied and the status written.
    Applied,
    /// The spec cannot be applied (planning failed, or the API server
    /// refused an object): nothing was applied.
    Invalid,
    /// The broker carries the paused annotation.
    Paused,
    /// The broker is being deleted: its objects go with it.
    Deleting,
    /// An API call failed; the reconcile is retried with backoff.
    Error,
}

impl ReconcileResult {
    fn label(self) -> &'static str {
        match self {
            ReconcileResult::Applied => "applied",
            ReconcileResult::Invalid => "invalid",
            ReconcileResult::Paused => "paused",
            ReconcileResult::Deleting => "deleting",
            ReconcileResult::Error => "error",
        }
    }
}

/// The operator's metrics and the registry that holds them.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    reconciles: IntCounterVec,
    errors: IntCounterVec,
    duration: Histogram,
    user_reconciles: IntCounterVec,
    pushes: IntCounterVec,
    /// 1 while this replica holds the leader lease, else 0.
    pub leader: IntGauge,
}

impl Metrics {
    /// Creates the metrics in a registry of their own.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new(
                "kubemqtt_operator_reconciles_total",
                "Reconciles of MqttBrokers, by result.",
            ),
            &["result"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "kubemqtt_operator_reconcile_errors_total",
                "Reconciles that failed on a Kubernetes API call, by the stage that failed.",
            ),
            &["stage"],
        )?;
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "kubemqtt_operator_reconcile_duration_seconds",
                "How long reconciles of MqttBrokers took.",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
        )?;
        let leader = IntGauge::new(
            "kubemqtt_operator_leader",
            "1 while this replica holds the leader lease and runs the controller.",
        )?;
        let user_reconciles = IntCounterVec::new(
            Opts::new(
                "kubemqtt_operator_user_reconciles_total",
                "Reconciles of MqttUsers, by result.",
            ),
            &["result"],
        )?;
        let pushes = IntCounterVec::new(
            Opts::new(
                "kubemqtt_operator_credential_pushes_total",
                "Credentials files pushed to broker pods, by result.",
            ),
            &["result"],
        )?;
        registry.register(Box::new(user_reconciles.clone()))?;
        registry.register(Box::new(pushes.clone()))?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        Ok(Metrics {
            registry,
            reconciles,
            errors,
            duration,
            user_reconciles,
            pushes,
            leader,
        })
    }

    /// Counts one reconcile that ended with `result` after `took`.
    pub fn reconciled(&self, result: ReconcileResult, took: Duration) {
        self.reconciles.with_label_values(&[result.label()]).inc();
        self.duration.observe(took.as_secs_f64());
    }

    /// Counts one reconcile of an `MqttUser`.
    pub fn reconciled_user(&self, result: ReconcileResult) {
        self.user_reconciles
            .with_label_values(&[result.label()])
            .inc();
    }

    /// Counts one push of credentials to a broker pod (`ok`,
    /// `unreachable`, `refused`).
    pub fn pushed(&self, result: &str) {
        self.pushes.with_label_values(&[result]).inc();
    }

    /// Counts an API failure at `stage` of a reconcile.
    pub fn failed(&self, stage: &str) {
        self.errors.with_label_values(&[stage]).inc();
    }

    /// Every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        // Encoding into a Vec cannot fail on I/O; a metric family the
        // encoder refuses would be a bug in the definitions above.
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(%error, "cannot encode the metrics");
        }
        String::from_utf8_lossy(&buffer).into_owned()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconciles_errors_and_durations_are_exported() {
        let metrics = Metrics::new().unwrap();
        metrics.reconciled(ReconcileResult::Applied, Duration::from_millis(30));
        metrics.reconciled(ReconcileResult::Applied, Duration::from_millis(30));
        metrics.reconciled(ReconcileResult::Error, Duration::from_secs(2));
        metrics.failed("apply");
        metrics.leader.set(1);
        metrics.reconciled_user(ReconcileResult::Invalid);
        metrics.pushed("ok");
        let text = metrics.render();
        for line in [
            "kubemqtt_operator_reconciles_total{result=\"applied\"} 2",
            "kubemqtt_operator_reconciles_total{result=\"error\"} 1",
            "kubemqtt_operator_reconcile_errors_total{stage=\"apply\"} 1",
            "kubemqtt_operator_reconcile_duration_seconds_count 3",
            "kubemqtt_operator_reconcile_duration_seconds_bucket{le=\"0.05\"} 2",
            "kubemqtt_operator_leader 1",
            "kubemqtt_operator_user_reconciles_total{result=\"invalid\"} 1",
            "kubemqtt_operator_credential_pushes_total{result=\"ok\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing `{line}` in:\n{text}"
            );
        }
    }
}
