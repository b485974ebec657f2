//! MQTT over WebSocket: the HTTP upgrade (path check, `mqtt` subprotocol)
//! and an adapter that turns binary WebSocket messages back into the byte
//! stream the MQTT codec reads.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Subprotocols MQTT clients offer (MQTT.js, Paho: `mqtt`; old clients:
/// `mqttv3.1`).
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Performs the WebSocket upgrade on `path`, answering 404 elsewhere.
pub async fn accept<S>(stream: S, path: &str, max_message: usize) -> io::Result<WsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // The signature is tungstenite's.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() != path {
            let mut not_found = ErrorResponse::new(Some("no MQTT endpoint here".into()));
            *not_found.status_mut() = StatusCode::NOT_FOUND;
            return Err(not_found);
        }
        let offered = req
            .headers()
            .get_all("Sec-WebSocket-Protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .find(|p| SUBPROTOCOLS.contains(p))
            .map(str::to_owned);
        if let Some(protocol) = offered {
            if let Ok(value) = HeaderValue::from_str(&protocol) {
                resp.headers_mut().insert("Sec-WebSocket-Protocol", value);
            }
        }
        Ok(resp)
    };
    let mut config = WebSocketConfig::default();
    config.max_message_size = Some(max_message);
    config.max_frame_size = Some(max_message);
    let ws = tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config))
        .await
        .map_err(io::Error::other)?;
    Ok(WsStream {
        inner: ws,
        pending: Bytes::new(),
    })
}

/// A WebSocket connection seen as a byte stream. MQTT packets may span
/// WebSocket messages and a message may hold several packets; the codec
/// does not care.
pub struct WsStream<S> {
    inner: WebSocketStream<S>,
    /// The unread rest of the last binary message.
    pending: Bytes,
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.inner).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => self.pending = data,
                // Pings are answered by tungstenite; text frames are not
                // MQTT (the spec requires binary) and are ignored.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Text(_))) => {}
                Some(Ok(Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(Pin::new(&mut self.inner).poll_ready(cx)).map_err(io::Error::other)?;
        Pin::new(&mut self.inner)
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(io::Error::other)?;
        // Push it out now: the connection writes whole batches of packets.
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(io::Error::other(e))),
            _ => Poll::Ready(Ok(buf.len())),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner)
            .poll_flush(cx)
            .map_err(io::Error::other)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner)
            .poll_close(cx)
            .map_err(io::Error::other)
    }
}
