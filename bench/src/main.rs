//! `kubemqtt-bench`: load generator and benchmark for any MQTT 3.1.1 broker.
//!
//! See `kubemqtt-bench --help` and docs/benchmarks.md.

mod client;
mod codec;
mod payload;
mod run;
mod stats;
mod template;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand};

use crate::client::ClientOptions;
use crate::codec::QoS;
use crate::run::{Settings, Workload};
use crate::stats::Report;
use crate::template::TopicTemplate;

/// Largest packet accepted from a broker.
const MAX_PACKET_SIZE: usize = 1 << 20;

/// File descriptors kept for the process itself beyond one per connection.
const SPARE_FDS: u64 = 64;

/// Load generator and benchmark for MQTT 3.1.1 brokers.
///
/// Publishers stamp their send time into each payload, so subscribers
/// measure end-to-end latency. Only the broker address given is contacted.
/// A progress line goes to standard error every second; the report goes to
/// standard output, as text or (with --json) as one JSON object.
///
/// Connections are plain TCP: TLS is not implemented yet.
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
}

/// How clients connect.
#[derive(Debug, Args)]
struct ClientArgs {
    /// Broker address (host:port); the only address contacted.
    #[arg(short = 'b', long, default_value = "127.0.0.1:1883")]
    broker: String,

    /// Keep alive in seconds (0: none).
    #[arg(long, default_value_t = 60)]
    keepalive: u16,

    /// Clean Session flag.
    #[arg(long, default_value_t = true, action = ArgAction::Set, value_name = "BOOL")]
    clean_session: bool,

    /// User name.
    #[arg(short = 'u', long)]
    username: Option<String>,

    /// Password (sent only with a user name).
    #[arg(short = 'P', long)]
    password: Option<String>,

    /// New connections per second (0: all at once).
    #[arg(long, default_value_t = 1000.0, value_parser = non_negative)]
    conn_rate: f64,

    /// Seconds to wait for CONNACK (TCP connect included) and SUBACK.
    #[arg(long, default_value_t = 10.0, value_parser = positive)]
    connect_timeout: f64,

    /// Client identifier prefix [default: kmqb<pid>].
    #[arg(long)]
    client_prefix: Option<String>,

    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,

    /// No progress lines.
    #[arg(long)]
    quiet: bool,
}

/// What publishers send and for how long.
#[derive(Debug, Args)]
struct LoadArgs {
    /// QoS of publications and subscriptions.
    #[arg(short = 'q', long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,

    /// Payload size in bytes (at least 8: the send time stamp).
    #[arg(short = 's', long, default_value_t = 16, value_parser = payload_size)]
    size: usize,

    /// Messages per second per publisher (0: flat out).
    #[arg(short = 'r', long, default_value_t = 0.0, value_parser = non_negative)]
    rate: f64,

    /// Seconds of publishing; the run stops at this or --count, whichever
    /// comes first.
    #[arg(short = 'd', long, default_value_t = 10.0, value_parser = positive)]
    duration: f64,

    /// Messages per publisher.
    #[arg(long)]
    count: Option<u64>,

    /// QoS 1/2 messages a publisher keeps unacknowledged at most.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..))]
    inflight: u16,

    /// Seconds to wait after publishing for missing deliveries and
    /// acknowledgements.
    #[arg(long, default_value_t = 5.0, value_parser = non_negative)]
    drain: f64,
}

#[derive(Debug, Args)]
struct ConnCmd {
    /// Number of connections.
    #[arg(short = 'n', long, default_value_t = 1000)]
    connections: usize,

    /// Seconds to hold the connections once all were attempted.
    #[arg(long, default_value_t = 10.0, value_parser = non_negative)]
    hold: f64,

    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Args)]
struct PubCmd {
    /// Number of publishers.
    #[arg(short = 'n', long, default_value_t = 1)]
    publishers: usize,

