//! Shared counters, latency histograms and the final report.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;

/// Largest latency the histograms track, in microseconds (one hour);
/// larger values are recorded as this.
const MAX_TRACKED_US: u64 = 3_600_000_000;

/// How many distinct error messages a report quotes.
const MAX_ERROR_SAMPLES: usize = 5;

/// Counters updated by every connection task of a run and read by the
/// progress line and the final report.
#[derive(Debug)]
pub struct Counters {
    origin: Instant,
    /// PUBLISH packets written to the socket.
    pub sent: AtomicU64,
    /// QoS 1/2 PUBLISHes completed (PUBACK or PUBCOMP received).
    pub acked: AtomicU64,
    /// PUBLISH packets received by subscribers.
    pub delivered: AtomicU64,
    /// Connections whose CONNACK accepted them.
    pub connected: AtomicU64,
    /// Connections that failed to open, were refused, or timed out.
    pub connect_failures: AtomicU64,
    last_send_ns: AtomicU64,
    last_delivery_ns: AtomicU64,
}

impl Counters {
    /// Zeroed counters; times are measured from `origin`.
    pub fn new(origin: Instant) -> Counters {
        Counters {
            origin,
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            connected: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            last_send_ns: AtomicU64::new(0),
            last_delivery_ns: AtomicU64::new(0),
        }
    }

    /// Counts `n` PUBLISHes written now.
    pub fn add_sent(&self, n: u64) {
        self.sent.fetch_add(n, Ordering::Relaxed);
        self.last_send_ns
            .fetch_max(self.elapsed_ns(), Ordering::Relaxed);
    }

    /// Counts `n` PUBLISHes received now.
    pub fn add_delivered(&self, n: u64) {
        self.delivered.fetch_add(n, Ordering::Relaxed);
        self.last_delivery_ns
            .fetch_max(self.elapsed_ns(), Ordering::Relaxed);
    }

    /// Time from `origin` to the last PUBLISH sent.
    pub fn last_send(&self) -> Duration {
        Duration::from_nanos(self.last_send_ns.load(Ordering::Relaxed))
    }

    /// Time from `origin` to the last PUBLISH delivered.
    pub fn last_delivery(&self) -> Duration {
        Duration::from_nanos(self.last_delivery_ns.load(Ordering::Relaxed))
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    fn elapsed_ns(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// Errors seen during a run: a count and the first few distinct messages.
#[derive(Debug, Default)]
pub struct ErrorLog {
    count: AtomicU64,
    samples: Mutex<Vec<String>>,
}

impl ErrorLog {
    /// Counts one error, keeping its message if it is new and there is room.
    pub fn record(&self, message: String) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut samples = self.samples.lock();
        if samples.len() < MAX_ERROR_SAMPLES && !samples.contains(&message) {
            samples.push(message);
        }
    }

    /// Number of errors recorded.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The distinct messages kept.
    pub fn samples(&self) -> Vec<String> {
        self.samples.lock().clone()
    }
}

/// A latency histogram shared by many tasks, in microseconds.
pub struct Latencies {
    histogram: Mutex<Histogram<u64>>,
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies::new()
    }
}

impl Latencies {
    /// An empty histogram, 1 µs to 1 h at three significant digits.
    pub fn new() -> Latencies {
        let histogram = Histogram::new_with_bounds(1, MAX_TRACKED_US, 3)
            .expect("constant histogram bounds are valid");
        Latencies {
            histogram: Mutex::new(histogram),
        }
    }

    /// Records a batch of samples in microseconds under one lock.
    pub fn record_us(&self, samples: &[u64]) {
        let mut histogram = self.histogram.lock();
        for &us in samples {
            histogram.saturating_record(us.clamp(1, MAX_TRACKED_US));
        }
    }

    /// Records one duration.
    pub fn record(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.record_us(&[us]);
    }

    /// The summary, or `None` when nothing was recorded.
    pub fn percentiles(&self) -> Option<Percentiles> {
        let h = self.histogram.lock();
        if h.is_empty() {
            return None;
        }
        Some(Percentiles {
            count: h.len(),
            min_us: h.min(),
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        })
    }
}

/// Latency summary in microseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Percentiles {
    /// Number of samples.
    pub count: u64,
    /// Smallest sample.
    pub min_us: u64,
    /// Arithmetic mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest sample.
    pub max_us: u64,
}

