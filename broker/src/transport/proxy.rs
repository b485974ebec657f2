//! PROXY protocol v1 (text) and v2 (binary) headers, as cloud load
//! balancers send them, so a client's real address survives the hop.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 header: "PROXY TCP6 " + two full IPv6 addresses + ports.
const V1_MAX: usize = 107;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyError {
    #[error("connection closed inside the PROXY header")]
    Eof,
    #[error("not a PROXY protocol header")]
    NotProxy,
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
}

/// Reads a PROXY header from the front of the stream. Returns the client's
/// address, or `None` when the header says the connection is local
/// (v2 LOCAL, v1 UNKNOWN: health checks of the load balancer).
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Option<SocketAddr>, ProxyError> {
    let mut head = [0u8; 16];
    read_exact(stream, &mut head[..6]).await?;
    if &head[..6] == b"PROXY " {
        return read_v1(stream).await;
    }
    if head[..6] != V2_SIGNATURE[..6] {
        return Err(ProxyError::NotProxy);
    }
    read_exact(stream, &mut head[6..]).await?;
    if head[..12] != V2_SIGNATURE {
        return Err(ProxyError::NotProxy);
    }
    let version_command = head[12];
    let family = head[13];
    let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
    let mut body = vec![0u8; len];
    read_exact(stream, &mut body).await?;
    if version_command >> 4 != 2 {
        return Err(ProxyError::Malformed("unsupported version"));
    }
    match version_command & 0x0F {
        0 => return Ok(None), // LOCAL
        1 => {}               // PROXY
        _ => return Err(ProxyError::Malformed("unknown command")),
    }
    parse_v2_addresses(family, &body)
}

fn parse_v2_addresses(family: u8, body: &[u8]) -> Result<Option<SocketAddr>, ProxyError> {
    match family >> 4 {
        0 => Ok(None), // AF_UNSPEC
        1 => {
            let b = body
                .get(..12)
                .ok_or(ProxyError::Malformed("short IPv4 addresses"))?;
            let ip = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
            let port = u16::from_be_bytes([b[8], b[9]]);
            Ok(Some(SocketAddr::new(IpAddr::V4(ip), port)))
        }
        2 => {
            let b = body
                .get(..36)
                .ok_or(ProxyError::Malformed("short IPv6 addresses"))?;
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&b[..16]);
            let port = u16::from_be_bytes([b[32], b[33]]);
            Ok(Some(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(octets)),
                port,
            )))
        }
        _ => Ok(None), // AF_UNIX: no IP address to report
    }
}

async fn read_v1<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Option<SocketAddr>, ProxyError> {
    // Byte by byte, so nothing after the header is consumed.
    let mut line = Vec::with_capacity(V1_MAX);
    line.extend_from_slice(b"PROXY ");
    loop {
        let mut byte = [0u8; 1];
        read_exact(stream, &mut byte).await?;
        line.push(byte[0]);
        if line.ends_with(b"\r\n") {
            break;
        }
        if line.len() >= V1_MAX {
            return Err(ProxyError::Malformed("v1 header too long"));
        }
    }
    parse_v1(&line)
}

/// Parses `PROXY TCP4 src dst sport dport\r\n` (or `PROXY UNKNOWN ...`).
pub fn parse_v1(line: &[u8]) -> Result<Option<SocketAddr>, ProxyError> {
    let text = std::str::from_utf8(line).map_err(|_| ProxyError::Malformed("not ASCII"))?;
    let text = text
        .strip_suffix("\r\n")
        .ok_or(ProxyError::Malformed("no CRLF"))?;
    let mut parts = text.split(' ');
    if parts.next() != Some("PROXY") {
        return Err(ProxyError::NotProxy);
    }
    let family = parts.next().ok_or(ProxyError::Malformed("no protocol"))?;
    if family == "UNKNOWN" {
        return Ok(None);
    }
    let fields: Vec<&str> = parts.collect();
    let [src, _dst, sport, _dport] = fields[..] else {
        return Err(ProxyError::Malformed("wrong number of fields"));
    };
    let ip: IpAddr = src
        .parse()
        .map_err(|_| ProxyError::Malformed("bad source address"))?;
    let port: u16 = sport
        .parse()
        .map_err(|_| ProxyError::Malformed("bad source port"))?;
    match (family, ip) {
        ("TCP4", IpAddr::V4(_)) | ("TCP6", IpAddr::V6(_)) => Ok(Some(SocketAddr::new(ip, port))),
        _ => Err(ProxyError::Malformed("address does not match protocol")),
    }
}

