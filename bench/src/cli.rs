//! Command-line options shared by both generators (`kubemqtt-bench` and
//! `kubemqtt-bench-rumqttc`), so that the same arguments mean the same run
//! whichever client library carries it, and the process around a run:
//! file-descriptor limit, runtime, report on standard output.

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{ArgAction, Args};
use serde::Serialize;

use crate::client::ClientOptions;
use crate::codec::QoS;
use crate::payload;
use crate::run::{Settings, Workload};
use crate::stats::Report;
use crate::template::TopicTemplate;

/// Largest packet accepted from a broker.
pub const MAX_PACKET_SIZE: usize = 1 << 20;

/// File descriptors kept for the process itself beyond one per connection.
const SPARE_FDS: u64 = 64;

/// How clients connect.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Broker address (host:port); the only address contacted, except for
    /// the subscribers of a run with --sub-broker.
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

    /// Client identifier prefix [default: kmqb and the process id].
    #[arg(long)]
    client_prefix: Option<String>,

    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,

    /// No progress lines.
    #[arg(long)]
    quiet: bool,

    /// The subscribers' broker, for the commands that take `--sub-broker`.
    #[arg(skip)]
    sub_broker: Option<String>,
}

/// Where the subscribers connect, for runs across the nodes of a cluster.
#[derive(Debug, Args)]
pub struct SubBrokerArg {
    /// Broker address (host:port) of the subscribers; the publishers use
    /// --broker. For a cluster: publishers on one node, subscribers on
    /// another [default: --broker].
    #[arg(long, value_name = "ADDR")]
    sub_broker: Option<String>,
}

/// What publishers send and for how long.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// QoS of publications and subscriptions.
    #[arg(short = 'q', long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,

    /// Payload size in bytes: at least 8 (the send time stamp); from 16 on,
    /// payloads also carry the message's identity, so duplicates are
    /// counted.
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

/// `conn`: idle connections.
#[derive(Debug, Args)]
pub struct ConnCmd {
    /// Number of connections.
    #[arg(short = 'n', long, default_value_t = 1000)]
    pub connections: usize,

    /// Seconds to hold the connections once all were attempted.
    #[arg(long, default_value_t = 10.0, value_parser = non_negative)]
    pub hold: f64,

    #[command(flatten)]
    pub client: ClientArgs,
}

/// `pub`: publishers alone.
#[derive(Debug, Args)]
pub struct PubCmd {
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

/// `sub`: subscribers alone.
#[derive(Debug, Args)]
pub struct SubCmd {
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

/// `p2p`: publisher i to subscriber i.
#[derive(Debug, Args)]
pub struct P2pCmd {
    /// Number of publisher/subscriber pairs.
    #[arg(short = 'n', long, default_value_t = 10)]
    pairs: usize,

    /// Topic template of pair %i (%p: the client prefix, unique per run).
    #[arg(short = 't', long, default_value = "bench/%p/p2p/%i")]
    topic: TopicTemplate,

    #[command(flatten)]
    load: LoadArgs,

    #[command(flatten)]
    sub_broker: SubBrokerArg,

    #[command(flatten)]
    client: ClientArgs,
}

/// `fanout`: one publisher to N subscribers.
#[derive(Debug, Args)]
pub struct FanoutCmd {
    /// Number of subscribers.
    #[arg(short = 'n', long, default_value_t = 10)]
    subscribers: usize,

    /// The one topic (%p: the client prefix, unique per run).
    #[arg(short = 't', long, default_value = "bench/%p/fanout")]
    topic: TopicTemplate,

    #[command(flatten)]
    load: LoadArgs,

    #[command(flatten)]
    sub_broker: SubBrokerArg,

    #[command(flatten)]
    client: ClientArgs,
}

/// `fanin`: N publishers to M consumers of one shared subscription.
#[derive(Debug, Args)]
pub struct FaninCmd {
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
    sub_broker: SubBrokerArg,

    #[command(flatten)]
    client: ClientArgs,
}

pub(crate) fn non_negative(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("`{s}` is not a number >= 0")),
    }
}

pub(crate) fn positive(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("`{s}` is not a number > 0")),
    }
}

/// A payload size that leaves room for the message's identity
/// ([`payload::ID_END`] bytes at least), for the runs that tell each
/// message apart.
pub(crate) fn identified_payload_size(s: &str) -> Result<usize, String> {
    match payload_size(s)? {
        size if size >= payload::ID_END => Ok(size),
        _ => Err(format!(
            "`{s}`: payload size must be at least {} bytes here (time stamp and message identity)",
            payload::ID_END
        )),
    }
}

