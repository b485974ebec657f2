//! One MQTT 3.1.1 client connection over plain TCP, split into a reader and
//! a writer so a task can wait for input while it decides what to send.

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::codec::{self, Connect, DecodeError, EncodeError, Packet};

/// Free space kept in a receive buffer before each read.
const READ_RESERVE: usize = 4096;

/// How a client connects.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The broker; the only address the generator contacts.
    pub addr: SocketAddr,
    /// Keep alive in seconds (0: none). A connection that has written
    /// nothing for half of it sends a PINGREQ.
    pub keep_alive: u16,
    /// Clean Session flag.
    pub clean_session: bool,
    /// User name, if any.
    pub username: Option<String>,
    /// Password, if any (sent only with a user name).
    pub password: Option<String>,
    /// Bound on TCP connect + CONNACK, and on waiting for a SUBACK.
    pub timeout: Duration,
    /// Largest packet accepted from the broker.
    pub max_packet_size: usize,
}

/// Why a connection failed.
#[derive(Debug, Error)]
pub enum ClientError {
    /// Socket error.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The broker sent bytes that are not valid MQTT 3.1.1.
    #[error("protocol error: {0}")]
    Decode(#[from] DecodeError),
    /// A field the user gave cannot be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// CONNACK with a non-zero return code.
    #[error("connection refused: {}", connack_reason(*.0))]
    Refused(u8),
    /// A bounded wait ran out.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// The broker closed the connection.
    #[error("connection closed by the broker")]
    Closed,
    /// A packet that makes no sense at this point.
    #[error("unexpected {0} from the broker")]
    Unexpected(&'static str),
}

fn connack_reason(code: u8) -> &'static str {
    match code {
        1 => "unacceptable protocol version",
        2 => "identifier rejected",
        3 => "server unavailable",
        4 => "bad user name or password",
        5 => "not authorized",
        _ => "unknown CONNACK return code",
    }
}

/// Receiving side: the socket half and the bytes read but not yet decoded.
pub struct Reader {
    half: OwnedReadHalf,
    buf: BytesMut,
    max_packet_size: usize,
}

impl Reader {
    /// Reads whatever the socket has. Cancel safe: if the future is dropped
    /// before it completes, nothing was read. The broker closing the
    /// connection is [`ClientError::Closed`].
    pub async fn fill(&mut self) -> Result<(), ClientError> {
        if self.buf.capacity() - self.buf.len() < READ_RESERVE / 4 {
            self.buf.reserve(READ_RESERVE);
        }
        match self.half.read_buf(&mut self.buf).await? {
            0 => Err(ClientError::Closed),
            _ => Ok(()),
        }
    }

    /// The next complete packet already received, if any.
    pub fn next_packet(&mut self) -> Result<Option<Packet>, ClientError> {
        Ok(codec::decode(&mut self.buf, self.max_packet_size)?)
    }

    /// Waits for the next packet. Callers bound the wait.
    pub async fn read_packet(&mut self) -> Result<Packet, ClientError> {
        loop {
            if let Some(packet) = self.next_packet()? {
                return Ok(packet);
            }
            self.fill().await?;
        }
    }
}

/// Sending side: packets are encoded into `buf`, then written by
/// [`Writer::flush`] in one system call.
pub struct Writer {
    half: OwnedWriteHalf,
    /// Encoded packets waiting for [`Writer::flush`].
    pub buf: BytesMut,
    last_write: Instant,
}

impl Writer {
    /// Writes out everything in `buf`.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.half.write_all(&self.buf).await?;
        self.buf.clear();
        self.last_write = Instant::now();
        Ok(())
    }

    /// When a PINGREQ is due if nothing else is written (`None` without keep
    /// alive).
    pub fn ping_at(&self, keep_alive: u16) -> Option<Instant> {
        (keep_alive > 0).then(|| self.last_write + Duration::from_secs(u64::from(keep_alive)) / 2)
    }

    /// Sends a PINGREQ.
    pub async fn ping(&mut self) -> Result<(), ClientError> {
        codec::encode_pingreq(&mut self.buf);
        self.flush().await
    }
}

/// A connection just accepted, see [`Connection::open_session`].
pub struct Opened {
    /// The connection.
    pub connection: Connection,
    /// TCP connect, CONNECT and CONNACK.
    pub took: Duration,
    /// CONNACK's Session Present flag.
    pub session_present: bool,
}

/// An accepted MQTT connection.
pub struct Connection {
    /// Receiving side.
    pub reader: Reader,
    /// Sending side.
    pub writer: Writer,
}

