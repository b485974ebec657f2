//! `kubemqtt-bridge -c bridge.toml`: runs a bridge; `--check-config`
//! checks the file and exits.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use kubemqtt_bridge::config::BridgeConfig;

/// Moves MQTT messages into databases, queues and web services, and
/// commands back to devices.
#[derive(Debug, Parser)]
#[command(name = "kubemqtt-bridge", version)]
struct Args {
    /// The configuration file (TOML, or YAML with a .yaml extension).
    #[arg(short, long, default_value = "/etc/kubemqtt-bridge/bridge.toml")]
    config: PathBuf,
    /// Check the configuration file and exit.
    #[arg(long)]
    check_config: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = match BridgeConfig::load(&args.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("kubemqtt-bridge: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        println!("{}: OK", args.config.display());
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("kubemqtt-bridge: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("signal received: stopping after the messages in flight");
            let _ = stop.send(true);
        });
        kubemqtt_bridge::run::run(config, shutdown).await
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("kubemqtt-bridge: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
