//! How many devices of a fleet are online: each broker pod's `/metrics`
//! (`kubemqtt_fleet_devices_online`), summed.

use std::future::Future;
use std::pin::Pin;

use kube::ResourceExt;

use super::FleetContext;
use crate::api::MqttBroker;
use crate::plan::HTTP_PORT;

/// A future of one pod's `/metrics` text.
pub type MetricsFuture = Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;

/// Reads a broker pod's `/metrics` (tests answer without a network).
pub trait MetricsReader: Send + Sync {
    fn read(&self, host: String) -> MetricsFuture;
}

/// Reads `/metrics` over HTTP on the broker's HTTP port.
pub struct HttpMetricsReader;

impl MetricsReader for HttpMetricsReader {
    fn read(&self, host: String) -> MetricsFuture {
        Box::pin(async move {
            crate::controller::pod_http::get_body(&host, HTTP_PORT, "/metrics").await
        })
    }
}

/// The devices online of `fleet` in a Prometheus text exposition.
pub fn devices_online(metrics: &str, fleet: &str) -> Option<i64> {
    let sample = format!("kubemqtt_fleet_devices_online{{fleet=\"{fleet}\"}} ");
    metrics.lines().find_map(|line| {
        line.strip_prefix(&sample)?
            .trim()
            .parse::<f64>()
            .ok()
            .map(|v| v as i64)
    })
}

/// Devices online, summed over the broker's pods that answered; `None`
/// when none did.
pub(super) async fn online(ctx: &FleetContext, broker: &MqttBroker, fleet: &str) -> Option<i64> {
    let namespace = broker.namespace().unwrap_or_default();
    let name = broker.name_any();
    let mut total = None;
    for ordinal in 0..broker.spec.replicas.max(0) {
        let host = format!("{name}-{ordinal}.{name}-headless.{namespace}.svc");
        match ctx.metrics.read(host).await {
            Ok(text) => {
                if let Some(n) = devices_online(&text, fleet) {
                    total = Some(total.unwrap_or(0) + n);
                }
            }
            Err(error) => tracing::debug!(%error, "broker pod metrics"),
        }
    }
    total
}
