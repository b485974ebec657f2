//! Raw packets: hand-written encoders, sharing no code with the
//! broker's codec.

/// Control packet types (first nibble of the fixed header).
pub mod kind {
    pub const CONNECT: u8 = 1;
    pub const CONNACK: u8 = 2;
    pub const PUBLISH: u8 = 3;
    pub const PUBACK: u8 = 4;
    pub const PUBREC: u8 = 5;
    pub const PUBREL: u8 = 6;
    pub const PUBCOMP: u8 = 7;
    pub const SUBSCRIBE: u8 = 8;
    pub const SUBACK: u8 = 9;
    pub const UNSUBSCRIBE: u8 = 10;
    pub const UNSUBACK: u8 = 11;
    pub const PINGREQ: u8 = 12;
    pub const PINGRESP: u8 = 13;
    pub const DISCONNECT: u8 = 14;
    pub const AUTH: u8 = 15;
}

/// MQTT 5.0 property identifiers (section 2.2.2.2).
pub mod prop {
    pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
    pub const AUTHENTICATION_DATA: u8 = 0x16;
    pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    pub const WILL_DELAY_INTERVAL: u8 = 0x18;
    pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    pub const RESPONSE_INFORMATION: u8 = 0x1A;
    pub const SERVER_REFERENCE: u8 = 0x1C;
    pub const REASON_STRING: u8 = 0x1F;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const MAXIMUM_QOS: u8 = 0x24;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}

/// One property value, typed as in the specification's table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PropValue {
    Byte(u8),
    Two(u16),
    Four(u32),
    VarInt(u32),
    Str(String),
    Bin(Vec<u8>),
    Pair(String, String),
}

/// An ordered property list, used both to build and to inspect packets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Props(pub Vec<(u8, PropValue)>);

impl Props {
    pub fn new() -> Props {
        Props::default()
    }
    pub fn byte(mut self, id: u8, v: u8) -> Props {
        self.0.push((id, PropValue::Byte(v)));
        self
    }
    pub fn two(mut self, id: u8, v: u16) -> Props {
        self.0.push((id, PropValue::Two(v)));
        self
    }
    pub fn four(mut self, id: u8, v: u32) -> Props {
        self.0.push((id, PropValue::Four(v)));
        self
    }
    pub fn varint(mut self, id: u8, v: u32) -> Props {
        self.0.push((id, PropValue::VarInt(v)));
        self
    }
    pub fn str(mut self, id: u8, v: &str) -> Props {
        self.0.push((id, PropValue::Str(v.to_owned())));
        self
    }
    pub fn bin(mut self, id: u8, v: &[u8]) -> Props {
        self.0.push((id, PropValue::Bin(v.to_vec())));
        self
    }
    pub fn user(mut self, k: &str, v: &str) -> Props {
        self.0.push((
            prop::USER_PROPERTY,
            PropValue::Pair(k.to_owned(), v.to_owned()),
        ));
        self
    }

    /// The first value with identifier `id`.
    pub fn get(&self, id: u8) -> Option<&PropValue> {
        self.0.iter().find(|(i, _)| *i == id).map(|(_, v)| v)
    }
    /// A numeric property of any width.
    pub fn num(&self, id: u8) -> Option<u32> {
        self.all_nums(id).first().copied()
    }
    /// Every numeric value with identifier `id` (e.g. subscription ids).
    pub fn all_nums(&self, id: u8) -> Vec<u32> {
        self.0
            .iter()
            .filter(|(i, _)| *i == id)
            .filter_map(|(_, v)| match v {
                PropValue::Byte(b) => Some(u32::from(*b)),
                PropValue::Two(n) => Some(u32::from(*n)),
                PropValue::Four(n) | PropValue::VarInt(n) => Some(*n),
                _ => None,
            })
            .collect()
    }
    pub fn string(&self, id: u8) -> Option<&str> {
        match self.get(id) {
            Some(PropValue::Str(s)) => Some(s),
            _ => None,
        }
    }
    pub fn binary(&self, id: u8) -> Option<&[u8]> {
        match self.get(id) {
            Some(PropValue::Bin(b)) => Some(b),
            _ => None,
        }
    }
    pub fn user_properties(&self) -> Vec<(String, String)> {
        self.0
            .iter()
            .filter_map(|(_, v)| match v {
                PropValue::Pair(k, v) => Some((k.clone(), v.clone())),
                _ => None,
            })
            .collect()
    }
    pub fn has(&self, id: u8) -> bool {
        self.get(id).is_some()
    }

