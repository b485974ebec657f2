//! The state every client task of a run updates, and the report built
//! from it at the end.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::codec::QoS;
use crate::payload;
use crate::run::{Settings, Workload};
use crate::seen::{self, Seen};
use crate::stats::{self, Counters, ErrorLog, Latencies, Report};

/// State shared by all tasks of a run.
pub struct Shared {
    /// Messages and connections counted so far.
    pub counters: Counters,
    /// Errors, failed connections included.
    pub errors: ErrorLog,
    /// End-to-end latencies of the deliveries.
    pub latencies: Latencies,
    /// TCP connect + CONNECT/CONNACK times.
    pub connect_latencies: Latencies,
    /// Received PUBLISHes too short to carry a time stamp.
    pub unstamped: AtomicU64,
    /// Clients that finished their setup (connected and, for subscribers,
    /// subscribed), well or badly.
    settled: AtomicUsize,
    /// What each subscriber received, handed over when it ends.
    seen: Mutex<Vec<Seen>>,
}

impl Shared {
    /// Nothing counted yet; times are measured from `origin`.
    pub fn new(origin: Instant) -> Shared {
        Shared {
            counters: Counters::new(origin),
            errors: ErrorLog::default(),
            latencies: Latencies::new(),
            connect_latencies: Latencies::new(),
            unstamped: AtomicU64::new(0),
            settled: AtomicUsize::new(0),
            seen: Mutex::new(Vec::new()),
        }
    }

    /// Counts a client as done with its setup.
    pub fn settle(&self) {
        self.settled.fetch_add(1, Ordering::Relaxed);
    }

    /// Clients done with their setup.
    pub fn settled(&self) -> usize {
        self.settled.load(Ordering::Relaxed)
    }

    /// Counts a connection accepted after `took`.
    pub fn connected(&self, took: Duration) {
        self.counters.connected.fetch_add(1, Ordering::Relaxed);
        self.connect_latencies.record(took);
    }

    /// Counts a connection that failed, with its reason.
    pub fn connect_failed(&self, who: &str, error: impl std::fmt::Display) {
        self.counters
            .connect_failures
            .fetch_add(1, Ordering::Relaxed);
        self.errors.record(format!("{who}: {error}"));
    }

    /// Counts `count` PUBLISHes received now, `unstamped` of them without a
    /// time stamp, and records `latencies_us` (emptied).
    pub fn delivered(&self, count: u64, unstamped: u64, latencies_us: &mut Vec<u64>) {
        if !latencies_us.is_empty() {
            self.latencies.record_us(latencies_us);
            latencies_us.clear();
        }
        if unstamped > 0 {
            self.unstamped.fetch_add(unstamped, Ordering::Relaxed);
        }
        if count > 0 {
            self.counters.add_delivered(count);
        }
    }

    /// Counts `count` QoS 1/2 PUBLISHes acknowledged.
    pub fn acked(&self, count: u64) {
        if count > 0 {
            self.counters.acked.fetch_add(count, Ordering::Relaxed);
        }
    }

    /// Takes what a subscriber received, for the duplicate count.
    pub fn deposit(&self, seen: Seen) {
        self.seen.lock().push(seen);
    }

