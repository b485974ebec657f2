//! Wiring: the routes, the source, the command sources and the HTTP
//! server, and a clean stop on SIGTERM.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use crate::commands::{self, Commands};
use crate::config::{BridgeConfig, CommandSource};
use crate::metrics::Metrics;
use crate::mqtt::Publisher;
use crate::route::{self, Route};
use crate::sink::Sink;
use crate::source::{self, RouteInput};

/// Why the bridge could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The HTTP address could not be bound.
    #[error("cannot listen on {bind}: {source}")]
    Bind {
        /// The address.
        bind: String,
        /// Why.
        source: std::io::Error,
    },
    /// A sink could not be set up (bad TLS file, bad URL).
    #[error("route {route}: {message}")]
    Sink {
        /// The route.
        route: String,
        /// Why.
        message: String,
    },
    /// A secret could not be read.
    #[error(transparent)]
    Secret(#[from] crate::secrets::SecretError),
}

/// Runs the bridge until `shutdown` turns true; returns once every message
/// taken from the broker is committed and acknowledged.
pub async fn run(config: BridgeConfig, shutdown: watch::Receiver<bool>) -> Result<(), StartError> {
    let metrics = Arc::new(Metrics::new());
    let route_names: Vec<String> = config.routes.iter().map(|r| r.name.clone()).collect();
    metrics.declare_routes(route_names.iter().map(String::as_str));
    let client_id = source::client_id(&config);
    // Dead letters and commands go out on a connection of their own.
    let publisher = Arc::new(Publisher::new(source::endpoint(
        &config,
        format!("{client_id}-pub"),
    )));

    let window = usize::from(config.broker.receive_maximum);
    let mut inputs = Vec::new();
    let mut route_tasks = Vec::new();
    for route_config in &config.routes {
        let sink = Sink::new(&config.name, route_config).map_err(|e| StartError::Sink {
            route: route_config.name.clone(),
            message: e.message,
        })?;
        let compiled = route_config
            .compile()
            .map_err(|(field, message)| StartError::Sink {
                route: route_config.name.clone(),
                message: format!("{field}: {message}"),
            })?;
        let (sender, receiver) = mpsc::channel(window + route_config.batch.max_messages);
        let route = Route {
            name: route_config.name.clone(),
            compiled,
            sink,
            dead_letter: route::dead_letter(route_config.dead_letter.as_ref(), &publisher),
            batch: route_config.batch.clone(),
            retry: route_config.retry.clone(),
            metrics: metrics.clone(),
        };
        route_tasks.push(tokio::spawn(route.run(receiver)));
        inputs.push(RouteInput {
            filters: route_config.filters.clone(),
            sender,
        });
    }

    let mut http_publish = None;
    let mut command_tasks = Vec::new();
    for command in &config.commands {
        let commands = Commands::new(command, publisher.clone(), metrics.clone()).map_err(|e| {
            StartError::Sink {
                route: command.name.clone(),
                message: e.to_string(),
            }
        })?;
        match &command.from {
            CommandSource::Http { token_file } => {
                http_publish = Some((commands, token_file.clone()));
            }
            _ => command_tasks.push(tokio::spawn(commands::run(
                command.clone(),
                commands,
                shutdown.clone(),
            ))),
        }
    }

    let listener = tokio::net::TcpListener::bind(&config.http.bind)
        .await
        .map_err(|source| StartError::Bind {
            bind: config.http.bind.clone(),
            source,
        })?;
    tracing::info!(
        "kubemqtt-bridge {} on {}:{} as {client_id}; HTTP on {}",
        config.name,
        config.broker.host,
        config.broker.port,
        config.http.bind
    );
    let app = crate::server::router(Arc::new(crate::server::AppState {
        metrics: metrics.clone(),
        routes: route_names,
        publish: http_publish,
    }));
    let mut server_shutdown = shutdown.clone();
    let server = tokio::spawn(async move {
        let stop = async move {
            while !*server_shutdown.borrow() {
                if server_shutdown.changed().await.is_err() {
                    break;
                }
            }
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!("HTTP server: {e}");
        }
    });

    source::run(&config, inputs, metrics, shutdown).await?;
    for task in route_tasks.into_iter().chain(command_tasks) {
        let _ = task.await;
    }
    let _ = server.await;
    tracing::info!("stopped");
    Ok(())
}
