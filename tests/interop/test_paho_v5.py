"""paho-mqtt against the broker: MQTT 5.0 features."""

from __future__ import annotations

import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.subscribeoptions import SubscribeOptions

from mqtt_helpers import connect_packet, raw_exchange, v5_properties

V5 = mqtt.MQTTv5

# CONNACK reason codes (MQTT 5.0 table 3-1 and the 3.1.1 return codes).
UNACCEPTABLE_PROTOCOL_VERSION_V3 = 0x01
UNSUPPORTED_PROTOCOL_VERSION = 0x84
BAD_AUTHENTICATION_METHOD = 0x8C


def _connected(make_client, client_id, **kwargs):
    client = make_client(client_id, protocol=V5)
    client.connect_ok(**kwargs)
    return client


def test_publish_properties_are_forwarded(make_client):
    sub = _connected(make_client, "props-sub")
    sub.subscribe_ok("props/t", 1)
    pub = _connected(make_client, "props-pub")

    user_properties = [("k", "v"), ("k", "v2"), ("trace", "abc-123")]
    props = v5_properties(
        PacketTypes.PUBLISH,
        UserProperty=user_properties,
        ContentType="application/json",
        PayloadFormatIndicator=1,
        ResponseTopic="props/reply",
        CorrelationData=b"\x00\x01corr\xff",
        MessageExpiryInterval=300,
    )
    pub.publish("props/t", b'{"x": 1}', qos=1, properties=props)

    [message] = sub.expect_messages(1)
    got = message.properties
    assert message.payload == b'{"x": 1}'
    # Order of user properties is kept when forwarding (MQTT-3.3.2-18).
    assert got.UserProperty == user_properties
    assert got.ContentType == "application/json"
    assert got.PayloadFormatIndicator == 1
    assert got.ResponseTopic == "props/reply"
    assert got.CorrelationData == b"\x00\x01corr\xff"
    # The forwarded expiry is what is left of it (MQTT-3.3.2-6).
    assert 0 < got.MessageExpiryInterval <= 300


def test_expired_message_is_not_delivered_from_offline_queue(make_client):
    session = v5_properties(PacketTypes.CONNECT, SessionExpiryInterval=300)
    first = _connected(make_client, "expiry-sub", clean_start=False, properties=session)
    first.subscribe_ok("expiry/t", 1)
    first.disconnect()

    pub = _connected(make_client, "expiry-pub")
    pub.publish("expiry/t", b"short-lived", qos=1,
                properties=v5_properties(PacketTypes.PUBLISH, MessageExpiryInterval=1))
    pub.publish("expiry/t", b"long-lived", qos=1,
                properties=v5_properties(PacketTypes.PUBLISH, MessageExpiryInterval=600))
    time.sleep(2.5)

    second = make_client("expiry-sub", protocol=V5)
    assert second.connect_ok(clean_start=False, properties=session).session_present is True
    [message] = second.expect_messages(1)
    assert message.payload == b"long-lived"
    assert 0 < message.properties.MessageExpiryInterval <= 600
    second.expect_no_message()


def test_subscription_identifier_is_returned(make_client):
    sub = _connected(make_client, "sid-sub")
    sub.subscribe_ok("sid/with", 1, properties=v5_properties(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=42))
    sub.subscribe_ok("sid/without", 1)
    pub = _connected(make_client, "sid-pub")
    pub.publish("sid/with", b"a", qos=1)
    pub.publish("sid/without", b"b", qos=1)

    tagged, untagged = sub.expect_messages(2)
    assert tagged.topic == "sid/with"
    assert tagged.properties.SubscriptionIdentifier == [42]
    assert untagged.topic == "sid/without"
    assert not hasattr(untagged.properties, "SubscriptionIdentifier")


def test_no_local_suppresses_own_messages(make_client):
    me = _connected(make_client, "nl-me")
    me.subscribe_ok("nl/t", SubscribeOptions(qos=1, noLocal=True))
    other = _connected(make_client, "nl-other")
    other.subscribe_ok("nl/t", 1)

    me.publish("nl/t", b"mine", qos=1)
    other.publish("nl/t", b"theirs", qos=1)

    # `other` proves both messages were routed; `me` sees only the foreign one.
    assert sorted(m.payload for m in other.expect_messages(2)) == [b"mine", b"theirs"]
    [message] = me.expect_messages(1)
    assert message.payload == b"theirs"
    me.expect_no_message()


def test_retain_as_published(make_client):
    keep = _connected(make_client, "rap-keep")
    keep.subscribe_ok("rap/t", SubscribeOptions(qos=1, retainAsPublished=True))
    clear = _connected(make_client, "rap-clear")
    clear.subscribe_ok("rap/t", SubscribeOptions(qos=1, retainAsPublished=False))
    pub = _connected(make_client, "rap-pub")

    pub.publish("rap/t", b"live-retained", qos=1, retain=True)
    [kept] = keep.expect_messages(1)
    [cleared] = clear.expect_messages(1)
    assert (kept.payload, kept.retain) == (b"live-retained", True)
    assert (cleared.payload, cleared.retain) == (b"live-retained", False)


