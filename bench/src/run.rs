//! Running a workload: connecting clients at a paced rate, publishing and
//! receiving, draining what is still in flight, and building the report.
//!
//! Every task and every wait here has its own deadline derived from the
//! command line, so a broker that stops answering ends the run with errors
//! instead of hanging it.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::client::{ClientError, ClientOptions, Connection, PacketIds};
use crate::codec::{self, Ack, Packet, QoS};
use crate::payload;
use crate::stats::{Counters, ErrorLog, Latencies, Report};
use crate::template::TopicTemplate;

/// Most PUBLISHes encoded into one write.
const MAX_BATCH: u64 = 64;

/// How often the waits below check their condition.
const POLL: Duration = Duration::from_millis(50);

/// Extra time granted to tasks to wind down after they were told to stop.
const WIND_DOWN: Duration = Duration::from_secs(5);

/// Delay between "everyone is connected" and the first PUBLISH, so that
/// every publisher sees the start time before it passes.
const START_DELAY: Duration = Duration::from_millis(20);

/// Sleeps until a `std::time::Instant`.
async fn sleep_until(at: Instant) {
    tokio::time::sleep_until(at.into()).await;
}

/// Settings shared by every scenario.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How each client connects.
    pub client: ClientOptions,
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
    /// Payload size in bytes, at least [`payload::STAMP_LEN`].
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

/// State shared by all tasks of a run.
struct Shared {
    counters: Counters,
    errors: ErrorLog,
    latencies: Latencies,
    connect_latencies: Latencies,
    unstamped: AtomicU64,
    /// Clients that finished their setup (connected and, for subscribers,
    /// subscribed), well or badly.
    settled: AtomicUsize,
}

impl Shared {
    fn new(origin: Instant) -> Shared {
        Shared {
            counters: Counters::new(origin),
            errors: ErrorLog::default(),
            latencies: Latencies::new(),
            connect_latencies: Latencies::new(),
            unstamped: AtomicU64::new(0),
            settled: AtomicUsize::new(0),
        }
    }

    /// Counts a client as done with its setup.
    fn settle(&self) {
        self.settled.fetch_add(1, Ordering::Relaxed);
    }

    fn settled(&self) -> usize {
        self.settled.load(Ordering::Relaxed)
    }

