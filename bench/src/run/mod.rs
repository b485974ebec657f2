//! Running a workload: connecting clients at a paced rate, publishing and
//! receiving, draining what is still in flight, and building the report.
//!
//! The phases live here, the clients in a [`Driver`]: [`builtin`] speaks
//! MQTT with the crate's own codec, `crate::rumqttc` through the rumqttc
//! library. Both feed the same [`Shared`] counters, so their reports have
//! the same fields and mean the same things.
//!
//! Every task and every wait here has its own deadline derived from the
//! command line, so a broker that stops answering ends the run with errors
//! instead of hanging it.

pub mod builtin;
mod conn;
mod shared;

use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::client::ClientOptions;
use crate::codec::QoS;
use crate::stats::{Counters, Report};
use crate::template::TopicTemplate;

pub use conn::run_conn;
pub use shared::Shared;

/// How often the waits below check their condition.
const POLL: Duration = Duration::from_millis(50);

/// Extra time granted to tasks to wind down after they were told to stop.
pub const WIND_DOWN: Duration = Duration::from_secs(5);

/// Delay between "everyone is connected" and the first PUBLISH, so that
/// every publisher sees the start time before it passes.
const START_DELAY: Duration = Duration::from_millis(20);

/// Sleeps until a `std::time::Instant`.
pub async fn sleep_until(at: Instant) {
    tokio::time::sleep_until(at.into()).await;
}

/// Settings shared by every scenario.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How each client connects; `client.addr` is the publishers' broker.
    pub client: ClientOptions,
    /// The subscribers' broker: `client.addr` unless the run puts them on
    /// another node of a cluster (`--sub-broker`).
    pub sub_addr: SocketAddr,
    /// New connections per second; 0 opens them all at once.
    pub conn_rate: f64,
    /// Client identifiers are `<prefix>-p<i>`, `<prefix>-s<i>`, `<prefix>-c<i>`.
    pub client_prefix: String,
    /// Print a progress line on standard error every second.
    pub progress: bool,
}

/// A publish/subscribe workload.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Name in the report.
    pub scenario: &'static str,
    /// Number of publishing clients.
    pub publishers: usize,
    /// Number of subscribing clients.
    pub subscribers: usize,
    /// Topic of each publisher (`%i` is the publisher index, `%p` the
    /// client prefix).
    pub topic: TopicTemplate,
    /// Filter of each subscriber (`%i` is the subscriber index).
    pub filter: TopicTemplate,
    /// QoS of the PUBLISHes.
    pub pub_qos: QoS,
    /// QoS requested in the SUBSCRIBEs.
    pub sub_qos: QoS,
    /// Payload size in bytes, at least [`crate::payload::STAMP_LEN`].
    pub payload_size: usize,
    /// Messages per second per publisher; 0 publishes flat out.
    pub rate: f64,
    /// Messages per publisher; publishing also stops after `duration`.
    pub count: Option<u64>,
    /// How long publishers publish (for subscribers alone: how long they
    /// listen).
    pub duration: Duration,
    /// QoS 1/2 PUBLISHes a publisher keeps unacknowledged at most.
    pub inflight: usize,
    /// After publishing: how long to wait for missing deliveries and
    /// acknowledgements.
    pub drain: Duration,
    /// Deliveries expected per message sent, when the scenario knows it.
    pub fan_out: Option<u64>,
}

impl Workload {
    /// Interval between two messages of one publisher at the fixed rate;
    /// `None` for flat out.
    pub fn interval(&self) -> Option<Duration> {
        (self.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / self.rate))
    }

    /// Messages of one publisher due by `now` when publishing started at
    /// `start` with `interval` between them and `sent` are out already:
    /// every message whose slot has come, so that bursts catch up after a
    /// late wake-up and the average rate holds. At least 1.
    pub fn due(interval: Duration, start: Instant, now: Instant, sent: u64) -> u64 {
        let elapsed = now.saturating_duration_since(start).as_secs_f64();
        ((elapsed / interval.as_secs_f64()) as u64 + 1)
            .saturating_sub(sent)
            .max(1)
    }
}

