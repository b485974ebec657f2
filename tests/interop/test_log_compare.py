"""Our ``-v`` log lines equal mosquitto's for the same scripted session.

The same session runs against mosquitto (the reference, always) and against
the broker under test (``KUBEMQTT_INTEROP_BROKER``; when that is mosquitto too,
the test checks that the script and the normalisation are deterministic):

1. ``mosquitto_sub -v -q 2 -C 4`` subscribes to ``log/t``;
2. four ``mosquitto_pub`` runs publish at QoS 0, 1 and 2, then a retained
   QoS 1 message; each one waits until the subscriber's delivery flow is over;
3. the subscriber exits after the fourth message (DISCONNECT), the broker is
   stopped.

Comparison. Lines are normalised (timestamp prefix dropped; client source
ports and the listener port replaced by ``<port>``) and grouped per client:
a broker serves clients concurrently, so only the order within one client's
lines is deterministic (for example the subscriber's PUBACK may be logged
before or after the publisher's DISCONNECT). Client ids are fixed with ``-i``.
Lines without a client id are attached to the client whose block they continue
(``No will message specified.`` after ``New client connected``, the topic
lines after ``Received SUBSCRIBE``); ``New connection from`` lines are
attached by source address.

Intentionally not compared:
* everything logged before the first ``New connection`` line: startup banner
  with version string, "Config loaded", "Opening ipv4 listen socket", config
  warnings -- these describe each broker, not the protocol;
* everything logged after the broker is sent SIGTERM: the shutdown banner;
* any line naming a version (``version 2.0.11``), wherever it appears.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict

import pytest

from mqtt_helpers import CliSubscriber, run_cli

TOPIC = "log/t"
SUBSCRIBER = "interop-sub"
#: (client id, QoS, retain, payload, the subscriber's last flow line to wait for)
PUBLISHES = [
    ("interop-pub0", 0, False, "zero", None),
    ("interop-pub1", 1, False, "one", rf"^\d+: Received PUBACK from {SUBSCRIBER}\b"),
    ("interop-pub2", 2, False, "two", rf"^\d+: Received PUBCOMP from {SUBSCRIBER}\b"),
    ("interop-pubr", 1, True, "kept", rf"^\d+: Received PUBACK from {SUBSCRIBER}\b"),
]

TIMESTAMP = re.compile(r"^\d+: ")
NEW_CONNECTION = re.compile(r"^New connection from (\S+:\d+) on port \d+\.$")
CLIENT_CONNECTED = re.compile(r"^New client connected from (\S+:\d+) as (\S+) \(")
BLOCK_START = re.compile(r"^Received (?:SUBSCRIBE|UNSUBSCRIBE) from (\S+)$")
NAMED = [
    re.compile(r"^(?:Sending|Received) [A-Z]+ (?:to|from) ([^\s(]+)"),
    re.compile(r"^Client (\S+) "),
    re.compile(r"^(\S+) [0-2] \S+$"),  # "<client> <qos> <filter>" after SUBSCRIBE
]
VERSION_LINE = re.compile(r"\bversion \d+\.\d+")
BROKER = "<no client>"


def _normalise(line: str) -> str:
    line = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:<port>", line)
    return re.sub(r"\bon port \d+", "on port <port>", line)


def client_streams(log: str) -> dict[str, list[str]]:
    """Group the compared region of a ``-v`` log by client id (see module docstring)."""
    streams: dict[str, list[str]] = defaultdict(list)
    by_address: dict[str, list[str]] = {}
    block_owner = None
    started = False
    for raw in log.splitlines():
        line = TIMESTAMP.sub("", raw, count=1)
        connection = NEW_CONNECTION.match(line)
        started = started or connection is not None
        if not started or VERSION_LINE.search(line):
            continue
        if connection:
            by_address[connection.group(1)] = [_normalise(line)]
            block_owner = None
            continue
        connected = CLIENT_CONNECTED.match(line)
        if connected:
            address, owner = connected.groups()
            streams[owner] += by_address.pop(address, [])
            block_owner = owner
        elif block := BLOCK_START.match(line):
            owner = block_owner = block.group(1)
        else:
            named = next((m for m in (p.match(line) for p in NAMED) if m), None)
            owner = named.group(1) if named else (block_owner or BROKER)
            if named and named.group(1) != block_owner:
                block_owner = None
        streams[owner].append(_normalise(line))
    for lines in by_address.values():  # connections that never sent CONNECT
        streams[BROKER] += lines
    return dict(streams)


def run_session(broker, version: str) -> str:
    """Play the scripted session against ``broker``; return its log up to SIGTERM."""
    sub = CliSubscriber(broker.host, broker.port, "-V", version, "-i", SUBSCRIBER, "-q", "2",
                        "-t", TOPIC, "-v", "-C", str(len(PUBLISHES)))
    # The broker.wait_for_log calls below only pace the script (so that each
    # client's lines come in a deterministic order); they are not assertions:
    # if an expected line never comes, the comparison shows it.
    flows_seen: Counter[str] = Counter()
    try:
        sub.wait_subscribed()
        for client_id, qos, retain, payload, flow_end in PUBLISHES:
            args = ["-V", version, "-i", client_id, "-q", str(qos), "-t", TOPIC, "-m", payload]
            result = run_cli("mosquitto_pub", broker.host, broker.port, *args, *(["-r"] if retain else []))
            assert result.returncode == 0, result.stderr
            sub.wait_for_line(lambda line, p=payload: line == f"{TOPIC} {p}")
            if flow_end:
                flows_seen[flow_end] += 1
                broker.wait_for_log(flow_end, count=flows_seen[flow_end])
            broker.wait_for_log(rf"^\d+: Client {re.escape(client_id)} ")
        assert sub.wait_exit() == 0, sub.output()
    finally:
        sub.kill()
    broker.wait_for_log(rf"^\d+: Client {SUBSCRIBER} ")
    log = broker.log_text()
    broker.stop()
    return log


def _format(streams: dict[str, list[str]]) -> str:
    return "\n".join(f"[{client}]\n  " + "\n  ".join(lines) for client, lines in sorted(streams.items()))


@pytest.mark.usefixtures("mosquitto_clients")
@pytest.mark.parametrize("version", ["mqttv311", "mqttv5"])
def test_verbose_log_matches_mosquitto(broker_of_kind, broker_kind, version):
    reference = client_streams(run_session(broker_of_kind("mosquitto"), version))
    candidate = client_streams(run_session(broker_of_kind(broker_kind), version))

    # The reference itself must look as expected, or the test proves nothing.
    assert set(reference) == {SUBSCRIBER, *(p[0] for p in PUBLISHES)}, _format(reference)
    assert reference[SUBSCRIBER][-1] == f"Client {SUBSCRIBER} disconnected."

    for client in sorted(set(reference) | set(candidate)):
        assert candidate.get(client) == reference.get(client), (
            f"log lines for {client} differ\n--- mosquitto ---\n{_format(reference)}"
            f"\n--- {broker_kind} ---\n{_format(candidate)}"
        )
