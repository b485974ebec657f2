"""Client-side helpers for the interoperability tests.

* :class:`PahoClient` drives a paho-mqtt 2.x client synchronously: every call
  waits (with a timeout) for the acknowledgement it triggers.
* :func:`raw_exchange` sends hand-made bytes for cases no well-behaved client
  library can produce (an unsupported protocol level).
* :func:`run_cli` and :class:`CliSubscriber` run mosquitto_pub / mosquitto_sub.

Nothing here waits without a bound: each wait has a timeout.
"""

from __future__ import annotations

import queue
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

#: Upper bound for any single wait on the broker.
TIMEOUT = 10.0
#: How long "nothing arrives" is watched for.
QUIET_WINDOW = 0.7


@dataclass
class Connack:
    """What the broker answered to CONNECT."""

    reason_code: ReasonCode
    session_present: bool
    properties: Properties | None

    @property
    def value(self) -> int:
        """The numeric reason / return code (0 is success)."""
        return self.reason_code.value


class PahoClient:
    """One paho-mqtt connection, used for one CONNECT only.

    To reconnect with the same client id (persistent sessions), create a new
    instance: the broker, not this object, keeps the session.
    """

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str = "",
        protocol: int = mqtt.MQTTv311,
        clean_session: bool | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.protocol = protocol
        self.paho = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=protocol,
            reconnect_on_failure=False,
        )
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self._connacks: queue.Queue[Connack] = queue.Queue()
        self._disconnected = threading.Event()
        self._subacks: dict[int, list[ReasonCode]] = {}
        self._subacked = threading.Condition()
        self._closed = False
        self.paho.on_connect = self._on_connect
        self.paho.on_message = self._on_message
        self.paho.on_subscribe = self._on_subscribe
        self.paho.on_disconnect = self._on_disconnect

    # paho callbacks (run on paho's network thread)

    def _on_connect(self, _client, _userdata, flags, reason_code, properties) -> None:
        self._connacks.put(Connack(reason_code, bool(flags.session_present), properties))

    def _on_message(self, _client, _userdata, message) -> None:
        self.messages.put(message)

    def _on_subscribe(self, _client, _userdata, mid, reason_codes, _properties) -> None:
        with self._subacked:
            self._subacks[mid] = list(reason_codes)
            self._subacked.notify_all()

    def _on_disconnect(self, _client, _userdata, _flags, _reason_code, _properties) -> None:
        self._disconnected.set()

    # synchronous API

    def will_set(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False,
                 properties: Properties | None = None) -> None:
        """Set the Will; call before :meth:`connect`."""
        self.paho.will_set(topic, payload, qos=qos, retain=retain, properties=properties)

    def connect(self, clean_start: Any = mqtt.MQTT_CLEAN_START_FIRST_ONLY,
                properties: Properties | None = None, keepalive: int = 60) -> Connack:
        """Connect and return the CONNACK (whatever its reason code)."""
        self.paho.connect(self.host, self.port, keepalive=keepalive,
                          clean_start=clean_start, properties=properties)
        self.paho.loop_start()
        try:
            return self._connacks.get(timeout=TIMEOUT)
        except queue.Empty:
            raise AssertionError(f"no CONNACK within {TIMEOUT}s") from None

    def connect_ok(self, **kwargs: Any) -> Connack:
        """Connect and assert success."""
        connack = self.connect(**kwargs)
        assert connack.value == 0, f"CONNACK refused: {connack.reason_code}"
        return connack

    def subscribe(self, topic: str, qos_or_options: int | mqtt.SubscribeOptions = 0,
                  properties: Properties | None = None) -> list[ReasonCode]:
        """Subscribe to one filter and return the SUBACK reason codes."""
        if isinstance(qos_or_options, mqtt.SubscribeOptions):
            result, mid = self.paho.subscribe(topic, options=qos_or_options, properties=properties)
        else:
            result, mid = self.paho.subscribe(topic, qos_or_options, properties=properties)
        assert result == mqtt.MQTT_ERR_SUCCESS, f"subscribe not sent: {result}"
        with self._subacked:
            if not self._subacked.wait_for(lambda: mid in self._subacks, timeout=TIMEOUT):
                raise AssertionError(f"no SUBACK for {topic!r} within {TIMEOUT}s")
            return self._subacks.pop(mid)

    def subscribe_ok(self, topic: str, qos_or_options: int | mqtt.SubscribeOptions = 0,
                     properties: Properties | None = None) -> None:
        """Subscribe and assert the broker granted it (reason code < 0x80)."""
        codes = self.subscribe(topic, qos_or_options, properties)
        assert len(codes) == 1 and codes[0].value < 0x80, f"SUBACK refused {topic!r}: {codes}"

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False,
                properties: Properties | None = None) -> None:
        """Publish and wait until the QoS flow towards the broker is complete."""
        info = self.paho.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        info.wait_for_publish(timeout=TIMEOUT)
        assert info.is_published(), f"publish to {topic!r} (QoS {qos}) not completed within {TIMEOUT}s"

    def expect_messages(self, count: int, timeout: float = TIMEOUT) -> list[mqtt.MQTTMessage]:
        """Return exactly the next ``count`` messages, failing if they do not arrive in time."""
        received = []
        deadline = time.monotonic() + timeout
        while len(received) < count:
            remaining = deadline - time.monotonic()
            try:
                received.append(self.messages.get(timeout=max(remaining, 0.001)))
            except queue.Empty:
                topics = [(m.topic, m.payload[:40]) for m in received]
                raise AssertionError(f"expected {count} messages, got {len(received)}: {topics}") from None
        return received

    def expect_no_message(self, window: float = QUIET_WINDOW) -> None:
        """Assert that nothing arrives within ``window`` seconds."""
        try:
            message = self.messages.get(timeout=window)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected message on {message.topic!r}: {message.payload[:80]!r}")

    def disconnect(self) -> None:
        """Send DISCONNECT, wait for the connection to close, stop the network thread."""
        self._closed = True
        self.paho.disconnect()
        self._disconnected.wait(timeout=TIMEOUT)
        self.paho.loop_stop()

    def drop(self) -> None:
        """Close the TCP connection without DISCONNECT (an abnormal close)."""
        self._closed = True
        self.paho.loop_stop()
        sock = self.paho.socket()
        if sock is not None:
            sock.close()

    def close(self) -> None:
        """Tear down whatever is left (idempotent, used by the fixture)."""
        if not self._closed:
            self._closed = True
            if self.paho.is_connected():
                self.paho.disconnect()
                self._disconnected.wait(timeout=TIMEOUT)
        self.paho.loop_stop()


