//! The names a cluster uses in NATS: every subject, stream and bucket
//! carries the cluster's name, so that several brokers can share one NATS.
//!
//! | what | name |
//! |---|---|
//! | device data, for NATS clients | `<name>.<topic as subject>` |
//! | QoS 0 messages routed to a node | `_KMQ.<name>.c.<node>` (core NATS) |
//! | QoS 1/2 messages routed to a node | `_KMQ.<name>.r.<node>`, stream `KMQ_<name>_ROUTE`, consumer `route-<node>` |
//! | take-over requests to a node | `_KMQ.<name>.takeover.<node>` |
//! | who wants which filters | bucket `KMQ_<name>_interest` |
//! | retained messages | bucket `KMQ_<name>_retained` |
//! | which node holds which client | bucket `KMQ_<name>_clients` |
//! | which nodes are alive | bucket `KMQ_<name>_nodes` |
//! | persistent sessions' records | bucket `KMQ_<name>_sessions` |
//! | offline sessions' messages | `_KMQ.<name>.q.<client>`, stream `KMQ_<name>_QUEUES` |
//! | offline sessions' filters | `=s.<client>.<filter>` in the interest bucket |

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

/// The names of one cluster, for one node of it.
#[derive(Debug, Clone)]
pub struct Names {
    /// The cluster's name (a NATS token).
    pub cluster: String,
    /// This node's name (a NATS token).
    pub node: String,
}

impl Names {
    pub fn new(cluster: &str, node: &str) -> Names {
        Names {
            cluster: cluster.to_string(),
            node: node.to_string(),
        }
    }

    /// The subject of a topic for NATS clients: `<name>.<subject>`.
    pub fn data_subject(&self, mapped: &str) -> String {
        format!("{}.{mapped}", self.cluster)
    }

    /// Every data subject, for importing what NATS clients publish.
    pub fn data_wildcard(&self) -> String {
        format!("{}.>", self.cluster)
    }

    /// The topic part of a data subject, when it is one.
    pub fn strip_data_prefix<'a>(&self, subject: &'a str) -> Option<&'a str> {
        subject
            .strip_prefix(self.cluster.as_str())?
            .strip_prefix('.')
            .filter(|rest| !rest.is_empty())
    }

    /// Core subject of QoS 0 messages routed to `node`.
    pub fn core_route(&self, node: &str) -> String {
        format!("_KMQ.{}.c.{node}", self.cluster)
    }

    /// Where `node` (run `run`) hears which of the QoS 0 messages it
    /// routed to `to` that node has routed in its turn (the reply subject
    /// of [`super::batch::ACK_HEADER`]).
    pub fn core_acks(&self, node: &str, run: u64, to: &str) -> String {
        format!("_KMQ.{}.ca.{node}.{run}.{to}", self.cluster)
    }

    /// Stream subject of QoS 1/2 messages routed to `node`.
    pub fn stream_route(&self, node: &str) -> String {
        format!("_KMQ.{}.r.{node}", self.cluster)
    }

    /// The subjects of the route stream.
    pub fn route_stream_subjects(&self) -> String {
        format!("_KMQ.{}.r.*", self.cluster)
    }

    pub fn route_stream(&self) -> String {
        format!("KMQ_{}_ROUTE", self.cluster)
    }

    /// The durable consumer of `node`'s routed messages.
    pub fn route_consumer(&self, node: &str) -> String {
        format!("route-{node}")
    }

    /// Where `node` answers take-over requests.
    pub fn takeover(&self, node: &str) -> String {
        format!("_KMQ.{}.takeover.{node}", self.cluster)
    }

    /// Where `node` answers whether it is alive (and which run it is).
    pub fn ping(&self, node: &str) -> String {
        format!("_KMQ.{}.ping.{node}", self.cluster)
    }

    pub fn interest_bucket(&self) -> String {
        format!("KMQ_{}_interest", self.cluster)
    }

    pub fn retained_bucket(&self) -> String {
        format!("KMQ_{}_retained", self.cluster)
    }

    pub fn clients_bucket(&self) -> String {
        format!("KMQ_{}_clients", self.cluster)
    }

    pub fn sessions_bucket(&self) -> String {
        format!("KMQ_{}_sessions", self.cluster)
    }

    /// The stream of offline sessions' queues.
    pub fn queue_stream(&self) -> String {
        format!("KMQ_{}_QUEUES", self.cluster)
    }

    /// The subjects of the queue stream.
    pub fn queue_stream_subjects(&self) -> String {
        format!("_KMQ.{}.q.*", self.cluster)
    }

    pub fn nodes_bucket(&self) -> String {
        format!("KMQ_{}_nodes", self.cluster)
    }

    /// The interest-bucket key of this node's `filter`.
    pub fn interest_key(&self, filter: &str) -> String {
        format!("{}.{}", self.node, encode_key(filter))
    }

    /// This node's keys in the interest bucket start with this.
    pub fn own_interest_prefix(&self) -> String {
        format!("{}.", self.node)
    }
}

/// A key-value key for any text (key-value keys allow only letters,
/// digits and `-_=./`): URL-safe base64 without padding.
pub fn encode_key(text: &str) -> String {
    URL_SAFE_NO_PAD.encode(text.as_bytes())
}

/// The text of an [`encode_key`] key.
pub fn decode_key(key: &str) -> Option<String> {
    let bytes = URL_SAFE_NO_PAD.decode(key).ok()?;
    String::from_utf8(bytes).ok()
}

/// What an interest-bucket key stands for.
#[derive(Debug, PartialEq, Eq)]
pub enum InterestKey {
    /// A node's filter (`<node>.<filter>`).
    Node(String, String),
    /// An offline session's filter (`=s.<client>.<filter>`).
    Session(String, String),
}

/// Splits an interest-bucket key.
pub fn split_interest_key(key: &str) -> Option<InterestKey> {
    if let Some(rest) = key.strip_prefix("=s.") {
        let (client, filter) = rest.split_once('.')?;
        return Some(InterestKey::Session(
            decode_key(client)?,
            decode_key(filter)?,
        ));
    }
    let (node, encoded) = key.split_once('.')?;
    Some(InterestKey::Node(node.to_string(), decode_key(encoded)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_cluster_and_node() {
        let n = Names::new("broker", "broker-1");
        assert_eq!(n.core_route("broker-2"), "_KMQ.broker.c.broker-2");
        assert_eq!(n.stream_route("broker-2"), "_KMQ.broker.r.broker-2");
        assert_eq!(n.route_stream(), "KMQ_broker_ROUTE");
        assert_eq!(n.data_subject("a.b"), "broker.a.b");
        assert_eq!(n.strip_data_prefix("broker.a.b"), Some("a.b"));
        assert_eq!(n.strip_data_prefix("brokerx.a"), None);
        assert_eq!(n.strip_data_prefix("broker."), None);
    }

    #[test]
    fn any_filter_makes_a_key_and_comes_back() {
        let n = Names::new("broker", "broker-1");
        for filter in ["a/+/c", "$share/g/#", "温度/ä ö", "#"] {
            let key = n.interest_key(filter);
            assert!(key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_=./".contains(&b)));
            assert_eq!(
                split_interest_key(&key),
                Some(InterestKey::Node("broker-1".into(), filter.to_string()))
            );
            let session_key = format!("=s.{}.{}", encode_key("dev/1"), encode_key(filter));
            assert_eq!(
                split_interest_key(&session_key),
                Some(InterestKey::Session("dev/1".into(), filter.to_string()))
            );
        }
    }
}
