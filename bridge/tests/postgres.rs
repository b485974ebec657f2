//! The PostgreSQL sink against a real PostgreSQL 15.

use crate::common;

use common::scenario::{self, unmappable, Probe};
use common::servers::Postgres;
use common::*;
use kubemqtt_bridge::mqtt::Outbound;
use serde_json::{json, Value};

struct PostgresProbe {
    server: Postgres,
}

impl PostgresProbe {
    async fn start() -> Option<PostgresProbe> {
        let server = tokio::task::block_in_place(Postgres::start)?;
        server
            .client()
            .await
            .batch_execute(
                "CREATE TABLE readings (id integer NOT NULL, device text, temp_f double precision, \
                   client text, mqtt_key text PRIMARY KEY);
                 CREATE TABLE dead_letters (key text PRIMARY KEY, route text, topic text, \
                   client_id text, error text, payload bytea, received_at timestamptz);",
            )
            .await
            .expect("tables created");
        Some(PostgresProbe { server })
    }
}

impl Probe for PostgresProbe {
    fn sink_toml(&self) -> String {
        format!(
            "[routes.sink.postgres]\nconnection = \"{}\"\ntable = \"readings\"\n",
            self.server.connection()
        )
    }

    fn dead_letter_toml(&self) -> String {
        "{ table = \"dead_letters\" }".into()
    }

    fn deduplicates(&self) -> bool {
        true
    }

    async fn rows(&mut self) -> Vec<Value> {
        let rows = self
            .server
            .client()
            .await
            .query("SELECT id, device, temp_f, client FROM readings", &[])
            .await
            .expect("select");
        rows.iter()
            .map(|row| {
                json!({
                    "id": i64::from(row.get::<_, i32>(0)),
                    "device": row.get::<_, String>(1),
                    "temp_f": row.get::<_, f64>(2),
                    "client": row.get::<_, String>(3),
                })
            })
            .collect()
    }

    async fn stop(&mut self) {
        tokio::task::block_in_place(|| self.server.stop());
    }

    async fn start(&mut self) {
        tokio::task::block_in_place(|| self.server.resume());
    }

    fn poison(&self) -> Vec<Outbound> {
        // One the mapping refuses, one the database refuses (text in an
        // integer column).
        let mut refused_by_db = reading(1000);
        refused_by_db.payload = bytes::Bytes::from(r#"{"id": "one thousand", "temp": 1}"#);
        vec![unmappable(999), refused_by_db]
    }

    async fn dead_letters(&mut self) -> Option<usize> {
        let rows = self
            .server
            .client()
            .await
            .query("SELECT route, error, payload FROM dead_letters", &[])
            .await
            .expect("select");
        for row in &rows {
            assert_eq!(row.get::<_, String>(0), "readings");
            assert!(!row.get::<_, String>(1).is_empty());
            assert!(!row.get::<_, Vec<u8>>(2).is_empty());
        }
        Some(rows.len())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_arrive_with_the_mapping_applied() {
    let Some(probe) = PostgresProbe::start().await else {
        return;
    };
    scenario::mapping(probe).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_mid_stream_loses_nothing() {
    let Some(probe) = PostgresProbe::start().await else {
        return;
    };
    scenario::sink_restart(probe).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_killed_mid_stream_loses_nothing() {
    let Some(probe) = PostgresProbe::start().await else {
        return;
    };
    scenario::bridge_kill(probe).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_rows_go_to_the_dead_letter_table() {
    let Some(probe) = PostgresProbe::start().await else {
        return;
    };
    scenario::poison(probe).await;
}

/// Two replicas share the subscription: each takes part of the stream,
/// every row arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_split_the_stream() {
    let Some(mut probe) = PostgresProbe::start().await else {
        return;
    };
    let broker = SourceBroker::start();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}\n{}{}\n",
        head(broker.port),
        route(&probe.dead_letter_toml()),
        probe.sink_toml()
    );
    let (first, second) = tokio::task::block_in_place(|| {
        (
            Bridge::start_as(dir.path(), &config, "bridge-0"),
            Bridge::start_as(dir.path(), &config, "bridge-1"),
        )
    });
    let device = device(broker.port);
    for id in 0..200 {
        device.publish(reading(id)).await.expect("acknowledged");
    }
    let deadline = std::time::Instant::now() + PATIENCE;
    let forwarded = |bridge: &Bridge| bridge.status()["forwarded"].as_u64().unwrap_or(0);
    // The rows show before a replica counts its batch as forwarded.
    while probe.rows().await.len() < 200 || forwarded(&first) + forwarded(&second) < 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} rows, forwarded {} and {}",
            probe.rows().await.len(),
            forwarded(&first),
            forwarded(&second)
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let (a, b) = (forwarded(&first), forwarded(&second));
    assert_eq!(a + b, 200, "each message forwarded once");
    assert!(a > 0 && b > 0, "both replicas took part: {a} and {b}");
}

/// SIGTERM mid-stream: the bridge writes and acknowledges what it holds,
/// then exits; after a restart nothing is missing, and nothing reaches the
/// sink twice (what arrived after the signal was left unacknowledged, so
/// the broker sends it again, but it was never written).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_what_it_holds() {
    let Some(mut probe) = PostgresProbe::start().await else {
        return;
    };
    let mut harness = scenario::Harness::start(&probe).await;
    // The stream flows into the table when the signal comes.
    let stream = scenario::Stream::start(harness.broker.port, 300);
    scenario::wait_for_ids(&mut probe, 0..20, &harness).await;
    tokio::task::block_in_place(|| harness.bridge.terminate());
    assert!(
        harness.bridge.log_text().contains("stopped"),
        "{}",
        harness.bridge.log_text()
    );
    tokio::task::block_in_place(|| harness.bridge.restart());
    stream.advance(50, "after the restart").await;
    let published = stream.finish().await;
    scenario::wait_for_ids(&mut probe, 0..published, &harness).await;
    // `deduplicated` is counted once a write is committed: wait until the
    // restarted bridge wrote all it received (redeliveries included).
    let status = harness
        .bridge
        .wait_for_status("all received written", |s| {
            s["received"].as_u64().is_some_and(|received| {
                s["routes"]["readings"]["forwarded"].as_u64() == Some(received)
            })
        })
        .await;
    assert_eq!(
        status["routes"]["readings"]["deduplicated"], 0,
        "a clean stop acknowledges all it wrote: {status}"
    );
}
