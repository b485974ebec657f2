//! `kubemqtt-bench`: load generator and benchmark for any MQTT 3.1.1 broker.
//!
//! See `kubemqtt-bench --help` and docs/benchmarks.md.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use kubemqtt_bench::cli::{self, ConnCmd, FaninCmd, FanoutCmd, P2pCmd, Planned, PubCmd, SubCmd};
use kubemqtt_bench::cluster::catchup::{self, CatchupCmd};
use kubemqtt_bench::cluster::rolling::{self, RollingCmd};
use kubemqtt_bench::cluster::takeover::{self, TakeoverCmd};
use kubemqtt_bench::run::{self, builtin::Builtin};

/// Load generator and benchmark for MQTT 3.1.1 brokers.
///
/// Publishers stamp their send time into each payload, so subscribers
/// measure end-to-end latency. Only the broker addresses given are
/// contacted.
/// A progress line goes to standard error every second; the report goes to
/// standard output, as text or (with --json) as one JSON object.
///
/// Connections are plain TCP: TLS is not implemented yet. For a cross-check
/// with an independent client library, the same scenarios run with
/// `kubemqtt-bench-rumqttc`.
#[derive(Debug, Parser)]
#[command(name = "kubemqtt-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Open N idle connections at a given rate, hold them, report connect
    /// latency and failures (OMB scenario "conn").
    Conn(ConnCmd),
    /// N publishers on a topic template.
    Pub(PubCmd),
    /// N subscribers on a filter (shared subscriptions allowed), counting
    /// what arrives.
    Sub(SubCmd),
    /// N publishers to N subscribers on N topics (publisher i to subscriber
    /// i).
    P2p(P2pCmd),
    /// 1 publisher to N subscribers of the same topic.
    Fanout(FanoutCmd),
    /// N publishers to M consumers of one shared subscription.
    Fanin(FaninCmd),
    /// Messages queued for an offline persistent session, delivered when
    /// its client comes back (on another node of a cluster with
    /// --resume-broker).
    Catchup(CatchupCmd),
    /// The same client id connecting again (on another node with
    /// --takeover-broker): time to its CONNACK and until the first
    /// connection is closed.
    Takeover(TakeoverCmd),
    /// QoS 1 pairs with persistent subscribers that reconnect whenever
    /// their connection is lost, counting what a rolling restart of the
    /// brokers loses.
    Rolling(RollingCmd),
}

fn load(planned: Result<Planned, String>) -> ExitCode {
    let (workload, args) = match planned {
        Ok(planned) => planned,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let connections = workload.publishers + workload.subscribers;
    let json = args.json;
    cli::run_and_print(connections, json, async move {
        let settings = args.settings().await?;
        Ok(run::run_load(&Builtin, settings, workload.into()).await)
    })
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Conn(c) => {
            let json = c.client.json;
            let (connections, hold) = (c.connections, Duration::from_secs_f64(c.hold));
            cli::run_and_print(connections, json, async move {
                let settings = c.client.settings().await?;
                Ok(run::run_conn(settings, connections, hold).await)
            })
        }
        Command::Pub(c) => load(Ok(c.plan())),
        Command::Sub(c) => load(Ok(c.plan())),
        Command::P2p(c) => load(c.plan()),
        Command::Fanout(c) => load(Ok(c.plan())),
        Command::Fanin(c) => load(Ok(c.plan())),
        Command::Catchup(c) => {
            let json = c.client.json;
            cli::run_and_print(2, json, catchup::run(c))
        }
        Command::Takeover(c) => {
            let json = c.client.json;
            cli::run_and_print(2, json, takeover::run(c))
        }
        Command::Rolling(c) => {
            let (json, connections) = (c.client.json, 2 * c.pairs as usize);
            cli::run_and_print(connections, json, rolling::run(c))
        }
    }
}
