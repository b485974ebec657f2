//! The four things every sink must survive, as functions over a [`Probe`]
//! (what the test sees of the sink):
//!
//! 1. [`mapping`]: messages arrive with the route's mapping applied;
//! 2. [`sink_restart`]: the sink stops mid-stream and comes back; every
//!    message the broker acknowledged to the device arrives;
//! 3. [`bridge_kill`]: the bridge is killed (SIGKILL) mid-stream and
//!    restarted; the same;
//! 4. [`poison`]: messages the route or the sink refuses go to the
//!    dead-letter destination, and the stream continues.
//!
//! Duplicates are allowed only where the sink cannot deduplicate, and then
//! no more than the bridge counted (redelivered by the broker, or resent
//! after a failed write).

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kubemqtt_bridge::mqtt::Outbound;
use serde_json::Value;

use super::*;

/// What a test sees of a sink.
pub trait Probe {
    /// The `[routes.sink.<kind>]` table of the route.
    fn sink_toml(&self) -> String;
    /// The `dead_letter` value; default: an MQTT topic on the source.
    fn dead_letter_toml(&self) -> String {
        "{ mqtt_topic = \"bridge/dead/readings\" }".into()
    }
    /// Whether the sink drops a message it already has.
    fn deduplicates(&self) -> bool;
    /// Everything the sink holds, duplicates included, as JSON objects
    /// with the mapped fields.
    fn rows(&mut self) -> impl Future<Output = Vec<Value>>;
    /// Stops the sink's server.
    fn stop(&mut self) -> impl Future<Output = ()>;
    /// Starts it again.
    fn start(&mut self) -> impl Future<Output = ()>;
    /// Messages this route or sink refuses for good.
    fn poison(&self) -> Vec<Outbound>;
    /// Dead letters stored in the sink's own database, when the
    /// destination is a table (`None`: an MQTT topic).
    fn dead_letters(&mut self) -> impl Future<Output = Option<usize>> {
        async { None }
    }
}

/// The source broker, the bridge and a subscriber on the dead-letter topic.
pub struct Harness {
    pub broker: SourceBroker,
    pub bridge: Bridge,
    pub dead: Collector,
    _dir: tempfile::TempDir,
}

/// The source broker over TLS: the broker's listener, and the `tls` table
/// the bridge reaches it with.
pub struct SourceTls<'a> {
    pub server: &'a pki::ServerTls,
    pub client: &'a pki::ClientTls,
}

impl Harness {
    pub async fn start(probe: &impl Probe) -> Harness {
        Harness::start_with(probe, None).await
    }

    /// [`Harness::start`]; with `source`, the bridge reaches the broker
    /// over TLS (devices and the dead-letter subscriber stay on the plain
    /// listener).
    pub async fn start_with(probe: &impl Probe, source: Option<SourceTls<'_>>) -> Harness {
        let broker = SourceBroker::start_with(source.as_ref().map(|s| s.server));
        let dead = Collector::start(broker.port, "bridge/dead/#").await;
        let dir = tempfile::tempdir().expect("a temp dir");
        let head = match (&source, broker.tls_port) {
            (Some(source), Some(tls_port)) => {
                format!("{}tls = {}\n", head(tls_port), source.client.toml())
            }
            _ => head(broker.port),
        };
        let config = format!(
            "{head}\n{}{}\n",
            route(&probe.dead_letter_toml()),
            probe.sink_toml()
        );
        let bridge = tokio::task::block_in_place(|| Bridge::start(dir.path(), &config));
        Harness {
            broker,
            bridge,
            dead,
            _dir: dir,
        }
    }
}

fn id_of(row: &Value) -> Option<i64> {
    row.get("id").and_then(Value::as_i64)
}

