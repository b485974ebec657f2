//! A fake API server for the controller's tests and the request-counting
//! benchmark, behind kube's mock service (`tower-test`), after the
//! `controller-rs` fixtures.
//!
//! Instead of a script of canned answers, it answers from an in-memory
//! store of objects the way the real API server does for what the
//! controller asks (get, list by label, server-side apply with and without
//! dry run, under several field managers, status apply, delete, Event
//! creation), and records every request. Tests then assert the exact
//! sequence of requests and look into their bodies. Tests play the rest of
//! the cluster by writing to the store (a load balancer's address, a
//! StatefulSet's ready pods) and can make one request fail.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response};
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};
use tower_test::mock;

use super::push::{CredentialsPusher, PushError, PushReply};
use crate::api::MqttBroker;

/// The field manager whose applies replace whole objects; the others'
/// apply only metadata (labels and annotations), which the main one keeps.
const MAIN_MANAGER: &str = "kubemqtt-operator";

/// One request the controller sent.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// `GET`, `PATCH`, `POST`.
    pub method: Method,
    /// The URL path.
    pub path: String,
    /// The query string.
    pub query: String,
    /// The JSON body (`Null` when there is none).
    pub body: Value,
    /// Whether only metadata was asked for (`Accept:
    /// ...;as=PartialObjectMetadataList`).
    pub metadata_only: bool,
}

impl Recorded {
    /// Whether it was a dry run.
    pub fn is_dry_run(&self) -> bool {
        self.query.contains("dryRun=All")
    }

    /// The field manager of an apply.
    pub fn field_manager(&self) -> Option<String> {
        query_value(&self.query, "fieldManager")
    }

    /// `METHOD path`, with `?labelSelector` for lists, ` (dry run)` for
    /// dry runs and ` by <manager>` for applies of another field manager:
    /// for sequence assertions.
    pub fn line(&self) -> String {
        let dry_run = if self.is_dry_run() { " (dry run)" } else { "" };
        let selector = query_value(&self.query, "labelSelector")
            .map(|selector| format!("?{selector}"))
            .unwrap_or_default();
        let manager = match self.field_manager() {
            Some(manager) if manager != MAIN_MANAGER && self.method == Method::PATCH => {
                format!(" by {manager}")
            }
            _ => String::new(),
        };
        format!("{} {}{selector}{dry_run}{manager}", self.method, self.path)
    }
}

/// The decoded value of `key` in a query string.
fn query_value(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let value = pair.strip_prefix(key)?.strip_prefix('=')?;
        Some(
            value
                .replace("%3D", "=")
                .replace("%2F", "/")
                .replace("%2C", ",")
                .replace("%3A", ":"),
        )
    })
}

/// A failure to answer instead of the real response, once.
struct Fault {
    method: Method,
    path: String,
    dry_run: bool,
    code: u16,
    reason: &'static str,
}

#[derive(Default)]
struct State {
    /// Objects by their URL path.
    objects: BTreeMap<String, Value>,
    /// Labels and annotations applied by other field managers, by path:
    /// the main manager's applies keep them.
    foreign: BTreeMap<String, Value>,
    requests: Vec<Recorded>,
    /// Bytes of every response body sent.
    response_bytes: usize,
    faults: Vec<Fault>,
    revision: u64,
}

/// The fake API server's state, shared with the task that answers.
#[derive(Clone)]
pub struct ApiServer {
    state: Arc<Mutex<State>>,
}

impl ApiServer {
    /// A client talking to a new fake API server.
    pub fn start() -> (Client, ApiServer) {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let server = ApiServer {
            state: Arc::default(),
        };
        let answering = server.clone();
        tokio::spawn(async move {
            let mut handle = std::pin::pin!(handle);
            while let Some((request, send)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await.expect("request body");
                let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let metadata_only = parts
                    .headers
                    .get(http::header::ACCEPT)
                    .and_then(|accept| accept.to_str().ok())
                    .is_some_and(|accept| accept.contains("as=PartialObjectMetadata"));
                let recorded = Recorded {
                    method: parts.method,
                    path: parts.uri.path().to_owned(),
                    query: parts.uri.query().unwrap_or_default().to_owned(),
                    body,
                    metadata_only,
                };
                let (code, answer) = answering.answer(recorded);
                let bytes = serde_json::to_vec(&answer).expect("JSON");
                answering.lock().response_bytes += bytes.len();
                let response = Response::builder()
                    .status(code)
                    .body(Body::from(bytes))
                    .expect("response");
                send.send_response(response);
            }
        });
        (Client::new(service, "default"), server)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("fake API server state")
    }

