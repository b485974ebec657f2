//! Starting and stopping the broker: open the store, bind the listeners,
//! accept connections, and shut everything down in order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::broker::Broker;
use crate::config::{Config, FsyncMode};
use crate::connection;
use crate::log::Logger;
use crate::store::{FsyncPolicy, Store};
use crate::sys;

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the persistence store in {dir}: {source}")]
    Store {
        dir: String,
        source: crate::store::StoreError,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A started broker. Dropping it does not stop it; call [`shutdown`].
///
/// [`shutdown`]: RunningBroker::shutdown
pub struct RunningBroker {
    pub broker: Arc<Broker>,
    local_addrs: Vec<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl RunningBroker {
    /// The addresses the listeners are bound to (useful with port 0).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// Stops accepting, disconnects every client (5.0 clients receive
    /// DISCONNECT 0x8B), and flushes the store.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        let deadline = tokio::time::sleep(Duration::from_secs(10));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                next = self.tasks.join_next() => if next.is_none() { break },
                _ = &mut deadline => { self.tasks.abort_all(); break }
            }
        }
        if let Some(store) = &self.broker.store {
            if let Err(e) = store.flush().await {
                self.broker
                    .logger
                    .error(&format!("Error flushing the persistence store: {e}."));
            }
        }
        self.broker.logger.terminating();
    }
}

/// Opens the store, restores state, binds every listener and starts
/// serving. Fails without side effects on clients if any listener cannot
/// bind.
pub async fn start(config: Config, logger: Logger) -> Result<RunningBroker, StartError> {
    let (store, recovered) = if config.persistence.enabled {
        let p = &config.persistence;
        let policy = match p.fsync {
            FsyncMode::Always => FsyncPolicy::Always,
            FsyncMode::Interval => {
                FsyncPolicy::Interval(Duration::from_millis(p.fsync_interval_ms))
            }
            FsyncMode::Never => FsyncPolicy::Never,
        };
        let (store, recovered) =
            Store::open(&p.dir, policy, p.compact_after_bytes).map_err(|source| {
                StartError::Store {
                    dir: p.dir.display().to_string(),
                    source,
                }
            })?;
        (Some(store), Some(recovered))
    } else {
        (None, None)
    };

    let mut listeners = Vec::new();
    for l in &config.listeners {
        let listener = TcpListener::bind(l.bind)
            .await
            .map_err(|source| StartError::Bind {
                addr: l.bind,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: l.bind,
            source,
        })?;
        logger.listening(addr);
        listeners.push((listener, addr));
    }

    let broker = Arc::new(Broker::new(config, logger, store));
    if let Some(recovered) = recovered {
        broker.restore(recovered);
    }
    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let local_addrs = listeners.iter().map(|(_, a)| *a).collect();
    for (listener, addr) in listeners {
        tasks.spawn(accept_loop(
            broker.clone(),
            listener,
            addr,
            shutdown_rx.clone(),
        ));
    }
    if broker.config.sys.interval_secs > 0 {
        tasks.spawn(sys::run(broker.clone(), shutdown_rx.clone()));
    }
    broker.logger.running();
    Ok(RunningBroker {
        broker,
        local_addrs,
        shutdown,
        tasks,
    })
}

async fn accept_loop(
    broker: Arc<Broker>,
    listener: TcpListener,
    addr: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    connections.spawn(connection::serve(
                        broker.clone(),
                        stream,
                        peer,
                        addr.port(),
                        shutdown.clone(),
                    ));
                }
                Err(e) => {
                    // Out of file descriptors and similar: back off briefly.
                    broker.logger.warning(&format!("Error accepting a connection on port {}: {e}.", addr.port()));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            // Reap finished connection tasks so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}
