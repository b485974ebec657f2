//! Load for `scripts/bench-bridge.py`: publishes `count` JSON readings at
//! QoS 1 to a broker, at `rate` messages per second (0: as fast as the
//! broker acknowledges, 100 in flight), each stamped with its send time:
//!
//! `{"id": <n>, "temp": <20..30>, "sent_ns": <Unix nanoseconds>}`, user
//! properties `client_id` and `seq`, topic `bench/dev<n % 10>/temp`.
//!
//! `cargo run --release -p kubemqtt-bridge --example bench_load -- PORT COUNT RATE`

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kubemqtt_bridge::mqtt::{Endpoint, Outbound, Publisher};

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numbers: PORT COUNT RATE"))
        .collect();
    let [port, count, rate] = args[..] else {
        eprintln!("usage: bench_load PORT COUNT RATE");
        std::process::exit(2);
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async move {
        let publisher = Publisher::new(Endpoint {
            host: "127.0.0.1".into(),
            port: port as u16,
            client_id: format!("bench-load-{}", std::process::id()),
            username_file: None,
            password_file: None,
            tls: None,
            keep_alive: Duration::from_secs(30),
        });
        let started = Instant::now();
        let chunk = if rate == 0 { 100 } else { 1 };
        let mut id = 0;
        while id < count {
            let messages: Vec<Outbound> = (id..(id + chunk).min(count))
                .map(|n| {
                    if rate > 0 {
                        let due = started + Duration::from_secs_f64(n as f64 / rate as f64);
                        let now = Instant::now();
                        if due > now {
                            std::thread::sleep(due - now);
                        }
                    }
                    let sent_ns = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map(|d| d.as_nanos())
                        .unwrap_or(0);
                    Outbound {
                        topic: format!("bench/dev{}/temp", n % 10),
                        payload: format!(
                            "{{\"id\": {n}, \"temp\": {}, \"sent_ns\": {sent_ns}}}",
                            20 + n % 10
                        )
                        .into(),
                        qos: 1,
                        retain: false,
                        user_properties: vec![
                            ("client_id".into(), format!("dev{}", n % 10)),
                            ("seq".into(), n.to_string()),
                        ],
                    }
                })
                .collect();
            if rate > 0 {
                // Paced: one at a time, on schedule.
                for message in messages {
                    let publisher = &publisher;
                    publisher
                        .publish_all(&[message])
                        .await
                        .expect("acknowledged");
                }
            } else {
                publisher
                    .publish_all(&messages)
                    .await
                    .expect("acknowledged");
            }
            id += chunk;
        }
        println!("{}", started.elapsed().as_secs_f64());
    });
}
