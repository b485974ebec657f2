//! Events that libraries and the store report through `tracing` (an fsync
//! that failed, a compaction that was postponed) written to the broker's
//! own log, in its format, so no error is lost for want of a subscriber.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

use crate::config::LogLevel;
use crate::log::Logger;

/// Installs, for the whole process, a subscriber that writes every
/// `tracing` event at `info` or above to `logger` (`debug` too when the
/// logger is verbose). Fails when a subscriber is already installed.
pub fn install(logger: Logger) -> Result<(), tracing::subscriber::SetGlobalDefaultError> {
    let subscriber = tracing_subscriber::registry().with(ToLogger { logger });
    tracing::subscriber::set_global_default(subscriber)
}

/// A `tracing` layer writing events to a [`Logger`].
pub struct ToLogger {
    logger: Logger,
}

impl ToLogger {
    pub fn new(logger: Logger) -> ToLogger {
        ToLogger { logger }
    }
}

impl<S: Subscriber> Layer<S> for ToLogger {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let level = match *event.metadata().level() {
            Level::ERROR => LogLevel::Error,
            Level::WARN => LogLevel::Warning,
            Level::INFO => LogLevel::Info,
            _ if self.logger.verbose() => LogLevel::Debug,
            _ => return,
        };
        let mut text = Text::default();
        event.record(&mut text);
        self.logger.message(level, &text.finish());
    }
}

/// The message of an event, then its other fields as `key=value`, ending
/// with a full stop like the broker's other lines.
#[derive(Default)]
struct Text {
    message: String,
    fields: String,
}

impl Text {
    fn finish(self) -> String {
        let mut line = self.message;
        if !self.fields.is_empty() {
            line.push_str(" (");
            line.push_str(&self.fields);
            line.push(')');
        }
        if !line.ends_with('.') {
            line.push('.');
        }
        line
    }
}

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            if !self.fields.is_empty() {
                self.fields.push_str(", ");
            }
            let _ = write!(self.fields, "{}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.record_debug(field, &value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LogConfig;

    #[test]
    fn store_errors_reach_the_broker_log_with_their_fields() {
        let (logger, lines) = Logger::capture(&LogConfig {
            timestamps: false,
            ..LogConfig::default()
        });
        let subscriber = tracing_subscriber::registry().with(ToLogger::new(logger));
        tracing::subscriber::with_default(subscriber, || {
            let error = std::io::Error::other("disk full");
            tracing::error!(error = %error, "store: fsync failed; refusing further writes");
            tracing::debug!("not written unless verbose");
            tracing::info!(bytes = 42, "store: compacted");
        });
        let lines = lines.lock().clone();
        assert_eq!(
            lines,
            vec![
                "store: fsync failed; refusing further writes (error=disk full).".to_string(),
                "store: compacted (bytes=42).".to_string(),
            ]
        );
    }
}
