//! Black-box integration test harness for the broker.
//!
//! * [`TestBroker`] starts a broker process on a free loopback port with a
//!   configuration written into a temporary directory, captures its log
//!   lines, and kills it on drop. `KUBEMQTT_TEST_BROKER` selects the target:
//!   unset or `kubemqtt` runs our `kubemqtt-broker` binary, `mosquitto` runs
//!   `/usr/sbin/mosquitto` with the equivalent configuration, so that the
//!   suite can be validated against a reference broker.
//! * [`Client4`] and [`Client5`] wrap rumqttc (MQTT 3.1.1 and 5.0) clients
//!   whose event loop runs in a task and whose incoming packets are collected
//!   in a channel, for ordinary flows.
//! * [`Raw`] is a tiny raw-socket client with hand-written packet bytes
//!   ([`Connect`], [`Pub`], [`subscribe`], ...) and a minimal response parser
//!   ([`Pkt`]), for everything rumqttc cannot express: malformed input, exact
//!   reason codes, DUP flags, flow control, AUTH. It deliberately shares no
//!   code with the broker's own codec. It also runs over TLS
//!   ([`tls_mqtt_connect`]) or after a PROXY header ([`Raw::from_stream`]).
//! * For the security and operations tests (kubemqtt only): [`OpsBroker`]
//!   (extra listeners and the HTTP server on free ports), [`TestCa`] and
//!   [`tls_client_config`] (rcgen certificates, rustls clients),
//!   [`http_request`] and [`PromMetrics`] (a minimal HTTP/1.1 client and a
//!   strict parser of the Prometheus text format).
//!
//! Files: `process.rs` (the broker under test), `clients.rs` (rumqttc),
//! `packets.rs`, `parse.rs` and `raw.rs` (the raw client), `ops.rs`,
//! `http.rs` and `tls.rs` (security and operations), `cluster.rs` (NATS
//! and several brokers, for `tests/cluster/`).
//!
//! Every wait is bounded by [`TIMEOUT`] (or an explicit duration), so a
//! broken broker fails a test quickly instead of hanging it.

// Each test file uses a different subset of these helpers.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Upper bound for anything the broker is expected to do promptly.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Upper bound for a keepalive timeout to be detected. Generous because
/// mosquitto checks keepalives only every few seconds.
pub const KEEPALIVE_BOUND: Duration = Duration::from_secs(12);

/// How long a test listens to conclude that something did *not* happen.
pub const QUIET: Duration = Duration::from_millis(700);

/// True when the suite runs against mosquitto (`KUBEMQTT_TEST_BROKER=mosquitto`).
///
/// Used by the few tests that check a behaviour where mosquitto 2.0.11
/// knowingly differs from what our broker must do; such tests print a note
/// and return early.
pub fn target_is_mosquitto() -> bool {
    match std::env::var("KUBEMQTT_TEST_BROKER").as_deref() {
        Err(_) | Ok("") | Ok("kubemqtt") => false,
        Ok("mosquitto") => true,
        Ok(other) => panic!("KUBEMQTT_TEST_BROKER={other:?}: expected `kubemqtt` or `mosquitto`"),
    }
}

/// Prints why a test is skipped under mosquitto. Returns true when it is.
pub fn skip_on_mosquitto(why: &str) -> bool {
    if target_is_mosquitto() {
        eprintln!("SKIPPED under mosquitto: {why}");
        return true;
    }
    false
}

mod clients;
mod http;
mod ops;
mod packets;
mod parse;
mod process;
mod raw;
mod tls;

/// A NATS cluster and brokers on it, for the cluster tests.
pub mod cluster;

#[allow(unused_imports)]
pub use clients::*;
#[allow(unused_imports)]
pub use http::*;
#[allow(unused_imports)]
pub use ops::*;
#[allow(unused_imports)]
pub use packets::*;
#[allow(unused_imports)]
pub use parse::*;
// Each test binary uses some of them.
#[allow(unused_imports)]
pub use process::*;
#[allow(unused_imports)]
pub use raw::*;
#[allow(unused_imports)]
pub use tls::*;
