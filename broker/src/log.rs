//! Event and packet log lines in mosquitto 2.0.11's wording, as text or JSON.
//!
//! Operators grep broker logs for lines such as `New client connected from`
//! or `has exceeded timeout`, so the text format reproduces mosquitto's lines
//! word for word (compared with mosquitto 2.0.11; the table is in
//! `docs/logging.md`). The connection core calls one [`Logger`] method per
//! event and never formats log text itself.
//!
//! Text lines look like mosquitto's default output:
//!
//! ```text
//! 1732569600: New client connected from 10.0.0.7:51234 as dev-1 (p2, c0, k60, u'alice').
//! ```
//!
//! JSON lines carry the same text in `message`, plus the event's facts as
//! fields:
//!
//! ```text
//! {"ts":"2024-11-25T21:20:00.000Z","level":"notice","event":"client_connected","message":"New client connected from ...","client_id":"dev-1",...}
//! ```
//!
//! An event that mosquitto prints as several lines (a SUBSCRIBE with its
//! filters, a connection with its will) is one JSON object: `message` is the
//! first line and the rest is in fields. Those follow-up lines are debug lines
//! in mosquitto, so text output shows them only when verbose.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::codec::{Connect, Packet, ProtocolVersion, PubResponse, Publish};
use crate::config::{LogConfig, LogFormat, LogLevel};

/// Program name in the startup and shutdown lines, where mosquitto says
/// `mosquitto`.
const PROGRAM: &str = "kubemqtt-broker";

/// Version in the startup and shutdown lines.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// mosquitto's stand-in for a client whose CONNECT was not accepted yet.
const UNKNOWN_CLIENT: &str = "<unknown>";

/// Writes the broker's log lines. Cheap to clone and shareable between
/// tasks; each line is written to stderr with one write while holding the
/// stderr lock, and write errors are ignored. Every clone shares the
/// settings, which a configuration reload changes ([`Logger::apply`]).
#[derive(Debug, Clone)]
pub struct Logger {
    settings: Arc<Settings>,
    sink: Sink,
    /// Source of the time stamps; fixed in tests.
    clock: fn() -> SystemTime,
}

/// Level and format, shared by every clone of a logger and changed in
/// place by a reload (atomics: the packet hooks read `verbose` on every
/// packet).
#[derive(Debug, Default)]
struct Settings {
    /// Least severe level written (`LogLevel as u8`).
    threshold: AtomicU8,
    /// Whether debug (per-packet) lines are written; same as
    /// `threshold == Debug`, kept as a flag so the packet hooks cost one
    /// load.
    verbose: AtomicBool,
    json: AtomicBool,
    timestamps: AtomicBool,
}

impl Settings {
    fn set(&self, config: &LogConfig) {
        let verbose = config.verbose || config.level == LogLevel::Debug;
        let threshold = if verbose {
            LogLevel::Debug
        } else {
            config.level
        };
        self.threshold.store(threshold as u8, Ordering::Relaxed);
        self.verbose.store(verbose, Ordering::Relaxed);
        self.json
            .store(config.format == LogFormat::Json, Ordering::Relaxed);
        self.timestamps.store(config.timestamps, Ordering::Relaxed);
    }
}

/// Where lines go.
#[derive(Debug, Clone)]
enum Sink {
    Stderr,
    Capture(Arc<Mutex<Vec<String>>>),
}

impl Logger {
    /// A logger writing to stderr. `verbose = true` lowers the level to
    /// debug, as `mosquitto -v` enables every log type.
    pub fn new(config: &LogConfig) -> Logger {
        Logger::with_sink(config, Sink::Stderr)
    }

