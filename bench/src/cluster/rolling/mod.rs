//! `rolling`: a steady QoS 1 load that rides through broker restarts, to
//! count what a rolling restart of a cluster's nodes loses.
//!
//! `--pairs` publishers each publish at `--rate` to their own topic, read
//! by one subscriber each with a persistent session (Clean Session off).
//! Whenever a connection is lost, its client reconnects: to the next
//! address of `--broker` (a comma-separated list: clients pick a live node
//! themselves), or again to the one address (a load balancer picks). A
//! publisher sends again, as new messages with the same identity, whatever
//! was not acknowledged when its connection was lost (so the subscriber may
//! see duplicates, counted apart); a subscriber that comes back without its
//! session (`session present` false) subscribes again, and the messages of
//! the gap are lost, which the report shows.
//!
//! Publishing stops after `--duration` seconds, or as soon as the file
//! `--stop-file` exists (the script restarting the nodes creates it when it
//! is done). Then publishers wait for their last acknowledgements and
//! subscribers for their last messages, `--drain` seconds at most.
//!
//! **Lost** is the number of messages acknowledged to a publisher that its
//! subscriber never received; it must be 0.

mod publisher;
mod subscriber;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::cli::{self, ClientArgs, Outcome};
use crate::client::{Connection, Opened};
use crate::payload;
use crate::run::{Settings, WIND_DOWN};
use crate::seen::Seen;
use crate::stats::{Counters, ErrorLog, Latencies, Percentiles};
use crate::template::TopicTemplate;

use super::options_at;

/// Lost messages the JSON report names (to look each up in the brokers'
/// logs).
const LOST_SAMPLES: usize = 2_000;
/// Lost messages the text report names.
const LOST_SAMPLES_SHOWN: usize = 20;

/// How often the controller looks at the stop file and the drain.
const POLL: Duration = Duration::from_millis(100);

/// First and longest wait between two connection attempts.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// `rolling`: QoS 1 load through restarts.
#[derive(Debug, Args)]
pub struct RollingCmd {
    /// Publisher/subscriber pairs (publisher i to subscriber i).
    #[arg(short = 'n', long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub pairs: u32,

    /// Messages per second per publisher.
    #[arg(short = 'r', long, default_value_t = 100.0, value_parser = cli::positive)]
    pub rate: f64,

    /// Payload size in bytes (at least 16: the stamp and the message's
    /// identity).
    #[arg(short = 's', long, default_value_t = 16, value_parser = cli::identified_payload_size)]
    pub size: usize,

    /// Seconds of publishing at most.
    #[arg(short = 'd', long, default_value_t = 60.0, value_parser = cli::positive)]
    pub duration: f64,

    /// Publishing stops as soon as this file exists.
    #[arg(long, value_name = "PATH")]
    pub stop_file: Option<PathBuf>,

    /// Seconds to wait after publishing for the last acknowledgements and
    /// deliveries.
    #[arg(long, default_value_t = 30.0, value_parser = cli::non_negative)]
    pub drain: f64,

    /// QoS 1 messages a publisher keeps unacknowledged at most.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..))]
    pub inflight: u16,

    /// Topic template of pair %i (%p: the client prefix, unique per run).
    #[arg(short = 't', long, default_value = "bench/%p/rolling/%i")]
    pub topic: TopicTemplate,

