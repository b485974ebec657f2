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

mod events;
mod packets;
#[cfg(test)]
mod tests;

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde_json::Value;

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
