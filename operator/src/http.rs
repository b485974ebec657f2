//! The operator's HTTP server: `/metrics` (Prometheus), `/healthz`
//! (liveness: the process serves HTTP) and `/readyz` (readiness: it has
//! connected to the API server and joined the leader election, as leader
//! or standby).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::metrics::Metrics;

/// Whether the operator is ready; shared with the HTTP server.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Marks the operator ready.
    pub fn set_ready(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    fn is_ready(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

#[derive(Clone)]
struct Shared {
    metrics: Metrics,
    readiness: Readiness,
}

/// The routes of the HTTP server.
pub fn router(metrics: Metrics, readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(Shared { metrics, readiness })
}

/// Serves `router` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, router: Router) -> std::io::Result<()> {
    axum::serve(listener, router).await
}

async fn readyz(State(shared): State<Shared>) -> Response {
    if shared.readiness.is_ready() {
        "ready".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting").into_response()
    }
}

async fn metrics_text(State(shared): State<Shared>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        shared.metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    /// The status code and body of `GET path`.
    async fn get(address: std::net::SocketAddr, path: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(address).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let code = response
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap();
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap();
        (code, body)
    }

    #[tokio::test]
    async fn health_readiness_and_metrics() {
        let metrics = Metrics::new().unwrap();
        metrics.leader.set(1);
        let readiness = Readiness::default();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, router(metrics, readiness.clone())));

        assert_eq!(get(address, "/healthz").await, (200, "ok".to_owned()));
        assert_eq!(get(address, "/readyz").await, (503, "starting".to_owned()));
        readiness.set_ready();
        assert_eq!(get(address, "/readyz").await, (200, "ready".to_owned()));
        let (code, body) = get(address, "/metrics").await;
        assert_eq!(code, 200);
        assert!(body.contains("kubemqtt_operator_leader 1"), "{body}");
        assert_eq!(get(address, "/nope").await.0, 404);
        server.abort();
    }
}