    /// A logger that appends its lines (without the line feed) to the
    /// returned vector instead of writing them; for tests.
    pub fn capture(config: &LogConfig) -> (Logger, Arc<Mutex<Vec<String>>>) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let logger = Logger::with_sink(config, Sink::Capture(Arc::clone(&lines)));
        (logger, lines)
    }

    fn with_sink(config: &LogConfig, sink: Sink) -> Logger {
        let settings = Settings::default();
        settings.set(config);
        Logger {
            settings: Arc::new(settings),
            sink,
            clock: SystemTime::now,
        }
    }

    /// Changes level and format of this logger and every clone of it (a
    /// configuration reload).
    pub fn apply(&self, config: &LogConfig) {
        self.settings.set(config);
    }

    /// Whether per-packet (debug) lines are written.
    pub fn verbose(&self) -> bool {
        self.settings.verbose.load(Ordering::Relaxed)
    }

    /// `kubemqtt-broker version 0.1.0 starting` (info).
    pub fn starting(&self) {
        self.lifecycle("starting");
    }

    /// `kubemqtt-broker version 0.1.0 running` (info), once every listener
    /// is open.
    pub fn running(&self) {
        self.lifecycle("running");
    }

    /// `kubemqtt-broker version 0.1.0 terminating` (info).
    pub fn terminating(&self) {
        self.lifecycle("terminating");
    }

    fn lifecycle(&self, event: &'static str) {
        if self.enabled(LogLevel::Info) {
            let message = format!("{PROGRAM} version {VERSION} {event}");
            self.emit(Event::new(LogLevel::Info, event, message).field("version", VERSION));
        }
    }

    /// `Config loaded from broker.toml.` or, without a file, `Using default
    /// config.` (info).
    pub fn config_loaded(&self, path: Option<&Path>) {
        if !self.enabled(LogLevel::Info) {
            return;
        }
        let event = match path {
            Some(path) => Event::new(
                LogLevel::Info,
                "config_loaded",
                format!("Config loaded from {}.", path.display()),
            )
            .field("path", path.display().to_string()),
            None => Event::new(LogLevel::Info, "config_loaded", "Using default config."),
        };
        self.emit(event);
    }

    /// `Opening ipv4 listen socket on port 1883.` (info). Pass the bound
    /// address, so that port 0 shows the port the system chose.
    pub fn listening(&self, local: SocketAddr) {
        if self.enabled(LogLevel::Info) {
            let family = if local.is_ipv4() { "ipv4" } else { "ipv6" };
            let message = format!("Opening {family} listen socket on port {}.", local.port());
            self.emit(
                Event::new(LogLevel::Info, "listening", message)
                    .field("address", local.ip().to_string())
                    .field("port", local.port()),
            );
        }
    }

    /// `HTTP server listening on 0.0.0.0:8080 (/healthz, /readyz, /metrics,
    /// /api/v1).` (info); without an admin token file the admin API is
    /// named as off.
    pub fn http_listening(&self, local: SocketAddr, admin_api: bool) {
        if self.enabled(LogLevel::Info) {
            let paths = if admin_api {
                "/healthz, /readyz, /metrics, /api/v1"
            } else {
                "/healthz, /readyz, /metrics; admin API off: no http.admin_token_file"
            };
            let message = format!("HTTP server listening on {local} ({paths}).");
            self.emit(
                Event::new(LogLevel::Info, "http_listening", message)
                    .field("address", local.ip().to_string())
                    .field("port", local.port())
                    .field("admin_api", admin_api),
            );
        }
    }

    /// `New connection from 10.0.0.7:51234 on port 1883.` (notice), when a
    /// socket is accepted.
    pub fn new_connection(&self, peer: SocketAddr, local_port: u16) {
        if self.enabled(LogLevel::Notice) {
            let message = format!(
                "New connection from {}:{} on port {local_port}.",
                peer.ip(),
                peer.port()
            );
            self.emit(
                Event::new(LogLevel::Notice, "new_connection", message)
                    .field("address", peer.ip().to_string())
                    .field("port", peer.port())
                    .field("local_port", local_port),
            );
        }
    }

    /// `New client connected from 10.0.0.7:51234 as dev-1 (p2, c1, k60,
    /// u'alice').` (notice), once a CONNECT is accepted. `client_id` is the
    /// identifier in use (assigned by the broker if the client sent none);
    /// `username` the user name in force (from CONNECT, or from the client
    /// certificate, as mosquitto's `use_identity_as_username`); the other
    /// values are printed as the client sent them, as mosquitto does. When verbose, the will follows as debug lines:
    /// `Will message specified (5 bytes) (r1, q1).` and a tab and its topic,
    /// or `No will message specified.`
    pub fn client_connected(
        &self,
        peer: SocketAddr,
        client_id: &str,
        connect: &Connect,
        username: Option<&str>,
    ) {
        if !self.enabled(LogLevel::Notice) {
            return;
        }
        let user = match username {
            Some(username) => format!(", u'{username}'"),
            None => String::new(),
        };
        let message = format!(
            "New client connected from {}:{} as {client_id} (p{}, c{}, k{}{user}).",
            peer.ip(),
            peer.port(),
            mosquitto_protocol(connect.protocol),
            u8::from(connect.clean_start),
            connect.keep_alive,
        );
        let mut event = Event::new(LogLevel::Notice, "client_connected", message)
            .field("client_id", client_id)
            .field("address", peer.ip().to_string())
            .field("port", peer.port())
            .field("protocol", protocol_name(connect.protocol))
            .field("clean_start", connect.clean_start)
            .field("keepalive", connect.keep_alive);
        if let Some(username) = &connect.username {
            event = event.field("username", username.as_str());
        }
        match &connect.will {
            Some(will) => {
                event.detail.push(format!(
                    "Will message specified ({} bytes) (r{}, q{}).",
                    will.payload.len(),
                    u8::from(will.retain),
                    will.qos.as_u8()
                ));
                event.detail.push(format!("\t{}", will.topic));
                event = event.field(
                    "will",
                    json!({
                        "topic": will.topic,
                        "qos": will.qos.as_u8(),
                        "retain": will.retain,
                        "payload_len": will.payload.len(),
                    }),
                );
            }
            None => event.detail.push("No will message specified.".to_owned()),
        }
        self.emit(event);
    }

    /// `Client dev-1 already connected, closing old connection.` (error, as
    /// in mosquitto), when a CONNECT takes over a connected session. Logged
    /// before the new connection's [`Logger::client_connected`]; the old
    /// connection is then closed without a line of its own.
    pub fn already_connected(&self, client_id: &str) {
        if self.enabled(LogLevel::Error) {
            let message = format!("Client {client_id} already connected, closing old connection.");
            self.emit(
                Event::new(LogLevel::Error, "already_connected", message)
                    .field("client_id", client_id),
            );
        }
    }

    /// `Client dev-1 has exceeded timeout, disconnecting.` (notice), when
    /// nothing arrived for 1.5 times the keep alive.
    pub fn keepalive_timeout(&self, client_id: &str) {
        self.client_event(
            "keepalive_timeout",
            Some(client_id),
            "has exceeded timeout, disconnecting.",
            None,
        );
    }

    /// `Client dev-1 disconnected.` (notice), after the client sent
    /// DISCONNECT.
    pub fn disconnected(&self, client_id: &str) {
        self.client_event("disconnected", Some(client_id), "disconnected.", None);
    }

    /// `Client dev-1 closed its connection.` (notice), when the peer closed
    /// or reset the socket without DISCONNECT; `Client <unknown> ...` before
    /// its CONNECT was accepted.
    pub fn connection_closed(&self, client_id: Option<&str>) {
        self.client_event(
            "connection_closed",
            client_id,
            "closed its connection.",
            None,
        );
    }

    /// `Client dev-1 disconnected: Connection timed out.` (notice), for a
    /// socket read or write error. A connection reset is logged as
    /// [`Logger::connection_closed`], as mosquitto does.
    pub fn socket_error(&self, client_id: Option<&str>, error: &std::io::Error) {
        if error.kind() == std::io::ErrorKind::ConnectionReset {
            self.connection_closed(client_id);
        } else {
            let reason = os_error_text(error);
            let what = format!("disconnected: {reason}.");
            self.client_event("socket_error", client_id, &what, Some(&reason));
        }
    }

    /// `Client <unknown> disconnected, not authorised.` (notice). mosquitto
    /// adopts the client identifier only once the CONNECT is authorised, so
    /// it prints `<unknown>` for a refused CONNECT; pass `None` there to
    /// match.
    pub fn not_authorised(&self, client_id: Option<&str>) {
        self.client_event(
            "not_authorised",
            client_id,
            "disconnected, not authorised.",
            None,
        );
    }

    /// `Client dev-1 disconnected due to protocol error.` (notice).
    /// `reason` appears only in JSON output; the text line is mosquitto's.
    pub fn protocol_error(&self, client_id: Option<&str>, reason: &str) {
        self.client_event(
            "protocol_error",
            client_id,
            "disconnected due to protocol error.",
            Some(reason),
        );
    }

    /// `Client dev-1 disconnected due to malformed packet.` (notice).
    /// `reason` appears only in JSON output.
    pub fn malformed_packet(&self, client_id: Option<&str>, reason: &str) {
        self.client_event(
            "malformed_packet",
            client_id,
            "disconnected due to malformed packet.",
            Some(reason),
        );
    }

    /// `Client dev-1 disconnected due to oversize packet.` (notice), when a
    /// packet exceeds `limits.max_packet_size`.
    pub fn oversize_packet(&self, client_id: Option<&str>) {
        self.client_event(
            "oversize_packet",
            client_id,
            "disconnected due to oversize packet.",
            None,
        );
    }

    /// `Outgoing messages are being dropped for client dev-1.` (notice, as
    /// in mosquitto), at most once per client per minute while its
    /// deliveries are dropped; `reason` and the session's `dropped` total
    /// appear only in JSON output.
    pub fn dropping_messages(&self, client_id: &str, reason: &str, dropped: u64) {
        if self.enabled(LogLevel::Notice) {
            let message = format!("Outgoing messages are being dropped for client {client_id}.");
            self.emit(
                Event::new(LogLevel::Notice, "messages_dropped", message)
                    .field("client_id", client_id)
                    .field("reason", reason)
                    .field("dropped", dropped),
            );
        }
    }

    /// `Client dev-1 is too slow: no message taken for 5.0 s with 1200
    /// queued; disconnecting.` (warning), when a connected subscriber above
    /// its high-water mark stopped taking messages.
    pub fn slow_subscriber(&self, client_id: &str, idle_secs: f64, queued: usize, action: &str) {
        if self.enabled(LogLevel::Warning) {
            let what = match action {
                "drop" => "dropping its further messages",
                _ => "disconnecting",
            };
            let message = format!(
                "Client {client_id} is too slow: no message taken for {idle_secs:.1} s with {queued} queued; {what}."
            );
            self.emit(
                Event::new(LogLevel::Warning, "slow_subscriber", message)
                    .field("client_id", client_id)
                    .field("queued", queued)
                    .field("action", action),
            );
        }
    }

    /// The notice-level `Client <id> <what>` lines of mosquitto's disconnect
    /// handling.
    fn client_event(
        &self,
        event: &'static str,
        client_id: Option<&str>,
        what: &str,
        reason: Option<&str>,
    ) {
        if !self.enabled(LogLevel::Notice) {
            return;
        }
        let message = format!("Client {} {what}", client_id.unwrap_or(UNKNOWN_CLIENT));
        let mut line = Event::new(LogLevel::Notice, event, message);
        if let Some(client_id) = client_id {
            line = line.field("client_id", client_id);
        }
        if let Some(reason) = reason {
            line = line.field("reason", reason);
        }
        self.emit(line);
    }

    /// The debug line for a packet received from `client_id`, e.g.
    /// `Received PUBLISH from dev-1 (d0, q1, r0, m1, 'a/b', ... (5 bytes))`;
    /// does nothing unless verbose. CONNECT has no line (see
    /// [`Logger::client_connected`]). Pass a PUBLISH after topic alias
    /// resolution, so that the topic is shown.
    #[inline]
    pub fn received(&self, client_id: &str, packet: &Packet) {
        if self.verbose() {
            self.log_received(client_id, packet);
        }
    }

    /// The debug line for a packet sent to `client_id`, e.g. `Sending
    /// CONNACK to dev-1 (0, 0)`; does nothing unless verbose. Before a
    /// client identifier is adopted (a refused CONNECT), mosquitto passes
    /// the peer's IP address as `client_id`. Reason codes are printed as
    /// MQTT 5.0 codes whatever the protocol version.
    #[inline]
    pub fn sending(&self, client_id: &str, packet: &Packet) {
        if self.verbose() {
            self.log_sending(client_id, packet);
        }
    }

    fn log_received(&self, client_id: &str, packet: &Packet) {
        let name = packet.name();
        let mut detail = Vec::new();
        let mut fields = Vec::new();
        let message = match packet {
            Packet::Connect(_) => return,
            Packet::Publish(publish) => {
                publish_fields(publish, &mut fields);
                format!(
                    "Received PUBLISH from {client_id} {}",
                    publish_summary(publish)
                )
            }
            Packet::Puback(response) | Packet::Pubcomp(response) => {
                response_fields(response, &mut fields);
                format!(
                    "Received {name} from {client_id} (Mid: {}, RC:{})",
                    response.packet_id, response.reason.0
                )
            }
            Packet::Pubrec(response) | Packet::Pubrel(response) => {
                response_fields(response, &mut fields);
                format!(
                    "Received {name} from {client_id} (Mid: {})",
                    response.packet_id
                )
            }
            Packet::Subscribe(subscribe) => {
                let mut filters = Vec::new();
                for (filter, options) in &subscribe.filters {
                    let qos = options.qos.as_u8();
                    detail.push(format!("\t{filter} (QoS {qos})"));
                    detail.push(format!("{client_id} {qos} {filter}"));
                    filters.push(json!({ "filter": filter, "qos": qos }));
                }
                fields.push(("packet_id", json!(subscribe.packet_id)));
                fields.push(("filters", Value::Array(filters)));
                format!("Received SUBSCRIBE from {client_id}")
            }
            Packet::Unsubscribe(unsubscribe) => {
                for filter in &unsubscribe.filters {
                    detail.push(format!("\t{filter}"));
                    detail.push(format!("{client_id} {filter}"));
                }
                fields.push(("packet_id", json!(unsubscribe.packet_id)));
                fields.push(("filters", json!(unsubscribe.filters)));
                format!("Received UNSUBSCRIBE from {client_id}")
            }
            Packet::Auth(auth) => {
                let method = auth.properties.authentication_method.as_deref();
                fields.push(("reason", json!(auth.reason.0)));
                fields.push(("method", json!(method)));
                format!(
                    "Received AUTH from {client_id} (rc{}, {})",
                    auth.reason.0,
                    method.unwrap_or_default()
                )
            }
            _ => format!("Received {name} from {client_id}"),
        };
        let mut event = Event::new(LogLevel::Debug, "packet_received", message)
            .field("client_id", client_id)
            .field("packet", name);
        event.fields.extend(fields);
        event.detail = detail;
        self.emit(event);
    }

    fn log_sending(&self, client_id: &str, packet: &Packet) {
        let name = packet.name();
        let mut fields = Vec::new();
        let message = match packet {
            Packet::Connack(connack) => {
                fields.push(("session_present", json!(connack.session_present)));
                fields.push(("reason", json!(connack.reason.0)));
                format!(
                    "Sending CONNACK to {client_id} ({}, {})",
                    u8::from(connack.session_present),
                    connack.reason.0
                )
            }
            Packet::Publish(publish) => {
                publish_fields(publish, &mut fields);
                format!(
                    "Sending PUBLISH to {client_id} {}",
                    publish_summary(publish)
                )
            }
            Packet::Puback(response) | Packet::Pubrec(response) => {
                response_fields(response, &mut fields);
                format!(
                    "Sending {name} to {client_id} (m{}, rc{})",
                    response.packet_id, response.reason.0
                )
            }
            Packet::Pubrel(response) | Packet::Pubcomp(response) => {
                response_fields(response, &mut fields);
                format!("Sending {name} to {client_id} (m{})", response.packet_id)
            }
            Packet::Suback(suback) => {
                let reasons: Vec<u8> = suback.reasons.iter().map(|reason| reason.0).collect();
                fields.push(("packet_id", json!(suback.packet_id)));
                fields.push(("reasons", json!(reasons)));
                format!("Sending SUBACK to {client_id}")
            }
            Packet::Unsuback(unsuback) => {
                fields.push(("packet_id", json!(unsuback.packet_id)));
                format!("Sending UNSUBACK to {client_id}")
            }
            Packet::Disconnect(disconnect) => {
                fields.push(("reason", json!(disconnect.reason.0)));
                format!(
                    "Sending DISCONNECT to {client_id} (rc{})",
                    disconnect.reason.0
                )
            }
            Packet::Auth(auth) => {
                let method = auth.properties.authentication_method.as_deref();
                fields.push(("reason", json!(auth.reason.0)));
                fields.push(("method", json!(method)));
                format!(
                    "Sending AUTH to {client_id} (rc{}, {})",
                    auth.reason.0,
                    method.unwrap_or_default()
                )
            }
            _ => format!("Sending {name} to {client_id}"),
        };
        let mut event = Event::new(LogLevel::Debug, "packet_sent", message)
            .field("client_id", client_id)
            .field("packet", name);
        event.fields.extend(fields);
        self.emit(event);
    }

    /// A free-form informational line.
    pub fn info(&self, text: &str) {
        self.free_form(LogLevel::Info, text);
    }

    /// A free-form warning line.
    pub fn warning(&self, text: &str) {
        self.free_form(LogLevel::Warning, text);
    }

    /// A free-form error line.
    pub fn error(&self, text: &str) {
        self.free_form(LogLevel::Error, text);
    }

    /// A free-form line at `level` (for events from libraries, see
    /// [`crate::trace_log`]).
    pub fn message(&self, level: LogLevel, text: &str) {
        self.free_form(level, text);
    }

    fn free_form(&self, level: LogLevel, text: &str) {
        if self.enabled(level) {
            self.emit(Event::new(level, "message", text));
        }
    }

    fn enabled(&self, level: LogLevel) -> bool {
        level as u8 <= self.settings.threshold.load(Ordering::Relaxed)
    }

    /// Formats `event` and writes it with a single write.
    fn emit(&self, event: Event) {
        let now = (self.clock)();
        let settings = &self.settings;
        let lines = if settings.json.load(Ordering::Relaxed) {
            vec![event.to_json(now)]
        } else {
            let prefix = if settings.timestamps.load(Ordering::Relaxed) {
                let seconds = now.duration_since(UNIX_EPOCH).unwrap_or_default();
                format!("{}: ", seconds.as_secs())
            } else {
                String::new()
            };
            let detail = if self.verbose() {
                &event.detail[..]
            } else {
                &[]
            };
            std::iter::once(&event.message)
                .chain(detail)
                .map(|line| format!("{prefix}{line}"))
                .collect()
        };
        match &self.sink {
            Sink::Stderr => {
                let mut text = lines.join("\n");
                text.push('\n');
                // Nowhere to report a failed log write; dropping it is the
                // only sensible thing.
                let _ = std::io::stderr().lock().write_all(text.as_bytes());
            }
            Sink::Capture(captured) => captured.lock().extend(lines),
        }
    }
}