    /// The brokers (`--broker a:1883,b:1883`) are tried in turn.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// What a `rolling` run measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RollingReport {
    pub scenario: &'static str,
    pub brokers: Vec<String>,
    pub pairs: u32,
    pub qos: u8,
    pub payload_bytes: usize,
    /// Messages per second per publisher.
    pub rate: f64,
    /// From the start to the end of publishing, seconds.
    pub publishing_secs: f64,
    /// Distinct messages published.
    pub sent: u64,
    /// PUBLISH packets written, first sends and sends again.
    pub publishes: u64,
    /// Of those, sends again after a lost connection.
    pub resent: u64,
    /// Distinct messages acknowledged to their publisher.
    pub acked: u64,
    /// Messages never acknowledged (publishers gave up at the drain's end).
    pub unacked: u64,
    /// PUBLISH packets received by the subscribers.
    pub delivered: u64,
    /// Distinct messages among them.
    pub distinct: u64,
    /// Deliveries of a message its subscriber already had.
    pub duplicates: u64,
    /// Acknowledged messages their subscriber never received.
    pub lost: u64,
    /// The first of them.
    pub lost_samples: Vec<LostMessage>,
    /// Distinct messages over the time from the start to the last delivery.
    pub delivered_per_sec: f64,
    /// Stamp to delivery, microseconds (first deliveries and duplicates).
    pub latency: Option<Percentiles>,
    /// Connections lost and opened again, by publishers and subscribers.
    pub publisher_reconnects: u64,
    pub subscriber_reconnects: u64,
    /// Subscribers that came back without their session.
    pub sessions_lost: u64,
    /// From a lost connection to the next CONNACK, microseconds.
    pub reconnect_gap: Option<Percentiles>,
    /// Connection attempts that failed (refused, closed, timed out).
    pub connect_failures: u64,
    /// Subscribers that never got their first subscription.
    pub setup_failures: u64,
    /// Errors other than failed connection attempts.
    pub errors: u64,
    pub error_samples: Vec<String>,
    /// The first distinct reasons connection attempts failed.
    pub connect_error_samples: Vec<String>,
}

impl Outcome for RollingReport {
    fn to_text(&self) -> String {
        let gap = self.reconnect_gap.as_ref().map_or("-".to_string(), |p| {
            format!(
                "p50 {:.0} ms  max {:.0} ms",
                p.p50_us as f64 / 1000.0,
                p.max_us as f64 / 1000.0
            )
        });
        let mut text = format!(
            "rolling against {}  {} pairs at {} msg/s each  QoS {}  payload {} B\n\
             published    {} messages in {:.1} s ({} PUBLISHes, {} sent again), {} acknowledged, {} never\n\
             delivered    {} ({} distinct, {} duplicates) = {:.0} msg/s\n\
             LOST         {} acknowledged, never delivered\n\
             reconnects   {} publishers, {} subscribers ({} without their session); gap {}; {} failed attempts\n",
            self.brokers.join(","),
            self.pairs,
            self.rate,
            self.qos,
            self.payload_bytes,
            self.sent,
            self.publishing_secs,
            self.publishes,
            self.resent,
            self.acked,
            self.unacked,
            self.delivered,
            self.distinct,
            self.duplicates,
            self.delivered_per_sec,
            self.lost,
            self.publisher_reconnects,
            self.subscriber_reconnects,
            self.sessions_lost,
            gap,
            self.connect_failures,
        );
        if !self.lost_samples.is_empty() {
            let named: Vec<String> = self
                .lost_samples
                .iter()
                .take(LOST_SAMPLES_SHOWN)
                .map(|lost| format!("{}/{} (due {})", lost.pair, lost.seq, lost.due))
                .collect();
            text.push_str(&format!("lost (pair/seq) {}\n", named.join(", ")));
        }
        for e in self.error_samples.iter().chain(&self.connect_error_samples) {
            text.push_str(&format!("error        {e}\n"));
        }
        text
    }
}

/// A message acknowledged and never delivered.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LostMessage {
    /// The pair (publisher index).
    pub pair: u32,
    /// The message's sequence number from its publisher.
    pub seq: u32,
    /// When it fell due (publishers keep to their rate, so it was sent
    /// then, or as soon as its publisher had a connection): wall-clock time
    /// of day, UTC.
    pub due: String,
}

/// `HH:MM:SS.mmm`, UTC, of a Unix time in nanoseconds.
fn time_of_day(ns: u64) -> String {
    let ms = ns / 1_000_000;
    let (h, m, s) = (ms / 3_600_000 % 24, ms / 60_000 % 60, ms / 1000 % 60);
    format!("{h:02}:{m:02}:{s:02}.{:03}", ms % 1000)
}

