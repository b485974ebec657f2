//! What the configuration's types cannot say: names, topic filters, QoS
//! levels, TLS tables that could not work, and every expression, parsed
//! (a route's parsed expressions are its [`CompiledRoute`]).

use super::*;
use crate::expr::{self, Expr};
use crate::topic;

impl BridgeConfig {
    /// Checks what the schema cannot: names, filters, QoS, expressions.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid {
            path: PathBuf::new(),
            key,
            message,
        };
        if !is_name(&self.name) {
            return Err(invalid("name".into(), NAME_RULE.into()));
        }
        if self.broker.receive_maximum == 0 {
            return Err(invalid(
                "broker.receive_maximum".into(),
                "must be at least 1".into(),
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, route) in self.routes.iter().enumerate() {
            let at = |field: &str| format!("routes[{i}].{field}");
            if !is_name(&route.name) {
                return Err(invalid(at("name"), NAME_RULE.into()));
            }
            if !names.insert(route.name.as_str()) {
                return Err(invalid(
                    at("name"),
                    format!("`{}` names two routes", route.name),
                ));
            }
            if route.filters.is_empty() {
                return Err(invalid(at("filters"), "needs at least one filter".into()));
            }
            for filter in &route.filters {
                topic::check_filter(filter).map_err(|e| invalid(at("filters"), e))?;
            }
            if route.qos > 1 {
                return Err(invalid(at("qos"), "must be 0 or 1".into()));
            }
            if route.batch.max_messages == 0 {
                return Err(invalid(
                    at("batch.max_messages"),
                    "must be at least 1".into(),
                ));
            }
            route
                .compile()
                .map_err(|(field, e)| invalid(at(&field), e))?;
            if let (Some(DeadLetterConfig::Table(_)), false) = (
                &route.dead_letter,
                matches!(route.sink, SinkConfig::Postgres(_)),
            ) {
                return Err(invalid(
                    at("dead_letter.table"),
                    "a dead-letter table needs a postgres sink; use mqtt_topic".into(),
                ));
            }
            if let SinkConfig::Mqtt(mqtt) = &route.sink {
                if !(1..=2).contains(&mqtt.qos) {
                    return Err(invalid(at("sink.mqtt.qos"), "must be 1 or 2".into()));
                }
            }
            let (kind, url, tls) = route.sink.connection();
            check_tls(kind, url, tls).map_err(|e| invalid(at(&format!("sink.{kind}.tls")), e))?;
        }
        check_tls("mqtt", None, self.broker.tls.as_ref())
            .map_err(|e| invalid("broker.tls".into(), e))?;
        let mut names = std::collections::BTreeSet::new();
        for (i, command) in self.commands.iter().enumerate() {
            let at = |field: &str| format!("commands[{i}].{field}");
            if !is_name(&command.name) || !names.insert(command.name.as_str()) {
                return Err(invalid(
                    at("name"),
                    format!("{NAME_RULE}, one per command source"),
                ));
            }
            if command.qos > 2 {
                return Err(invalid(at("qos"), "must be 0, 1 or 2".into()));
            }
            expr::parse(&command.topic).map_err(|e| invalid(at("topic"), e.to_string()))?;
            for filter in &command.allowed_topics {
                topic::check_filter(filter).map_err(|e| invalid(at("allowed_topics"), e))?;
            }
            let (kind, url, tls) = match &command.from {
                CommandSource::Http { .. } => ("http", None, None),
                CommandSource::Nats { url, tls, .. } => ("nats", Some(url.as_str()), tls.as_ref()),
                CommandSource::Amqp { url, tls, .. } => ("amqp", Some(url.as_str()), tls.as_ref()),
            };
            check_tls(kind, url, tls).map_err(|e| invalid(at(&format!("from.{kind}.tls")), e))?;
        }
        let http_commands = self
            .commands
            .iter()
            .filter(|c| matches!(c.from, CommandSource::Http { .. }))
            .count();
        if http_commands > 1 {
            return Err(invalid(
                "commands".into(),
                "at most one command source may be `http` (one POST /publish)".into(),
            ));
        }
        Ok(())
    }
}

/// What the schema cannot say about a `tls` table: a client certificate
/// comes with its key, and TLS on a URL whose scheme is plain text would
/// never be used (`https://` and `amqps://` are what turn it on).
fn check_tls(kind: &str, url: Option<&str>, tls: Option<&TlsConfig>) -> Result<(), String> {
    let Some(tls) = tls else {
        return Ok(());
    };
    if tls.cert_file.is_some() != tls.key_file.is_some() {
        return Err("cert_file and key_file go together".into());
    }
    if tls.server_name.as_deref() == Some("") {
        return Err("server_name must not be empty".into());
    }
    let scheme = url.and_then(|url| url.split_once("://")).map(|(s, _)| s);
    match (kind, scheme) {
        ("http", Some(scheme)) if scheme != "https" => {
            Err("TLS needs an https:// URL; this one is plain HTTP".into())
        }
        ("amqp", Some(scheme)) if scheme != "amqps" => {
            Err("TLS needs an amqps:// URL; this one is plain AMQP".into())
        }
        _ => Ok(()),
    }
}

const NAME_RULE: &str = "must be 1-63 characters of a-z, 0-9 and '-'";

fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A route's expressions, parsed.
#[derive(Debug, Clone)]
pub struct CompiledRoute {
    /// The `where` condition.
    pub condition: Option<Expr>,
    /// The idempotency key expression.
    pub key: Expr,
    /// Output field → expression, in name order.
    pub map: Vec<(String, Expr)>,
    /// Sink expressions: NATS subject, AMQP routing key, MQTT topic.
    pub target: Option<Expr>,
}

impl RouteConfig {
    /// Parses every expression of the route; an error names the field.
    pub fn compile(&self) -> Result<CompiledRoute, (String, String)> {
        let parse =
            |field: String, text: &str| expr::parse(text).map_err(|e| (field, e.to_string()));
        let condition = self
            .condition
            .as_deref()
            .map(|text| parse("where".into(), text))
            .transpose()?;
        let key = parse("key".into(), self.key.as_deref().unwrap_or(DEFAULT_KEY))?;
        let map = self
            .map
            .iter()
            .map(|(name, text)| Ok((name.clone(), parse(format!("map.{name}"), text)?)))
            .collect::<Result<Vec<_>, (String, String)>>()?;
        let target = match &self.sink {
            SinkConfig::Nats(nats) => Some(parse("sink.nats.subject".into(), &nats.subject)?),
            SinkConfig::Amqp(amqp) => {
                Some(parse("sink.amqp.routing_key".into(), &amqp.routing_key)?)
            }
            SinkConfig::Mqtt(mqtt) => Some(parse("sink.mqtt.topic".into(), &mqtt.topic)?),
            SinkConfig::Postgres(_) | SinkConfig::Http(_) => None,
        };
        Ok(CompiledRoute {
            condition,
            key,
            map,
            target,
        })
    }
}
