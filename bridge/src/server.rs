//! The bridge's HTTP server: `/metrics` (Prometheus), `/healthz`,
//! `/readyz` (ready once the source session is subscribed), `/status`
//! (totals and the last error as JSON, read by the operator) and, when an
//! `http` command source is configured, `POST /publish`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::commands::Commands;
use crate::metrics::Metrics;
use crate::mqtt::Outbound;
use crate::sink::ErrorKind;

/// What the handlers share.
pub struct AppState {
    /// Metrics and status.
    pub metrics: Arc<Metrics>,
    /// Route names, for `/status`.
    pub routes: Vec<String>,
    /// The `http` command source and the file holding its token.
    pub publish: Option<(Commands, std::path::PathBuf)>,
}

/// The router.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/publish", post(publish))
        .with_state(state)
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.metrics.connected() {
        "ready".into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not connected to the broker",
        )
            .into_response()
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

async fn status(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(state.metrics.status(&state.routes))
}

/// The body of `POST /publish`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishRequest {
    topic: String,
    /// A string is sent as it is; any other JSON value as its JSON text.
    #[serde(default)]
    payload: Value,
    /// Binary payloads, base64.
    #[serde(default)]
    payload_base64: Option<String>,
    #[serde(default)]
    qos: Option<u8>,
    #[serde(default)]
    retain: bool,
    #[serde(default)]
    user_properties: std::collections::BTreeMap<String, String>,
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

/// Compares without leaking where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn publish(State(state): State<Arc<AppState>>, headers: HeaderMap, body: String) -> Response {
    let Some((commands, token_file)) = &state.publish else {
        return error(
            StatusCode::NOT_FOUND,
            "no http command source is configured",
        );
    };
    let expected = match crate::secrets::read_secret(token_file) {
        Ok(token) if !token.is_empty() => token,
        _ => {
            tracing::error!(
                "cannot read the publish token file {}",
                token_file.display()
            );
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the token file cannot be read",
            );
        }
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !same(given.as_bytes(), expected.as_bytes()) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(json!({"error": "missing or wrong bearer token"})),
        )
            .into_response();
    }
    let request: PublishRequest = match serde_json::from_str(&body) {
        Ok(request) => request,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad request body: {e}")),
    };
    let payload = match (&request.payload_base64, &request.payload) {
        (Some(encoded), _) => {
            use base64::Engine;
            match base64::engine::general_purpose::STANDARD.decode(encoded) {
                Ok(bytes) => bytes::Bytes::from(bytes),
                Err(e) => return error(StatusCode::BAD_REQUEST, format!("payload_base64: {e}")),
            }
        }
        (None, Value::String(text)) => bytes::Bytes::from(text.clone()),
        (None, Value::Null) => bytes::Bytes::new(),
        (None, other) => bytes::Bytes::from(other.to_string()),
    };
    let qos = request.qos.unwrap_or(commands.qos());
    if qos > 2 {
        return error(StatusCode::BAD_REQUEST, "qos must be 0, 1 or 2");
    }
    let outcome = commands
        .publish(Outbound {
            topic: request.topic,
            payload,
            qos,
            retain: request.retain,
            user_properties: request.user_properties.into_iter().collect(),
        })
        .await;
    match outcome {
        Ok(()) => Json(json!({"published": true, "qos": qos})).into_response(),
        Err(e) if e.kind == ErrorKind::Permanent => error(StatusCode::FORBIDDEN, e.message),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.message),
    }
}