/// What every task of a run shares.
struct Run {
    settings: Arc<Settings>,
    addrs: Vec<SocketAddr>,
    size: usize,
    rate: f64,
    inflight: usize,
    topic: TopicTemplate,
    /// Subscribers that have not subscribed by then give up.
    setup_deadline: Instant,
    /// Set when publishing stops: the end of the drain.
    stop: watch::Receiver<Option<Instant>>,
    /// Becomes true when the subscribers are to leave.
    finish: watch::Receiver<bool>,
    /// Times are measured from here.
    origin: Instant,
    /// The last moment any task may run.
    hard_deadline: Instant,
    counters: Counters,
    resent: AtomicU64,
    publisher_reconnects: AtomicU64,
    subscriber_reconnects: AtomicU64,
    sessions_lost: AtomicU64,
    subscribed: AtomicU64,
    latencies: Latencies,
    gaps: Latencies,
    errors: ErrorLog,
    connect_errors: ErrorLog,
    /// Per pair: distinct messages published, what the publisher had
    /// acknowledged, what the subscriber received.
    published: Vec<AtomicU64>,
    acked: Vec<Mutex<Seen>>,
    received: Vec<Mutex<Seen>>,
}

impl Run {
    fn client_id(&self, role: char, index: usize) -> String {
        format!("{}-{role}{index}", self.settings.client_prefix)
    }

    /// Prints a line about one client (unless --quiet), stamped with the
    /// wall-clock time of day (UTC), to line it up with the brokers' logs.
    fn event(&self, line: std::fmt::Arguments<'_>) {
        if self.settings.progress {
            eprintln!("{} UTC {line}", time_of_day(payload::now_ns()));
        }
    }

    fn topic(&self, index: usize) -> String {
        let prefix = &self.settings.client_prefix;
        self.topic
            .render(index, &self.client_id('p', index), prefix)
    }

    /// The drain's end once publishing stopped.
    fn drain_end(&self) -> Option<Instant> {
        *self.stop.borrow()
    }
}

/// Connects a client to the run's brokers in turn, waiting longer after
/// each failure, until one accepts or `deadline` passes.
struct Dialer {
    /// Index of the next address to try.
    next: usize,
    /// The address of the last connection opened, and the failed attempts
    /// before it.
    last: Option<SocketAddr>,
    failures: u32,
}

impl Dialer {
    /// Starts at address `index` (modulo their number), so that clients
    /// spread over the addresses.
    fn new(index: usize) -> Dialer {
        Dialer {
            next: index,
            last: None,
            failures: 0,
        }
    }