    /// Opens a connection, counting the outcome.
    async fn open(
        &self,
        options: &ClientOptions,
        client_id: &str,
        who: &str,
    ) -> Option<Connection> {
        match Connection::open(options, client_id).await {
            Ok((connection, took)) => {
                self.counters.connected.fetch_add(1, Ordering::Relaxed);
                self.connect_latencies.record(took);
                Some(connection)
            }
            Err(e) => {
                self.counters
                    .connect_failures
                    .fetch_add(1, Ordering::Relaxed);
                self.errors.record(format!("{who}: {e}"));
                None
            }
        }
    }
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
fn connect_span(n: usize, settings: &Settings) -> Duration {
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

/// Runs a publish/subscribe workload: connects the subscribers and waits
/// for their SUBACKs, connects the publishers, starts them together, waits
/// for them to finish and for the deliveries to drain, and reports.
pub async fn run_load(settings: Arc<Settings>, workload: Arc<Workload>) -> Report {
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
        let task = Subscriber {
            shared: shared.clone(),
            settings: settings.clone(),
            workload: workload.clone(),
            index,
            stop: stop_rx.clone(),
            deadline: hard_deadline,
        };
        subscribers.spawn(task.run(connect_slot(origin, index, settings.conn_rate)));
    }
    progress
        .wait_while(&shared, "subscribe", origin + sub_span, || {
            shared.settled() < w.subscribers
        })
        .await;

    let pub_origin = Instant::now();
    let mut publishers = JoinSet::new();
    for index in 0..w.publishers {
        let task = Publisher {
            shared: shared.clone(),
            settings: settings.clone(),
            workload: workload.clone(),
            index,
            start: start_rx.clone(),
        };
        publishers.spawn(task.run(connect_slot(pub_origin, index, settings.conn_rate)));
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

    build_report(&settings, w, &shared, origin, start, expected)
}

fn build_report(
    settings: &Settings,
    w: &Workload,
    shared: &Shared,
    origin: Instant,
    start: Instant,
    expected: Option<u64>,
) -> Report {
    let c = &shared.counters;
    let since_origin = start.duration_since(origin);
    let sent = Counters::get(&c.sent);
    let publishing = if sent > 0 {
        c.last_send().saturating_sub(since_origin)
    } else {
        w.duration
    };
    let duration_secs = publishing.as_secs_f64().max(1e-6);
    let delivered = Counters::get(&c.delivered);
    let receiving = c.last_delivery().saturating_sub(since_origin).as_secs_f64();
    let (delivered, delivered_per_sec) = if w.subscribers > 0 {
        let rate = if receiving > 0.0 {
            delivered as f64 / receiving
        } else {
            0.0
        };
        (Some(delivered), Some(rate))
    } else {
        (None, None)
    };
    let expected = expected.filter(|_| w.subscribers > 0 && w.publishers > 0);
    Report {
        scenario: w.scenario.to_string(),
        broker: settings.client.addr.to_string(),
        qos: Some(w.pub_qos as u8),
        publishers: w.publishers,
        subscribers: w.subscribers,
        payload_bytes: w.payload_size,
        connections: Counters::get(&c.connected),
        connect_failures: Counters::get(&c.connect_failures),
        connect_latency: shared.connect_latencies.percentiles(),
        duration_secs,
        sent,
        sent_per_sec: sent as f64 / duration_secs,
        acked: Counters::get(&c.acked),
        delivered,
        delivered_per_sec,
        expected,
        loss: expected.map(|e| e as i64 - delivered.unwrap_or(0) as i64),
        delivered_pct: expected.map(|e| {
            if e == 0 {
                100.0
            } else {
                100.0 * delivered.unwrap_or(0) as f64 / e as f64
            }
        }),
        latency: shared.latencies.percentiles(),
        unstamped: shared.unstamped.load(Ordering::Relaxed),
        errors: shared.errors.count(),
        error_samples: shared.errors.samples(),
    }
}

/// One subscribing client.
struct Subscriber {
    shared: Arc<Shared>,
    settings: Arc<Settings>,
    workload: Arc<Workload>,
    index: usize,
    stop: watch::Receiver<bool>,
    deadline: Instant,
}

impl Subscriber {
    async fn run(mut self, slot: Instant) {
        sleep_until(slot).await;
        let client_id = format!("{}-s{}", self.settings.client_prefix, self.index);
        let who = format!("subscriber {}", self.index);
        let Some(mut connection) = self
            .shared
            .open(&self.settings.client, &client_id, &who)
            .await
        else {
            self.shared.settle();
            return;
        };
        let filter =
            self.workload
                .filter
                .render(self.index, &client_id, &self.settings.client_prefix);
        let mut subscribed = false;
        let result = self
            .receive(&mut connection, &filter, &mut subscribed)
            .await;
        if !subscribed {
            self.shared.settle();
        }
        match result {
            Ok(()) => connection.disconnect().await,
            Err(e) => self.shared.errors.record(format!("{who}: {e}")),
        }
    }

    /// Subscribes, then counts and acknowledges PUBLISHes until told to
    /// stop. Sets `subscribed` (and counts the client as settled) on a good SUBACK.
    async fn receive(
        &mut self,
        connection: &mut Connection,
        filter: &str,
        subscribed: &mut bool,
    ) -> Result<(), ClientError> {
        let shared = &self.shared;
        let keep_alive = self.settings.client.keep_alive;
        codec::encode_subscribe(&mut connection.writer.buf, 1, filter, self.workload.sub_qos)?;
        connection.writer.flush().await?;
        let suback_deadline = Instant::now() + self.settings.client.timeout;
        let mut latencies = Vec::with_capacity(MAX_BATCH as usize);
        loop {
            let mut wake = connection
                .writer
                .ping_at(keep_alive)
                .unwrap_or(self.deadline);
            if !*subscribed {
                wake = wake.min(suback_deadline);
            }
            tokio::select! {
                biased;
                _ = self.stop.changed() => return Ok(()),
                read = connection.reader.fill() => read?,
                _ = sleep_until(wake.min(self.deadline)) => {
                    let now = Instant::now();
                    if now >= self.deadline {
                        return Ok(());
                    }
                    if !*subscribed && now >= suback_deadline {
                        return Err(ClientError::Timeout("SUBACK"));
                    }
                    if connection.writer.ping_at(keep_alive).is_some_and(|at| now >= at) {
                        connection.writer.ping().await?;
                    }
                    continue;
                }
            }
            let now_ns = payload::now_ns();
            let mut delivered = 0;
            let mut unstamped = 0;
            while let Some(packet) = connection.reader.next_packet()? {
                let out = &mut connection.writer.buf;
                match packet {
                    Packet::Publish(publish) => {
                        delivered += 1;
                        match payload::latency_us(&publish.payload, now_ns) {
                            Some(us) => latencies.push(us),
                            None => unstamped += 1,
                        }
                        match publish.qos {
                            QoS::AtMostOnce => {}
                            QoS::AtLeastOnce => codec::encode_ack(out, Ack::PubAck, publish.pkid),
                            QoS::ExactlyOnce => codec::encode_ack(out, Ack::PubRec, publish.pkid),
                        }
                    }
                    Packet::PubRel(pkid) => codec::encode_ack(out, Ack::PubComp, pkid),
                    Packet::SubAck { return_codes, .. } if !*subscribed => {
                        if return_codes.first().is_some_and(|&code| code > 2) {
                            return Err(ClientError::Unexpected("SUBACK refusing the filter"));
                        }
                        *subscribed = true;
                        shared.settle();
                    }
                    Packet::PingResp => {}
                    Packet::SubAck { .. } => return Err(ClientError::Unexpected("second SUBACK")),
                    Packet::ConnAck { .. } => {
                        return Err(ClientError::Unexpected("second CONNACK"))
                    }
                    Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubComp(_) => {
                        return Err(ClientError::Unexpected(
                            "acknowledgement to a subscriber that never published",
                        ))
                    }
                }
                if latencies.len() >= MAX_BATCH as usize {
                    shared.latencies.record_us(&latencies);
                    latencies.clear();
                }
            }
            shared.latencies.record_us(&latencies);
            latencies.clear();
            if unstamped > 0 {
                shared.unstamped.fetch_add(unstamped, Ordering::Relaxed);
            }
            if delivered > 0 {
                shared.counters.add_delivered(delivered);
            }
            connection.writer.flush().await?;
        }
    }
}

/// One publishing client.
struct Publisher {
    shared: Arc<Shared>,
    settings: Arc<Settings>,
    workload: Arc<Workload>,
    index: usize,
    start: watch::Receiver<Option<Instant>>,
}

impl Publisher {
    async fn run(mut self, slot: Instant) {
        sleep_until(slot).await;
        let client_id = format!("{}-p{}", self.settings.client_prefix, self.index);
        let who = format!("publisher {}", self.index);
        let Some(mut connection) = self
            .shared
            .open(&self.settings.client, &client_id, &who)
            .await
        else {
            self.shared.settle();
            return;
        };
        self.shared.settle();
        let topic =
            self.workload
                .topic
                .render(self.index, &client_id, &self.settings.client_prefix);
        let result = match self.wait_for_start(&mut connection).await {
            Ok(Some(start)) => self.publish(&mut connection, &topic, start).await,
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => connection.disconnect().await,
            Err(e) => self.shared.errors.record(format!("{who}: {e}")),
        }
    }

    /// Waits for the common start time, keeping the connection alive.
    /// `None` if the run ended without starting.
    async fn wait_for_start(
        &mut self,
        connection: &mut Connection,
    ) -> Result<Option<Instant>, ClientError> {
        let keep_alive = self.settings.client.keep_alive;
        // Bound: everyone else connecting, plus one timeout.
        let deadline = Instant::now()
            + connect_span(self.workload.publishers, &self.settings)
            + self.settings.client.timeout;
        loop {
            if let Some(start) = *self.start.borrow_and_update() {
                return Ok(Some(start));
            }
            let wake = connection.writer.ping_at(keep_alive).unwrap_or(deadline);
            tokio::select! {
                changed = self.start.changed() => if changed.is_err() {
                    return Ok(*self.start.borrow());
                },
                read = connection.reader.fill() => {
                    read?;
                    while let Some(packet) = connection.reader.next_packet()? {
                        if packet != Packet::PingResp {
                            return Err(ClientError::Unexpected("packet before publishing"));
                        }
                    }
                }
                _ = sleep_until(wake.min(deadline)) => {
                    if Instant::now() >= deadline {
                        return Err(ClientError::Timeout("the other clients to connect"));
                    }
                    connection.writer.ping().await?;
                }
            }
        }
    }

    /// Publishes from `start` until the count or the duration is reached,
    /// then waits (at most the drain time) for outstanding acknowledgements.
    async fn publish(
        &self,
        connection: &mut Connection,
        topic: &str,
        start: Instant,
    ) -> Result<(), ClientError> {
        let w = &self.workload;
        let counters = &self.shared.counters;
        let keep_alive = self.settings.client.keep_alive;
        let qos = w.pub_qos;
        let end = start + w.duration;
        let ack_deadline = end + w.drain;
        let limit = w.count.unwrap_or(u64::MAX);
        let interval = (w.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / w.rate));
        let mut ids = PacketIds::default();
        let mut sent = 0u64;
        sleep_until(start).await;
        loop {
            let now = Instant::now();
            let sending = sent < limit && now < end;
            if !sending && ids.is_empty() {
                return Ok(());
            }
            if now >= ack_deadline {
                return Err(ClientError::Timeout("acknowledgements (drain time over)"));
            }
            let room = if qos == QoS::AtMostOnce {
                MAX_BATCH
            } else {
                w.inflight.saturating_sub(ids.len()) as u64
            };
            let next_send = match interval {
                Some(interval) => start + interval.mul_f64(sent as f64),
                None => now,
            };
            if sending && room > 0 && next_send <= now {
                let due = match interval {
                    // Messages whose slot has come, so bursts catch up after
                    // a late wake-up and the average rate holds.
                    Some(interval) => {
                        let elapsed = now.duration_since(start).as_secs_f64();
                        ((elapsed / interval.as_secs_f64()) as u64 + 1)
                            .saturating_sub(sent)
                            .max(1)
                    }
                    None => MAX_BATCH,
                };
                let batch = due.min(room).min(MAX_BATCH).min(limit - sent);
                for _ in 0..batch {
                    let pkid = if qos == QoS::AtMostOnce {
                        0
                    } else {
                        ids.allocate()
                            .ok_or(ClientError::Unexpected("packet id exhaustion"))?
                    };
                    let out = &mut connection.writer.buf;
                    codec::encode_publish_header(out, topic, qos, pkid, w.payload_size)?;
                    payload::put_stamped(out, w.payload_size, payload::now_ns());
                }
                connection.writer.flush().await?;
                sent += batch;
                counters.add_sent(batch);
                continue;
            }
            let mut wake = if sending { end } else { ack_deadline };
            if sending && room > 0 {
                wake = wake.min(next_send);
            }
            if let Some(ping_at) = connection.writer.ping_at(keep_alive) {
                wake = wake.min(ping_at);
            }
            tokio::select! {
                biased;
                read = connection.reader.fill() => {
                    read?;
                    self.handle_acks(connection, &mut ids)?;
                    connection.writer.flush().await?;
                }
                _ = sleep_until(wake) => {
                    if connection.writer.ping_at(keep_alive).is_some_and(|at| Instant::now() >= at) {
                        connection.writer.ping().await?;
                    }
                }
            }
        }
    }

    /// Processes acknowledgements: frees packet ids, queues PUBRELs.
    fn handle_acks(
        &self,
        connection: &mut Connection,
        ids: &mut PacketIds,
    ) -> Result<(), ClientError> {
        let qos = self.workload.pub_qos;
        let mut completed = 0;
        while let Some(packet) = connection.reader.next_packet()? {
            match packet {
                Packet::PubAck(id) if qos == QoS::AtLeastOnce && ids.release(id) => completed += 1,
                Packet::PubRec(id) if qos == QoS::ExactlyOnce && ids.contains(id) => {
                    codec::encode_ack(&mut connection.writer.buf, Ack::PubRel, id);
                }
                Packet::PubComp(id) if qos == QoS::ExactlyOnce && ids.release(id) => completed += 1,
                Packet::PingResp => {}
                Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubComp(_) => {
                    return Err(ClientError::Unexpected(
                        "acknowledgement for an unknown packet id",
                    ))
                }
                _ => {
                    return Err(ClientError::Unexpected(
                        "packet other than an acknowledgement",
                    ))
                }
            }
        }
        if completed > 0 {
            self.shared
                .counters
                .acked
                .fetch_add(completed, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// Opens `connections` idle connections at the configured rate, holds them
/// for `hold` once all were attempted, then disconnects them.
pub async fn run_conn(settings: Arc<Settings>, connections: usize, hold: Duration) -> Report {
    let origin = Instant::now();
    let shared = Arc::new(Shared::new(origin));
    let mut progress = Progress::new(settings.progress, false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let span = connect_span(connections, &settings);
    let deadline = origin + span + hold + WIND_DOWN;

    let mut tasks = JoinSet::new();
    for index in 0..connections {
        let shared = shared.clone();
        let settings = settings.clone();
        let stop = stop_rx.clone();
        let slot = connect_slot(origin, index, settings.conn_rate);
        tasks.spawn(async move {
            sleep_until(slot).await;
            let client_id = format!("{}-c{index}", settings.client_prefix);
            let who = format!("connection {index}");
            let Some(mut connection) = shared.open(&settings.client, &client_id, &who).await else {
                shared.settle();
                return;
            };
            shared.settle();
            match hold_idle(&mut connection, settings.client.keep_alive, stop, deadline).await {
                Ok(()) => connection.disconnect().await,
                Err(e) => shared.errors.record(format!("{who}: {e}")),
            }
        });
    }
    progress
        .wait_while(&shared, "connect", origin + span, || {
            shared.settled() < connections
        })
        .await;
    let held_from = Instant::now();
    progress
        .wait_while(&shared, "hold", held_from + hold, || true)
        .await;
    let held = held_from.elapsed();
    let _ = stop_tx.send(true);
    join_all(&mut tasks, &shared, WIND_DOWN).await;

    let c = &shared.counters;
    Report {
        scenario: "conn".to_string(),
        broker: settings.client.addr.to_string(),
        qos: None,
        publishers: 0,
        subscribers: 0,
        payload_bytes: 0,
        connections: Counters::get(&c.connected),
        connect_failures: Counters::get(&c.connect_failures),
        connect_latency: shared.connect_latencies.percentiles(),
        duration_secs: held.as_secs_f64(),
        sent: 0,
        sent_per_sec: 0.0,
        acked: 0,
        delivered: None,
        delivered_per_sec: None,
        expected: None,
        loss: None,
        delivered_pct: None,
        latency: None,
        unstamped: 0,
        errors: shared.errors.count(),
        error_samples: shared.errors.samples(),
    }
}

/// Keeps an idle connection open (answering nothing, pinging when due)
/// until `stop` or `deadline`. Anything but a PINGRESP is an error.
async fn hold_idle(
    connection: &mut Connection,
    keep_alive: u16,
    mut stop: watch::Receiver<bool>,
    deadline: Instant,
) -> Result<(), ClientError> {
    loop {
        let wake = connection
            .writer
            .ping_at(keep_alive)
            .unwrap_or(deadline)
            .min(deadline);
        tokio::select! {
            biased;
            _ = stop.changed() => return Ok(()),
            read = connection.reader.fill() => {
                read?;
                while let Some(packet) = connection.reader.next_packet()? {
                    if packet != Packet::PingResp {
                        return Err(ClientError::Unexpected("packet on an idle connection"));
                    }
                }
            }
            _ = sleep_until(wake) => {
                if Instant::now() >= deadline {
                    return Ok(());
                }
                connection.writer.ping().await?;
            }
        }
    }
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
}