def v5_properties(packet_type: int, **values: Any) -> Properties:
    """Build a paho Properties object, e.g. ``v5_properties(PacketTypes.PUBLISH, ContentType="x")``."""
    props = Properties(packet_type)
    for name, value in values.items():
        setattr(props, name, value)
    return props


# raw bytes


def _mqtt_string(value: bytes) -> bytes:
    return struct.pack("!H", len(value)) + value


def _remaining_length(length: int) -> bytes:
    out = bytearray()
    while True:
        byte, length = length % 128, length // 128
        out.append(byte | (0x80 if length else 0))
        if not length:
            return bytes(out)


def connect_packet(protocol_name: bytes, level: int, client_id: bytes, keepalive: int = 60) -> bytes:
    """A CONNECT with the 3.1.1 layout (clean session, no will, no properties)."""
    body = _mqtt_string(protocol_name) + bytes([level, 0x02]) + struct.pack("!H", keepalive)
    body += _mqtt_string(client_id)
    return bytes([0x10]) + _remaining_length(len(body)) + body


def raw_exchange(host: str, port: int, data: bytes, timeout: float = TIMEOUT) -> tuple[bytes, bool]:
    """Send ``data``, read until the peer closes or ``timeout`` passes.

    Returns the bytes received and whether the peer closed the connection.
    """
    received = bytearray()
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(data)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                chunk = sock.recv(4096)
            except socket.timeout:
                break
            except ConnectionResetError:
                return bytes(received), True
            if not chunk:
                return bytes(received), True
            received += chunk
    return bytes(received), False


# mosquitto_pub / mosquitto_sub


def run_cli(tool: str, host: str, port: int, *args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    """Run ``tool`` (mosquitto_pub or mosquitto_sub) against the broker and wait for it."""
    return subprocess.run(
        [tool, "-h", host, "-p", str(port), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


class CliSubscriber:
    """A background ``mosquitto_sub -d``.

    ``-d`` makes mosquitto_sub print its packet flow, which tells when the
    SUBACK has arrived (so publishing after :meth:`wait_subscribed` cannot race
    the subscription). ``stdbuf -oL`` makes its stdout line-buffered although
    it is a pipe. Message lines are told apart from debug lines by the
    caller's ``-F`` format, which should start with :attr:`MARK`.
    """

    MARK = "MSG|"

    def __init__(self, host: str, port: int, *args: str) -> None:
        self.process = subprocess.Popen(
            ["stdbuf", "-oL", "mosquitto_sub", "-d", "-h", host, "-p", str(port), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.lines: list[str] = []
        self.stderr = b""
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            with self._changed:
                self.lines.append(raw.decode("utf-8", errors="replace").rstrip("\n"))
                self._changed.notify_all()

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        self.stderr = self.process.stderr.read()

    def wait_for_line(self, predicate: Callable[[str], bool], timeout: float = TIMEOUT) -> str:
        """Return the first stdout line satisfying ``predicate``; fail after ``timeout``."""
        with self._changed:
            found = self._changed.wait_for(
                lambda: next((line for line in self.lines if predicate(line)), None), timeout=timeout
            )
        if found is None:
            raise AssertionError(f"mosquitto_sub output did not show the expected line:\n{self.output()}")
        return found

    def wait_subscribed(self) -> None:
        """Wait until mosquitto_sub reports its SUBACK."""
        self.wait_for_line(lambda line: line.startswith("Subscribed (mid:"))

    def messages(self) -> list[str]:
        """Message lines (``-F`` output starting with MARK), without the mark."""
        with self._changed:
            return [line[len(self.MARK):] for line in self.lines if line.startswith(self.MARK)]

    def wait_exit(self, timeout: float = TIMEOUT) -> int:
        """Wait for the process to end by itself (``-C`` / ``-W``) and return its exit code."""
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=TIMEOUT)
            raise AssertionError(f"mosquitto_sub still running after {timeout}s:\n{self.output()}") from None
        for reader in self._readers:
            reader.join(timeout=TIMEOUT)
        return code

    def kill(self) -> None:
        """SIGKILL: the socket is closed by the OS, without DISCONNECT."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=TIMEOUT)

    def output(self) -> str:
        """Stdout and stderr so far, for failure messages."""
        with self._changed:
            text = "\n".join(self.lines)
        return f"{text}\n[stderr] {self.stderr.decode('utf-8', errors='replace')}"