    /// Stores `object` at `path`, as if it had been created.
    pub fn put(&self, path: &str, mut object: Value) {
        let mut state = self.lock();
        state.revision += 1;
        object["metadata"]["resourceVersion"] = json!(state.revision.to_string());
        state.objects.insert(path.to_owned(), object);
    }

    /// Deletes the object at `path`, as if it had been deleted.
    pub fn remove(&self, path: &str) {
        self.lock().objects.remove(path);
    }

    /// The object stored at `path`.
    pub fn get(&self, path: &str) -> Option<Value> {
        self.lock().objects.get(path).cloned()
    }

    /// Sets the `status` of the object at `path`, as the cluster would (a
    /// load balancer's address, a StatefulSet's pods).
    pub fn set_status(&self, path: &str, status: Value) {
        let mut state = self.lock();
        state.revision += 1;
        let revision = state.revision.to_string();
        let object = state
            .objects
            .get_mut(path)
            .expect("object to set the status of");
        object["status"] = status;
        object["metadata"]["resourceVersion"] = json!(revision);
    }

    /// The broker stored at `path`, as the controller's watch would see it.
    pub fn broker(&self, path: &str) -> MqttBroker {
        serde_json::from_value(self.get(path).expect("stored broker")).expect("a broker")
    }

    /// Answers the next `method` request to `path` (a dry run or not) with
    /// HTTP `code` and `reason`.
    pub fn fail_once(
        &self,
        method: Method,
        path: &str,
        dry_run: bool,
        code: u16,
        reason: &'static str,
    ) {
        self.lock().faults.push(Fault {
            method,
            path: path.to_owned(),
            dry_run,
            code,
            reason,
        });
    }

    /// Every request since the last call, in order.
    pub fn take_requests(&self) -> Vec<Recorded> {
        std::mem::take(&mut self.lock().requests)
    }

    /// The bytes of response bodies sent since the last call.
    pub fn take_response_bytes(&self) -> usize {
        std::mem::take(&mut self.lock().response_bytes)
    }

    /// The objects stored directly under the collection `path` (a list
    /// without a selector).
    pub fn list(&self, path: &str) -> Vec<Value> {
        self.lock().list(path, "")["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn answer(&self, request: Recorded) -> (u16, Value) {
        let mut state = self.lock();
        state.requests.push(request.clone());
        let fault = state.faults.iter().position(|fault| {
            fault.method == request.method
                && fault.path == request.path
                && fault.dry_run == request.is_dry_run()
        });
        if let Some(index) = fault {
            let fault = state.faults.remove(index);
            return (fault.code, failure(fault.code, fault.reason, "injected"));
        }
        let path = request.path.clone();
        let path = path.as_str();
        let dry_run = request.is_dry_run();
        match request.method {
            Method::GET => match state.objects.get(path) {
                Some(object) => (200, object.clone()),
                None if is_collection(path) => {
                    let mut list = state.list(path, &request.query);
                    if request.metadata_only {
                        // What a metadata-only list carries.
                        list["kind"] = json!("PartialObjectMetadataList");
                        list["apiVersion"] = json!("meta.k8s.io/v1");
                        for item in list["items"].as_array_mut().into_iter().flatten() {
                            *item = json!({
                                "apiVersion": "meta.k8s.io/v1",
                                "kind": "PartialObjectMetadata",
                                "metadata": item["metadata"].clone(),
                            });
                        }
                    }
                    (200, list)
                }
                None => (404, failure(404, "NotFound", "not found")),
            },
            // Events: created, or a series updated.
            Method::POST | Method::PATCH if path.contains("/events") => (201, request.body),
            Method::PATCH => {
                let manager = request.field_manager();
                let is_apply = request.query.contains("fieldManager=");
                match path.strip_suffix("/status") {
                    Some(object_path) => state.apply_status(object_path, &request.body),
                    None if !is_apply => state.merge_patch(path, &request.body),
                    None if manager.as_deref() == Some(MAIN_MANAGER) => {
                        state.apply(path, request.body, dry_run)
                    }
                    None => state.apply_metadata(path, &request.body, dry_run),
                }
            }
            Method::DELETE => match state.objects.remove(path) {
                Some(object) => {
                    state.foreign.remove(path);
                    state.revision += 1;
                    (200, object)
                }
                None => (404, failure(404, "NotFound", "not found")),
            },
            _ => (405, failure(405, "MethodNotAllowed", "not supported")),
        }
    }
}

impl State {
    /// A list of the objects directly under the collection `path`, with
    /// an equality `labelSelector` (`key=value`) applied.
    fn list(&self, path: &str, query: &str) -> Value {
        let selector = query_value(query, "labelSelector");
        let prefix = format!("{path}/");
        let items: Vec<Value> = self
            .objects
            .iter()
            .filter(|(key, _)| {
                key.strip_prefix(&prefix)
                    .is_some_and(|rest| !rest.contains('/'))
            })
            .filter(|(_, object)| {
                selector.as_deref().is_none_or(|selector| {
                    selector.split(',').all(|term| match term.split_once('=') {
                        Some((key, value)) => object["metadata"]["labels"][key] == value,
                        // `key`: the label exists.
                        None => object["metadata"]["labels"].get(term).is_some(),
                    })
                })
            })
            .map(|(_, object)| object.clone())
            .collect();
        json!({
            "apiVersion": "v1",
            "kind": "List",
            "metadata": {"resourceVersion": self.revision.to_string()},
            "items": items,
        })
    }