/// One event, ready to format.
struct Event {
    level: LogLevel,
    /// snake_case event name (`event` in JSON).
    name: &'static str,
    /// The mosquitto text line.
    message: String,
    /// JSON fields after `ts`, `level`, `event` and `message`, in order.
    fields: Vec<(&'static str, Value)>,
    /// Debug lines that follow `message` in text output when verbose; JSON
    /// carries the same facts in `fields`.
    detail: Vec<String>,
}

impl Event {
    fn new(level: LogLevel, name: &'static str, message: impl Into<String>) -> Event {
        Event {
            level,
            name,
            message: message.into(),
            fields: Vec::new(),
            detail: Vec::new(),
        }
    }

    fn field(mut self, key: &'static str, value: impl Into<Value>) -> Event {
        self.fields.push((key, value.into()));
        self
    }

    /// The JSON object, with keys in a fixed order: `ts`, `level`, `event`,
    /// `message`, then the event's fields.
    fn to_json(&self, now: SystemTime) -> String {
        let head = [
            ("ts", Value::from(rfc3339_millis(now))),
            ("level", Value::from(self.level.as_str())),
            ("event", Value::from(self.name)),
            ("message", Value::from(self.message.as_str())),
        ];
        let mut out = String::from("{");
        for (index, (key, value)) in head.iter().chain(&self.fields).enumerate() {
            if index > 0 {
                out.push(',');
            }
            out.push_str(&Value::from(*key).to_string());
            out.push(':');
            out.push_str(&value.to_string());
        }
        out.push('}');
        out
    }
}

/// `(d0, q1, r0, m3, 'a/b', ... (5 bytes))`, mosquitto's PUBLISH summary.
fn publish_summary(publish: &Publish) -> String {
    format!(
        "(d{}, q{}, r{}, m{}, '{}', ... ({} bytes))",
        u8::from(publish.dup),
        publish.qos.as_u8(),
        u8::from(publish.retain),
        publish.packet_id.unwrap_or(0),
        publish.topic,
        publish.payload.len()
    )
}

fn publish_fields(publish: &Publish, fields: &mut Vec<(&'static str, Value)>) {
    fields.push(("dup", json!(publish.dup)));
    fields.push(("qos", json!(publish.qos.as_u8())));
    fields.push(("retain", json!(publish.retain)));
    if let Some(packet_id) = publish.packet_id {
        fields.push(("packet_id", json!(packet_id)));
    }
    fields.push(("topic", json!(&*publish.topic)));
    fields.push(("payload_len", json!(publish.payload.len())));
}

fn response_fields(response: &PubResponse, fields: &mut Vec<(&'static str, Value)>) {
    fields.push(("packet_id", json!(response.packet_id)));
    fields.push(("reason", json!(response.reason.0)));
}

/// mosquitto's protocol number in `(p2, ...)`: 1 for 3.1, 2 for 3.1.1, 5
/// for 5.0.
fn mosquitto_protocol(protocol: ProtocolVersion) -> u8 {
    match protocol {
        ProtocolVersion::V31 => 1,
        ProtocolVersion::V311 => 2,
        ProtocolVersion::V5 => 5,
    }
}

/// The `protocol` JSON field.
fn protocol_name(protocol: ProtocolVersion) -> &'static str {
    match protocol {
        ProtocolVersion::V31 => "3.1",
        ProtocolVersion::V311 => "3.1.1",
        ProtocolVersion::V5 => "5.0",
    }
}

/// The error text as C's `strerror` gives it (which mosquitto prints),
/// without Rust's ` (os error N)` suffix.
fn os_error_text(error: &std::io::Error) -> String {
    let text = error.to_string();
    match error.raw_os_error() {
        Some(code) => match text.strip_suffix(&format!(" (os error {code})")) {
            Some(bare) => bare.to_owned(),
            None => text,
        },
        None => text,
    }
}

/// RFC 3339 UTC time with milliseconds, e.g. `2024-11-25T21:20:00.000Z`.
fn rfc3339_millis(time: SystemTime) -> String {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since_epoch.as_secs();
    let (year, month, day) = civil_from_days(seconds / 86_400);
    let second_of_day = seconds % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60,
        since_epoch.subsec_millis()
    )
}

/// The Gregorian date of a day counted from 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let shifted = days + 719_468; // days since 0000-03-01
    let era = shifted / 146_097;
    let day_of_era = shifted % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153; // 0 = March
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::codec::{
        Auth, Connack, Disconnect, Properties, QoS, ReasonCode, Subscribe, SubscriptionOptions,
        Unsubscribe, Will,
    };