/// Waits until the sink holds every id in `ids`; returns all rows.
pub async fn wait_for_ids(
    probe: &mut impl Probe,
    ids: std::ops::Range<i64>,
    harness: &Harness,
) -> Vec<Value> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let rows = probe.rows().await;
        let have: BTreeSet<i64> = rows.iter().filter_map(id_of).collect();
        let missing: Vec<i64> = ids.clone().filter(|id| !have.contains(id)).collect();
        if missing.is_empty() {
            return rows;
        }
        if Instant::now() > deadline {
            panic!(
                "{} of {} messages missing (first: {:?}); status {}\n--- bridge log ---\n{}",
                missing.len(),
                ids.end - ids.start,
                &missing[..missing.len().min(10)],
                harness.bridge.status(),
                harness.bridge.log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn same(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => (x - y).abs() < 1e-9,
        _ => a == b,
    }
}

/// 1. The mapping is applied.
pub async fn mapping(probe: impl Probe) {
    mapping_with(probe, None).await;
}

/// [`mapping`], the bridge reaching the source broker over TLS when
/// `source` says so.
pub async fn mapping_with(mut probe: impl Probe, source: Option<SourceTls<'_>>) {
    let harness = Harness::start_with(&probe, source).await;
    let device = device(harness.broker.port);
    for id in 0..30 {
        device
            .publish(reading(id))
            .await
            .expect("the broker acknowledges");
    }
    let rows = wait_for_ids(&mut probe, 0..30, &harness).await;
    for id in 0..30 {
        let row = rows.iter().find(|r| id_of(r) == Some(id)).expect("a row");
        let expected = mapped(id);
        for (field, value) in expected.as_object().expect("an object") {
            assert!(
                row.get(field).is_some_and(|got| same(got, value)),
                "id {id}: {field} is {:?}, expected {value} (row {row})",
                row.get(field)
            );
        }
    }
    // `forwarded` counts a batch once the sink confirmed it, which may be
    // after the rows show.
    let status = harness
        .bridge
        .wait_for_status("30 forwarded", |s| s["forwarded"].as_u64() >= Some(30))
        .await;
    assert_eq!(status["forwarded"], 30, "{status}");
}

/// A device publishing readings 0, 1, 2, … one about every [`GAP`] in the
/// background, as many as the test allows: the stream is still flowing
/// whenever the test stops something, however slow the machine, and never
/// outgrows what the source broker queues for a bridge that is down (1000
/// messages by default; more would be dropped there, not by the bridge).
pub struct Stream {
    /// How many readings the broker acknowledged (ids `0..published`).
    published: Arc<AtomicI64>,
    allowed: tokio::sync::watch::Sender<i64>,
    task: tokio::task::JoinHandle<()>,
}

impl Stream {
    /// Starts publishing, up to `allowed` readings for now.
    pub fn start(port: u16, allowed: i64) -> Stream {
        let published = Arc::new(AtomicI64::new(0));
        let (allowed, mut allowance) = tokio::sync::watch::channel(allowed);
        let count = published.clone();
        let task = tokio::spawn(async move {
            let device = device(port);
            let mut id = 0;
            loop {
                while id >= *allowance.borrow_and_update() {
                    if allowance.changed().await.is_err() {
                        return; // finished
                    }
                }
                device
                    .publish(reading(id))
                    .await
                    .expect("the broker acknowledges");
                id += 1;
                count.store(id, Ordering::SeqCst);
                tokio::time::sleep(GAP).await;
            }
        });
        Stream {
            published,
            allowed,
            task,
        }
    }

    pub fn published(&self) -> i64 {
        self.published.load(Ordering::SeqCst)
    }

    /// Allows `more` readings, and waits until they are all published.
    pub async fn advance(&self, more: i64, what: &str) {
        self.allowed.send_modify(|allowed| *allowed += more);
        let target = *self.allowed.borrow();
        let deadline = Instant::now() + PATIENCE;
        while self.published() < target {
            assert!(!self.task.is_finished(), "the device stopped publishing");
            assert!(
                Instant::now() < deadline,
                "{what}: {} of {target} readings published",
                self.published()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Publishes what is allowed and stops; returns how many readings
    /// were published (ids `0..n`, each acknowledged by the broker).
    pub async fn finish(self) -> i64 {
        drop(self.allowed);
        self.task.await.expect("every reading acknowledged");
        self.published.load(Ordering::SeqCst)
    }
}

/// Every id once, or more only where the bridge counted a redelivery or
/// a resend.
fn check_duplicates(probe: &impl Probe, rows: &[Value], harness: &Harness) {
    let unique: BTreeSet<i64> = rows.iter().filter_map(id_of).collect();
    let duplicates = rows.len() - unique.len();
    let status = harness.bridge.status();
    if probe.deduplicates() {
        assert_eq!(
            duplicates, 0,
            "a deduplicating sink holds duplicates; status {status}"
        );
    } else {
        let counted = status["redelivered"].as_u64().unwrap_or(0)
            + status["routes"]["readings"]["resent"].as_u64().unwrap_or(0);
        assert!(
            duplicates as u64 <= counted,
            "{duplicates} duplicates, but the bridge counted {counted}: {status}"
        );
    }
    eprintln!(
        "{} rows, {duplicates} duplicates; status {status}",
        rows.len()
    );
}

const GAP: Duration = Duration::from_millis(3);
/// Readings the sink must hold before something is stopped: the stream
/// is flowing through the bridge.
const FLOWING: i64 = 20;
/// Readings allowed beyond those while the stop takes effect (a slow
/// `rabbitmqctl stop_app` finds the stream paused after them).
const LEAD: i64 = 200;
/// Readings published while the sink or the bridge is down, and after it
/// is back.
const WHILE_DOWN: i64 = 100;
const AFTER: i64 = 50;
/// How long the sink stays down at least: a client that buffers through
/// a reconnect (NATS's) shows the outage only as a batch that waited
/// longer than a second.
const OUTAGE: Duration = Duration::from_millis(1500);

/// 2. The sink stops mid-stream and restarts: once the stream flows into
///    the sink, the sink's server is stopped (and is down when `stop`
///    returns), readings go on while it is down, then it starts again and
///    the stream goes on.
pub async fn sink_restart(mut probe: impl Probe) {
    let harness = Harness::start(&probe).await;
    let stream = Stream::start(harness.broker.port, FLOWING + LEAD);
    wait_for_ids(&mut probe, 0..FLOWING, &harness).await;
    probe.stop().await;
    let down = Instant::now();
    stream.advance(WHILE_DOWN, "while the sink is down").await;
    tokio::time::sleep(OUTAGE.saturating_sub(down.elapsed())).await;
    eprintln!(
        "the sink was down for {:?}; {} readings published so far",
        down.elapsed(),
        stream.published()
    );
    probe.start().await;
    stream.advance(AFTER, "after the sink is back").await;
    let published = stream.finish().await;
    let rows = wait_for_ids(&mut probe, 0..published, &harness).await;
    // The outage showed: writes failed, or (a client that buffers through
    // a reconnect, like NATS's) a batch waited for the sink for a second.
    let status = harness.bridge.status();
    let metrics = harness.bridge.metrics();
    let sample = |name: &str| {
        metrics
            .lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let slow_batches = sample("kubemqtt_bridge_batch_seconds_count{")
        - sample("kubemqtt_bridge_batch_seconds_bucket{route=\"readings\",le=\"1\"}");
    assert!(
        status["failed"].as_u64().unwrap_or(0) > 0 || slow_batches > 0.0,
        "the sink was down, yet no write failed or waited: {status}"
    );
    check_duplicates(&probe, &rows, &harness);
}

/// 3. The bridge is killed (SIGKILL) mid-stream, once the stream flows
///    into the sink; readings go on while it is dead, then it is
///    restarted and the stream goes on.
pub async fn bridge_kill(mut probe: impl Probe) {
    let mut harness = Harness::start(&probe).await;
    let stream = Stream::start(harness.broker.port, FLOWING + LEAD);
    wait_for_ids(&mut probe, 0..FLOWING, &harness).await;
    harness.bridge.kill9();
    stream.advance(WHILE_DOWN, "while the bridge is dead").await;
    tokio::task::block_in_place(|| harness.bridge.restart());
    stream.advance(AFTER, "after the bridge is back").await;
    let published = stream.finish().await;
    let rows = wait_for_ids(&mut probe, 0..published, &harness).await;
    check_duplicates(&probe, &rows, &harness);
}

/// 4. Poison messages go to the dead-letter destination; the stream
///    goes on.
pub async fn poison(mut probe: impl Probe) {
    let harness = Harness::start(&probe).await;
    let device = device(harness.broker.port);
    let poison = probe.poison();
    assert!(!poison.is_empty());
    for id in 0..10 {
        device.publish(reading(id)).await.expect("acknowledged");
    }
    for message in &poison {
        device.publish(message.clone()).await.expect("acknowledged");
    }
    for id in 10..20 {
        device.publish(reading(id)).await.expect("acknowledged");
    }
    wait_for_ids(&mut probe, 0..20, &harness).await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let stored = match probe.dead_letters().await {
            Some(count) => count,
            None => {
                let dead = harness.dead.json();
                for record in &dead {
                    assert_eq!(record["route"], "readings", "{record}");
                    assert!(
                        record["error"].as_str().is_some_and(|e| !e.is_empty()),
                        "{record}"
                    );
                    assert!(record["topic"].as_str().is_some(), "{record}");
                }
                dead.len()
            }
        };
        if stored == poison.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{stored} of {} poison messages dead-lettered; status {}\n{}",
            poison.len(),
            harness.bridge.status(),
            harness.bridge.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The counters follow the sink's and the dead-letter destination's
    // confirmations, which may come after the messages show.
    let expected = 20 + poison.len() as u64;
    let status = harness
        .bridge
        .wait_for_status("every message forwarded or dead-lettered", |s| {
            let count = |name: &str| s[name].as_u64().unwrap_or(0);
            count("forwarded") + count("deadLettered") >= expected
        })
        .await;
    assert_eq!(
        status["deadLettered"].as_u64(),
        Some(poison.len() as u64),
        "{status}"
    );
    assert_eq!(status["forwarded"].as_u64(), Some(20), "{status}");
    assert!(
        status["lastError"]["message"].as_str().is_some(),
        "{status}"
    );
}

/// A message whose mapping fails (`'hot' * 9`): refused by the route.
pub fn unmappable(id: i64) -> Outbound {
    let mut message = reading(id);
    message.payload = bytes::Bytes::from(format!("{{\"id\": {id}, \"temp\": \"hot\"}}"));
    message
}
