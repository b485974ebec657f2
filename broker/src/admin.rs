//! The HTTP server: `/healthz`, `/readyz`, `/metrics` and the JSON admin
//! API (`/api/v1/...`, bearer token read from a file at each request so it
//! can be rotated). `PUT /api/v1/credentials` is how the operator puts a
//! user change in force within a second, `PUT /api/v1/fleets/revocations`
//! a device fleet's revocation list.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::access::PushOutcome;
use crate::auth::AuthFileError;
use crate::broker::Broker;
use crate::client::ClientInfo;
use crate::codec::ReasonCode;
use crate::reload::Reloader;
use crate::session::Session;

type Shared = State<Arc<Broker>>;

/// Largest credentials document the admin API takes: room for about
/// 100,000 users with rules.
const CREDENTIALS_BODY_LIMIT: usize = 64 << 20;

/// Serves HTTP until the task is aborted.
pub async fn serve(broker: Arc<Broker>, reloader: Arc<Reloader>, listener: TcpListener) {
    if let Err(e) = axum::serve(listener, router(broker.clone(), reloader)).await {
        broker.logger.error(&format!("HTTP server stopped: {e}."));
    }
}

pub fn router(broker: Arc<Broker>, reloader: Arc<Reloader>) -> Router {
    let api = Router::new()
        .route("/clients", get(list_clients))
        .route("/clients/{id}", get(get_client).delete(disconnect_client))
        .route("/shed", post(shed))
        .route("/subscriptions", get(list_subscriptions))
        .route("/retained", get(list_retained))
        .route("/stats", get(stats))
        .route("/reload", post(reload).layer(Extension(reloader)))
        .route(
            "/credentials",
            put(push_credentials).layer(DefaultBodyLimit::max(CREDENTIALS_BODY_LIMIT)),
        )
        .route(
            "/fleets/revocations",
            put(push_fleet_revocations).layer(DefaultBodyLimit::max(CREDENTIALS_BODY_LIMIT)),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            broker.clone(),
            require_token,
        ));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .nest("/api/v1", api)
        .with_state(broker)
}

async fn readyz(State(broker): Shared) -> Response {
    if broker.draining.load(Ordering::SeqCst) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response()
    } else if broker.cluster().is_some_and(|c| !c.is_ready()) {
        // New clients should go to a node that can reach the cluster;
        // connected ones stay.
        (StatusCode::SERVICE_UNAVAILABLE, "cluster unavailable").into_response()
    } else {
        "ready".into_response()
    }
}

async fn metrics(State(broker): Shared) -> Response {
    let m = &broker.metrics;
    let sessions = broker.sessions();
    let online = sessions.iter().filter(|s| s.is_online()).count() as i64;
    m.sessions.with_label_values(&["online"]).set(online);
    m.sessions
        .with_label_values(&["offline"])
        .set(sessions.len() as i64 - online);
    m.retained.set(broker.retained.len() as i64);
    m.subscriptions.set(broker.router.len() as i64);
    m.queued.set(
        sessions
            .iter()
            .map(|s| s.state.lock().queue.len() as i64)
            .sum(),
    );
    m.queued_bytes.set(broker.budget.used() as i64);
    m.queued_bytes_budget.set(broker.budget.limit() as i64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        m.render(),
    )
        .into_response()
}

/// Admin API guard: `Authorization: Bearer <token>` matching the token
/// file. Without a token file the API is disabled.
async fn require_token(
    State(broker): Shared,
    headers: HeaderMap,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(path) = broker.config().http.admin_token_file.clone() else {
        return (
            StatusCode::NOT_FOUND,
            "admin API disabled: no admin_token_file",
        )
            .into_response();
    };
    let expected = match std::fs::read_to_string(&path) {
        Ok(token) if !token.trim().is_empty() => token.trim().to_owned(),
        Ok(_) => {
            broker.logger.error(&format!(
                "The admin token file {} is empty: the admin API refuses every request until it holds a token.",
                path.display()
            ));
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "the admin token file is empty",
            )
                .into_response();
        }
        Err(e) => {
            broker.logger.error(&format!(
                "Cannot read the admin token file {}: {e}.",
                path.display()
            ));
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "the admin token file cannot be read",
            )
                .into_response();
        }
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    use subtle::ConstantTimeEq;
    let ok: bool =
        (given.len() == expected.len()) && bool::from(given.as_bytes().ct_eq(expected.as_bytes()));
    if !ok {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "missing or wrong bearer token",
        )
            .into_response();
    }
    next.run(request).await
}