async fn read_exact<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut [u8],
) -> Result<(), ProxyError> {
    stream
        .read_exact(buf)
        .await
        .map(|_| ())
        .map_err(|_| ProxyError::Eof)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(bytes: &[u8]) -> (Result<Option<SocketAddr>, ProxyError>, Vec<u8>) {
        let mut stream = bytes;
        let r = read_header(&mut stream).await;
        (r, stream.to_vec())
    }

    #[tokio::test]
    async fn v1_tcp4_and_the_rest_is_left_unread() {
        let (r, rest) = parse(b"PROXY TCP4 10.0.0.7 10.0.0.1 51234 1883\r\n\x10\x00").await;
        assert_eq!(r, Ok(Some("10.0.0.7:51234".parse().unwrap())));
        assert_eq!(rest, b"\x10\x00");
    }

    #[tokio::test]
    async fn v1_tcp6_and_unknown() {
        let (r, _) = parse(b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 1883\r\n").await;
        assert_eq!(r, Ok(Some("[2001:db8::7]:4000".parse().unwrap())));
        let (r, _) = parse(b"PROXY UNKNOWN\r\n").await;
        assert_eq!(r, Ok(None));
    }

    #[tokio::test]
    async fn v1_errors() {
        assert_eq!(
            parse(b"\x10\x0c\x00\x04MQTT").await.0,
            Err(ProxyError::NotProxy)
        );
        assert!(matches!(
            parse(b"PROXY TCP4 10.0.0.7 10.0.0.1 x 1883\r\n").await.0,
            Err(ProxyError::Malformed(_))
        ));
        assert!(matches!(
            parse(b"PROXY TCP4 2001:db8::7 10.0.0.1 1 1883\r\n").await.0,
            Err(ProxyError::Malformed(_))
        ));
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat();
        assert!(matches!(
            parse(&long).await.0,
            Err(ProxyError::Malformed(_))
        ));
        assert_eq!(parse(b"PROXY TCP4 1.2").await.0, Err(ProxyError::Eof));
    }

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut v = V2_SIGNATURE.to_vec();
        v.push(0x20 | command);
        v.push(family);
        v.extend_from_slice(&(body.len() as u16).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[tokio::test]
    async fn v2_ipv4_ipv6_and_local() {
        let body = [10, 0, 0, 7, 10, 0, 0, 1, 0xC8, 0x22, 0x07, 0x5B];
        let mut bytes = v2(1, 0x11, &body);
        bytes.push(0x10);
        let (r, rest) = parse(&bytes).await;
        assert_eq!(r, Ok(Some("10.0.0.7:51234".parse().unwrap())));
        assert_eq!(rest, [0x10]);

        let mut body6 = vec![0u8; 36];
        body6[15] = 7;
        body6[32..34].copy_from_slice(&4000u16.to_be_bytes());
        let (r, _) = parse(&v2(1, 0x21, &body6)).await;
        assert_eq!(r, Ok(Some("[::7]:4000".parse().unwrap())));

        let (r, _) = parse(&v2(0, 0x00, &[])).await;
        assert_eq!(r, Ok(None));
    }

    #[tokio::test]
    async fn v2_errors() {
        assert!(matches!(
            parse(&v2(1, 0x11, &[1, 2, 3])).await.0,
            Err(ProxyError::Malformed(_))
        ));
        assert!(matches!(
            parse(&v2(5, 0x11, &[0; 12])).await.0,
            Err(ProxyError::Malformed(_))
        ));
        let mut bad = v2(1, 0x11, &[0; 12]);
        bad[12] = 0x11; // version 1 in a v2 header
        assert!(matches!(parse(&bad).await.0, Err(ProxyError::Malformed(_))));
    }
}