/// What every client of a run has: the run's state and settings, its
/// place in the run, and when it connects.
pub struct ClientJob {
    /// Counters, histograms and errors of the run.
    pub shared: Arc<Shared>,
    /// How to connect.
    pub settings: Arc<Settings>,
    /// What the run does.
    pub workload: Arc<Workload>,
    /// Index among the subscribers or among the publishers (stamped into
    /// a publisher's payloads).
    pub index: usize,
    /// When to connect.
    pub slot: Instant,
    /// Client identifier: `<prefix>-s<index>` or `<prefix>-p<index>`.
    pub client_id: String,
    /// Name in error messages: `subscriber <index>` or `publisher <index>`.
    pub who: String,
    /// How this client connects: the run's options, with the subscribers'
    /// broker address for a subscriber.
    pub options: ClientOptions,
}

/// Whether a client subscribes or publishes.
#[derive(Debug, Clone, Copy)]
enum Role {
    Subscriber,
    Publisher,
}

impl ClientJob {
    fn new(
        role: Role,
        index: usize,
        slot: Instant,
        shared: &Arc<Shared>,
        settings: &Arc<Settings>,
        workload: &Arc<Workload>,
    ) -> ClientJob {
        let (letter, kind, addr) = match role {
            Role::Subscriber => ('s', "subscriber", settings.sub_addr),
            Role::Publisher => ('p', "publisher", settings.client.addr),
        };
        ClientJob {
            shared: shared.clone(),
            settings: settings.clone(),
            workload: workload.clone(),
            index,
            slot,
            client_id: format!("{}-{letter}{index}", settings.client_prefix),
            who: format!("{kind} {index}"),
            options: ClientOptions {
                addr,
                ..settings.client.clone()
            },
        }
    }
}

/// One subscribing client of a run, handed to the [`Driver`].
pub struct SubscriberJob {
    /// Who it is and when it connects.
    pub common: ClientJob,
    /// Becomes `true` when the run is over.
    pub stop: watch::Receiver<bool>,
    /// Stop at the latest then, whatever happens.
    pub deadline: Instant,
}

impl SubscriberJob {
    /// The filter this subscriber subscribes to.
    pub fn filter(&self) -> String {
        let c = &self.common;
        c.workload
            .filter
            .render(c.index, &c.client_id, &c.settings.client_prefix)
    }
}

/// One publishing client of a run, handed to the [`Driver`].
pub struct PublisherJob {
    /// Who it is and when it connects.
    pub common: ClientJob,
    /// The common start time once everyone is connected; the sender is
    /// dropped without one if the run ends before it starts.
    pub start: watch::Receiver<Option<Instant>>,
}

impl PublisherJob {
    /// The topic this publisher publishes to.
    pub fn topic(&self) -> String {
        let c = &self.common;
        c.workload
            .topic
            .render(c.index, &c.client_id, &c.settings.client_prefix)
    }

    /// The last moment to wait for acknowledgements: the end of
    /// publishing plus the drain time.
    pub fn ack_deadline(&self, start: Instant) -> Instant {
        start + self.common.workload.duration + self.common.workload.drain
    }

    /// How long to wait for the start at most: everyone else connecting,
    /// plus one timeout.
    pub fn start_timeout(&self) -> Duration {
        let c = &self.common;
        connect_span(c.workload.publishers, &c.settings) + c.settings.client.timeout
    }
}

/// An MQTT client implementation running the clients of a workload.
///
/// A subscriber connects at its slot, subscribes, calls
/// [`Shared::settle`] once (SUBACK received, or failed), counts every
/// PUBLISH it receives with [`Shared::delivered`] until `stop` or its
/// deadline, and finally hands what it saw to [`Shared::deposit`].
///
/// A publisher connects at its slot, calls [`Shared::settle`] once
/// (connected or failed), waits for the start time, publishes stamped
/// payloads ([`crate::payload::put_stamped`]) counting each PUBLISH written
/// (`Counters::add_sent`) and each PUBACK/PUBCOMP received (`acked`), and
/// returns once every one is acknowledged or its ack deadline passed.
pub trait Driver {
    /// Name in the report's `generator` field.
    fn name(&self) -> &'static str;

    /// Runs one subscriber.
    fn subscriber(&self, job: SubscriberJob) -> impl Future<Output = ()> + Send + 'static;

    /// Runs one publisher.
    fn publisher(&self, job: PublisherJob) -> impl Future<Output = ()> + Send + 'static;
}

/// When the connection with this index may start: connections are spread
/// evenly at `rate` per second from `origin` (all at once for 0).
pub fn connect_slot(origin: Instant, index: usize, rate: f64) -> Instant {
    if rate > 0.0 {
        origin + Duration::from_secs_f64(index as f64 / rate)
    } else {
        origin
    }
}