    /// Server-side apply of a whole object: what the server sets (status,
    /// uid, resource version, generation) is kept; the version and
    /// generation move only when the content changes.
    fn apply(&mut self, path: &str, mut object: Value, dry_run: bool) -> (u16, Value) {
        let existing = self.objects.get(path);
        // A StatefulSet's volume claim templates cannot change.
        if let Some(old) = existing.filter(|_| path.contains("/statefulsets/")) {
            let claims = |o: &Value| o["spec"]["volumeClaimTemplates"].clone();
            if claims(old) != claims(&object) {
                return (
                    422,
                    failure(
                        422,
                        "Invalid",
                        "StatefulSet.apps is invalid: spec: Forbidden: updates to statefulset \
                         spec for fields other than 'replicas', 'ordinals', 'template', \
                         'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and \
                         'minReadySeconds' are forbidden",
                    ),
                );
            }
        }
        if let Some(foreign) = self.foreign.get(path) {
            for key in ["labels", "annotations"] {
                for (name, value) in foreign[key].as_object().into_iter().flatten() {
                    if !object["metadata"][key].is_object() {
                        object["metadata"][key] = json!({});
                    }
                    object["metadata"][key][name] = value.clone();
                }
            }
        }
        if let Some(old) = existing {
            for key in ["status"] {
                if let Some(value) = old.get(key) {
                    object[key] = value.clone();
                }
            }
            for key in ["uid", "creationTimestamp", "resourceVersion", "generation"] {
                if let Some(value) = old["metadata"].get(key) {
                    object["metadata"][key] = value.clone();
                }
            }
        }
        // Only the objects of API groups keep a generation (StatefulSets,
        // custom resources); core ones (ConfigMaps, Secrets, Services) do
        // not.
        let has_generation = path.starts_with("/apis/");
        let changed =
            has_generation && existing.is_none_or(|old| old.get("spec") != object.get("spec"));
        let content_changed = existing.is_none_or(|old| content(old) != content(&object));
        if changed {
            let generation = object["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
            object["metadata"]["generation"] = json!(generation);
        }
        if content_changed && !dry_run {
            self.revision += 1;
            object["metadata"]["resourceVersion"] = json!(self.revision.to_string());
        }
        if !dry_run {
            self.objects.insert(path.to_owned(), object.clone());
        }
        (200, object)
    }

    /// Server-side apply of labels and annotations by another field
    /// manager, on an object that exists.
    fn apply_metadata(&mut self, path: &str, patch: &Value, dry_run: bool) -> (u16, Value) {
        let Some(mut object) = self.objects.get(path).cloned() else {
            return (404, failure(404, "NotFound", "not found"));
        };
        let mut changed = false;
        for key in ["labels", "annotations"] {
            for (name, value) in patch["metadata"][key].as_object().into_iter().flatten() {
                if !object["metadata"][key].is_object() {
                    object["metadata"][key] = json!({});
                }
                changed |= object["metadata"][key][name] != *value;
                object["metadata"][key][name] = value.clone();
                if !dry_run {
                    let foreign = self
                        .foreign
                        .entry(path.to_owned())
                        .or_insert_with(|| json!({}));
                    if !foreign[key].is_object() {
                        foreign[key] = json!({});
                    }
                    foreign[key][name] = value.clone();
                }
            }
        }
        if changed && !dry_run {
            self.revision += 1;
            object["metadata"]["resourceVersion"] = json!(self.revision.to_string());
            self.objects.insert(path.to_owned(), object.clone());
        }
        (200, object)
    }

    /// A JSON merge patch of an object that exists.
    fn merge_patch(&mut self, path: &str, patch: &Value) -> (u16, Value) {
        fn merge(target: &mut Value, patch: &Value) {
            match (target.as_object_mut(), patch.as_object()) {
                (Some(target), Some(patch)) => {
                    for (key, value) in patch {
                        merge(target.entry(key.clone()).or_insert(Value::Null), value);
                    }
                }
                _ => *target = patch.clone(),
            }
        }
        let Some(object) = self.objects.get_mut(path) else {
            return (404, failure(404, "NotFound", "not found"));
        };
        merge(object, patch);
        self.revision += 1;
        object["metadata"]["resourceVersion"] = json!(self.revision.to_string());
        (200, object.clone())
    }

    /// Server-side apply of the status subresource.
    fn apply_status(&mut self, path: &str, patch: &Value) -> (u16, Value) {
        self.revision += 1;
        let revision = self.revision.to_string();
        match self.objects.get_mut(path) {
            Some(object) => {
                object["status"] = patch["status"].clone();
                object["metadata"]["resourceVersion"] = json!(revision);
                (200, object.clone())
            }
            None => (404, failure(404, "NotFound", "not found")),
        }
    }
}

/// Whether `path` names a collection (`.../namespaces/<ns>/<resource>`)
/// rather than one object.
fn is_collection(path: &str) -> bool {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    parts.len() >= 3 && parts[parts.len() - 3] == "namespaces"
}

/// An object without what the server maintains, to tell whether an apply
/// changed anything.
fn content(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        for key in ["resourceVersion", "generation", "managedFields"] {
            metadata.remove(key);
        }
    }
    if let Some(fields) = object.as_object_mut() {
        fields.remove("status");
    }
    object
}

/// A `Status` object as the API server sends with an error.
fn failure(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Status",
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
    })
}

