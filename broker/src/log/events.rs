//! The lines of the broker's life and of each client's: starting,
//! listening, connections, disconnections, refusals and drops, in
//! mosquitto's words.

use std::net::SocketAddr;
use std::path::Path;

use serde_json::json;

use crate::codec::{Connect, ProtocolVersion};
use crate::config::LogLevel;

use super::{Event, Logger, PROGRAM, UNKNOWN_CLIENT, VERSION};

impl Logger {
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
pub(super) fn os_error_text(error: &std::io::Error) -> String {
    let text = error.to_string();
    match error.raw_os_error() {
        Some(code) => match text.strip_suffix(&format!(" (os error {code})")) {
            Some(bare) => bare.to_owned(),
            None => text,
        },
        None => text,
    }
}
