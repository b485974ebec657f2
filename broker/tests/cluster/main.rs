//! Several replicas, one broker: each test runs a 3-server NATS JetStream
//! cluster and several brokers on it (`common/cluster.rs`), and drives them
//! with real clients. One binary, run alone: its tests take turns, one
//! cluster at a time.

#[path = "../common/mod.rs"]
mod common;

/// The copy of its queue a replica keeps when a persistent session's
/// client leaves it, and the client coming back there.
mod copies;
/// What survives a replica killed, a NATS server killed, NATS lost.
mod failures;
/// Sessions a replica keeps while the cluster would not take them.
mod kept_sessions;
/// NATS credentials and TLS against a nats-server that requires them.
mod nats_auth;
/// A replica cut off from NATS while the others go on.
mod partition;
/// Routing, retained messages, client ids, NATS interop, credentials and
/// shared subscriptions across replicas.
mod routing;
/// Sessions that move: take-over, hand-over, forwarding, drain, shedding.
mod sessions;
/// `$SYS` and presence events: which node they come from.
mod sys;
