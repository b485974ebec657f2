//! `spec.cluster.rebalance`: how the operator spreads clients over a
//! broker's replicas after a scale-up (the planner is
//! [`crate::plan::rebalance`]).
//!
//! Numbers are whole percents and clients a second: Kubernetes API
//! conventions avoid floating-point fields.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Spreading clients over the replicas. MQTT connections stay where they
/// land, so a replica added by a scale-up would sit idle: once every
/// replica is ready, the operator asks the replicas above the mean to send
/// some of their clients elsewhere, gently (MQTT 5 clients get DISCONNECT
/// 0x9C "use another server", their persistent sessions move to the
/// cluster first; clients reconnect through the load balancer), until
/// every replica is within the tolerance of the mean.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RebalanceSpec {
    /// Whether the operator rebalances connections. Default: true.
    #[serde(default = "default_enabled")]
    pub enabled: bool,

    /// How far from the mean a replica's connection count may be, in
    /// percent of the mean (at least one connection), before the operator
    /// moves clients. Default: 10.
    #[serde(default = "default_tolerance_percent")]
    #[schemars(range(min = 1, max = 100))]
    pub tolerance_percent: u32,

    /// The largest share of a replica's connections sent away in one
    /// round, in percent; the operator looks again once they have
    /// reconnected. Default: 25.
    #[serde(default = "default_max_shed_percent")]
    #[schemars(range(min = 1, max = 100))]
    pub max_shed_percent: u32,

    /// Clients a replica sends away per second while shedding (each
    /// reconnects through the load balancer, resuming its session).
    /// Default: 50.
    #[serde(default = "default_shed_rate")]
    #[schemars(range(min = 1))]
    pub shed_rate: u32,
}

impl Default for RebalanceSpec {
    fn default() -> Self {
        RebalanceSpec {
            enabled: default_enabled(),
            tolerance_percent: default_tolerance_percent(),
            max_shed_percent: default_max_shed_percent(),
            shed_rate: default_shed_rate(),
        }
    }
}

fn default_enabled() -> bool {
    true
}

fn default_tolerance_percent() -> u32 {
    10
}

fn default_max_shed_percent() -> u32 {
    25
}

fn default_shed_rate() -> u32 {
    50
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_object_takes_every_default() {
        let spec: RebalanceSpec = serde_json::from_str("{}").unwrap();
        assert_eq!(spec, RebalanceSpec::default());
        assert!(spec.enabled);
        assert_eq!(
            (
                spec.tolerance_percent,
                spec.max_shed_percent,
                spec.shed_rate
            ),
            (10, 25, 50)
        );
    }

    #[test]
    fn fields_are_camel_case_and_bounded_in_the_schema() {
        let schema = serde_json::to_value(schemars::schema_for!(RebalanceSpec)).unwrap();
        let properties = &schema["properties"];
        for field in ["enabled", "tolerancePercent", "maxShedPercent", "shedRate"] {
            assert!(
                properties[field]["description"].is_string(),
                "{field} is documented"
            );
        }
        assert_eq!(properties["tolerancePercent"]["maximum"], 100);
        assert_eq!(properties["maxShedPercent"]["minimum"], 1);
        assert_eq!(properties["shedRate"]["minimum"], 1);
    }
}