/// Time to open `n` connections at `rate`, plus one connect timeout.
pub fn connect_span(n: usize, settings: &Settings) -> Duration {
    let paced = if settings.conn_rate > 0.0 {
        Duration::from_secs_f64(n as f64 / settings.conn_rate)
    } else {
        Duration::ZERO
    };
    paced + settings.client.timeout + Duration::from_secs(1)
}

/// Prints a progress line every second while enabled.
struct Progress {
    enabled: bool,
    /// Whether the run publishes or receives (else only connections count).
    traffic: bool,
    origin: Instant,
    next: Instant,
    last_sent: u64,
    last_delivered: u64,
}

impl Progress {
    fn new(enabled: bool, traffic: bool) -> Progress {
        let now = Instant::now();
        Progress {
            enabled,
            traffic,
            origin: now,
            next: now + Duration::from_secs(1),
            last_sent: 0,
            last_delivered: 0,
        }
    }

    fn tick(&mut self, shared: &Shared, phase: &str) {
        let now = Instant::now();
        if !self.enabled || now < self.next {
            return;
        }
        let c = &shared.counters;
        let (sent, delivered) = (Counters::get(&c.sent), Counters::get(&c.delivered));
        let mut line = format!(
            "[{:>5.1}s] {phase:<9} connected {} failed {}",
            now.duration_since(self.origin).as_secs_f64(),
            Counters::get(&c.connected),
            Counters::get(&c.connect_failures),
        );
        if self.traffic {
            let _ = write!(
                line,
                "  sent {sent} (+{}/s)  delivered {delivered} (+{}/s)",
                sent - self.last_sent,
                delivered - self.last_delivered,
            );
        }
        eprintln!("{line}  errors {}", shared.errors.count());
        self.last_sent = sent;
        self.last_delivered = delivered;
        self.next += Duration::from_secs(1);
        if self.next < now {
            self.next = now + Duration::from_secs(1);
        }
    }

    /// Waits while `busy()` holds and `deadline` is ahead, ticking.
    async fn wait_while(
        &mut self,
        shared: &Shared,
        phase: &str,
        deadline: Instant,
        mut busy: impl FnMut() -> bool,
    ) {
        while busy() && Instant::now() < deadline {
            sleep_until(deadline.min(Instant::now() + POLL)).await;
            self.tick(shared, phase);
        }
    }
}

/// Waits up to `within` for every task, then aborts those left; a task
/// that panicked is counted as an error.
async fn join_all(tasks: &mut JoinSet<()>, shared: &Shared, within: Duration) {
    let joined = tokio::time::timeout(within, async {
        while let Some(result) = tasks.join_next().await {
            if let Err(e) = result {
                shared.errors.record(format!("task failed: {e}"));
            }
        }
    })
    .await;
    if joined.is_err() {
        shared
            .errors
            .record(format!("{} clients did not stop in time", tasks.len()));
        tasks.abort_all();
    }
}