@pytest.mark.parametrize(
    ("handling", "on_first", "on_resubscribe"),
    [
        pytest.param(SubscribeOptions.RETAIN_SEND_ON_SUBSCRIBE, True, True, id="0-always"),
        pytest.param(SubscribeOptions.RETAIN_SEND_IF_NEW_SUB, True, False, id="1-if-new"),
        pytest.param(SubscribeOptions.RETAIN_DO_NOT_SEND, False, False, id="2-never"),
    ],
)
def test_retain_handling(make_client, handling, on_first, on_resubscribe):
    pub = _connected(make_client, "rh-pub")
    pub.publish("rh/t", b"stored", qos=1, retain=True)

    sub = _connected(make_client, "rh-sub")
    options = SubscribeOptions(qos=1, retainHandling=handling)
    for expect_retained in (on_first, on_resubscribe):
        sub.subscribe_ok("rh/t", options)
        if expect_retained:
            [message] = sub.expect_messages(1)
            assert (message.payload, message.retain) == (b"stored", True)
        else:
            sub.expect_no_message()

    # The subscription works for live messages whatever the retain handling.
    pub.publish("rh/t", b"live", qos=1)
    [live] = sub.expect_messages(1)
    assert (live.payload, live.retain) == (b"live", False)


def test_shared_subscription_balances_across_members(make_client):
    members = [_connected(make_client, f"share-{n}") for n in range(2)]
    for member in members:
        member.subscribe_ok("$share/group/share/t", 1)
    pub = _connected(make_client, "share-pub")

    total = 20
    sent = [f"m{n}".encode() for n in range(total)]
    for payload in sent:
        pub.publish("share/t", payload, qos=1)

    got = [[], []]
    deadline = time.monotonic() + 10
    while sum(map(len, got)) < total and time.monotonic() < deadline:
        for index, member in enumerate(members):
            while not member.messages.empty():
                got[index].append(member.messages.get_nowait().payload)
        time.sleep(0.02)

    assert all(got), f"each member must get some messages, got {list(map(len, got))}"
    assert sorted(got[0] + got[1]) == sorted(sent), "together the members get every message exactly once"
    for member in members:
        member.expect_no_message()


def test_topic_alias_from_client(make_client):
    sub = _connected(make_client, "alias-sub")
    sub.subscribe_ok("alias/long/topic/name", 1)
    pub = make_client("alias-pub", protocol=V5)
    connack = pub.connect_ok()
    alias_max = getattr(connack.properties, "TopicAliasMaximum", 0)
    assert alias_max >= 1, "test needs a broker that accepts topic aliases"

    pub.publish("alias/long/topic/name", b"first", qos=1,
                properties=v5_properties(PacketTypes.PUBLISH, TopicAlias=1))
    pub.publish("", b"second", qos=1, properties=v5_properties(PacketTypes.PUBLISH, TopicAlias=1))

    received = sub.expect_messages(2)
    assert [(m.topic, m.payload) for m in received] == [
        ("alias/long/topic/name", b"first"),
        ("alias/long/topic/name", b"second"),
    ]


def test_assigned_client_identifier_is_unique(make_client):
    assigned = []
    for _ in range(2):
        client = make_client("", protocol=V5)
        connack = client.connect_ok()
        assigned.append(connack.properties.AssignedClientIdentifier)
    assert all(assigned) and assigned[0] != assigned[1]


@pytest.mark.parametrize("level", [6, 0x7F])
def test_unsupported_protocol_version_is_refused(broker, level):
    data, closed = raw_exchange(broker.host, broker.port, connect_packet(b"MQTT", level, b"badproto"))
    # The broker may answer with a CONNACK and MUST close (3.1.1: return code
    # 0x01 in the 3.1.1 layout; 5.0: reason 0x84, MQTT-3.1.2-2).
    assert closed, "broker must close the connection"
    assert data in (
        b"\x20\x02\x00" + bytes([UNACCEPTABLE_PROTOCOL_VERSION_V3]),
        b"\x20\x03\x00" + bytes([UNSUPPORTED_PROTOCOL_VERSION]) + b"\x00",
    ), f"unexpected answer {data.hex()}"


def test_bad_authentication_method_is_refused(make_client):
    client = make_client("bad-auth", protocol=V5)
    connack = client.connect(
        properties=v5_properties(PacketTypes.CONNECT, AuthenticationMethod="NO-SUCH-METHOD")
    )
    assert connack.value == BAD_AUTHENTICATION_METHOD, f"got {connack.reason_code}"