impl Connection {
    /// Opens a TCP connection, sends CONNECT and waits for a successful
    /// CONNACK, all within `options.timeout`. Returns the connection and the
    /// time all of this took.
    pub async fn open(
        options: &ClientOptions,
        client_id: &str,
    ) -> Result<(Connection, Duration), ClientError> {
        let opened = Connection::open_session(options, client_id).await?;
        Ok((opened.connection, opened.took))
    }

    /// [`Connection::open`], also telling whether the broker had a session
    /// for the client (CONNACK's Session Present flag).
    pub async fn open_session(
        options: &ClientOptions,
        client_id: &str,
    ) -> Result<Opened, ClientError> {
        let started = Instant::now();
        let handshake = async {
            let stream = TcpStream::connect(options.addr).await?;
            stream.set_nodelay(true)?;
            let (read_half, write_half) = stream.into_split();
            let mut connection = Connection {
                reader: Reader {
                    half: read_half,
                    buf: BytesMut::with_capacity(READ_RESERVE),
                    max_packet_size: options.max_packet_size,
                },
                writer: Writer {
                    half: write_half,
                    buf: BytesMut::with_capacity(256),
                    last_write: Instant::now(),
                },
            };
            let connect = Connect {
                client_id,
                keep_alive: options.keep_alive,
                clean_session: options.clean_session,
                username: options.username.as_deref(),
                password: options.password.as_deref().map(str::as_bytes),
            };
            codec::encode_connect(&connect, &mut connection.writer.buf)?;
            connection.writer.flush().await?;
            match connection.reader.read_packet().await? {
                Packet::ConnAck {
                    return_code: 0,
                    session_present,
                } => Ok((connection, session_present)),
                Packet::ConnAck { return_code, .. } => Err(ClientError::Refused(return_code)),
                _ => Err(ClientError::Unexpected("packet before CONNACK")),
            }
        };
        match tokio::time::timeout(options.timeout, handshake).await {
            Ok(Ok((connection, session_present))) => Ok(Opened {
                connection,
                took: started.elapsed(),
                session_present,
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ClientError::Timeout("CONNACK")),
        }
    }

    /// Sends DISCONNECT and closes the socket; errors are ignored since the
    /// connection is being dropped anyway.
    pub async fn disconnect(mut self) {
        codec::encode_disconnect(&mut self.writer.buf);
        let _ = self.writer.flush().await;
        let _ = self.writer.half.shutdown().await;
    }
}

/// Packet identifiers of QoS 1/2 PUBLISHes awaiting their acknowledgement.
#[derive(Debug, Default)]
pub struct PacketIds {
    in_use: HashSet<u16>,
    last: u16,
}

impl PacketIds {
    /// Takes the next free identifier (1..=65535, wrapping), or `None`
    /// when all 65,535 are in use.
    pub fn allocate(&mut self) -> Option<u16> {
        for _ in 0..u16::MAX {
            self.last = self.last.checked_add(1).unwrap_or(1);
            if self.in_use.insert(self.last) {
                return Some(self.last);
            }
        }
        None
    }

    /// Frees `id`; false if it was not in use (a stray acknowledgement).
    pub fn release(&mut self, id: u16) -> bool {
        self.in_use.remove(&id)
    }

    /// Whether `id` is awaiting an acknowledgement.
    pub fn contains(&self, id: u16) -> bool {
        self.in_use.contains(&id)
    }

    /// Identifiers in use.
    pub fn len(&self) -> usize {
        self.in_use.len()
    }

    /// Whether none is in use.
    pub fn is_empty(&self) -> bool {
        self.in_use.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_ids_start_at_one_skip_those_in_use_and_wrap() {
        let mut ids = PacketIds::default();
        assert_eq!(ids.allocate(), Some(1));
        assert_eq!(ids.allocate(), Some(2));
        assert!(ids.release(1));
        assert!(!ids.release(1), "double release is reported");
        assert_eq!(ids.allocate(), Some(3));
        assert_eq!(ids.len(), 2);
        assert!(ids.contains(2) && ids.contains(3) && !ids.contains(1));

        let mut ids = PacketIds {
            in_use: HashSet::from([1, 2]),
            last: u16::MAX - 1,
        };
        assert_eq!(ids.allocate(), Some(u16::MAX));
        assert_eq!(
            ids.allocate(),
            Some(3),
            "0 is never used and 1, 2 are taken"
        );
    }

    #[test]
    fn packet_ids_run_out_only_when_all_are_taken() {
        let mut ids = PacketIds::default();
        for _ in 0..u16::MAX {
            assert!(ids.allocate().is_some());
        }
        assert_eq!(ids.allocate(), None);
        assert!(ids.release(40_000));
        assert_eq!(ids.allocate(), Some(40_000));
    }

    #[test]
    fn refusal_messages_name_the_reason() {
        assert_eq!(
            ClientError::Refused(5).to_string(),
            "connection refused: not authorized"
        );
    }
}
