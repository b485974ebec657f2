//! Starting and stopping the broker: open the store, load the auth files,
//! bind the listeners, serve, reload files when they change, and drain
//! gracefully on shutdown.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::access::Access;
use crate::broker::Broker;
use crate::client::Control;
use crate::cluster::{Cluster, ClusterError};
use crate::config::{Config, FsyncMode};
use crate::listener::{self, Listener};
use crate::log::Logger;
use crate::reload::{self, ConfigSource, ListenerSettings, Reloader};
use crate::store::{FsyncPolicy, Store};
use crate::transport::tls::TlsReloader;
use crate::{admin, sys};

/// The least a draining node gives its handed-off sessions to be followed
/// to the end, even past the drain deadline: the other nodes' grace to read
/// that this node's interest went, and delivering what they routed here.
const FORWARDING_AT_EXIT: Duration = Duration::from_secs(3);

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
    #[error("listener {listener}: {source}")]
    Tls {
        listener: String,
        source: crate::transport::tls::TlsError,
    },
    #[error("{0}")]
    AuthFile(#[from] crate::auth::AuthFileError),
    #[error("cluster: {0}")]
    Cluster(#[from] ClusterError),
}

/// A started broker. Dropping it does not stop it; call [`shutdown`].
///
/// [`shutdown`]: RunningBroker::shutdown
pub struct RunningBroker {
    pub broker: Arc<Broker>,
    local_addrs: Vec<SocketAddr>,
    http_addr: Option<SocketAddr>,
    /// Tells the listeners to stop accepting.
    stop_accepting: watch::Sender<bool>,
    /// Tells every remaining connection to close at once (drain deadline).
    close_all: watch::Sender<bool>,
    listeners: JoinSet<()>,
    background: JoinSet<()>,
}

impl RunningBroker {
    /// The addresses the MQTT listeners are bound to (useful with port 0).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// The address of the HTTP server, if one is configured.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Graceful shutdown: readiness goes false, listeners stop accepting,
    /// clients are disconnected at `drain.rate_per_sec` (5.0 clients get
    /// DISCONNECT 0x8B), sessions are saved, and whatever is left when
    /// `drain.deadline_secs` runs out is closed at once.
    pub async fn shutdown(mut self) {
        let broker = self.broker.clone();
        broker.draining.store(true, Ordering::SeqCst);
        let _ = self.stop_accepting.send(true);
        let deadline = Duration::from_secs(broker.config().drain.deadline_secs);
        let started = tokio::time::Instant::now();
        let drained = tokio::time::timeout(deadline, drain(&broker)).await;
        let _ = self.close_all.send(true);
        if drained.is_err() {
            broker
                .logger
                .warning("Drain deadline reached, closing the remaining connections.");
        }
        if let Some(cluster) = broker.cluster() {
            // The sessions of the clients sent away are in the cluster
            // before this node leaves it.
            let left = deadline
                .saturating_sub(started.elapsed())
                .max(Duration::from_secs(2));
            if !cluster.hand_offs_done(left).await {
                broker
                    .logger
                    .warning("Some sessions were not handed to the cluster before the deadline.");
            }
            // What other nodes routed here for those sessions goes on to
            // them before this node stops reading it.
            let left = deadline
                .saturating_sub(started.elapsed())
                .max(FORWARDING_AT_EXIT);
            if !cluster.forwarding_done(left).await {
                broker.logger.warning(
                    "Some handed-off sessions were still followed here at the deadline; messages routed here for them may be lost.",
                );
            }
            cluster.leave().await;
        }
        let grace = tokio::time::sleep(Duration::from_secs(3));
        tokio::pin!(grace);
        loop {
            tokio::select! {
                next = self.listeners.join_next() => if next.is_none() { break },
                _ = &mut grace => { self.listeners.abort_all(); break }
            }
        }
        self.background.abort_all();
        if let Some(store) = &broker.store {
            if let Err(e) = store.flush().await {
                broker
                    .logger
                    .error(&format!("Error flushing the persistence store: {e}."));
            }
        }
        broker.logger.terminating();
    }
}

/// Disconnects every client, `rate_per_sec` a second, and waits until
/// they are gone. In a cluster they are sent to another node (5.0: 0x9C
/// Use another server) and their sessions go to the cluster; alone, the
/// broker is shutting down (0x8B).
async fn drain(broker: &Arc<Broker>) {
    let rate = broker.config().drain.rate_per_sec;
    let pause = (rate > 0).then(|| Duration::from_secs_f64(1.0 / f64::from(rate)));
    let control = || {
        if broker.cluster().is_some() {
            Control::Relocate
        } else {
            Control::Shutdown
        }
    };
    // Connections, by their client handle, already told to go. Clients
    // whose CONNECT was being handled when the drain began are connected
    // later: every pass looks again. The handles are kept: the address of
    // one freed could be a new connection's.
    let mut told = std::collections::HashMap::new();
    while broker.metrics.clients_connected.get() > 0 {
        let mut any = false;
        for (session, client) in broker.connected_clients() {
            let key = Arc::as_ptr(&client) as usize;
            if told.contains_key(&key) {
                continue;
            }
            told.insert(key, client);
            any = true;
            if session.send_control(control()) {
                if let Some(pause) = pause {
                    tokio::time::sleep(pause).await;
                }
            }
        }
        if !any {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Opens the store, restores state, loads the auth files and TLS
/// certificates, binds every listener and starts serving. Nothing is
/// served if any of it fails. A reload re-reads only the auth and TLS
/// files (the configuration was not read from a file).
pub async fn start(config: Config, logger: Logger) -> Result<RunningBroker, StartError> {
    start_from(config, ConfigSource::default(), logger).await
}

/// As [`start`], for a configuration read from `source`, which a reload
/// (SIGHUP, `POST /api/v1/reload`) reads again.
pub async fn start_from(
    mut config: Config,
    source: ConfigSource,
    logger: Logger,
) -> Result<RunningBroker, StartError> {
    if let Some(line) = reload::resolve_defaults(&mut config) {
        logger.info(&line);
    }
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
    let access = Access::load(&config.auth)?;

    let mut listeners = Vec::new();
    for (index, l) in config.listeners.iter().enumerate() {
        let tls = match &l.tls {
            Some(tls) => Some(Arc::new(
                TlsReloader::load(tls, Some(access.fleet_trust())).map_err(|source| {
                    StartError::Tls {
                        listener: l.display_name(),
                        source,
                    }
                })?,
            )),
            None => None,
        };
        let tcp = listener::bind(&config.listeners, index).map_err(|source| StartError::Bind {
            addr: l.bind,
            source,
        })?;
        let addr = tcp.local_addr().map_err(|source| StartError::Bind {
            addr: l.bind,
            source,
        })?;
        logger.listening(addr);
        let settings = ListenerSettings::new(l, &config.limits);
        let mut bound = l.clone();
        bound.bind = addr;
        listeners.push((
            tcp,
            Listener {
                settings: Arc::new(ArcSwap::from_pointee(settings)),
                name: Arc::from(l.display_name()),
                config: bound,
                tls,
            },
        ));
    }
    let http = match config.http.bind {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { addr, source })?,
        ),
        None => None,
    };
    let http_addr = http.as_ref().and_then(|l| l.local_addr().ok());
    if let Some(addr) = http_addr {
        logger.http_listening(addr, config.http.admin_token_file.is_some());
    }

    let cluster_config = config.cluster.clone();
    let broker = Arc::new(Broker::new(config, logger, store, access));
    broker.metrics.init_known_labels(
        listeners
            .iter()
            .map(|(_, l)| (&*l.name, l.config.protocol.is_tls())),
    );
    broker.metrics.fleets.init(broker.access.fleets().names());
    if let Some(cluster_config) = &cluster_config {
        // Before the sessions are restored: their filters are the node's
        // interest in the cluster.
        let node = broker.config().node_name.clone();
        let cluster = Cluster::start(cluster_config, &node, &broker).await?;
        broker.set_cluster(cluster);
    }
    if let Some(recovered) = recovered {
        broker.restore(recovered);
    }
    let (stop_accepting, stop_rx) = watch::channel(false);
    let (close_all, close_rx) = watch::channel(false);
    let local_addrs = listeners.iter().map(|(_, l)| l.config.bind).collect();
    let tls = listeners
        .iter()
        .filter_map(|(_, l)| l.tls.clone().map(|t| (l.name.clone(), t)))
        .collect();
    let settings = listeners.iter().map(|(_, l)| l.settings.clone()).collect();
    let reloader = Arc::new(Reloader::new(source, settings, tls));
    let mut listener_tasks = JoinSet::new();
    for (tcp, listener) in listeners {
        listener_tasks.spawn(listener::run(
            broker.clone(),
            tcp,
            listener,
            stop_rx.clone(),
            close_rx.clone(),
        ));
    }
    let mut background = JoinSet::new();
    if broker.config().sys.interval_secs > 0 {
        background.spawn(sys::run(broker.clone(), close_rx.clone()));
    }
    background.spawn(reload::run(broker.clone(), reloader.clone()));
    if let Some(http) = http {
        background.spawn(admin::serve(broker.clone(), reloader, http));
    }
    broker.logger.running();
    Ok(RunningBroker {
        broker,
        local_addrs,
        http_addr,
        stop_accepting,
        close_all,
        listeners: listener_tasks,
        background,
    })
}
