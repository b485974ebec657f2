//! Feeds arbitrary bytes to the decoder under every protocol version. Each
//! packet that decodes must re-encode (to exactly `encoded_len` bytes) and
//! decode again to the same packet.

#![no_main]

use bytes::BytesMut;
use kubemqtt_broker::codec::{decode, encode, encoded_len, Packet, ProtocolVersion};
use libfuzzer_sys::fuzz_target;

const MAX_PACKET_SIZE: u32 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let versions = [
        None,
        Some(ProtocolVersion::V31),
        Some(ProtocolVersion::V311),
        Some(ProtocolVersion::V5),
    ];
    for version in versions {
        let mut buf = BytesMut::from(data);
        while let Ok(Some(packet)) = decode(&mut buf, version, MAX_PACKET_SIZE) {
            // A CONNECT is always read per its own protocol level.
            let encode_version = match (&packet, version) {
                (Packet::Connect(c), _) => c.protocol,
                (_, Some(v)) => v,
                (_, None) => panic!("{} decoded before CONNECT", packet.name()),
            };
            let mut out = BytesMut::new();
            if let Err(e) = encode(&packet, encode_version, &mut out) {
                panic!("decoded {packet:?} does not encode: {e}");
            }
            assert_eq!(out.len(), encoded_len(&packet, encode_version));
            match decode(&mut out, version, MAX_PACKET_SIZE) {
                Ok(Some(again)) => assert_eq!(again, packet),
                other => panic!("re-encoded {packet:?} decodes as {other:?}"),
            }
            assert!(out.is_empty(), "re-encoded packet has trailing bytes");
        }
    }
});
