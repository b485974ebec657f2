//! The `conn` scenario: many idle connections, opened at a paced rate and
//! held. Only the built-in client runs it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::client::{ClientError, Connection};
use crate::codec::Packet;
use crate::run::builtin::{self, GENERATOR};
use crate::run::{
    connect_slot, connect_span, join_all, sleep_until, Progress, Settings, Shared, WIND_DOWN,
};
use crate::stats::{Counters, Report};

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
            let client_id = format!("{}-c{index}", settings.client_prefix);
            let who = format!("connection {index}");
            let options = &settings.client;
            let Some(mut connection) =
                builtin::open_at(slot, &shared, options, &client_id, &who).await
            else {
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
        generator: GENERATOR.to_string(),
        scenario: "conn".to_string(),
        broker: settings.client.addr.to_string(),
        sub_broker: None,
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
        duplicates: None,
        acked_not_delivered: None,
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
