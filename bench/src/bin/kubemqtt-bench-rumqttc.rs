//! `kubemqtt-bench-rumqttc`: the `kubemqtt-bench` scenarios driven by the
//! rumqttc client library, to cross-check the figures of the built-in
//! client. Same options, same JSON report.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use kubemqtt_bench::cli::{self, FaninCmd, FanoutCmd, P2pCmd, Planned};
use kubemqtt_bench::rumqttc::Rumqttc;
use kubemqtt_bench::run;

/// Load generator for MQTT 3.1.1 brokers built on rumqttc, an independent
/// client library: it runs the p2p, fanout and fanin scenarios of
/// `kubemqtt-bench` with the same options and writes the same report, so
/// that a comparison between brokers does not rest on one client's speed
/// or on one client's reading of the protocol.
///
/// It is slower per message than `kubemqtt-bench` (rumqttc writes and
/// flushes one packet at a time and hands every packet through its event
/// loop), so flat-out figures here measure what a typical rumqttc
/// application would see, and the client may saturate before the broker.
/// Payloads are stamped when queued for rumqttc's event loop, so latency
/// includes the time spent in its request channel (see
/// --request-capacity).
///
/// Counting: sent = PUBLISHes the event loop reports written; acked =
/// PUBACKs (QoS 1) or PUBCOMPs (QoS 2) received; delivered = PUBLISHes
/// received by the subscribers. Clients never reconnect: a connection
/// error ends the client and is reported.
#[derive(Debug, Parser)]
#[command(name = "kubemqtt-bench-rumqttc", version)]
struct Cli {
    /// Capacity of each client's request channel: how many PUBLISHes a
    /// publisher queues ahead of rumqttc's event loop.
    #[arg(long, default_value_t = 100, global = true,
          value_parser = clap::value_parser!(u32).range(1..))]
    request_capacity: u32,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// N publishers to N subscribers on N topics (publisher i to subscriber
    /// i).
    P2p(P2pCmd),
    /// 1 publisher to N subscribers of the same topic.
    Fanout(FanoutCmd),
    /// N publishers to M consumers of one shared subscription.
    Fanin(FaninCmd),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let planned: Result<Planned, String> = match cli.command {
        Command::P2p(c) => c.plan(),
        Command::Fanout(c) => Ok(c.plan()),
        Command::Fanin(c) => Ok(c.plan()),
    };
    let (workload, args) = match planned {
        Ok(planned) => planned,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let driver = Rumqttc {
        request_capacity: cli.request_capacity as usize,
    };
    let connections = workload.publishers + workload.subscribers;
    let json = args.json;
    cli::run_and_print(connections, json, async move {
        let settings = args.settings().await?;
        Ok(run::run_load(&driver, settings, workload.into()).await)
    })
}