    /// Property length (variable byte integer) followed by the properties.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut body = Vec::new();
        for (id, v) in &self.0 {
            body.push(*id);
            match v {
                PropValue::Byte(b) => body.push(*b),
                PropValue::Two(n) => body.extend_from_slice(&n.to_be_bytes()),
                PropValue::Four(n) => body.extend_from_slice(&n.to_be_bytes()),
                PropValue::VarInt(n) => put_varint(&mut body, *n),
                PropValue::Str(s) => put_str(&mut body, s),
                PropValue::Bin(b) => put_bin(&mut body, b),
                PropValue::Pair(k, v) => {
                    put_str(&mut body, k);
                    put_str(&mut body, v);
                }
            }
        }
        put_varint(out, body.len() as u32);
        out.extend_from_slice(&body);
    }
}

/// Appends a variable byte integer.
pub fn put_varint(out: &mut Vec<u8>, mut n: u32) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

/// Appends a length-prefixed UTF-8 string (no validation: tests send bad ones).
pub fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bin(out, s.as_bytes());
}

/// Appends length-prefixed binary data.
pub fn put_bin(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u16).to_be_bytes());
    out.extend_from_slice(b);
}

/// A whole packet: first byte, remaining length, body.
pub fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    put_varint(&mut out, body.len() as u32);
    out.extend_from_slice(body);
    out
}

/// Will message of a [`Connect`].
#[derive(Clone, Debug, Default)]
pub struct Will {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    /// MQTT 5 will properties (will delay interval, ...).
    pub props: Props,
}

impl Will {
    pub fn new(topic: &str, payload: &[u8]) -> Will {
        Will {
            topic: topic.into(),
            payload: payload.into(),
            ..Will::default()
        }
    }
}

/// A CONNECT packet.
#[derive(Clone, Debug)]
pub struct Connect {
    /// Protocol level: 3 (MQTT 3.1, "MQIsdp"), 4 (3.1.1) or 5.
    pub level: u8,
    pub client_id: String,
    pub clean: bool,
    pub keepalive: u16,
    pub username: Option<String>,
    pub password: Option<Vec<u8>>,
    pub will: Option<Will>,
    pub props: Props,
}

impl Connect {
    /// MQTT 3.1.1, clean session, keepalive 30 s.
    pub fn v4(client_id: &str) -> Connect {
        Connect {
            level: 4,
            client_id: client_id.into(),
            clean: true,
            keepalive: 30,
            username: None,
            password: None,
            will: None,
            props: Props::new(),
        }
    }
    /// MQTT 5.0, clean start, keepalive 30 s, no properties.
    pub fn v5(client_id: &str) -> Connect {
        Connect {
            level: 5,
            ..Connect::v4(client_id)
        }
    }
    pub fn clean(mut self, clean: bool) -> Connect {
        self.clean = clean;
        self
    }
    pub fn keepalive(mut self, secs: u16) -> Connect {
        self.keepalive = secs;
        self
    }
    pub fn props(mut self, props: Props) -> Connect {
        self.props = props;
        self
    }
    pub fn will(mut self, will: Will) -> Connect {
        self.will = Some(will);
        self
    }
    pub fn is_v5(&self) -> bool {
        self.level == 5
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        put_str(&mut b, if self.level == 3 { "MQIsdp" } else { "MQTT" });
        b.push(self.level);
        let mut flags = 0u8;
        if self.clean {
            flags |= 0x02;
        }
        if let Some(w) = &self.will {
            flags |= 0x04 | (w.qos << 3);
            if w.retain {
                flags |= 0x20;
            }
        }
        if self.password.is_some() {
            flags |= 0x40;
        }
        if self.username.is_some() {
            flags |= 0x80;
        }
        b.push(flags);
        b.extend_from_slice(&self.keepalive.to_be_bytes());
        if self.is_v5() {
            self.props.encode(&mut b);
        }
        put_str(&mut b, &self.client_id);
        if let Some(w) = &self.will {
            if self.is_v5() {
                w.props.encode(&mut b);
            }
            put_str(&mut b, &w.topic);
            put_bin(&mut b, &w.payload);
        }
        if let Some(u) = &self.username {
            put_str(&mut b, u);
        }
        if let Some(p) = &self.password {
            put_bin(&mut b, p);
        }
        frame(0x10, &b)
    }
}

