"""mosquitto_pub / mosquitto_sub against the broker.

Background subscribers run with ``-d`` so the test knows when their SUBACK
arrived, and print messages with ``-F "MSG|..."`` so message lines are told
apart from debug lines (see :class:`mqtt_helpers.CliSubscriber`).
"""

from __future__ import annotations

import os
import re

import pytest

from mqtt_helpers import run_cli

PROTOCOLS = ["mqttv311", "mqttv5"]

#: mosquitto_sub's exit code when -W runs out.
SUB_TIMED_OUT = 27
#: MQTT 5 CONNACK reason "Bad authentication method"; mosquitto clients exit with it.
BAD_AUTHENTICATION_METHOD = 0x8C

pytestmark = pytest.mark.usefixtures("mosquitto_clients")


def _pub(broker, *args, timeout=10.0):
    result = run_cli("mosquitto_pub", broker.host, broker.port, *args, timeout=timeout)
    assert result.returncode == 0, f"mosquitto_pub {args} failed: {result.stderr.decode(errors='replace')}"
    return result


def _sub(broker, *args, timeout=10.0):
    return run_cli("mosquitto_sub", broker.host, broker.port, *args, timeout=timeout)


@pytest.mark.parametrize("version", PROTOCOLS)
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_pub_sub_each_qos(broker, cli_subscriber, version, qos):
    sub = cli_subscriber("-V", version, "-i", "cli-sub", "-q", "2", "-t", "cli/+",
                         "-C", "3", "-F", "MSG|%t|%q|%r|%p")
    sub.wait_subscribed()
    for n in range(3):
        _pub(broker, "-V", version, "-i", f"cli-pub-{n}", "-q", str(qos), "-t", f"cli/{n}", "-m", f"payload {n}")
    assert sub.wait_exit() == 0, sub.output()
    assert sub.messages() == [f"cli/{n}|{qos}|0|payload {n}" for n in range(3)]


@pytest.mark.parametrize("version", PROTOCOLS)
def test_verbose_output_is_topic_and_payload(broker, cli_subscriber, version):
    sub = cli_subscriber("-V", version, "-i", "cli-verbose", "-t", "cli/#", "-v", "-C", "1")
    sub.wait_subscribed()
    _pub(broker, "-V", version, "-i", "cli-verbose-pub", "-t", "cli/a/b", "-m", "hello world")
    assert sub.wait_exit() == 0, sub.output()
    assert "cli/a/b hello world" in sub.lines


@pytest.mark.parametrize("version", PROTOCOLS)
def test_retained_set_and_clear(broker, version):
    _pub(broker, "-V", version, "-i", "cli-ret-pub", "-q", "1", "-r", "-t", "cli/ret", "-m", "kept")
    got = _sub(broker, "-V", version, "-i", "cli-ret-sub", "-t", "cli/ret", "-C", "1", "-W", "5", "-F", "%r|%q|%p")
    assert got.returncode == 0, got.stderr
    assert got.stdout.decode() == "1|0|kept\n"

    _pub(broker, "-V", version, "-i", "cli-ret-clear", "-q", "1", "-r", "-t", "cli/ret", "-n")
    empty = _sub(broker, "-V", version, "-i", "cli-ret-sub2", "-t", "cli/ret", "-C", "1", "-W", "1")
    assert empty.returncode == SUB_TIMED_OUT, empty.stderr
    assert empty.stdout == b""


@pytest.mark.parametrize("version", PROTOCOLS)
def test_count_stops_after_n_messages(broker, cli_subscriber, version):
    sub = cli_subscriber("-V", version, "-i", "cli-count", "-q", "1", "-t", "cli/count", "-C", "2",
                         "-F", "MSG|%p")
    sub.wait_subscribed()
    for n in range(2):
        _pub(broker, "-V", version, "-q", "1", "-i", f"cli-count-pub-{n}", "-t", "cli/count", "-m", str(n))
    assert sub.wait_exit() == 0, sub.output()
    assert sub.messages() == ["0", "1"]


@pytest.mark.parametrize("version", PROTOCOLS)
def test_timeout_without_messages(broker, version):
    got = _sub(broker, "-V", version, "-i", "cli-idle", "-t", "cli/silence", "-W", "1")
    assert got.returncode == SUB_TIMED_OUT
    assert b"Timed out" in got.stderr
    assert got.stdout == b""