fn client_json(session: &Session, info: &ClientInfo) -> Value {
    let state = session.state.lock();
    json!({
        "client_id": &*session.client_id,
        "address": info.address.to_string(),
        "username": info.username.as_deref(),
        "protocol": info.protocol.level(),
        "keep_alive": info.keep_alive,
        "listener": &*info.listener,
        "connected_at_ms": info.connected_at.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
        "subscriptions": state.subscriptions.keys().collect::<Vec<_>>(),
        "queue_depth": state.queue.len(),
        "queued_bytes": state.queue.bytes(),
        "inflight": state.inflight.len(),
        "flow": state.queue.status().as_str(),
        "dropped_messages": state.queue.dropped(),
    })
}

async fn list_clients(State(broker): Shared) -> Json<Value> {
    let clients: Vec<Value> = broker
        .connected_clients()
        .iter()
        .map(|(s, client)| client_json(s, &client.info))
        .collect();
    Json(json!({ "clients": clients }))
}

async fn get_client(State(broker): Shared, Path(id): Path<String>) -> Response {
    let Some(session) = broker.session(&id) else {
        return (StatusCode::NOT_FOUND, "no such client").into_response();
    };
    match session.attached_client() {
        Some(client) => Json(client_json(&session, &client.info)).into_response(),
        None => {
            let state = session.state.lock();
            Json(json!({
                "client_id": id,
                "connected": false,
                "subscriptions": state.subscriptions.keys().collect::<Vec<_>>(),
                "queue_depth": state.queue.len(),
                "queued_bytes": state.queue.bytes(),
                "dropped_messages": state.queue.dropped(),
            }))
            .into_response()
        }
    }
}

async fn disconnect_client(State(broker): Shared, Path(id): Path<String>) -> Response {
    if broker.kick(&id, ReasonCode::ADMINISTRATIVE_ACTION) {
        broker
            .logger
            .info(&format!("Client {id} disconnected by the admin API."));
        (StatusCode::ACCEPTED, Json(json!({ "disconnected": id }))).into_response()
    } else {
        (StatusCode::NOT_FOUND, "no such connected client").into_response()
    }
}

/// `POST /api/v1/shed?count=N&rate=R`: sends N connected clients to other
/// nodes of the cluster, R a second (5.0: DISCONNECT 0x9C), their
/// sessions handed to the cluster.
async fn shed(
    State(broker): Shared,
    axum::extract::Query(query): axum::extract::Query<ShedQuery>,
) -> Response {
    if broker.cluster().is_none() {
        return (
            StatusCode::CONFLICT,
            Json(json!({ "error": "shedding needs a [cluster]: clients would come back here" })),
        )
            .into_response();
    }
    if query.rate == 0 {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({ "error": "rate must be at least 1 a second" })),
        )
            .into_response();
    }
    let shedding = broker.shed(query.count, query.rate);
    (
        StatusCode::ACCEPTED,
        Json(json!({ "shedding": shedding, "rate": query.rate })),
    )
        .into_response()
}

#[derive(Debug, serde::Deserialize)]
struct ShedQuery {
    count: usize,
    rate: u32,
}

async fn list_subscriptions(State(broker): Shared) -> Json<Value> {
    let mut subs = Vec::new();
    for session in broker.sessions() {
        let state = session.state.lock();
        for (filter, sub) in &state.subscriptions {
            subs.push(json!({
                "client_id": &*session.client_id,
                "filter": filter,
                "qos": sub.options.qos.as_u8(),
                "no_local": sub.options.no_local,
                "retain_as_published": sub.options.retain_as_published,
                "retain_handling": sub.options.retain_handling,
                "identifier": sub.identifier,
            }));
        }
    }
    Json(json!({ "subscriptions": subs }))
}

