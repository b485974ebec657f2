"""paho-mqtt against the broker: behaviour common to MQTT 3.1.1 and 5.0."""

from __future__ import annotations

import os

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes

from mqtt_helpers import v5_properties

PROTOCOLS = [pytest.param(mqtt.MQTTv311, id="v311"), pytest.param(mqtt.MQTTv5, id="v5")]

#: A payload that is not valid UTF-8 and contains every byte value.
BINARY = bytes(range(256)) * 4


def _session_kwargs(protocol: int) -> tuple[dict, dict]:
    """(constructor kwargs, connect kwargs) asking for a session that outlives the connection."""
    if protocol == mqtt.MQTTv5:
        expiry = v5_properties(PacketTypes.CONNECT, SessionExpiryInterval=300)
        return {}, {"clean_start": False, "properties": expiry}
    return {"clean_session": False}, {}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_connect_and_disconnect(make_client, protocol):
    client = make_client("connect-1", protocol=protocol)
    connack = client.connect_ok()
    assert connack.session_present is False
    client.disconnect()


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_publish_subscribe_round_trip(make_client, protocol, qos):
    sub = make_client("rt-sub", protocol=protocol)
    sub.connect_ok()
    sub.subscribe_ok("rt/+/data", 2)
    pub = make_client("rt-pub", protocol=protocol)
    pub.connect_ok()

    payloads = [b"hello", BINARY, b"", os.urandom(4000)]
    for index, payload in enumerate(payloads):
        pub.publish(f"rt/{index}/data", payload, qos=qos)

    received = sub.expect_messages(len(payloads))
    # One publisher, one subscriber: order is preserved (MQTT-4.6.0-6 for QoS>0).
    assert [m.topic for m in received] == [f"rt/{i}/data" for i in range(len(payloads))]
    assert [m.payload for m in received] == payloads
    assert all(m.qos == qos for m in received)
    assert not any(m.retain for m in received)
    sub.expect_no_message()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_delivery_qos_is_the_minimum_of_publish_and_subscription(make_client, protocol):
    sub = make_client("minqos-sub", protocol=protocol)
    sub.connect_ok()
    granted = sub.subscribe("minqos/t", 1)
    assert [code.value for code in granted] == [1]
    pub = make_client("minqos-pub", protocol=protocol)
    pub.connect_ok()
    pub.publish("minqos/t", b"two", qos=2)
    pub.publish("minqos/t", b"zero", qos=0)
    received = sub.expect_messages(2)
    assert [(m.payload, m.qos) for m in received] == [(b"two", 1), (b"zero", 0)]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_retained_message_set_and_clear(make_client, protocol):
    pub = make_client("ret-pub", protocol=protocol)
    pub.connect_ok()
    pub.publish("ret/t", b"kept", qos=1, retain=True)

    late = make_client("ret-late", protocol=protocol)
    late.connect_ok()
    late.subscribe_ok("ret/#", 1)
    [message] = late.expect_messages(1)
    assert (message.topic, message.payload, message.retain, message.qos) == ("ret/t", b"kept", True, 1)

    # An empty retained payload clears it; it is still delivered to current
    # subscribers (as a normal, non-retained message).
    pub.publish("ret/t", b"", qos=1, retain=True)
    [cleared] = late.expect_messages(1)
    assert cleared.payload == b""

    later = make_client("ret-later", protocol=protocol)
    later.connect_ok()
    later.subscribe_ok("ret/#", 1)
    later.expect_no_message()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_will_published_on_abnormal_close(make_client, protocol):
    watcher = make_client("will-watcher", protocol=protocol)
    watcher.connect_ok()
    watcher.subscribe_ok("will/#", 1)

    dying = make_client("will-dying", protocol=protocol)
    dying.will_set("will/dying", b"gone", qos=1)
    dying.connect_ok()
    dying.drop()

    [will] = watcher.expect_messages(1)
    assert (will.topic, will.payload, will.qos) == ("will/dying", b"gone", 1)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_will_not_published_on_disconnect(make_client, protocol):
    watcher = make_client("nowill-watcher", protocol=protocol)
    watcher.connect_ok()
    watcher.subscribe_ok("will/#", 1)

    polite = make_client("nowill-polite", protocol=protocol)
    polite.will_set("will/polite", b"should not appear", qos=1)
    polite.connect_ok()
    polite.disconnect()

    watcher.expect_no_message(window=1.0)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_persistent_session_receives_messages_queued_while_offline(make_client, protocol):
    client_kwargs, connect_kwargs = _session_kwargs(protocol)
    first = make_client("persist-1", protocol=protocol, **client_kwargs)
    assert first.connect_ok(**connect_kwargs).session_present is False
    first.subscribe_ok("persist/t", 1)
    first.disconnect()

    pub = make_client("persist-pub", protocol=protocol)
    pub.connect_ok()
    queued = [b"one", b"two", b"three"]
    for payload in queued:
        pub.publish("persist/t", payload, qos=1)

    second = make_client("persist-1", protocol=protocol, **client_kwargs)
    assert second.connect_ok(**connect_kwargs).session_present is True
    received = second.expect_messages(len(queued))
    assert [m.payload for m in received] == queued
    assert all(m.qos == 1 for m in received)

    # The subscription survived too: live messages still arrive.
    pub.publish("persist/t", b"live", qos=1)
    [live] = second.expect_messages(1)
    assert live.payload == b"live"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_clean_session_discards_previous_session(make_client, protocol):
    client_kwargs, connect_kwargs = _session_kwargs(protocol)
    first = make_client("discard-1", protocol=protocol, **client_kwargs)
    first.connect_ok(**connect_kwargs)
    first.subscribe_ok("discard/t", 1)
    first.disconnect()

    pub = make_client("discard-pub", protocol=protocol)
    pub.connect_ok()
    pub.publish("discard/t", b"lost", qos=1)

    if protocol == mqtt.MQTTv5:
        fresh = make_client("discard-1", protocol=protocol)
        connack = fresh.connect_ok(clean_start=True)
    else:
        fresh = make_client("discard-1", protocol=protocol, clean_session=True)
        connack = fresh.connect_ok()
    assert connack.session_present is False
    fresh.expect_no_message()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_empty_client_id_is_accepted(make_client, protocol):
    client = make_client("", protocol=protocol)
    connack = client.connect_ok()
    if protocol == mqtt.MQTTv5:
        assigned = getattr(connack.properties, "AssignedClientIdentifier", "")
        assert assigned, "MQTT 5 CONNACK must carry an Assigned Client Identifier (MQTT-3.2.2-16)"
    # The connection is usable.
    client.subscribe_ok("anon/t", 1)
    client.publish("anon/t", b"self", qos=1)
    [message] = client.expect_messages(1)
    assert message.payload == b"self"