/// One push the controller made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// The pod's admin API URL.
    pub url: String,
    /// The bearer token.
    pub token: String,
    /// The credentials file.
    pub body: String,
}

/// A [`CredentialsPusher`] that records pushes and answers as a broker
/// would, or fails as an unreachable pod while `unreachable` is set.
#[derive(Debug, Default)]
pub struct RecordingPusher {
    pushes: Mutex<Vec<Push>>,
    /// Every push fails as if no pod were running.
    pub unreachable: std::sync::atomic::AtomicBool,
}

impl RecordingPusher {
    /// Every push since the last call.
    pub fn take(&self) -> Vec<Push> {
        std::mem::take(&mut self.pushes.lock().expect("pushes"))
    }
}

impl CredentialsPusher for RecordingPusher {
    fn push<'a>(
        &'a self,
        url: &'a str,
        token: &'a str,
        body: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<PushReply, PushError>> + Send + 'a>> {
        self.pushes.lock().expect("pushes").push(Push {
            url: url.to_owned(),
            token: token.to_owned(),
            body: body.to_owned(),
        });
        let unreachable = self.unreachable.load(std::sync::atomic::Ordering::SeqCst);
        Box::pin(async move {
            if unreachable {
                Err(PushError::Unreachable {
                    url: url.to_owned(),
                    message: "connection refused".to_owned(),
                })
            } else {
                Ok(PushReply::Applied)
            }
        })
    }
}

/// Answers reads of the broker pods' `/metrics` with one text for every
/// pod (a pod whose address is in `down` fails), and counts them; as the
/// pods' admin API ([`BrokerHttp`](super::replica_admin::BrokerHttp)) it
/// records every request and answers sheds (and a `GET /metrics`, which a
/// reconcile no longer sends there: the replicas' step uses the one read).
#[derive(Debug, Default)]
pub struct FakeMetrics {
    text: Mutex<Option<String>>,
    down: Mutex<Vec<String>>,
    reads: std::sync::atomic::AtomicUsize,
    admin_requests: Mutex<Vec<String>>,
    /// Pods (by address) answering their own text instead.
    per_host: Mutex<std::collections::BTreeMap<String, String>>,
}