/// Runs a publish/subscribe workload with `driver`'s clients: connects the
/// subscribers and waits for their SUBACKs, connects the publishers, starts
/// them together, waits for them to finish and for the deliveries to
/// drain, and reports.
pub async fn run_load<D: Driver>(
    driver: &D,
    settings: Arc<Settings>,
    workload: Arc<Workload>,
) -> Report {
    let origin = Instant::now();
    let shared = Arc::new(Shared::new(origin));
    let mut progress = Progress::new(settings.progress, true);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (start_tx, start_rx) = watch::channel(None);
    let w = &workload;

    let sub_span = connect_span(w.subscribers, &settings);
    let pub_span = connect_span(w.publishers, &settings);
    // The last moment any subscriber may still be running, whatever happens:
    // every phase below at its longest.
    let hard_deadline =
        origin + sub_span + pub_span + START_DELAY + w.duration + 2 * (w.drain + WIND_DOWN);

    let mut subscribers = JoinSet::new();
    for index in 0..w.subscribers {
        let slot = connect_slot(origin, index, settings.conn_rate);
        subscribers.spawn(driver.subscriber(SubscriberJob {
            common: ClientJob::new(Role::Subscriber, index, slot, &shared, &settings, w),
            stop: stop_rx.clone(),
            deadline: hard_deadline,
        }));
    }
    progress
        .wait_while(&shared, "subscribe", origin + sub_span, || {
            shared.settled() < w.subscribers
        })
        .await;

    let pub_origin = Instant::now();
    let mut publishers = JoinSet::new();
    for index in 0..w.publishers {
        let slot = connect_slot(pub_origin, index, settings.conn_rate);
        publishers.spawn(driver.publisher(PublisherJob {
            common: ClientJob::new(Role::Publisher, index, slot, &shared, &settings, w),
            start: start_rx.clone(),
        }));
    }
    progress
        .wait_while(&shared, "connect", pub_origin + pub_span, || {
            shared.settled() < w.subscribers + w.publishers
        })
        .await;

    let start = Instant::now() + START_DELAY;
    // Publishers waiting for this are bounded by their own connection
    // timeout, so a send error (all of them gone) needs no handling.
    let _ = start_tx.send(Some(start));
    drop(start_tx);
    let run_end = start + w.duration;
    if w.publishers == 0 {
        progress
            .wait_while(&shared, "listen", run_end, || true)
            .await;
    } else {
        progress
            .wait_while(&shared, "publish", run_end + w.drain + WIND_DOWN, || {
                while let Some(result) = publishers.try_join_next() {
                    if let Err(e) = result {
                        shared.errors.record(format!("task failed: {e}"));
                    }
                }
                !publishers.is_empty()
            })
            .await;
    }
    join_all(&mut publishers, &shared, WIND_DOWN).await;

    let sent = Counters::get(&shared.counters.sent);
    let expected = w.fan_out.map(|fan_out| sent * fan_out);
    if let Some(expected) = expected.filter(|_| w.subscribers > 0) {
        let drain_end = Instant::now() + w.drain;
        progress
            .wait_while(&shared, "drain", drain_end, || {
                Counters::get(&shared.counters.delivered) < expected
            })
            .await;
    }
    // Receivers are gone only if every subscriber already ended.
    let _ = stop_tx.send(true);
    join_all(&mut subscribers, &shared, WIND_DOWN).await;

    shared.report(driver.name(), &settings, w, origin, start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_slots_are_spread_at_the_rate() {
        let origin = Instant::now();
        assert_eq!(connect_slot(origin, 0, 100.0), origin);
        assert_eq!(
            connect_slot(origin, 50, 100.0),
            origin + Duration::from_millis(500)
        );
        assert_eq!(connect_slot(origin, 1000, 0.0), origin, "rate 0: no pacing");
    }

    #[test]
    fn subscribers_connect_to_the_subscribers_broker() {
        let publishers = SocketAddr::from(([127, 0, 0, 1], 1883));
        let subscribers = SocketAddr::from(([127, 0, 0, 2], 1884));
        let settings = Arc::new(Settings {
            client: ClientOptions {
                addr: publishers,
                keep_alive: 30,
                clean_session: false,
                username: Some("u".into()),
                password: None,
                timeout: Duration::from_secs(1),
                max_packet_size: 1024,
            },
            sub_addr: subscribers,
            conn_rate: 0.0,
            client_prefix: "t".into(),
            progress: false,
        });
        let workload = Arc::new(Workload {
            scenario: "p2p",
            publishers: 1,
            subscribers: 1,
            topic: "t/%i".parse().expect("template"),
            filter: "t/%i".parse().expect("template"),
            pub_qos: QoS::AtLeastOnce,
            sub_qos: QoS::AtLeastOnce,
            payload_size: 16,
            rate: 0.0,
            count: None,
            duration: Duration::from_secs(1),
            inflight: 1,
            drain: Duration::ZERO,
            fan_out: Some(1),
        });
        let shared = Arc::new(Shared::new(Instant::now()));
        let now = Instant::now();
        let job = |role| ClientJob::new(role, 0, now, &shared, &settings, &workload);
        let (sub, publ) = (job(Role::Subscriber), job(Role::Publisher));
        assert_eq!(sub.options.addr, subscribers);
        assert_eq!(publ.options.addr, publishers);
        // Everything else is the run's.
        assert_eq!(
            (sub.options.keep_alive, sub.options.clean_session),
            (30, false)
        );
        assert_eq!(sub.options.username.as_deref(), Some("u"));
    }

    #[test]
    fn due_messages_catch_up_after_a_late_wake_up() {
        let start = Instant::now();
        let ms = Duration::from_millis(1);
        assert_eq!(Workload::due(ms, start, start, 0), 1, "the first at once");
        assert_eq!(Workload::due(ms, start, start, 1), 1, "at least one");
        // 10.5 ms in, 3 sent: slots 0..=10 have come, 8 are missing.
        let now = start + Duration::from_micros(10_500);
        assert_eq!(Workload::due(ms, start, now, 3), 8);
    }
}