/// An outgoing PUBLISH.
#[derive(Clone, Debug, Default)]
pub struct Pub {
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
    pub dup: bool,
    pub pid: u16,
    pub props: Props,
    pub payload: Vec<u8>,
}

impl Pub {
    /// QoS 0, not retained.
    pub fn new(topic: &str, payload: &[u8]) -> Pub {
        Pub {
            topic: topic.into(),
            payload: payload.into(),
            ..Pub::default()
        }
    }
    /// QoS 1 or 2 with packet identifier `pid`.
    pub fn qos(mut self, qos: u8, pid: u16) -> Pub {
        self.qos = qos;
        self.pid = pid;
        self
    }
    pub fn retain(mut self) -> Pub {
        self.retain = true;
        self
    }
    pub fn dup(mut self) -> Pub {
        self.dup = true;
        self
    }
    pub fn props(mut self, props: Props) -> Pub {
        self.props = props;
        self
    }

    pub fn encode(&self, v5: bool) -> Vec<u8> {
        let mut first = 0x30 | (self.qos << 1);
        if self.retain {
            first |= 0x01;
        }
        if self.dup {
            first |= 0x08;
        }
        let mut b = Vec::new();
        put_str(&mut b, &self.topic);
        if self.qos > 0 {
            b.extend_from_slice(&self.pid.to_be_bytes());
        }
        if v5 {
            self.props.encode(&mut b);
        }
        b.extend_from_slice(&self.payload);
        frame(first, &b)
    }
}

/// Subscription options byte: QoS plus the MQTT 5 flags.
pub fn sub_opts(qos: u8, no_local: bool, retain_as_published: bool, retain_handling: u8) -> u8 {
    qos | (u8::from(no_local) << 2) | (u8::from(retain_as_published) << 3) | (retain_handling << 4)
}

/// SUBSCRIBE with `(filter, options byte)` pairs.
pub fn subscribe(v5: bool, pid: u16, props: &Props, filters: &[(&str, u8)]) -> Vec<u8> {
    let mut b = pid.to_be_bytes().to_vec();
    if v5 {
        props.encode(&mut b);
    }
    for (f, o) in filters {
        put_str(&mut b, f);
        b.push(*o);
    }
    frame(0x82, &b)
}

/// UNSUBSCRIBE.
pub fn unsubscribe(v5: bool, pid: u16, filters: &[&str]) -> Vec<u8> {
    let mut b = pid.to_be_bytes().to_vec();
    if v5 {
        Props::new().encode(&mut b);
    }
    for f in filters {
        put_str(&mut b, f);
    }
    frame(0xA2, &b)
}

/// PUBACK / PUBREC / PUBREL / PUBCOMP. `reason` is only written for 5.0
/// (and omitted when it is success, as the specification allows).
pub fn ack(packet_kind: u8, pid: u16, v5: bool, reason: u8) -> Vec<u8> {
    let first = (packet_kind << 4) | if packet_kind == kind::PUBREL { 0x02 } else { 0 };
    let mut b = pid.to_be_bytes().to_vec();
    if v5 && reason != 0 {
        b.push(reason);
    }
    frame(first, &b)
}

pub fn pingreq() -> Vec<u8> {
    vec![0xC0, 0x00]
}

/// DISCONNECT; for 3.1.1 `reason` and `props` are ignored.
pub fn disconnect(v5: bool, reason: u8, props: &Props) -> Vec<u8> {
    if !v5 {
        return vec![0xE0, 0x00];
    }
    let mut b = vec![reason];
    props.encode(&mut b);
    frame(0xE0, &b)
}

/// AUTH (5.0 only).
pub fn auth(reason: u8, props: &Props) -> Vec<u8> {
    let mut b = vec![reason];
    props.encode(&mut b);
    frame(0xF0, &b)
}

impl Connect {
    /// Sets the user name and password.
    pub fn login(mut self, username: &str, password: &str) -> Connect {
        self.username = Some(username.into());
        self.password = Some(password.as_bytes().to_vec());
        self
    }

    /// Sets the user name only (no password field).
    pub fn user(mut self, username: &str) -> Connect {
        self.username = Some(username.into());
        self
    }
}