pub(crate) fn payload_size(s: &str) -> Result<usize, String> {
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

/// A workload and how its clients connect, once the command line is
/// understood.
pub type Planned = (Workload, ClientArgs);

impl PubCmd {
    /// The workload of this command.
    pub fn plan(self) -> Planned {
        let w = self.load.workload(
            "pub",
            self.publishers,
            0,
            self.topic.clone(),
            self.topic,
            None,
        );
        (w, self.client)
    }
}

impl SubCmd {
    /// The workload of this command.
    pub fn plan(self) -> Planned {
        let load = LoadArgs {
            qos: self.qos,
            size: payload::STAMP_LEN,
            rate: 0.0,
            duration: self.duration,
            count: None,
            inflight: 1,
            drain: 0.0,
        };
        let w = load.workload(
            "sub",
            0,
            self.subscribers,
            self.topic.clone(),
            self.topic,
            None,
        );
        (w, self.client)
    }
}

impl P2pCmd {
    /// The workload of this command; the topic must contain `%i`.
    pub fn plan(self) -> Result<Planned, String> {
        if !self.topic.has_index() {
            return Err("the p2p topic template needs %i (pair i uses topic i)".into());
        }
        let w = self.load.workload(
            "p2p",
            self.pairs,
            self.pairs,
            self.topic.clone(),
            self.topic,
            Some(1),
        );
        Ok((w, self.client.with_sub_broker(self.sub_broker)))
    }
}

impl FanoutCmd {
    /// The workload of this command.
    pub fn plan(self) -> Planned {
        let fan_out = Some(self.subscribers as u64);
        let w = self.load.workload(
            "fanout",
            1,
            self.subscribers,
            self.topic.clone(),
            self.topic,
            fan_out,
        );
        (w, self.client.with_sub_broker(self.sub_broker))
    }
}

impl FaninCmd {
    /// The workload of this command.
    pub fn plan(self) -> Planned {
        let w = self.load.workload(
            "fanin",
            self.publishers,
            self.subscribers,
            self.topic,
            self.filter,
            Some(1),
        );
        (w, self.client.with_sub_broker(self.sub_broker))
    }
}

pub(crate) async fn resolve(broker: &str) -> Result<SocketAddr, String> {
    let mut addrs = tokio::net::lookup_host(broker)
        .await
        .map_err(|e| format!("cannot resolve broker address `{broker}`: {e}"))?;
    addrs
        .next()
        .ok_or_else(|| format!("broker address `{broker}` resolves to nothing"))
}

impl ClientArgs {
    /// These options with the subscribers' broker of `arg`.
    fn with_sub_broker(self, arg: SubBrokerArg) -> ClientArgs {
        ClientArgs {
            sub_broker: arg.sub_broker,
            ..self
        }
    }

    /// The run settings, for `--broker` given as a comma-separated list:
    /// the first address is `client.addr`, all of them are returned in order.
    pub async fn settings_with_brokers(
        mut self,
    ) -> Result<(Arc<Settings>, Vec<SocketAddr>), String> {
        let mut addrs = Vec::new();
        for broker in self.broker.split(',').map(str::trim) {
            addrs.push(resolve(broker).await?);
        }
        self.broker = addrs[0].to_string();
        Ok((self.settings().await?, addrs))
    }

    /// The run settings: resolves the broker addresses.
    pub async fn settings(self) -> Result<Arc<Settings>, String> {
        let addr = resolve(&self.broker).await?;
        let sub_addr = match &self.sub_broker {
            Some(sub_broker) => resolve(sub_broker).await?,
            None => addr,
        };
        Ok(Arc::new(Settings {
            client: ClientOptions {
                addr,
                keep_alive: self.keepalive,
                clean_session: self.clean_session,
                username: self.username,
                password: self.password,
                timeout: Duration::from_secs_f64(self.connect_timeout),
                max_packet_size: MAX_PACKET_SIZE,
            },
            sub_addr,
            conn_rate: self.conn_rate,
            client_prefix: self
                .client_prefix
                .unwrap_or_else(|| format!("kmqb{}", std::process::id())),
            progress: !self.quiet,
        }))
    }
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

/// A report a command prints: as text, or as one JSON object.
pub trait Outcome: Serialize {
    /// Human-readable, one aspect per line.
    fn to_text(&self) -> String;
}

impl Outcome for Report {
    fn to_text(&self) -> String {
        Report::to_text(self)
    }
}

/// Runs `run` on a multi-threaded runtime with enough file descriptors for
/// `connections`, then prints its report (as JSON with `json`). Exit code 1
/// if the run could not be carried out, 0 otherwise (errors during the run
/// are in the report).
pub fn run_and_print<R: Outcome>(
    connections: usize,
    json: bool,
    run: impl Future<Output = Result<R, String>>,
) -> ExitCode {
    raise_fd_limit(connections);
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
    let report = match runtime.block_on(run) {
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

#[cfg(test)]
mod tests {
    use clap::{Parser, Subcommand};

    use super::*;

    #[derive(Debug, Parser)]
    struct TestCli {
        #[command(subcommand)]
        command: TestCommand,
    }

    #[derive(Debug, Subcommand)]
    enum TestCommand {
        P2p(P2pCmd),
        Fanout(FanoutCmd),
        Fanin(FaninCmd),
    }

    fn plan(args: &[&str]) -> Planned {
        let cli = TestCli::try_parse_from([&["test"], args].concat()).expect("valid arguments");
        match cli.command {
            TestCommand::P2p(c) => c.plan().expect("a p2p plan"),
            TestCommand::Fanout(c) => c.plan(),
            TestCommand::Fanin(c) => c.plan(),
        }
    }

    #[tokio::test]
    async fn sub_broker_moves_only_the_subscribers() {
        for command in ["p2p", "fanout", "fanin"] {
            let (_, args) = plan(&[
                command,
                "-b",
                "127.0.0.1:1001",
                "--sub-broker",
                "127.0.0.1:1002",
            ]);
            let settings = args.settings().await.expect("settings");
            assert_eq!(settings.client.addr.port(), 1001, "{command}");
            assert_eq!(settings.sub_addr.port(), 1002, "{command}");
        }
        let (_, args) = plan(&["p2p", "-b", "127.0.0.1:1001"]);
        let settings = args.settings().await.expect("settings");
        assert_eq!(settings.sub_addr, settings.client.addr, "default: --broker");
    }

    #[tokio::test]
    async fn a_sub_broker_that_does_not_resolve_is_an_error() {
        let (_, args) = plan(&["fanout", "--sub-broker", "no-port-here"]);
        let error = args.settings().await.expect_err("unresolvable");
        assert!(error.contains("no-port-here"), "{error}");
    }
}