impl FakeMetrics {
    /// Every pod answers `text` from now on (`None`: none answers).
    pub fn answer(&self, text: Option<&str>) {
        *self.text.lock().expect("metrics") = text.map(str::to_owned);
    }

    /// The pod at `host` answers `text` (the others what [`Self::answer`]
    /// said).
    pub fn answer_for(&self, host: &str, text: &str) {
        self.per_host
            .lock()
            .expect("metrics")
            .insert(host.to_owned(), text.to_owned());
    }

    fn text_of(&self, host: &str) -> Option<String> {
        if self.down.lock().expect("metrics").iter().any(|h| h == host) {
            return None;
        }
        let own = self.per_host.lock().expect("metrics").get(host).cloned();
        own.or_else(|| self.text.lock().expect("metrics").clone())
    }

    /// The pod at `host` does not answer.
    pub fn down(&self, host: &str) {
        self.down.lock().expect("metrics").push(host.to_owned());
    }

    /// Reads since the last call.
    pub fn take_reads(&self) -> usize {
        self.reads.swap(0, std::sync::atomic::Ordering::SeqCst)
    }

    /// Requests to the admin API since the last call (`METHOD url`).
    pub fn take_admin_requests(&self) -> Vec<String> {
        std::mem::take(&mut *self.admin_requests.lock().expect("metrics"))
    }
}

impl super::replica_admin::BrokerHttp for FakeMetrics {
    fn request<'a>(
        &'a self,
        method: &'a str,
        url: &'a str,
        _token: Option<&'a str>,
    ) -> super::replica_admin::HttpFuture<'a> {
        self.admin_requests
            .lock()
            .expect("metrics")
            .push(format!("{method} {url}"));
        let host = url
            .strip_prefix("http://")
            .and_then(|rest| rest.split([':', '/']).next())
            .unwrap_or_default()
            .to_owned();
        let text = self.text_of(&host);
        let metrics = method == "GET" && url.ends_with("/metrics");
        // `POST /api/v1/shed?count=N&rate=R`: accepted as asked.
        let shed = (method == "POST")
            .then(|| url.split_once("/api/v1/shed?"))
            .flatten()
            .map(|(_, query)| {
                query
                    .split('&')
                    .find_map(|pair| pair.strip_prefix("count="))
                    .unwrap_or("0")
                    .to_owned()
            });
        Box::pin(async move {
            match (metrics, text, shed) {
                (true, Some(text), _) => Ok((200, text)),
                (_, None, _) => Err(format!("{host}: connection refused")),
                (false, Some(_), Some(count)) => {
                    Ok((202, format!("{{\"shedding\":{count},\"rate\":50}}")))
                }
                (false, Some(_), None) => Ok((404, String::new())),
            }
        })
    }
}

impl super::fleet::MetricsReader for FakeMetrics {
    fn read(&self, host: String) -> super::fleet::MetricsFuture {
        self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let text = self.text_of(&host);
        Box::pin(async move { text.ok_or_else(|| format!("{host}: connection refused")) })
    }
}

/// Keeps a [`UserIndex`](super::index::UserIndex) store in step with the
/// fake API server's `MqttUser`s, as the watch would.
pub struct UserCache {
    writer: Mutex<kube::runtime::reflector::store::Writer<crate::api::MqttUser>>,
}

impl UserCache {
    /// A cache feeding `index`.
    pub fn new(index: &super::index::UserIndex) -> UserCache {
        let (store, writer) = kube::runtime::reflector::store();
        index.add(store);
        UserCache {
            writer: Mutex::new(writer),
        }
    }

    /// Lists the users under `collection` again, as a watch restart does.
    pub fn sync(&self, server: &ApiServer, collection: &str) {
        use kube::runtime::watcher::Event;
        let mut writer = self.writer.lock().expect("user cache");
        writer.apply_watcher_event(&Event::Init);
        for object in server.list(collection) {
            let user: crate::api::MqttUser = serde_json::from_value(object).expect("a user");
            writer.apply_watcher_event(&Event::InitApply(user));
        }
        writer.apply_watcher_event(&Event::InitDone);
    }
}