impl Percentiles {
    fn render(&self) -> String {
        format!(
            "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  ({} samples)",
            format_us(self.p50_us),
            format_us(self.p90_us),
            format_us(self.p99_us),
            format_us(self.p999_us),
            format_us(self.max_us),
            self.count
        )
    }
}

/// The outcome of one run, printed as text or JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The client library that generated the load: `kubemqtt-bench` or
    /// `rumqttc`.
    pub generator: String,
    /// `conn`, `pub`, `sub`, `p2p`, `fanout` or `fanin`.
    pub scenario: String,
    /// The broker address used (by the publishers, when `sub_broker` is
    /// given).
    pub broker: String,
    /// The subscribers' broker address, when it is not `broker`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub_broker: Option<String>,
    /// QoS of the PUBLISHes (absent for `conn`).
    pub qos: Option<u8>,
    /// Publishing clients.
    pub publishers: usize,
    /// Subscribing clients.
    pub subscribers: usize,
    /// Payload size in bytes.
    pub payload_bytes: usize,
    /// Connections accepted by the broker.
    pub connections: u64,
    /// Connections refused, failed or timed out.
    pub connect_failures: u64,
    /// TCP connect + CONNECT/CONNACK time.
    pub connect_latency: Option<Percentiles>,
    /// From the start of publishing to the last PUBLISH sent, in seconds
    /// (for `conn` and `sub`: how long connections were held).
    pub duration_secs: f64,
    /// PUBLISHes sent.
    pub sent: u64,
    /// `sent / duration_secs`.
    pub sent_per_sec: f64,
    /// QoS 1/2 PUBLISHes acknowledged by the broker.
    pub acked: u64,
    /// PUBLISHes received by the subscribers.
    pub delivered: Option<u64>,
    /// `delivered` over the time from the start of publishing to the last
    /// delivery.
    pub delivered_per_sec: Option<f64>,
    /// Deliveries expected (sent times the subscribers each message reaches).
    pub expected: Option<u64>,
    /// `expected - delivered` (negative when duplicates arrived).
    pub loss: Option<i64>,
    /// `100 * delivered / expected`.
    pub delivered_pct: Option<f64>,
    /// Deliveries of a message the same subscriber (or the same shared
    /// group) had already received; absent when payloads are too short to
    /// carry message identities.
    pub duplicates: Option<u64>,
    /// QoS 1/2 runs: acknowledged PUBLISHes that did not reach a subscriber
    /// online the whole run, see [`acked_not_delivered`].
    pub acked_not_delivered: Option<u64>,
    /// End-to-end latency from the send time stamped in each payload.
    pub latency: Option<Percentiles>,
    /// Received PUBLISHes too short to carry a time stamp.
    pub unstamped: u64,
    /// Errors (failed connections excluded).
    pub errors: u64,
    /// The first distinct error messages.
    pub error_samples: Vec<String>,
}

impl Report {
    /// Human-readable, one aspect per line.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        if self.publishers + self.subscribers == 0 {
            let _ = writeln!(out, "{} against {}", self.scenario, self.broker);
        } else {
            let qos = self.qos.map(|q| format!("  QoS {q}")).unwrap_or_default();
            let brokers = match &self.sub_broker {
                Some(sub) => format!("{} (subscribers on {sub})", self.broker),
                None => self.broker.clone(),
            };
            let _ = writeln!(
                out,
                "{} against {}{}  {} publishers -> {} subscribers  payload {} B",
                self.scenario, brokers, qos, self.publishers, self.subscribers, self.payload_bytes
            );
        }
        let _ = write!(
            out,
            "connections  {} ok, {} failed",
            self.connections, self.connect_failures
        );
        if let Some(p) = &self.connect_latency {
            let _ = write!(out, "; connect {}", p.render());
        }
        out.push('\n');
        if self.publishers > 0 {
            let _ = write!(
                out,
                "sent         {} in {:.2} s = {} msg/s",
                self.sent,
                self.duration_secs,
                format_rate(self.sent_per_sec)
            );
            if self.qos.is_some_and(|q| q > 0) {
                let _ = write!(out, " ({} acknowledged)", self.acked);
            }
            out.push('\n');
        } else {
            let _ = writeln!(out, "held         {:.2} s", self.duration_secs);
        }
        if let (Some(delivered), Some(rate)) = (self.delivered, self.delivered_per_sec) {
            let _ = write!(
                out,
                "delivered    {delivered} = {} msg/s",
                format_rate(rate)
            );
            if let (Some(expected), Some(loss), Some(pct)) =
                (self.expected, self.loss, self.delivered_pct)
            {
                let _ = write!(
                    out,
                    "; expected {expected}, loss {loss} ({pct:.2} % delivered)"
                );
            }
            if let Some(duplicates) = self.duplicates.filter(|&d| d > 0) {
                let _ = write!(out, "; {duplicates} duplicates");
            }
            out.push('\n');
        }
        if let Some(missing) = self.acked_not_delivered {
            let _ = writeln!(
                out,
                "acked, not delivered  {missing} (acknowledged to the publishers, never received by a subscriber)"
            );
        }
        if let Some(p) = &self.latency {
            let _ = writeln!(out, "latency      {}", p.render());
        }
        if self.unstamped > 0 {
            let _ = writeln!(
                out,
                "unstamped    {} (payloads without a send time)",
                self.unstamped
            );
        }
        let _ = writeln!(out, "errors       {}", self.errors);
        for sample in &self.error_samples {
            let _ = writeln!(out, "  {sample}");
        }
        out
    }
}

