//! `kubemqtt-broker`: run the broker.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio::signal::unix::{signal, SignalKind};

use kubemqtt_broker::certs::CertsRequest;
use kubemqtt_broker::config::LogFormat;
use kubemqtt_broker::log::Logger;
use kubemqtt_broker::reload::{ConfigSource, Overrides};
use kubemqtt_broker::server::StartError;
use kubemqtt_broker::{check, server, trace_log};

/// mimalloc rather than the system allocator: idle connections are many
/// small allocations, and mimalloc packs them tighter than glibc's malloc
/// (docs/benchmarks.md, memory per connection).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// KubeMQTT broker: MQTT 3.1, 3.1.1 and 5.0.
///
/// Without a configuration file it runs like mosquitto 2.0's local-only mode:
/// one listener on 127.0.0.1:1883, anonymous clients allowed, nothing
/// persisted. With `-c` everything comes from the file (see
/// docs/configuration.md); anonymous access is then off unless the file
/// turns it on.
#[derive(Debug, Parser)]
#[command(
    name = "kubemqtt-broker",
    version,
    after_help = EXIT_STATUS_HELP,
    args_conflicts_with_subcommands = true
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,

    /// TOML configuration file. The container image sets
    /// KUBEMQTT_CONFIG=/etc/kubemqtt/broker.toml.
    #[arg(
        short = 'c',
        long = "config",
        value_name = "FILE",
        env = "KUBEMQTT_CONFIG"
    )]
    config: Option<PathBuf>,

    /// Log every packet received and sent (like `mosquitto -v`).
    #[arg(short = 'v', long = "verbose")]
    verbose: bool,

    /// Log line format: `text` (mosquitto's) or `json` (one object a line).
    #[arg(long = "log-format", value_name = "FORMAT", value_parser = ["text", "json"])]
    log_format: Option<String>,

    /// Let clients connect without a user name, whatever the file says
    /// (the container image's default configuration has it off).
    #[arg(
        long = "allow-anonymous",
        env = "KUBEMQTT_ALLOW_ANONYMOUS",
        value_parser = clap::builder::BoolishValueParser::new(),
        num_args = 0..=1,
        default_missing_value = "true",
        default_value = "false",
        value_name = "BOOL"
    )]
    allow_anonymous: bool,

    /// Check the configuration file and every file it names (certificates,
    /// keys, CA bundles, password, credentials, ACL and admin token files),
    /// print each problem with its file and line, and exit: 0 when all is
    /// well, 3 otherwise.
    #[arg(long = "check-config", requires = "config")]
    check_config: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a CA, a server certificate and client certificates (all X.509
    /// v3) for a local TLS listener, and print the listener to add to
    /// broker.toml. A CA already in the directory is reused, so run it again
    /// to add clients.
    Certs(CertsArgs),
}

#[derive(Debug, clap::Args)]
struct CertsArgs {
    /// Directory of the files (created if missing).
    #[arg(long, value_name = "DIR", default_value = "certs")]
    dir: PathBuf,

    /// A DNS name of the server certificate; repeat for more. Without
    /// `--dns` and `--ip`: localhost, 127.0.0.1 and ::1 (a server
    /// certificate already in the directory is then kept).
    #[arg(long = "dns", value_name = "NAME")]
    dns: Vec<String>,

    /// An IP address of the server certificate; repeat for more.
    #[arg(long = "ip", value_name = "ADDRESS")]
    ips: Vec<IpAddr>,

    /// Write NAME.crt and NAME.key, a client certificate whose subject CN
    /// is NAME (the user name with `username_from = "cn"`); repeat for more.
    #[arg(long = "client", value_name = "NAME")]
    clients: Vec<String>,

    /// Days the server and client certificates are valid (the CA: ten years).
    #[arg(long, value_name = "DAYS", default_value_t = 365)]
    days: u32,
}

/// `kubemqtt-broker certs`.
fn certs(args: CertsArgs) -> ExitCode {
    let request = CertsRequest {
        dir: args.dir,
        dns: args.dns,
        ips: args.ips,
        clients: args.clients,
        days: args.days,
    };
    match kubemqtt_broker::certs::run(&request) {
        Ok(written) => {
            print!("{}", kubemqtt_broker::certs::summary(&request, &written));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--help`'s closing words.
const EXIT_STATUS_HELP: &str = "\
Exit status:
  0  stopped by SIGTERM or SIGINT after draining; or --check-config found nothing wrong
  1  could not start (a port in use, the persistence store) or failed while running
  2  a command-line mistake
  3  the configuration file, or a file it names (certificate, key, CA bundle,
     password, credentials, ACL or admin token file), is invalid or unreadable";

/// Exit status 3: a configuration problem (see [`EXIT_STATUS_HELP`]).
const EXIT_CONFIG: u8 = 3;

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Command::Certs(certs_args)) = args.command {
        return certs(certs_args);
    }
    let source = ConfigSource {
        path: args.config.clone(),
        overrides: Overrides {
            verbose: args.verbose,
            log_format: match args.log_format.as_deref() {
                Some("json") => Some(LogFormat::Json),
                Some("text") => Some(LogFormat::Text),
                _ => None,
            },
            allow_anonymous: args.allow_anonymous,
        },
    };
    let config = match source.load() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("Error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if args.check_config {
        let file = args.config.unwrap_or_default();
        let problems = check::check_files(&config);
        if problems.is_empty() {
            println!("{}: configuration OK", file.display());
            return ExitCode::SUCCESS;
        }
        for problem in &problems {
            eprintln!("Error: {problem}");
        }
        eprintln!(
            "{}: {} problem(s) in the files it names",
            file.display(),
            problems.len()
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    let logger = Logger::new(&config.log);
    // The store reports fsync and compaction failures through `tracing`.
    if let Err(e) = trace_log::install(logger.clone()) {
        logger.warning(&format!("Cannot route library events to the log: {e}."));
    }
    logger.starting();
    logger.config_loaded(args.config.as_deref());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        // Before anything else: from here a SIGHUP is a reload (once the
        // broker runs), not the end of the process, whose default it is.
        let hangups = signal(SignalKind::hangup());
        let running = match server::start_from(config, source, logger.clone()).await {
            Ok(running) => running,
            Err(e) => {
                logger.error(&format!("Error: {e}."));
                return match e {
                    StartError::Tls { .. } | StartError::AuthFile(_) => ExitCode::from(EXIT_CONFIG),
                    _ => ExitCode::FAILURE,
                };
            }
        };
        let broker = running.broker.clone();
        match hangups {
            Ok(mut hup) => {
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        broker.logger.info(
                            "Received SIGHUP: reloading the configuration, auth and TLS files.",
                        );
                        broker.reload_requested.notify_one();
                    }
                });
            }
            Err(e) => logger.warning(&format!(
                "Cannot handle SIGHUP, reloads need the admin API: {e}."
            )),
        }
        wait_for_signal().await;
        running.shutdown().await;
        ExitCode::SUCCESS
    })
}

/// Resolves on SIGINT or SIGTERM.
async fn wait_for_signal() {
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