    /// 2024-11-25T21:20:00.123Z.
    fn fixed_clock() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_732_569_600_123)
    }

    fn logger(config: LogConfig) -> (Logger, Arc<Mutex<Vec<String>>>) {
        let (mut logger, lines) = Logger::capture(&config);
        logger.clock = fixed_clock;
        (logger, lines)
    }

    /// Text lines without time stamps, at `level`.
    fn text(level: LogLevel, verbose: bool) -> (Logger, Arc<Mutex<Vec<String>>>) {
        logger(LogConfig {
            level,
            format: LogFormat::Text,
            verbose,
            timestamps: false,
        })
    }

    fn json_logger(verbose: bool) -> (Logger, Arc<Mutex<Vec<String>>>) {
        logger(LogConfig {
            level: LogLevel::Info,
            format: LogFormat::Json,
            verbose,
            timestamps: true,
        })
    }

    /// Takes the captured lines.
    fn take(lines: &Arc<Mutex<Vec<String>>>) -> Vec<String> {
        std::mem::take(&mut *lines.lock())
    }

    /// Takes the single captured JSON line, parsed.
    fn take_json(lines: &Arc<Mutex<Vec<String>>>) -> Value {
        let taken = take(lines);
        assert_eq!(taken.len(), 1, "{taken:?}");
        serde_json::from_str(&taken[0]).unwrap()
    }

    fn peer() -> SocketAddr {
        "10.0.0.7:51234".parse().unwrap()
    }

    fn connect(protocol: ProtocolVersion, username: Option<&str>, will: Option<Will>) -> Connect {
        Connect {
            protocol,
            clean_start: false,
            keep_alive: 60,
            client_id: "dev-1".to_owned(),
            will,
            username: username.map(str::to_owned),
            password: None,
            properties: Properties::default(),
        }
    }

    fn will() -> Will {
        Will {
            topic: "w/t".to_owned(),
            payload: Bytes::from_static(b"gone!"),
            qos: QoS::AtLeastOnce,
            retain: true,
            delay_interval: None,
            properties: Default::default(),
        }
    }

    fn publish(qos: QoS, packet_id: Option<u16>, topic: &str, payload: &'static [u8]) -> Packet {
        Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: topic.into(),
            packet_id,
            properties: Default::default(),
            payload: Bytes::from_static(payload),
        })
    }

    fn response(packet_id: u16, reason: u8) -> PubResponse {
        PubResponse::new(packet_id, ReasonCode(reason))
    }

    #[test]
    fn text_lines_have_mosquittos_timestamp_prefix() {
        let (log, lines) = logger(LogConfig::default());
        log.new_connection(peer(), 1883);
        assert_eq!(
            take(&lines),
            ["1732569600: New connection from 10.0.0.7:51234 on port 1883."]
        );
    }

    #[test]
    fn client_connected_prints_protocol_clean_keepalive_and_user() {
        let (log, lines) = text(LogLevel::Info, false);
        log.client_connected(
            peer(),
            "dev-1",
            &connect(ProtocolVersion::V311, Some("alice"), None),
            Some("alice"),
        );
        let mut v31 = connect(ProtocolVersion::V31, None, None);
        v31.clean_start = true;
        log.client_connected(peer(), "dev-1", &v31, None);
        log.client_connected(
            peer(),
            "auto-1",
            &connect(ProtocolVersion::V5, None, None),
            None,
        );
        // A certificate user: the name comes from the certificate.
        log.client_connected(
            peer(),
            "sensor-1",
            &connect(ProtocolVersion::V311, None, None),
            Some("sensor"),
        );
        assert_eq!(
            take(&lines),
            [
                "New client connected from 10.0.0.7:51234 as dev-1 (p2, c0, k60, u'alice').",
                "New client connected from 10.0.0.7:51234 as dev-1 (p1, c1, k60).",
                "New client connected from 10.0.0.7:51234 as auto-1 (p5, c0, k60).",
                "New client connected from 10.0.0.7:51234 as sensor-1 (p2, c0, k60, u'sensor').",
            ]
        );
    }

    #[test]
    fn verbose_client_connected_adds_the_will_lines() {
        let (log, lines) = text(LogLevel::Info, true);
        log.client_connected(
            peer(),
            "dev-1",
            &connect(ProtocolVersion::V311, None, Some(will())),
            None,
        );
        log.client_connected(
            peer(),
            "dev-1",
            &connect(ProtocolVersion::V311, None, None),
            None,
        );
        assert_eq!(
            take(&lines),
            [
                "New client connected from 10.0.0.7:51234 as dev-1 (p2, c0, k60).",
                "Will message specified (5 bytes) (r1, q1).",
                "\tw/t",
                "New client connected from 10.0.0.7:51234 as dev-1 (p2, c0, k60).",
                "No will message specified.",
            ]
        );
    }

    #[test]
    fn ipv6_peers_are_printed_like_mosquitto() {
        let (log, lines) = text(LogLevel::Info, false);
        log.new_connection("[::1]:5000".parse().unwrap(), 1883);
        assert_eq!(take(&lines), ["New connection from ::1:5000 on port 1883."]);
    }

    #[test]
    fn disconnect_events_use_mosquittos_words() {
        let (log, lines) = text(LogLevel::Info, false);
        log.already_connected("dev-1");
        log.keepalive_timeout("dev-1");
        log.disconnected("dev-1");
        log.connection_closed(Some("dev-1"));
        log.connection_closed(None);
        log.socket_error(Some("dev-1"), &std::io::ErrorKind::ConnectionReset.into());
        let timed_out = std::io::Error::new(std::io::ErrorKind::TimedOut, "Connection timed out");
        log.socket_error(Some("dev-1"), &timed_out);
        log.not_authorised(None);
        log.not_authorised(Some("dev-1"));
        log.protocol_error(Some("dev-1"), "second CONNECT");
        log.protocol_error(None, "first packet was not CONNECT");
        log.malformed_packet(Some("dev-1"), "topic is not UTF-8");
        log.oversize_packet(Some("dev-1"));
        assert_eq!(
            take(&lines),
            [
                "Client dev-1 already connected, closing old connection.",
                "Client dev-1 has exceeded timeout, disconnecting.",
                "Client dev-1 disconnected.",
                "Client dev-1 closed its connection.",
                "Client <unknown> closed its connection.",
                "Client dev-1 closed its connection.",
                "Client dev-1 disconnected: Connection timed out.",
                "Client <unknown> disconnected, not authorised.",
                "Client dev-1 disconnected, not authorised.",
                "Client dev-1 disconnected due to protocol error.",
                "Client <unknown> disconnected due to protocol error.",
                "Client dev-1 disconnected due to malformed packet.",
                "Client dev-1 disconnected due to oversize packet.",
            ]
        );
    }

    #[test]
    fn os_errors_lose_the_rust_suffix() {
        let error = std::io::Error::from_raw_os_error(1);
        assert!(error.to_string().contains("(os error 1)"));
        let text = os_error_text(&error);
        assert!(!text.is_empty() && !text.contains("os error"), "{text}");
    }

    #[test]
    fn lifecycle_lines() {
        let (log, lines) = text(LogLevel::Info, false);
        log.starting();
        log.config_loaded(Some(Path::new("/etc/kubemqtt/broker.toml")));
        log.config_loaded(None);
        log.listening("0.0.0.0:1883".parse().unwrap());
        log.listening("[::]:8883".parse().unwrap());
        log.running();
        log.terminating();
        assert_eq!(
            take(&lines),
            [
                format!("kubemqtt-broker version {VERSION} starting"),
                "Config loaded from /etc/kubemqtt/broker.toml.".to_owned(),
                "Using default config.".to_owned(),
                "Opening ipv4 listen socket on port 1883.".to_owned(),
                "Opening ipv6 listen socket on port 8883.".to_owned(),
                format!("kubemqtt-broker version {VERSION} running"),
                format!("kubemqtt-broker version {VERSION} terminating"),
            ]
        );
    }

    /// The QoS 1 and 2 flows as mosquitto 2.0.11 -v printed them.
    #[test]
    fn verbose_publish_flows_match_mosquitto() {
        let (log, lines) = text(LogLevel::Info, true);
        assert!(log.verbose());
        let connack = Packet::Connack(Connack {
            session_present: false,
            reason: ReasonCode::SUCCESS,
            properties: Properties::default(),
        });
        log.sending("pub-2", &connack);
        log.received(
            "pub-2",
            &publish(QoS::ExactlyOnce, Some(1), "jiji/chat/9", b"hello22"),
        );
        log.sending("pub-2", &Packet::Pubrec(response(1, 0)));
        log.received("pub-2", &Packet::Pubrel(response(1, 0)));
        log.sending(
            "sub-1",
            &publish(QoS::ExactlyOnce, Some(2), "jiji/chat/9", b"hello22"),
        );
        log.sending("pub-2", &Packet::Pubcomp(response(1, 0)));
        log.received("sub-1", &Packet::Pubrec(response(2, 0)));
        log.sending("sub-1", &Packet::Pubrel(response(2, 0)));
        log.received("sub-1", &Packet::Pubcomp(response(2, 0)));
        log.received(
            "pub-0",
            &publish(QoS::AtMostOnce, None, "jiji/chat/9", b"hello"),
        );
        log.sending("pub-1", &Packet::Puback(response(7, 0)));
        log.received("dev-11", &Packet::Puback(response(1, 16)));
        assert_eq!(
            take(&lines),
            [
                "Sending CONNACK to pub-2 (0, 0)",
                "Received PUBLISH from pub-2 (d0, q2, r0, m1, 'jiji/chat/9', ... (7 bytes))",
                "Sending PUBREC to pub-2 (m1, rc0)",
                "Received PUBREL from pub-2 (Mid: 1)",
                "Sending PUBLISH to sub-1 (d0, q2, r0, m2, 'jiji/chat/9', ... (7 bytes))",
                "Sending PUBCOMP to pub-2 (m1)",
                "Received PUBREC from sub-1 (Mid: 2)",
                "Sending PUBREL to sub-1 (m2)",
                "Received PUBCOMP from sub-1 (Mid: 2, RC:0)",
                "Received PUBLISH from pub-0 (d0, q0, r0, m0, 'jiji/chat/9', ... (5 bytes))",
                "Sending PUBACK to pub-1 (m7, rc0)",
                "Received PUBACK from dev-11 (Mid: 1, RC:16)",
            ]
        );
    }

    #[test]
    fn verbose_subscription_and_control_packets_match_mosquitto() {
        let (log, lines) = text(LogLevel::Info, true);
        let options = |qos| SubscriptionOptions {
            qos,
            ..Default::default()
        };
        log.received(
            "sub-1",
            &Packet::Subscribe(Subscribe {
                packet_id: 1,
                filters: vec![
                    ("jiji/chat/9".to_owned(), options(QoS::ExactlyOnce)),
                    ("a/+".to_owned(), options(QoS::AtMostOnce)),
                ],
                properties: Properties::default(),
            }),
        );
        log.received(
            "u1",
            &Packet::Unsubscribe(Unsubscribe {
                packet_id: 5,
                filters: vec!["a/b".to_owned(), "c/#".to_owned()],
                properties: Properties::default(),
            }),
        );
        log.received("u1", &Packet::Pingreq);
        log.sending("u1", &Packet::Pingresp);
        log.received(
            "u1",
            &Packet::Disconnect(Disconnect {
                reason: ReasonCode::NORMAL_DISCONNECTION,
                properties: Properties::default(),
            }),
        );
        log.sending(
            "u2",
            &Packet::Disconnect(Disconnect {
                reason: ReasonCode::SESSION_TAKEN_OVER,
                properties: Properties::default(),
            }),
        );
        let auth = Auth {
            reason: ReasonCode::CONTINUE_AUTHENTICATION,
            properties: Properties {
                authentication_method: Some("SCRAM-SHA-1".to_owned()),
                ..Default::default()
            },
        };
        log.received("u3", &Packet::Auth(auth.clone()));
        log.sending("u3", &Packet::Auth(auth));
        assert_eq!(
            take(&lines),
            [
                "Received SUBSCRIBE from sub-1",
                "\tjiji/chat/9 (QoS 2)",
                "sub-1 2 jiji/chat/9",
                "\ta/+ (QoS 0)",
                "sub-1 0 a/+",
                "Received UNSUBSCRIBE from u1",
                "\ta/b",
                "u1 a/b",
                "\tc/#",
                "u1 c/#",
                "Received PINGREQ from u1",
                "Sending PINGRESP to u1",
                "Received DISCONNECT from u1",
                "Sending DISCONNECT to u2 (rc142)",
                "Received AUTH from u3 (rc24, SCRAM-SHA-1)",
                "Sending AUTH to u3 (rc24, SCRAM-SHA-1)",
            ]
        );
    }

    #[test]
    fn received_connect_has_no_line() {
        let (log, lines) = text(LogLevel::Debug, false);
        let connect = connect(ProtocolVersion::V311, None, None);
        log.received("dev-1", &Packet::Connect(Box::new(connect)));
        assert!(take(&lines).is_empty());
    }

    #[test]
    fn apply_changes_level_and_format_of_every_clone() {
        let (log, lines) = text(LogLevel::Info, false);
        let clone = log.clone();
        clone.received("dev-1", &Packet::Pingreq);
        assert!(take(&lines).is_empty());
        log.apply(&LogConfig {
            level: LogLevel::Debug,
            format: LogFormat::Json,
            verbose: false,
            timestamps: false,
        });
        assert!(clone.verbose());
        clone.received("dev-1", &Packet::Pingreq);
        let lines = take(&lines);
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0].contains("\"event\":\"packet_received\""),
            "{lines:?}"
        );
    }

    #[test]
    fn packet_lines_need_verbose_or_debug() {
        let (quiet, lines) = text(LogLevel::Info, false);
        assert!(!quiet.verbose());
        quiet.received("dev-1", &Packet::Pingreq);
        quiet.sending("dev-1", &Packet::Pingresp);
        assert!(take(&lines).is_empty());

        let (debug, lines) = text(LogLevel::Debug, false);
        assert!(debug.verbose());
        debug.received("dev-1", &Packet::Pingreq);
        assert_eq!(take(&lines), ["Received PINGREQ from dev-1"]);

        // verbose wins over a stricter level, as `mosquitto -v` does.
        let (verbose, lines) = text(LogLevel::Error, true);
        verbose.received("dev-1", &Packet::Pingreq);
        verbose.disconnected("dev-1");
        assert_eq!(
            take(&lines),
            ["Received PINGREQ from dev-1", "Client dev-1 disconnected."]
        );
    }

    #[test]
    fn level_filters_less_severe_events() {
        let (log, lines) = text(LogLevel::Notice, false);
        log.starting();
        log.info("hello");
        log.new_connection(peer(), 1883);
        log.warning("careful");
        assert_eq!(
            take(&lines),
            [
                "New connection from 10.0.0.7:51234 on port 1883.",
                "careful"
            ]
        );

        let (log, lines) = text(LogLevel::Error, false);
        log.new_connection(peer(), 1883);
        log.disconnected("dev-1");
        log.warning("careful");
        log.already_connected("dev-1");
        log.error("broken");
        assert_eq!(
            take(&lines),
            [
                "Client dev-1 already connected, closing old connection.",
                "broken"
            ]
        );
    }

    #[test]
    fn json_line_has_fixed_key_order_and_the_text_as_message() {
        let (log, lines) = json_logger(false);
        log.client_connected(
            peer(),
            "dev-1",
            &connect(ProtocolVersion::V311, Some("alice"), Some(will())),
            Some("alice"),
        );
        assert_eq!(
            take(&lines),
            [concat!(
                r#"{"ts":"2024-11-25T21:20:00.123Z","level":"notice","event":"client_connected","#,
                r#""message":"New client connected from 10.0.0.7:51234 as dev-1 (p2, c0, k60, u'alice').","#,
                r#""client_id":"dev-1","address":"10.0.0.7","port":51234,"protocol":"3.1.1","#,
                r#""clean_start":false,"keepalive":60,"username":"alice","#,
                r#""will":{"payload_len":5,"qos":1,"retain":true,"topic":"w/t"}}"#
            )]
        );
    }

    #[test]
    fn json_events_carry_their_fields() {
        let (log, lines) = json_logger(false);
        log.new_connection(peer(), 1883);
        assert_eq!(
            take_json(&lines),
            json!({
                "ts": "2024-11-25T21:20:00.123Z",
                "level": "notice",
                "event": "new_connection",
                "message": "New connection from 10.0.0.7:51234 on port 1883.",
                "address": "10.0.0.7",
                "port": 51234,
                "local_port": 1883,
            })
        );

        log.protocol_error(None, "first packet was not CONNECT");
        let line = take_json(&lines);
        assert_eq!(line["event"], "protocol_error");
        assert_eq!(
            line["message"],
            "Client <unknown> disconnected due to protocol error."
        );
        assert_eq!(line["reason"], "first packet was not CONNECT");
        assert!(line.get("client_id").is_none());

        log.already_connected("dev-1");
        let line = take_json(&lines);
        assert_eq!(
            (&line["level"], &line["event"]),
            (&json!("error"), &json!("already_connected"))
        );
        assert_eq!(line["client_id"], "dev-1");

        log.starting();
        let line = take_json(&lines);
        assert_eq!(
            (&line["level"], &line["event"]),
            (&json!("info"), &json!("starting"))
        );
        assert_eq!(line["version"], VERSION);

        log.warning("say \"hi\"\n");
        let line = take_json(&lines);
        assert_eq!(
            (&line["level"], &line["event"]),
            (&json!("warning"), &json!("message"))
        );
        assert_eq!(line["message"], "say \"hi\"\n");
    }

    #[test]
    fn json_packet_events_are_one_object_each() {
        let (log, lines) = json_logger(true);
        log.received(
            "sub-1",
            &Packet::Subscribe(Subscribe {
                packet_id: 3,
                filters: vec![(
                    "a/+".to_owned(),
                    SubscriptionOptions {
                        qos: QoS::AtLeastOnce,
                        ..Default::default()
                    },
                )],
                properties: Properties::default(),
            }),
        );
        assert_eq!(
            take_json(&lines),
            json!({
                "ts": "2024-11-25T21:20:00.123Z",
                "level": "debug",
                "event": "packet_received",
                "message": "Received SUBSCRIBE from sub-1",
                "client_id": "sub-1",
                "packet": "SUBSCRIBE",
                "packet_id": 3,
                "filters": [{ "filter": "a/+", "qos": 1 }],
            })
        );

        log.sending(
            "sub-1",
            &publish(QoS::AtLeastOnce, Some(3), "a/b", b"hello"),
        );
        assert_eq!(
            take_json(&lines),
            json!({
                "ts": "2024-11-25T21:20:00.123Z",
                "level": "debug",
                "event": "packet_sent",
                "message": "Sending PUBLISH to sub-1 (d0, q1, r0, m3, 'a/b', ... (5 bytes))",
                "client_id": "sub-1",
                "packet": "PUBLISH",
                "dup": false,
                "qos": 1,
                "retain": false,
                "packet_id": 3,
                "topic": "a/b",
                "payload_len": 5,
            })
        );
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339_millis(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_millis(fixed_clock()), "2024-11-25T21:20:00.123Z");
        let leap_day = UNIX_EPOCH + Duration::from_secs(951_868_799);
        assert_eq!(rfc3339_millis(leap_day), "2000-02-29T23:59:59.000Z");
        let new_year = UNIX_EPOCH + Duration::from_secs(4_102_444_800);
        assert_eq!(rfc3339_millis(new_year), "2100-01-01T00:00:00.000Z");
    }
}
