//! The command line: `kubemqtt-operator run`, `crd` and `render`.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use k8s_openapi::jiff::Timestamp;

use kubemqtt_operator::controller::run::{self, RunConfig, RunError};
use kubemqtt_operator::plan::Settings;
use kubemqtt_operator::render::{self, RenderError};

/// KubeMQTT operator: runs MQTT brokers described by MqttBroker resources.
#[derive(Debug, Parser)]
#[command(name = "kubemqtt-operator", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controller: reconcile MqttBrokers while holding the leader
    /// lease, and serve /metrics, /healthz and /readyz.
    Run(RunArgs),
    /// Print the CustomResourceDefinitions as YAML: all of them (as one
    /// multi-document stream), or the one whose `crds/` file is named.
    Crd {
        /// `mqttbroker.yaml`, `mqttuser.yaml`, `mqttbridge.yaml` or
        /// `mqttdevicefleet.yaml`; all when left out.
        file: Option<String>,
    },
    /// Print, as YAML, every object the operator would create for the
    /// MqttBrokers, MqttUsers and MqttBridges of a file, without a cluster
    /// (for previews and reviews): each broker's objects, each user's
    /// credentials Secret, each bridge's objects (its MqttUser among the
    /// broker's users), and each broker's credentials file as a comment.
    /// Generated certificates and passwords are new on every run.
    Render(RenderArgs),
    /// Device fleets (MqttDeviceFleet), offline: sign a device's
    /// certificate, or print a device's derived secret, for provisioning
    /// at the factory.
    #[command(subcommand)]
    Fleet(crate::fleet::FleetCommand),
}

/// Options of `render`.
#[derive(Debug, Args)]
pub struct RenderArgs {
    /// The manifest: MqttBroker, MqttUser and MqttBridge documents (and
    /// the Secrets they read) in any mix; `-` reads standard input.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub file: PathBuf,
    /// Namespace of the resources that name none (default: `default`).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// The time certificates are issued at, RFC 3339 (default: now).
    #[arg(long, value_name = "TIME")]
    pub now: Option<Timestamp>,
    /// What brokers get when their spec says nothing.
    #[command(flatten)]
    pub defaults: BrokerDefaults,
}

/// Operator-wide settings of the brokers, for `run` and `render`.
#[derive(Debug, Args)]
pub struct BrokerDefaults {
    /// Broker image for brokers that name none (default: the image of this
    /// operator's version).
    #[arg(long, env = "KUBEMQTT_BROKER_IMAGE", value_name = "IMAGE")]
    pub default_image: Option<String>,
    /// Pull Secrets of brokers that name none (repeat, or separate with
    /// commas); each must exist in the broker's namespace.
    #[arg(
        long = "default-image-pull-secret",
        env = "KUBEMQTT_BROKER_IMAGE_PULL_SECRETS",
        value_delimiter = ',',
        value_name = "SECRET"
    )]
    pub default_image_pull_secrets: Vec<String>,
    /// The cluster's DNS domain, for certificate names.
    #[arg(long, env = "KUBEMQTT_CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,
}

impl BrokerDefaults {
    /// The planner's settings.
    fn settings(self) -> Settings {
        let defaults = Settings::default();
        Settings {
            default_image: self.default_image.unwrap_or(defaults.default_image),
            default_image_pull_secrets: self
                .default_image_pull_secrets
                .into_iter()
                .filter(|name| !name.is_empty())
                .collect(),
            cluster_domain: self.cluster_domain,
        }
    }
}

/// Options of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Namespaces whose brokers to manage (repeat the option, or separate
    /// with commas); none means every namespace.
    #[arg(
        long = "namespace",
        env = "KUBEMQTT_WATCH_NAMESPACES",
        value_delimiter = ',',
        value_name = "NAMESPACE"
    )]
    pub namespaces: Vec<String>,
    /// Address of the HTTP server for /metrics, /healthz and /readyz.
    #[arg(
        long,
        env = "KUBEMQTT_HTTP_ADDRESS",
        default_value = "0.0.0.0:8080",
        value_name = "ADDRESS"
    )]
    pub http_address: SocketAddr,
    /// Name of the leader election Lease.
    #[arg(long, env = "KUBEMQTT_LEASE_NAME", default_value = "kubemqtt-operator")]
    pub lease_name: String,
    /// Namespace of the leader election Lease (default: the operator's
    /// own namespace).
    #[arg(long, env = "KUBEMQTT_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// This replica's name in the election and in Events (default: the
    /// host name, which is the pod name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// What brokers get when their spec says nothing.
    #[command(flatten)]
    pub defaults: BrokerDefaults,
    /// Log format. The level comes from `RUST_LOG` (default: info).
    #[arg(long, env = "KUBEMQTT_LOG_FORMAT", default_value = "json")]
    pub log_format: LogFormat,
}