/// Acknowledged PUBLISHes that never reached their subscribers: each
/// acknowledged message should reach `fan_out` subscribers, so this is
/// `acked × fan_out − (delivered − duplicates)`, never negative.
///
/// It counts deliveries, not which message each one was: a message that
/// was delivered but whose acknowledgement was still outstanding when the
/// run ended makes up for one that was acknowledged and lost. The drain
/// after publishing (waiting for every acknowledgement) makes that rare.
pub fn acked_not_delivered(acked: u64, fan_out: u64, delivered: u64, duplicates: u64) -> u64 {
    acked
        .saturating_mul(fan_out)
        .saturating_sub(delivered.saturating_sub(duplicates))
}

/// `1234` -> `1.23 ms`, `950` -> `950 µs`, `2_500_000` -> `2.50 s`.
pub fn format_us(us: u64) -> String {
    if us < 1_000 {
        format!("{us} µs")
    } else if us < 1_000_000 {
        format!("{:.2} ms", us as f64 / 1e3)
    } else {
        format!("{:.2} s", us as f64 / 1e6)
    }
}

/// Messages per second without a fractional part below 10, so `0.5`, `12`.
pub fn format_rate(rate: f64) -> String {
    if rate < 10.0 {
        format!("{rate:.1}")
    } else {
        format!("{rate:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_report() -> Report {
        Report {
            generator: "kubemqtt-bench".into(),
            scenario: "p2p".into(),
            broker: "127.0.0.1:1883".into(),
            sub_broker: None,
            qos: Some(1),
            publishers: 2,
            subscribers: 2,
            payload_bytes: 16,
            connections: 4,
            connect_failures: 0,
            connect_latency: None,
            duration_secs: 2.0,
            sent: 200,
            sent_per_sec: 100.0,
            acked: 200,
            delivered: Some(198),
            delivered_per_sec: Some(99.0),
            expected: Some(200),
            loss: Some(2),
            delivered_pct: Some(99.0),
            duplicates: Some(0),
            acked_not_delivered: Some(2),
            latency: None,
            unstamped: 0,
            errors: 1,
            error_samples: vec!["publisher 1: connection closed by the broker".into()],
        }
    }

    #[test]
    fn percentiles_come_from_the_recorded_samples() {
        let l = Latencies::new();
        assert_eq!(l.percentiles(), None);
        let samples: Vec<u64> = (1..=1000).collect();
        l.record_us(&samples);
        l.record(Duration::from_millis(50));
        let p = l.percentiles().unwrap();
        assert_eq!(p.count, 1001);
        assert_eq!(p.min_us, 1);
        // Three significant digits: values are exact below 2048.
        assert_eq!(p.p50_us, 501);
        assert_eq!(p.p90_us, 901);
        assert_eq!(p.p99_us, 991);
        assert_eq!(p.p999_us, 1000);
        assert!((49_950..=50_050).contains(&p.max_us), "{}", p.max_us);
    }

    #[test]
    fn out_of_range_samples_are_clamped() {
        let l = Latencies::new();
        l.record_us(&[0, u64::MAX]);
        let p = l.percentiles().unwrap();
        assert_eq!(p.min_us, 1);
        assert!(p.max_us >= MAX_TRACKED_US);
    }

    #[test]
    fn counters_track_totals_and_last_times() {
        let c = Counters::new(Instant::now());
        c.add_sent(3);
        c.add_sent(2);
        c.add_delivered(4);
        assert_eq!(Counters::get(&c.sent), 5);
        assert_eq!(Counters::get(&c.delivered), 4);
        assert!(c.last_send() > Duration::ZERO);
        assert!(c.last_delivery() >= c.last_send());
    }

    #[test]
    fn error_log_counts_all_and_keeps_distinct_samples() {
        let log = ErrorLog::default();
        for i in 0..10 {
            log.record(format!("error {}", i % 7));
        }
        log.record("error 0".into());
        assert_eq!(log.count(), 11);
        assert_eq!(
            log.samples(),
            ["error 0", "error 1", "error 2", "error 3", "error 4"]
        );
    }

    #[test]
    fn acked_not_delivered_counts_each_subscriber_a_message_should_reach() {
        // p2p: 100 acknowledged, 98 delivered.
        assert_eq!(acked_not_delivered(100, 1, 98, 0), 2);
        // Fan-out to 10: 100 acknowledged should make 1,000 deliveries.
        assert_eq!(acked_not_delivered(100, 10, 990, 0), 10);
        assert_eq!(acked_not_delivered(100, 10, 1_000, 0), 0);
        // Duplicates do not make up for a missing message.
        assert_eq!(acked_not_delivered(100, 1, 100, 3), 3);
        // Unacknowledged messages delivered (sent > acked): never negative.
        assert_eq!(acked_not_delivered(100, 1, 120, 0), 0);
        assert_eq!(acked_not_delivered(0, 1, 0, 5), 0);
        assert_eq!(acked_not_delivered(u64::MAX, 10, 0, 0), u64::MAX);
    }

    #[test]
    fn durations_and_rates_are_formatted_with_units() {
        assert_eq!(format_us(950), "950 µs");
        assert_eq!(format_us(1_234), "1.23 ms");
        assert_eq!(format_us(2_500_000), "2.50 s");
        assert_eq!(format_rate(0.5), "0.5");
        assert_eq!(format_rate(12_345.6), "12346");
    }

    #[test]
    fn text_report_shows_rates_loss_and_errors() {
        let mut report = sample_report();
        report.latency = Some(Percentiles {
            count: 198,
            min_us: 100,
            mean_us: 300.0,
            p50_us: 250,
            p90_us: 900,
            p99_us: 1_500,
            p999_us: 2_000,
            max_us: 2_000,
        });
        let text = report.to_text();
        assert!(text.contains("p2p against 127.0.0.1:1883  QoS 1  2 publishers -> 2 subscribers"));
        assert!(text.contains("sent         200 in 2.00 s = 100 msg/s (200 acknowledged)"));
        assert!(
            text.contains("delivered    198 = 99 msg/s; expected 200, loss 2 (99.00 % delivered)")
        );
        assert!(text.contains("acked, not delivered  2 (acknowledged"));
        assert!(!text.contains("duplicates"), "none to report");
        report.duplicates = Some(3);
        assert!(report
            .to_text()
            .contains("(99.00 % delivered); 3 duplicates\n"));
        assert!(text.contains("latency      p50 250 µs  p90 900 µs  p99 1.50 ms  p99.9 2.00 ms"));
        assert!(text.contains("errors       1\n  publisher 1: connection closed by the broker\n"));
    }

    #[test]
    fn json_report_uses_stable_field_names() {
        let value = serde_json::to_value(sample_report()).unwrap();
        assert_eq!(value["scenario"], "p2p");
        assert_eq!(value["sent_per_sec"], 100.0);
        assert_eq!(value["delivered"], 198);
        assert_eq!(value["loss"], 2);
        assert_eq!(value["generator"], "kubemqtt-bench");
        assert_eq!(value["acked_not_delivered"], 2);
        assert_eq!(value["duplicates"], 0);
        assert_eq!(value["latency"], serde_json::Value::Null);
        assert_eq!(
            value["error_samples"][0],
            "publisher 1: connection closed by the broker"
        );
    }
}