    async fn dial(
        &mut self,
        run: &Run,
        client_id: &str,
        clean: bool,
        deadline: Instant,
    ) -> Option<Opened> {
        let mut wait = RETRY_FIRST;
        self.failures = 0;
        loop {
            let addr = run.addrs[self.next % run.addrs.len()];
            self.next = self.next.wrapping_add(1);
            let options = options_at(&run.settings.client, addr, clean);
            match Connection::open_session(&options, client_id).await {
                Ok(opened) => {
                    self.last = Some(addr);
                    return Some(opened);
                }
                Err(e) => {
                    self.failures += 1;
                    run.counters
                        .connect_failures
                        .fetch_add(1, Ordering::Relaxed);
                    run.connect_errors.record(format!("{addr}: {e}"));
                }
            }
            if Instant::now() + wait >= deadline {
                return None;
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(RETRY_MAX);
        }
    }
}

/// Runs the scenario.
pub async fn run(cmd: RollingCmd) -> Result<RollingReport, String> {
    let (settings, addrs) = cmd.client.settings_with_brokers().await?;
    let pairs = cmd.pairs as usize;
    let duration = Duration::from_secs_f64(cmd.duration);
    let drain = Duration::from_secs_f64(cmd.drain);
    let origin = Instant::now();
    let setup = crate::run::connect_span(pairs, &settings);
    let setup_deadline = origin + setup;
    let hard_deadline = setup_deadline + duration + drain + setup + 2 * WIND_DOWN;
    let (stop_tx, stop_rx) = watch::channel(None);
    let (finish_tx, finish_rx) = watch::channel(false);
    let run = Arc::new(Run {
        settings: settings.clone(),
        addrs: addrs.clone(),
        size: cmd.size,
        rate: cmd.rate,
        inflight: usize::from(cmd.inflight),
        topic: cmd.topic,
        setup_deadline,
        stop: stop_rx,
        finish: finish_rx,
        origin,
        hard_deadline,
        counters: Counters::new(origin),
        resent: AtomicU64::new(0),
        publisher_reconnects: AtomicU64::new(0),
        subscriber_reconnects: AtomicU64::new(0),
        sessions_lost: AtomicU64::new(0),
        subscribed: AtomicU64::new(0),
        latencies: Latencies::new(),
        gaps: Latencies::new(),
        errors: ErrorLog::default(),
        connect_errors: ErrorLog::default(),
        published: (0..pairs).map(|_| AtomicU64::new(0)).collect(),
        acked: (0..pairs).map(|_| Mutex::new(Seen::new(pairs))).collect(),
        received: (0..pairs).map(|_| Mutex::new(Seen::new(pairs))).collect(),
    });
    let verbose = settings.progress;
    let say = |line: String| {
        if verbose {
            eprintln!("{line}");
        }
    };

    let mut subscribers = JoinSet::new();
    for index in 0..pairs {
        subscribers.spawn(subscriber::run(run.clone(), index));
    }
    while (run.subscribed.load(Ordering::Relaxed) as usize) < pairs
        && Instant::now() < setup_deadline
    {
        tokio::time::sleep(POLL).await;
    }
    let subscribed = run.subscribed.load(Ordering::Relaxed);
    let start = Instant::now();
    let start_ns = payload::now_ns();
    let mut publishers = JoinSet::new();
    for index in 0..pairs {
        publishers.spawn(publisher::run(run.clone(), index, start));
    }
    say(format!(
        "rolling: {subscribed} of {pairs} subscribers ready; publishing at {} msg/s in all",
        cmd.rate * pairs as f64
    ));

    // Publishing, until the duration ends or the stop file appears.
    let end = start + duration;
    let mut ticker = Ticker::new(origin);
    loop {
        let now = Instant::now();
        let asked = cmd.stop_file.as_ref().is_some_and(|f| f.exists());
        if now >= end || asked {
            break;
        }
        ticker.tick(&run, "publish", &say);
        tokio::time::sleep(POLL.min(end - now)).await;
    }
    let drain_end = Instant::now() + drain;
    let _ = stop_tx.send(Some(drain_end));
    let stopped = Instant::now();

    // Draining: publishers end once everything is acknowledged.
    while !publishers.is_empty() && Instant::now() < drain_end + WIND_DOWN {
        while let Some(joined) = publishers.try_join_next() {
            if let Err(e) = joined {
                run.errors.record(format!("publisher task failed: {e}"));
            }
        }
        ticker.tick(&run, "drain", &say);
        tokio::time::sleep(POLL).await;
    }
    publishers.abort_all();
    while Instant::now() < drain_end && !all_received(&run) {
        ticker.tick(&run, "drain", &say);
        tokio::time::sleep(POLL).await;
    }
    let _ = finish_tx.send(true);
    let joined = tokio::time::timeout(WIND_DOWN, async {
        while let Some(joined) = subscribers.join_next().await {
            if let Err(e) = joined {
                run.errors.record(format!("subscriber task failed: {e}"));
            }
        }
    });
    if joined.await.is_err() {
        run.errors.record(format!(
            "{} subscribers did not stop in time",
            subscribers.len()
        ));
        subscribers.abort_all();
    }
    // Sessions the subscribers leave behind.
    for index in 0..pairs {
        let addr = addrs[index % addrs.len()];
        let _ = super::wipe_session(&settings.client, addr, &run.client_id('s', index)).await;
    }
    Ok(report(&run, &addrs, cmd.pairs, (start, start_ns), stopped))
}

/// Whether every subscriber received every message its publisher had
/// acknowledged.
fn all_received(run: &Run) -> bool {
    run.acked
        .iter()
        .zip(&run.received)
        .all(|(acked, received)| acked.lock().count_not_in(&received.lock()) == 0)
}

fn report(
    run: &Run,
    addrs: &[SocketAddr],
    pairs: u32,
    (start, start_ns): (Instant, u64),
    stopped: Instant,
) -> RollingReport {
    let c = &run.counters;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let (mut sent, mut acked, mut lost, mut distinct, mut duplicates) = (0, 0, 0, 0, 0);
    let mut lost_samples = Vec::new();
    for (acked_seen, received) in run.acked.iter().zip(&run.received) {
        let (acked_seen, received) = (acked_seen.lock(), received.lock());
        acked += acked_seen.distinct();
        lost += acked_seen.count_not_in(&received);
        let room = LOST_SAMPLES.saturating_sub(lost_samples.len());
        lost_samples.extend(
            acked_seen
                .first_not_in(&received, room)
                .into_iter()
                .map(|id| LostMessage {
                    pair: id.publisher,
                    seq: id.seq,
                    due: time_of_day(start_ns + (f64::from(id.seq) / run.rate * 1e9) as u64),
                }),
        );
        distinct += received.distinct();
        duplicates += received.duplicates();
    }
    for published in &run.published {
        sent += get(published);
    }
    let receiving = c
        .last_delivery()
        .saturating_sub(start.saturating_duration_since(run.origin))
        .as_secs_f64();
    RollingReport {
        scenario: "rolling",
        brokers: addrs.iter().map(ToString::to_string).collect(),
        pairs,
        qos: 1,
        payload_bytes: run.size,
        rate: run.rate,
        publishing_secs: stopped.saturating_duration_since(start).as_secs_f64(),
        sent,
        publishes: Counters::get(&c.sent),
        resent: get(&run.resent),
        acked,
        unacked: sent.saturating_sub(acked),
        delivered: Counters::get(&c.delivered),
        distinct,
        duplicates,
        lost,
        lost_samples,
        delivered_per_sec: if receiving > 0.0 {
            distinct as f64 / receiving
        } else {
            0.0
        },
        latency: run.latencies.percentiles(),
        publisher_reconnects: get(&run.publisher_reconnects),
        subscriber_reconnects: get(&run.subscriber_reconnects),
        sessions_lost: get(&run.sessions_lost),
        reconnect_gap: run.gaps.percentiles(),
        connect_failures: Counters::get(&c.connect_failures),
        setup_failures: (pairs as u64).saturating_sub(get(&run.subscribed)),
        errors: run.errors.count(),
        error_samples: run.errors.samples(),
        connect_error_samples: run.connect_errors.samples(),
    }
}

/// A progress line every second.
struct Ticker {
    origin: Instant,
    next: Instant,
    last_delivered: u64,
}

impl Ticker {
    fn new(origin: Instant) -> Ticker {
        Ticker {
            origin,
            next: origin + Duration::from_secs(1),
            last_delivered: 0,
        }
    }

    fn tick(&mut self, run: &Run, phase: &str, say: &impl Fn(String)) {
        let now = Instant::now();
        if now < self.next {
            return;
        }
        self.next = now + Duration::from_secs(1);
        let c = &run.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let delivered = Counters::get(&c.delivered);
        say(format!(
            "[{:>6.1}s] {phase:<8} sent {} acked {} delivered {} (+{}/s) reconnects {}+{} sessions lost {} failed attempts {}",
            now.duration_since(self.origin).as_secs_f64(),
            Counters::get(&c.sent),
            Counters::get(&c.acked),
            delivered,
            delivered - self.last_delivered,
            get(&run.publisher_reconnects),
            get(&run.subscriber_reconnects),
            get(&run.sessions_lost),
            Counters::get(&c.connect_failures),
        ));
        self.last_delivered = delivered;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_of_day_are_utc_with_milliseconds() {
        // 2026-12-02 04:48:23.887 UTC
        assert_eq!(time_of_day(1_796_186_903_887_000_000), "04:48:23.887");
        assert_eq!(time_of_day(0), "00:00:00.000");
    }
}