@pytest.mark.parametrize("version", PROTOCOLS)
def test_will_on_killed_client(broker, cli_subscriber, version):
    watcher = cli_subscriber("-V", version, "-i", "cli-will-watch", "-q", "1", "-t", "will/#",
                             "-C", "1", "-F", "MSG|%t|%q|%p")
    watcher.wait_subscribed()
    victim = cli_subscriber("-V", version, "-i", "cli-will-victim", "-t", "cli/unused",
                            "--will-topic", "will/cli", "--will-payload", "bye", "--will-qos", "1")
    victim.wait_subscribed()
    victim.kill()  # SIGKILL: the kernel closes the socket, no DISCONNECT is sent
    assert watcher.wait_exit() == 0, watcher.output()
    assert watcher.messages() == ["will/cli|1|bye"]


def test_v5_publish_properties_read_back(broker, cli_subscriber):
    sub = cli_subscriber("-V", "mqttv5", "-i", "cli-props", "-q", "1", "-t", "cli/props", "-C", "1",
                         "-F", "MSG|%C|%P|%F|%R|%D|%E|%p")
    sub.wait_subscribed()
    _pub(broker, "-V", "mqttv5", "-i", "cli-props-pub", "-q", "1", "-t", "cli/props", "-m", "body",
         "-D", "publish", "user-property", "k", "v",
         "-D", "publish", "user-property", "k2", "v2",
         "-D", "publish", "content-type", "text/plain",
         "-D", "publish", "payload-format-indicator", "1",
         "-D", "publish", "response-topic", "cli/reply",
         "-D", "publish", "correlation-data", "corr-1",
         "-D", "publish", "message-expiry-interval", "120")
    assert sub.wait_exit() == 0, sub.output()
    [line] = sub.messages()
    match = re.fullmatch(r"text/plain\|k:v k2:v2\|1\|cli/reply\|corr-1\|(\d+)\|body", line)
    assert match, line
    assert 0 < int(match.group(1)) <= 120


@pytest.mark.parametrize("version", PROTOCOLS)
def test_large_payload_from_file(broker, cli_subscriber, tmp_path, version):
    payload = os.urandom(256 * 1024)
    path = tmp_path / "payload.bin"
    path.write_bytes(payload)
    sub = cli_subscriber("-V", version, "-i", "cli-large", "-q", "2", "-t", "cli/large", "-C", "1",
                         "-F", "MSG|%l|%x")
    sub.wait_subscribed()
    _pub(broker, "-V", version, "-i", "cli-large-pub", "-q", "2", "-t", "cli/large", "-f", str(path))
    assert sub.wait_exit(timeout=20) == 0, sub.output()[:2000]
    [line] = sub.messages()
    length, hex_payload = line.split("|")
    assert int(length) == len(payload)
    assert bytes.fromhex(hex_payload) == payload


@pytest.mark.parametrize("version", PROTOCOLS)
def test_client_id_keeps_session(broker, version):
    session = ["-V", version, "-i", "cli-durable", "-q", "1", "-t", "cli/durable", "-c"]
    if version == "mqttv5":
        session += ["-x", "300"]
    # -W 1: connect, subscribe, leave (the session stays: -c).
    first = _sub(broker, *session, "-W", "1")
    assert first.returncode == SUB_TIMED_OUT, first.stderr
    _pub(broker, "-V", version, "-i", "cli-durable-pub", "-q", "1", "-t", "cli/durable", "-m", "while away")
    second = _sub(broker, *session, "-C", "1", "-W", "5", "-F", "%q|%p")
    assert second.returncode == 0, second.stderr
    assert second.stdout.decode() == "1|while away\n"


@pytest.mark.parametrize("version", PROTOCOLS)
def test_empty_client_id(broker, cli_subscriber, version):
    # Without -i, mosquitto_sub 2.x sends a zero-length client id (both versions).
    sub = cli_subscriber("-V", version, "-t", "cli/anon", "-C", "1", "-F", "MSG|%p")
    sub.wait_subscribed()
    connack = sub.wait_for_line(lambda line: "received CONNACK" in line)
    client = re.match(r"Client (\S+) received CONNACK \(0\)$", connack)
    assert client, connack
    if version == "mqttv5":
        # The broker assigned an identifier, which mosquitto_sub now uses.
        assert client.group(1) not in ("(null)", ""), connack
    _pub(broker, "-V", version, "-t", "cli/anon", "-m", "anonymous")
    assert sub.wait_exit() == 0, sub.output()
    assert sub.messages() == ["anonymous"]


def test_v5_bad_authentication_method(broker):
    got = _sub(broker, "-V", "mqttv5", "-i", "cli-auth", "-t", "cli/auth", "-W", "3",
               "-D", "connect", "authentication-method", "NO-SUCH-METHOD")
    assert got.returncode == BAD_AUTHENTICATION_METHOD, got.stderr
    assert b"Bad authentication method" in got.stderr