    /// Topic template: %i publisher index, %c client id, %p client prefix,
    /// %% a literal %.
    #[arg(short = 't', long, default_value = "bench/%i")]
    topic: TopicTemplate,

    #[command(flatten)]
    load: LoadArgs,

    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Args)]
struct SubCmd {
    /// Number of subscribers.
    #[arg(short = 'n', long, default_value_t = 1)]
    subscribers: usize,

    /// Filter template: %i subscriber index, %c client id, %p client prefix;
    /// `$share/<group>/` filters make a shared subscription.
    #[arg(short = 't', long, default_value = "bench/#")]
    topic: TopicTemplate,

    /// QoS requested.
    #[arg(short = 'q', long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,

    /// Seconds to listen.
    #[arg(short = 'd', long, default_value_t = 10.0, value_parser = positive)]
    duration: f64,

    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Args)]
struct P2pCmd {
    /// Number of publisher/subscriber pairs.
    #[arg(short = 'n', long, default_value_t = 10)]
    pairs: usize,

    /// Topic template of pair %i (%p: the client prefix, unique per run).
    #[arg(short = 't', long, default_value = "bench/%p/p2p/%i")]
    topic: TopicTemplate,

    #[command(flatten)]
    load: LoadArgs,

    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Args)]
struct FanoutCmd {
    /// Number of subscribers.
    #[arg(short = 'n', long, default_value_t = 10)]
    subscribers: usize,

    /// The one topic (%p: the client prefix, unique per run).
    #[arg(short = 't', long, default_value = "bench/%p/fanout")]
    topic: TopicTemplate,

    #[command(flatten)]
    load: LoadArgs,

    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Args)]
struct FaninCmd {
    /// Number of publishers.
    #[arg(short = 'n', long, default_value_t = 10)]
    publishers: usize,

    /// Number of consumers in the shared-subscription group.
    #[arg(short = 'm', long, default_value_t = 2)]
    subscribers: usize,

    /// Topic template of publisher %i (%p: the client prefix, unique per run).
    #[arg(short = 't', long, default_value = "bench/%p/fanin/%i")]
    topic: TopicTemplate,

    /// Filter of the consumers (must match the topics).
    #[arg(long, default_value = "$share/bench/bench/%p/fanin/+")]
    filter: TopicTemplate,

    #[command(flatten)]
    load: LoadArgs,

    #[command(flatten)]
    client: ClientArgs,
}

fn non_negative(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("`{s}` is not a number >= 0")),
    }
}

fn positive(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("`{s}` is not a number > 0")),
    }
}

fn payload_size(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(v) if (payload::STAMP_LEN..=MAX_PACKET_SIZE / 2).contains(&v) => Ok(v),
        _ => Err(format!(
            "`{s}`: payload size must be between {} and {} bytes",
            payload::STAMP_LEN,
            MAX_PACKET_SIZE / 2
        )),
    }
}

fn qos(value: u8) -> QoS {
    QoS::from_u8(value).unwrap_or(QoS::AtMostOnce)
}

impl LoadArgs {
    /// A workload with these load settings; the caller fills in the shape.
    fn workload(
        &self,
        scenario: &'static str,
        publishers: usize,
        subscribers: usize,
        topic: TopicTemplate,
        filter: TopicTemplate,
        fan_out: Option<u64>,
    ) -> Workload {
        Workload {
            scenario,
            publishers,
            subscribers,
            topic,
            filter,
            pub_qos: qos(self.qos),
            sub_qos: qos(self.qos),
            payload_size: self.size,
            rate: self.rate,
            count: self.count,
            duration: Duration::from_secs_f64(self.duration),
            inflight: usize::from(self.inflight),
            drain: Duration::from_secs_f64(self.drain),
            fan_out,
        }
    }
}

/// What to run, once the command line is understood.
enum Plan {
    Load(Workload),
    Conn { connections: usize, hold: Duration },
}