async fn list_retained(State(broker): Shared) -> Json<Value> {
    let retained: Vec<Value> = broker
        .retained
        .all()
        .into_iter()
        .map(|(topic, msg)| json!({ "topic": topic, "qos": msg.qos.as_u8(), "bytes": msg.payload.len() }))
        .collect();
    Json(json!({ "retained": retained }))
}

async fn stats(State(broker): Shared) -> Json<Value> {
    let values: serde_json::Map<String, Value> = crate::sys::snapshot(&broker)
        .into_iter()
        .map(|(topic, value)| {
            (
                topic.trim_start_matches("$SYS/broker/").to_owned(),
                Value::String(value),
            )
        })
        .collect();
    Json(json!({ "node": broker.config().node_name, "stats": values }))
}

/// `POST /api/v1/reload`: what SIGHUP does (`broker.toml`, then the auth
/// and TLS files), answered with what changed. 422 when a file was
/// refused (what it held stays in force).
async fn reload(State(broker): Shared, Extension(reloader): Extension<Arc<Reloader>>) -> Response {
    broker
        .logger
        .info("Reload requested through the admin API.");
    let reloading = broker.clone();
    let report = match tokio::task::spawn_blocking(move || reloader.reload(&reloading)).await {
        Ok(report) => report,
        Err(e) => {
            broker.logger.error(&format!("The reload failed: {e}."));
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    let error = [report.config_error.as_deref(), report.auth_error.as_deref()]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join("; ");
    let mut body = json!({
        "reloaded": report.ok(),
        "applied": report.changes.applied,
        "restart_required": report.changes.need_restart,
        "disconnected": report.disconnected,
    });
    if !error.is_empty() {
        body["error"] = Value::String(error);
    }
    let body = Json(body);
    if report.ok() {
        body.into_response()
    } else {
        (StatusCode::UNPROCESSABLE_ENTITY, body).into_response()
    }
}

/// `PUT /api/v1/credentials`: a credentials file (TOML with a `revision`)
/// to put in force at once, ahead of the file on disk (see `access`).
/// Clients of users it no longer has are disconnected; nobody else is.
async fn push_credentials(State(broker): Shared, body: String) -> Response {
    let outcome = broker.access.push_credentials(body);
    push_answer(&broker, outcome, "Credentials")
}

/// `PUT /api/v1/fleets/revocations`: every fleet's revocation list (TOML
/// with a `revision`, see `auth::fleet::pushed`) in force at once, ahead of
/// the fleets directory. Devices now revoked are disconnected.
async fn push_fleet_revocations(State(broker): Shared, body: String) -> Response {
    let outcome = broker.access.push_fleet_revocations(&body);
    push_answer(&broker, outcome, "Fleet revocations")
}

/// The answer to a push of `what`: 200 with whether it applied (and whom
/// it disconnected), 409 when a newer revision is in force, 422 when it
/// is invalid (nothing changed).
fn push_answer(
    broker: &Broker,
    outcome: Result<PushOutcome, AuthFileError>,
    what: &str,
) -> Response {
    match outcome {
        Ok(PushOutcome::Applied { revision }) => {
            let kicked = broker.disconnect_removed_users();
            broker.logger.info(&format!(
                "{what} revision {revision} pushed through the admin API are in force."
            ));
            Json(json!({ "applied": true, "revision": revision, "disconnected": kicked }))
                .into_response()
        }
        Ok(PushOutcome::Unchanged { revision }) => {
            Json(json!({ "applied": false, "revision": revision, "disconnected": 0 }))
                .into_response()
        }
        Ok(PushOutcome::Stale { current }) => (
            StatusCode::CONFLICT,
            Json(json!({
                "applied": false,
                "revision": current,
                "error": format!("revision {current} or newer is already in force"),
            })),
        )
            .into_response(),
        Err(e) => {
            broker.logger.error(&format!(
                "Refused {} pushed through the admin API: {e}.",
                what.to_lowercase()
            ));
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({ "applied": false, "error": e.to_string() })),
            )
                .into_response()
        }
    }
}