    /// The report of a run of `workload` that started publishing at
    /// `start`.
    pub fn report(
        &self,
        generator: &str,
        settings: &Settings,
        w: &Workload,
        origin: Instant,
        start: Instant,
    ) -> Report {
        let c = &self.counters;
        let since_origin = start.duration_since(origin);
        let sent = Counters::get(&c.sent);
        let publishing = if sent > 0 {
            c.last_send().saturating_sub(since_origin)
        } else {
            w.duration
        };
        let duration_secs = publishing.as_secs_f64().max(1e-6);
        let delivered = Counters::get(&c.delivered);
        let acked = Counters::get(&c.acked);
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
        let pub_sub = w.subscribers > 0 && w.publishers > 0;
        let fan_out = w.fan_out.filter(|_| pub_sub);
        let expected = fan_out.map(|fan_out| sent * fan_out);
        let duplicates = (pub_sub && w.payload_size >= payload::ID_END)
            .then(|| seen::duplicates(&self.seen.lock(), w.filter.is_shared()));
        let acked_not_delivered = fan_out.filter(|_| w.pub_qos != QoS::AtMostOnce).map(|f| {
            stats::acked_not_delivered(acked, f, delivered.unwrap_or(0), duplicates.unwrap_or(0))
        });
        Report {
            generator: generator.to_string(),
            scenario: w.scenario.to_string(),
            broker: settings.client.addr.to_string(),
            sub_broker: (settings.sub_addr != settings.client.addr)
                .then(|| settings.sub_addr.to_string()),
            qos: Some(w.pub_qos as u8),
            publishers: w.publishers,
            subscribers: w.subscribers,
            payload_bytes: w.payload_size,
            connections: Counters::get(&c.connected),
            connect_failures: Counters::get(&c.connect_failures),
            connect_latency: self.connect_latencies.percentiles(),
            duration_secs,
            sent,
            sent_per_sec: sent as f64 / duration_secs,
            acked,
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
            duplicates,
            acked_not_delivered,
            latency: self.latencies.percentiles(),
            unstamped: self.unstamped.load(Ordering::Relaxed),
            errors: self.errors.count(),
            error_samples: self.errors.samples(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::client::ClientOptions;
    use crate::payload::MessageId;

    fn settings() -> Settings {
        Settings {
            client: ClientOptions {
                addr: SocketAddr::from(([127, 0, 0, 1], 1883)),
                keep_alive: 60,
                clean_session: true,
                username: None,
                password: None,
                timeout: Duration::from_secs(1),
                max_packet_size: 1 << 20,
            },
            sub_addr: SocketAddr::from(([127, 0, 0, 1], 1883)),
            conn_rate: 0.0,
            client_prefix: "t".into(),
            progress: false,
        }
    }

    fn workload(scenario: &'static str, filter: &str, qos: QoS, payload_size: usize) -> Workload {
        Workload {
            scenario,
            publishers: 2,
            subscribers: 2,
            topic: "t/%i".parse().unwrap(),
            filter: filter.parse().unwrap(),
            pub_qos: qos,
            sub_qos: qos,
            payload_size,
            rate: 0.0,
            count: None,
            duration: Duration::from_secs(1),
            inflight: 8,
            drain: Duration::ZERO,
            fan_out: Some(1),
        }
    }

    /// A run in which both publishers sent and had acknowledged messages
    /// 0..5, and the subscribers received `received` (subscriber, publisher,
    /// sequence number).
    fn run(received: &[(usize, u32, u32)]) -> Shared {
        let origin = Instant::now();
        let shared = Shared::new(origin);
        shared.counters.add_sent(10);
        shared.acked(10);
        let mut seen = [Seen::new(2), Seen::new(2)];
        for &(subscriber, publisher, seq) in received {
            seen[subscriber].record(MessageId { publisher, seq });
        }
        shared.counters.add_delivered(received.len() as u64);
        for s in seen {
            shared.deposit(s);
        }
        shared
    }

    fn report(shared: &Shared, w: &Workload) -> Report {
        let origin = Instant::now();
        shared.report("test", &settings(), w, origin, origin)
    }

    #[test]
    fn a_message_delivered_twice_does_not_hide_one_never_delivered() {
        // p2p: subscriber i receives publisher i; publisher 1's message 4
        // never arrives, its message 3 arrives twice.
        let mut received: Vec<_> = (0..5).map(|seq| (0, 0, seq)).collect();
        received.extend([(1, 1, 0), (1, 1, 1), (1, 1, 2), (1, 1, 3), (1, 1, 3)]);
        let shared = run(&received);
        let r = report(&shared, &workload("p2p", "t/%i", QoS::AtLeastOnce, 16));
        assert_eq!((r.sent, r.acked, r.delivered), (10, 10, Some(10)));
        assert_eq!(r.loss, Some(0), "the plain count sees nothing wrong");
        assert_eq!(r.duplicates, Some(1));
        assert_eq!(r.acked_not_delivered, Some(1));
    }

    #[test]
    fn a_message_reaching_two_members_of_a_shared_group_is_a_duplicate() {
        // fan-in: the group as a whole must receive each message once;
        // publisher 0's message 2 reaches both members, its message 4 none.
        let mut received = vec![(0, 0, 0), (0, 0, 1), (0, 0, 2), (1, 0, 2), (1, 0, 3)];
        received.extend((0..5).map(|seq| (1, 1, seq)));
        let shared = run(&received);
        let shared_group = workload("fanin", "$share/g/t/+", QoS::AtLeastOnce, 16);
        let r = report(&shared, &shared_group);
        assert_eq!(r.duplicates, Some(1));
        assert_eq!(r.acked_not_delivered, Some(1));
        // The same deliveries to two independent subscribers: no duplicate,
        // and the formula counts deliveries only.
        let r = report(&shared, &workload("fanin", "t/+", QoS::AtLeastOnce, 16));
        assert_eq!(r.duplicates, Some(0));
        assert_eq!(r.acked_not_delivered, Some(0));
    }

    #[test]
    fn figures_that_do_not_apply_are_absent() {
        let shared = run(&[(0, 0, 0)]);
        let r = report(&shared, &workload("p2p", "t/%i", QoS::AtMostOnce, 16));
        assert_eq!(r.acked_not_delivered, None, "QoS 0 has no acknowledgements");
        let r = report(&shared, &workload("p2p", "t/%i", QoS::AtLeastOnce, 15));
        assert_eq!(r.duplicates, None, "payloads too short for message ids");
        assert_eq!(r.acked_not_delivered, Some(9));
        let mut publish_only = workload("pub", "t/%i", QoS::AtLeastOnce, 16);
        publish_only.subscribers = 0;
        let r = report(&shared, &publish_only);
        assert_eq!(
            (r.duplicates, r.acked_not_delivered, r.expected),
            (None, None, None)
        );
    }
}