/// How `run` writes its logs.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Text,
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The manifest could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// Reading, checking or planning the broker failed.
    #[error(transparent)]
    Render(#[from] RenderError),
    /// The controller stopped with an error.
    #[error(transparent)]
    Run(#[from] RunError),
    /// The async runtime could not start.
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    /// A `fleet` command failed.
    #[error("{0}")]
    Fleet(String),
    /// `crd` was asked for a file that does not exist.
    #[error("no CRD file `{file}`; the CRD files are: {known}")]
    UnknownCrd { file: String, known: String },
}

/// Runs `cli`, printing its output to standard output.
pub fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Run(args) => {
            init_logging(args.log_format);
            let config = RunConfig {
                namespaces: args.namespaces,
                settings: args.defaults.settings(),
                http_address: args.http_address,
                lease_name: args.lease_name,
                lease_namespace: args.lease_namespace,
                identity: args.identity.unwrap_or_else(host_name),
            };
            let runtime = tokio::runtime::Runtime::new().map_err(CliError::Runtime)?;
            runtime.block_on(run::run(config))?;
            Ok(())
        }
        Command::Crd { file } => {
            let crds = render::crds();
            let known: Vec<&str> = crds.iter().map(|(name, _)| *name).collect();
            let selected: Vec<_> = crds
                .iter()
                .filter(|(name, _)| file.as_deref().is_none_or(|file| file == *name))
                .collect();
            if selected.is_empty() {
                return Err(CliError::UnknownCrd {
                    file: file.unwrap_or_default(),
                    known: known.join(", "),
                });
            }
            for (index, (_, crd)) in selected.into_iter().enumerate() {
                if index > 0 {
                    println!("---");
                }
                print!("{}", render::crd_yaml(crd)?);
            }
            Ok(())
        }
        Command::Fleet(command) => {
            print!("{}", crate::fleet::run(command).map_err(CliError::Fleet)?);
            Ok(())
        }
        Command::Render(args) => {
            let text = read_input(&args.file)?;
            let resources = render::read_resources(&text, args.namespace.as_deref())?;
            let settings = args.defaults.settings();
            let now = args.now.unwrap_or_else(Timestamp::now);
            print!("{}", render::render(&resources, &settings, now)?);
            Ok(())
        }
    }
}

/// Logs to standard error at the level of `RUST_LOG` (default: info).
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().with_current_span(true).init(),
        LogFormat::Text => builder.init(),
    }
}

/// The host name (in a pod, the pod's name), else `kubemqtt-operator`.
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "kubemqtt-operator".to_owned())
}

fn read_input(path: &PathBuf) -> Result<String, CliError> {
    let read_error = |source| CliError::Read {
        path: path.display().to_string(),
        source,
    };
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(read_error)?;
        Ok(text)
    } else {
        std::fs::read_to_string(path).map_err(read_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_args(args: &[&str]) -> RunArgs {
        let cli = Cli::try_parse_from([&["kubemqtt-operator", "run"], args].concat())
            .expect("valid arguments");
        match cli.command {
            Command::Run(args) => args,
            other => panic!("expected run, got {other:?}"),
        }
    }

    #[test]
    fn run_watches_all_namespaces_by_default() {
        let args = run_args(&[]);
        assert!(args.namespaces.is_empty());
        assert_eq!(args.http_address, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(args.lease_name, "kubemqtt-operator");
        assert_eq!(args.lease_namespace, None);
        assert!(matches!(args.log_format, LogFormat::Json));
    }

    #[test]
    fn run_takes_namespaces_repeated_or_comma_separated() {
        let args = run_args(&[
            "--namespace",
            "iot,edge",
            "--namespace",
            "lab",
            "--http-address",
            "127.0.0.1:9090",
            "--lease-namespace",
            "kubemqtt-system",
            "--log-format",
            "text",
        ]);
        assert_eq!(args.namespaces, ["iot", "edge", "lab"]);
        assert_eq!(args.http_address, "127.0.0.1:9090".parse().unwrap());
        assert_eq!(args.lease_namespace.as_deref(), Some("kubemqtt-system"));
        assert!(matches!(args.log_format, LogFormat::Text));
    }
}
