//! The HTTP webhook sink against an HTTP server run by the test: signed
//! POSTs, retried on 5xx and while the server is down, not on 4xx.

use crate::common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use common::scenario::{self, unmappable, Probe};
use common::*;
use hmac::{Hmac, KeyInit, Mac};
use kubemqtt_bridge::mqtt::Outbound;
use serde_json::Value;
use sha2::Sha256;

const SECRET: &str = "webhook-secret";

#[derive(Clone, Default)]
struct Received {
    rows: Arc<Mutex<Vec<Value>>>,
    bad_signatures: Arc<Mutex<usize>>,
}

struct HttpProbe {
    port: u16,
    received: Received,
    /// The server's task, and what tells it to shut down.
    server: Option<(
        tokio::task::JoinHandle<()>,
        tokio::sync::oneshot::Sender<()>,
    )>,
    _dir: tempfile::TempDir,
    secret_file: std::path::PathBuf,
}

async fn hook(State(received): State<Received>, headers: HeaderMap, body: String) -> StatusCode {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let signature = headers
        .get("x-kubemqtt-signature")
        .and_then(|v| v.to_str().ok());
    if signature != Some(expected.as_str()) || headers.get("idempotency-key").is_none() {
        *received.bad_signatures.lock().unwrap() += 1;
        return StatusCode::UNAUTHORIZED;
    }
    let Ok(row) = serde_json::from_str::<Value>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    if row["id"] == 1000 {
        // The service refuses this one for good.
        return StatusCode::UNPROCESSABLE_ENTITY;
    }
    received.rows.lock().unwrap().push(row);
    StatusCode::NO_CONTENT
}

impl HttpProbe {
    async fn start() -> HttpProbe {
        let dir = tempfile::tempdir().unwrap();
        let secret_file = dir.path().join("hmac");
        std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
        let mut probe = HttpProbe {
            port: free_port(),
            received: Received::default(),
            server: None,
            _dir: dir,
            secret_file,
        };
        probe.start().await;
        probe
    }
}

impl Probe for HttpProbe {
    fn sink_toml(&self) -> String {
        format!(
            "[routes.sink.http]\nurl = \"http://127.0.0.1:{}/hook\"\nhmac_secret_file = \"{}\"\ntimeout_ms = 2000\n",
            self.port,
            self.secret_file.display()
        )
    }

    fn deduplicates(&self) -> bool {
        false
    }

    async fn rows(&mut self) -> Vec<Value> {
        assert_eq!(
            *self.received.bad_signatures.lock().unwrap(),
            0,
            "a request was not signed right"
        );
        self.received.rows.lock().unwrap().clone()
    }

    /// Shuts the server down as a server does: no new connections, and
    /// the open ones (the bridge's keep-alive connections) closed; returns
    /// once they are.
    async fn stop(&mut self) {
        if let Some((server, shutdown)) = self.server.take() {
            let _ = shutdown.send(());
            server.await.expect("the test's HTTP server stops");
        }
    }

    async fn start(&mut self) {
        let app = Router::new()
            .route("/hook", post(hook))
            .with_state(self.received.clone());
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], self.port)))
            .await
            .expect("the test's HTTP server binds");
        let (shutdown, stopping) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopping.await;
                })
                .await;
        });
        self.server = Some((server, shutdown));
    }

    fn poison(&self) -> Vec<Outbound> {
        vec![unmappable(999), reading(1000)]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_arrive_signed_with_the_mapping_applied() {
    scenario::mapping(HttpProbe::start().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_down_mid_stream_loses_nothing() {
    scenario::sink_restart(HttpProbe::start().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_killed_mid_stream_loses_nothing() {
    scenario::bridge_kill(HttpProbe::start().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_posts_go_to_the_dead_letter_topic() {
    scenario::poison(HttpProbe::start().await).await;
}
