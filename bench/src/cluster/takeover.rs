//! `takeover`: a client id connected on one node connects again on
//! another; MQTT allows one connection per client id, so the broker closes
//! the first.
//!
//! Each round uses a new client id: it connects on `--broker`, waits
//! `--pause` seconds, then connects again on `--takeover-broker`. Timed from
//! that second CONNECT: its CONNACK, and the moment the first connection is
//! closed by the broker (end of stream or reset seen by the client). A
//! round whose second CONNECT is refused, or whose first connection stays
//! open `--close-timeout` seconds, is counted as failed.

use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::cli::{self, ClientArgs, Outcome};
use crate::client::{Connection, Reader};
use crate::stats::{Latencies, Percentiles};

use super::{options_at, wipe_session};

/// `takeover`: the same client id on another node.
#[derive(Debug, Args)]
pub struct TakeoverCmd {
    /// Where the second connection of each round goes [default: --broker].
    #[arg(long, value_name = "ADDR")]
    pub takeover_broker: Option<String>,

    /// Rounds, each with its own client id.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,

    /// Seconds between the first connection's CONNACK and the second
    /// CONNECT.
    #[arg(long, default_value_t = 0.5, value_parser = cli::non_negative)]
    pub pause: f64,

    /// Seconds to wait for the first connection to be closed.
    #[arg(long, default_value_t = 10.0, value_parser = cli::positive)]
    pub close_timeout: f64,

    #[command(flatten)]
    pub client: ClientArgs,
}

/// What a `takeover` run measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TakeoverReport {
    pub scenario: &'static str,
    /// Where the first connection of each round went.
    pub broker: String,
    /// Where the second one went.
    pub takeover_broker: String,
    /// Whether the client ids had persistent sessions (Clean Session off).
    pub persistent: bool,
    pub rounds: u32,
    /// Rounds where both times were measured.
    pub completed: u32,
    /// Second CONNECT to its CONNACK, microseconds.
    pub connack: Option<Percentiles>,
    /// Second CONNECT to the first connection closed, microseconds.
    pub old_closed: Option<Percentiles>,
    /// Rounds whose second connection failed (refused, timed out).
    pub refused: u32,
    /// Rounds whose first connection was still open after the timeout.
    pub not_closed: u32,
    /// Rounds whose first connection was closed before the second CONNECT.
    pub closed_early: u32,
    /// Rounds whose first connection could not be opened.
    pub setup_failures: u32,
    /// The first distinct error messages.
    pub error_samples: Vec<String>,
}

impl Outcome for TakeoverReport {
    fn to_text(&self) -> String {
        let p = |p: &Option<Percentiles>| {
            p.as_ref().map_or("-".to_string(), |p| {
                format!(
                    "p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
                    p.p50_us as f64 / 1000.0,
                    p.p99_us as f64 / 1000.0,
                    p.max_us as f64 / 1000.0
                )
            })
        };
        let mut text = format!(
            "takeover: first on {}, then on {}  ({} rounds, {} sessions)\n\
             CONNACK      {}\n\
             old closed   {}\n\
             failed       {} refused, {} not closed, {} closed early, {} not set up\n",
            self.broker,
            self.takeover_broker,
            self.rounds,
            if self.persistent {
                "persistent"
            } else {
                "clean"
            },
            p(&self.connack),
            p(&self.old_closed),
            self.refused,
            self.not_closed,
            self.closed_early,
            self.setup_failures,
        );
        for e in &self.error_samples {
            text.push_str(&format!("error        {e}\n"));
        }
        text
    }
}

/// Runs the rounds one after the other.
pub async fn run(cmd: TakeoverCmd) -> Result<TakeoverReport, String> {
    let settings = cmd.client.settings().await?;
    let first_addr = settings.client.addr;
    let second_addr = match &cmd.takeover_broker {
        Some(addr) => cli::resolve(addr).await?,
        None => first_addr,
    };
    let base = &settings.client;
    let persistent = !base.clean_session;
    let pause = Duration::from_secs_f64(cmd.pause);
    let close_timeout = Duration::from_secs_f64(cmd.close_timeout);
    let (connacks, closes) = (Latencies::new(), Latencies::new());
    let mut report = TakeoverReport {
        scenario: "takeover",
        broker: first_addr.to_string(),
        takeover_broker: second_addr.to_string(),
        persistent,
        rounds: cmd.rounds,
        completed: 0,
        connack: None,
        old_closed: None,
        refused: 0,
        not_closed: 0,
        closed_early: 0,
        setup_failures: 0,
        error_samples: Vec::new(),
    };
    let note = |report: &mut TakeoverReport, e: String| {
        if report.error_samples.len() < 5 && !report.error_samples.contains(&e) {
            report.error_samples.push(e);
        }
    };
    let first_options = options_at(base, first_addr, base.clean_session);
    let second_options = options_at(base, second_addr, base.clean_session);
    for round in 0..cmd.rounds {
        let client_id = format!("{}-t{round}", settings.client_prefix);
        let (first, _) = match Connection::open(&first_options, &client_id).await {
            Ok(opened) => opened,
            Err(e) => {
                report.setup_failures += 1;
                note(
                    &mut report,
                    format!("first connection on {first_addr}: {e}"),
                );
                continue;
            }
        };
        // The first connection's writer is kept (dropping it would close
        // the socket); its reader waits for the broker to close it.
        let Connection { reader, writer } = first;
        let closed = watch_close(reader);
        tokio::time::sleep(pause).await;
        let begun = Instant::now();
        let mut closed = closed;
        if closed.try_recv() != Err(oneshot::error::TryRecvError::Empty) {
            report.closed_early += 1;
            note(
                &mut report,
                "first connection ended before the takeover".into(),
            );
            continue;
        }
        let second = match Connection::open(&second_options, &client_id).await {
            Ok((connection, took)) => {
                connacks.record(took);
                Some(connection)
            }
            Err(e) => {
                report.refused += 1;
                note(
                    &mut report,
                    format!("second connection on {second_addr}: {e}"),
                );
                None
            }
        };
        match tokio::time::timeout_at((begun + close_timeout).into(), closed).await {
            Ok(Ok(Some(at))) => {
                closes.record(at.saturating_duration_since(begun));
                if second.is_some() {
                    report.completed += 1;
                }
            }
            Ok(_) => {
                report.not_closed += 1;
                note(
                    &mut report,
                    "a packet on the first connection instead of its end".into(),
                );
            }
            Err(_) => {
                report.not_closed += 1;
                note(
                    &mut report,
                    format!("first connection still open after {close_timeout:?}"),
                );
            }
        }
        drop(writer);
        if let Some(connection) = second {
            connection.disconnect().await;
        }
        if persistent {
            if let Err(e) = wipe_session(base, second_addr, &client_id).await {
                note(&mut report, format!("wiping the session: {e}"));
            }
        }
    }
    report.connack = connacks.percentiles();
    report.old_closed = closes.percentiles();
    Ok(report)
}

/// Reads the first connection until the broker closes it; the channel gets
/// the moment (`None` if anything but a close came first: packets are
/// not expected on it, so any is an error).
fn watch_close(mut reader: Reader) -> oneshot::Receiver<Option<Instant>> {
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let outcome = loop {
            match reader.fill().await {
                Ok(()) => match reader.next_packet() {
                    Ok(None) => continue,
                    Ok(Some(_)) | Err(_) => break None,
                },
                Err(_) => break Some(Instant::now()),
            }
        };
        let _ = tx.send(outcome);
    });
    rx
}