fn plan(command: Command) -> Result<(Plan, ClientArgs), String> {
    Ok(match command {
        Command::Conn(c) => (
            Plan::Conn {
                connections: c.connections,
                hold: Duration::from_secs_f64(c.hold),
            },
            c.client,
        ),
        Command::Pub(c) => {
            let w = c
                .load
                .workload("pub", c.publishers, 0, c.topic.clone(), c.topic, None);
            (Plan::Load(w), c.client)
        }
        Command::Sub(c) => {
            let load = LoadArgs {
                qos: c.qos,
                size: payload::STAMP_LEN,
                rate: 0.0,
                duration: c.duration,
                count: None,
                inflight: 1,
                drain: 0.0,
            };
            let w = load.workload("sub", 0, c.subscribers, c.topic.clone(), c.topic, None);
            (Plan::Load(w), c.client)
        }
        Command::P2p(c) => {
            if !c.topic.has_index() {
                return Err("the p2p topic template needs %i (pair i uses topic i)".into());
            }
            let w = c
                .load
                .workload("p2p", c.pairs, c.pairs, c.topic.clone(), c.topic, Some(1));
            (Plan::Load(w), c.client)
        }
        Command::Fanout(c) => {
            let fan_out = Some(c.subscribers as u64);
            let w = c.load.workload(
                "fanout",
                1,
                c.subscribers,
                c.topic.clone(),
                c.topic,
                fan_out,
            );
            (Plan::Load(w), c.client)
        }
        Command::Fanin(c) => {
            let w = c.load.workload(
                "fanin",
                c.publishers,
                c.subscribers,
                c.topic,
                c.filter,
                Some(1),
            );
            (Plan::Load(w), c.client)
        }
    })
}

/// Raises the open-file limit to its hard maximum; warns when it cannot
/// cover `connections`.
fn raise_fd_limit(connections: usize) {
    let needed = connections as u64 + SPARE_FDS;
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < needed => eprintln!(
            "warning: the open-file limit is {limit}, {connections} connections need about {needed}"
        ),
        Ok(_) => {}
        Err(e) => eprintln!("warning: cannot raise the open-file limit: {e}"),
    }
}

async fn resolve(broker: &str) -> Result<SocketAddr, String> {
    let mut addrs = tokio::net::lookup_host(broker)
        .await
        .map_err(|e| format!("cannot resolve broker address `{broker}`: {e}"))?;
    addrs
        .next()
        .ok_or_else(|| format!("broker address `{broker}` resolves to nothing"))
}

async fn execute(plan: Plan, args: ClientArgs) -> Result<Report, String> {
    let addr = resolve(&args.broker).await?;
    let settings = Arc::new(Settings {
        client: ClientOptions {
            addr,
            keep_alive: args.keepalive,
            clean_session: args.clean_session,
            username: args.username,
            password: args.password,
            timeout: Duration::from_secs_f64(args.connect_timeout),
            max_packet_size: MAX_PACKET_SIZE,
        },
        conn_rate: args.conn_rate,
        client_prefix: args
            .client_prefix
            .unwrap_or_else(|| format!("kmqb{}", std::process::id())),
        progress: !args.quiet,
    });
    Ok(match plan {
        Plan::Conn { connections, hold } => run::run_conn(settings, connections, hold).await,
        Plan::Load(workload) => run::run_load(settings, Arc::new(workload)).await,
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (plan, args) = match plan(cli.command) {
        Ok(planned) => planned,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let connections = match &plan {
        Plan::Conn { connections, .. } => *connections,
        Plan::Load(w) => w.publishers + w.subscribers,
    };
    raise_fd_limit(connections);
    let json = args.json;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = match runtime.block_on(execute(plan, args)) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        match serde_json::to_string(&report) {
            Ok(line) => println!("{line}"),
            Err(e) => {
                eprintln!("error: cannot encode the report: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", report.to_text());
    }
    ExitCode::SUCCESS
}
