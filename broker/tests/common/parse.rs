//! Raw packets: a minimal parser of what the broker sends.

use super::*;

/// CONNACK.
#[derive(Clone, Debug)]
pub struct ConnAck {
    pub session_present: bool,
    /// 3.1.1 return code or 5.0 reason code.
    pub code: u8,
    pub props: Props,
}

/// PUBLISH received from the broker.
#[derive(Clone, Debug)]
pub struct Publish {
    pub topic: String,
    pub qos: u8,
    pub dup: bool,
    pub retain: bool,
    /// Zero for QoS 0.
    pub pid: u16,
    pub props: Props,
    pub payload: Vec<u8>,
}

/// PUBACK / PUBREC / PUBREL / PUBCOMP.
#[derive(Clone, Debug)]
pub struct Ack {
    pub pid: u16,
    /// 0 when absent (3.1.1, or 5.0 success shorthand).
    pub reason: u8,
    pub props: Props,
}

/// SUBACK or UNSUBACK (3.1.1 UNSUBACK has no codes).
#[derive(Clone, Debug)]
pub struct SubAck {
    pub pid: u16,
    pub props: Props,
    pub codes: Vec<u8>,
}

/// DISCONNECT or AUTH.
#[derive(Clone, Debug)]
pub struct ReasonOnly {
    pub reason: u8,
    pub props: Props,
}

/// A packet received from the broker.
#[derive(Clone, Debug)]
pub enum Pkt {
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(Ack),
    PubRec(Ack),
    PubRel(Ack),
    PubComp(Ack),
    SubAck(SubAck),
    UnsubAck(SubAck),
    PingResp,
    Disconnect(ReasonOnly),
    Auth(ReasonOnly),
    /// Anything a broker must never send (CONNECT, SUBSCRIBE...).
    Other(u8, Vec<u8>),
}

struct Reader<'a> {
    b: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn fail(&self, msg: &str) -> ! {
        panic!("malformed {} from broker: {msg}", self.what)
    }
    fn take(&mut self, n: usize) -> &'a [u8] {
        if self.b.len() < n {
            self.fail(&format!("needs {n} more bytes, has {}", self.b.len()));
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        head
    }
    fn u8(&mut self) -> u8 {
        self.take(1)[0]
    }
    fn u16(&mut self) -> u16 {
        let b = self.take(2);
        u16::from_be_bytes([b[0], b[1]])
    }
    fn u32(&mut self) -> u32 {
        let b = self.take(4);
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }
    fn varint(&mut self) -> u32 {
        let mut n = 0u32;
        for i in 0..4 {
            let b = self.u8();
            n |= u32::from(b & 0x7F) << (7 * i);
            if b & 0x80 == 0 {
                return n;
            }
        }
        self.fail("variable byte integer longer than 4 bytes")
    }
    fn bin(&mut self) -> Vec<u8> {
        let n = self.u16() as usize;
        self.take(n).to_vec()
    }
    fn string(&mut self) -> String {
        let b = self.bin();
        String::from_utf8(b).unwrap_or_else(|_| self.fail("invalid UTF-8 string"))
    }
    fn rest(&mut self) -> Vec<u8> {
        self.take(self.b.len()).to_vec()
    }
    fn props(&mut self) -> Props {
        let len = self.varint() as usize;
        let mut r = Reader {
            b: self.take(len),
            what: self.what,
        };
        let mut props = Props::new();
        while !r.b.is_empty() {
            let id = r.u8();
            let v = match id {
                0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => PropValue::Byte(r.u8()),
                0x13 | 0x21 | 0x22 | 0x23 => PropValue::Two(r.u16()),
                0x02 | 0x11 | 0x18 | 0x27 => PropValue::Four(r.u32()),
                0x0B => PropValue::VarInt(r.varint()),
                0x03 | 0x08 | 0x12 | 0x15 | 0x1A | 0x1C | 0x1F => PropValue::Str(r.string()),
                0x09 | 0x16 => PropValue::Bin(r.bin()),
                0x26 => PropValue::Pair(r.string(), r.string()),
                other => r.fail(&format!("unknown property 0x{other:02X}")),
            };
            props.0.push((id, v));
        }
        props
    }
}

impl Pkt {
    /// Parses one packet body. `v5` selects the 5.0 layout.
    pub fn parse(first: u8, body: &[u8], v5: bool) -> Pkt {
        let flags = first & 0x0F;
        let mut r = Reader {
            b: body,
            what: "packet",
        };
        match first >> 4 {
            kind::CONNACK => {
                r.what = "CONNACK";
                let ack_flags = r.u8();
                let code = r.u8();
                let props = if v5 && !r.b.is_empty() {
                    r.props()
                } else {
                    Props::new()
                };
                Pkt::ConnAck(ConnAck {
                    session_present: ack_flags & 1 == 1,
                    code,
                    props,
                })
            }
            kind::PUBLISH => {
                r.what = "PUBLISH";
                let qos = (flags >> 1) & 3;
                let topic = r.string();
                let pid = if qos > 0 { r.u16() } else { 0 };
                let props = if v5 { r.props() } else { Props::new() };
                Pkt::Publish(Publish {
                    topic,
                    qos,
                    dup: flags & 0x08 != 0,
                    retain: flags & 0x01 != 0,
                    pid,
                    props,
                    payload: r.rest(),
                })
            }
            k @ (kind::PUBACK | kind::PUBREC | kind::PUBREL | kind::PUBCOMP) => {
                r.what = "acknowledgement";
                let pid = r.u16();
                let reason = if v5 && !r.b.is_empty() { r.u8() } else { 0 };
                let props = if v5 && !r.b.is_empty() {
                    r.props()
                } else {
                    Props::new()
                };
                let a = Ack { pid, reason, props };
                match k {
                    kind::PUBACK => Pkt::PubAck(a),
                    kind::PUBREC => Pkt::PubRec(a),
                    kind::PUBREL => Pkt::PubRel(a),
                    _ => Pkt::PubComp(a),
                }
            }
            k @ (kind::SUBACK | kind::UNSUBACK) => {
                r.what = "SUBACK/UNSUBACK";
                let pid = r.u16();
                let props = if v5 { r.props() } else { Props::new() };
                let a = SubAck {
                    pid,
                    props,
                    codes: r.rest(),
                };
                if k == kind::SUBACK {
                    Pkt::SubAck(a)
                } else {
                    Pkt::UnsubAck(a)
                }
            }
            kind::PINGRESP => Pkt::PingResp,
            k @ (kind::DISCONNECT | kind::AUTH) => {
                r.what = "DISCONNECT/AUTH";
                let reason = if r.b.is_empty() { 0 } else { r.u8() };
                let props = if r.b.is_empty() {
                    Props::new()
                } else {
                    r.props()
                };
                let p = ReasonOnly { reason, props };
                if k == kind::DISCONNECT {
                    Pkt::Disconnect(p)
                } else {
                    Pkt::Auth(p)
                }
            }
            _ => Pkt::Other(first, body.to_vec()),
        }
    }
}

/// What [`Raw::recv_within`] saw.
#[derive(Debug)]
pub enum Recv {
    Packet(Pkt),
    /// The broker closed the connection (EOF or reset).
    Closed,
    Timeout,
}
