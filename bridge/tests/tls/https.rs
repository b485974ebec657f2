//! An HTTPS server for the webhook sink's TLS tests: rustls, client
//! certificates verified when its [`ServerTls`] asks for them.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::routing::post;
use axum::Router;
use common::pki::{ClientTls, ServerTls};
use common::scenario::{unmappable, Probe};
use common::*;
use kubemqtt_bridge::mqtt::Outbound;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;

use super::common;

/// An HTTPS server collecting the JSON bodies POSTed to `/hook`.
pub struct HttpsTls {
    pub port: u16,
    pub server_tls: ServerTls,
    pub tls: Option<ClientTls>,
    pub rows: Arc<Mutex<Vec<Value>>>,
    pub server: Option<tokio::task::JoinHandle<()>>,
}

/// TLS connections accepted with rustls; a failed handshake (a client
/// that does not trust the server) is skipped.
pub struct TlsListener {
    pub tcp: tokio::net::TcpListener,
    pub acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, address)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, address);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

fn server_config(tls: &ServerTls) -> rustls::ServerConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.server.cert)
        .expect("the server certificate")
        .collect::<Result<_, _>>()
        .expect("PEM");
    let key = PrivateKeyDer::from_pem_file(&tls.server.key).expect("the server key");
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("TLS versions");
    let builder = match &tls.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for certificate in CertificateDer::pem_file_iter(ca).expect("the client CA") {
                roots.add(certificate.expect("PEM")).expect("a CA");
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .expect("a client verifier");
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    builder
        .with_single_cert(chain, key)
        .expect("the server's certificate and key")
}

impl HttpsTls {
    /// The server's certificate names `localhost`, the URL's host.
    pub async fn start(server_tls: ServerTls, tls: Option<ClientTls>) -> HttpsTls {
        let mut probe = HttpsTls {
            port: free_port(),
            server_tls,
            tls,
            rows: Arc::default(),
            server: None,
        };
        Probe::start(&mut probe).await;
        probe
    }

    pub fn url(&self) -> String {
        format!("https://localhost:{}/hook", self.port)
    }
}

impl Probe for HttpsTls {
    fn sink_toml(&self) -> String {
        let mut toml = format!(
            "[routes.sink.http]\nurl = \"{}\"\ntimeout_ms = 2000\n",
            self.url()
        );
        if let Some(tls) = &self.tls {
            toml.push_str(&format!("tls = {}\n", tls.toml()));
        }
        toml
    }

    fn deduplicates(&self) -> bool {
        false
    }

    async fn rows(&mut self) -> Vec<Value> {
        self.rows.lock().unwrap().clone()
    }

    async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
            let _ = server.await;
        }
    }

    async fn start(&mut self) {
        let rows = self.rows.clone();
        let app = Router::new().route(
            "/hook",
            post(move |body: String| async move {
                match serde_json::from_str::<Value>(&body) {
                    Ok(row) => {
                        rows.lock().unwrap().push(row);
                        axum::http::StatusCode::NO_CONTENT
                    }
                    Err(_) => axum::http::StatusCode::BAD_REQUEST,
                }
            }),
        );
        let listener = TlsListener {
            tcp: tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], self.port)))
                .await
                .expect("the test's HTTPS server binds"),
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server_config(&self.server_tls))),
        };
        self.server = Some(tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        }));
    }

    fn poison(&self) -> Vec<Outbound> {
        vec![unmappable(999)]
    }
}
