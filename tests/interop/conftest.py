"""Fixtures for the interoperability suite: a fresh broker per test.

Which broker runs is chosen by the environment variable
``KUBEMQTT_INTEROP_BROKER``:

* unset or ``kubemqtt`` -- our binary, ``$KUBEMQTT_BROKER_BIN`` or
  ``<repo>/target/debug/kubemqtt-broker``;
* ``mosquitto`` -- ``/usr/sbin/mosquitto`` with an equivalent ``mosquitto.conf``.
  Every test here must pass against mosquitto: it is how the tests themselves
  are validated.

Each broker listens on a free port of 127.0.0.1, runs verbose (``-v``) in its
own temporary directory and has its stderr captured to ``broker.log`` there;
the tail of that log is printed at teardown, so pytest shows it next to any
failure.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest

from mqtt_helpers import CliSubscriber, PahoClient

REPO_ROOT = Path(__file__).resolve().parents[2]
MOSQUITTO_BIN = "/usr/sbin/mosquitto"
TARGET_ENV = "KUBEMQTT_INTEROP_BROKER"

STARTUP_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
START_ATTEMPTS = 3
LOG_TAIL_LINES = 80


def target_kind() -> str:
    """The broker under test: ``"kubemqtt"`` (default) or ``"mosquitto"``."""
    kind = os.environ.get(TARGET_ENV, "kubemqtt").strip() or "kubemqtt"
    if kind not in ("kubemqtt", "mosquitto"):
        raise pytest.UsageError(f"{TARGET_ENV} must be 'kubemqtt' or 'mosquitto', not {kind!r}")
    return kind


def kubemqtt_binary() -> Path:
    """Path of our broker binary (``$KUBEMQTT_BROKER_BIN`` wins)."""
    configured = os.environ.get("KUBEMQTT_BROKER_BIN")
    if configured:
        return Path(configured)
    return REPO_ROOT / "target" / "debug" / "kubemqtt-broker"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _is_listening(port: int) -> bool:
    """True once 127.0.0.1:port is in LISTEN state.

    Reads /proc/net/tcp instead of probing with a connection, so readiness
    checks leave no "New connection" lines in the broker log (the log
    comparison test depends on that).
    """
    wanted = f"0100007F:{port:04X}"
    try:
        with open("/proc/net/tcp", encoding="ascii") as table:
            next(table, None)  # header
            for row in table:
                fields = row.split()
                if len(fields) > 3 and fields[1] == wanted and fields[3] == "0A":
                    return True
    except OSError:
        return False
    return False


def _mosquitto_conf(port: int) -> str:
    # Equivalent of the kubemqtt config below. Limits that differ by default
    # are aligned with ours (max packet size); $SYS is off on both sides.
    return "\n".join(
        [
            "per_listener_settings false",
            "allow_anonymous true",
            f"listener {port} 127.0.0.1",
            "persistence false",
            "log_dest stderr",
            "log_timestamp true",
            "sys_interval 0",
            "max_packet_size 1048576",
            "",
        ]
    )


def _kubemqtt_conf(port: int) -> str:
    return "\n".join(
        [
            'node_name = "interop"',
            "allow_anonymous = true",
            "",
            "[[listeners]]",
            'name = "mqtt"',
            f'bind = "127.0.0.1:{port}"',
            'protocol = "tcp"',
            "",
            "[log]",
            "timestamps = true",
            "",
            "[sys]",
            "interval_secs = 0",
            "",
        ]
    )


@dataclass
class Broker:
    """A running broker process and where to reach it."""

    kind: str
    host: str
    port: int
    workdir: Path
    log_path: Path
    process: subprocess.Popen
    stopped: bool = False

    def log_text(self) -> str:
        """Everything the broker wrote to stderr so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_for_log(self, pattern: str, count: int = 1, timeout: float = 5.0) -> bool:
        """Wait until ``pattern`` (a regex) matches at least ``count`` log lines."""
        regex = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(regex.findall(self.log_text())) >= count:
                return True
            time.sleep(0.02)
        return False

    def exited_early(self) -> int | None:
        """The exit code if the process ended without :meth:`stop`, else None."""
        return None if self.stopped else self.process.poll()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit within STOP_TIMEOUT."""
        if self.process.poll() is not None:
            return
        self.stopped = True
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the log, for failure reports."""
        return "\n".join(self.log_text().splitlines()[-lines:])


def start_broker(kind: str, workdir: Path, verbose: bool = True) -> Broker:
    """Start a broker of ``kind`` on a free 127.0.0.1 port, wait until it listens.

    Retries on another port if the process exits during startup (the free
    port may have been taken in between).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    failures = []
    for attempt in range(START_ATTEMPTS):
        port = _free_port()
        if kind == "mosquitto":
            if not os.access(MOSQUITTO_BIN, os.X_OK):
                pytest.fail(f"{MOSQUITTO_BIN} not found: install mosquitto (scripts/test.sh does)")
            conf = workdir / "mosquitto.conf"
            conf.write_text(_mosquitto_conf(port), encoding="utf-8")
            argv = [MOSQUITTO_BIN, "-c", str(conf)]
        else:
            binary = kubemqtt_binary()
            if not os.access(binary, os.X_OK):
                pytest.fail(
                    f"broker binary {binary} not found: run `cargo build --bins` "
                    "or set KUBEMQTT_BROKER_BIN"
                )
            conf = workdir / "broker.toml"
            conf.write_text(_kubemqtt_conf(port), encoding="utf-8")
            argv = [str(binary), "-c", str(conf)]
        if verbose:
            argv.append("-v")

        log_path = workdir / f"broker-{attempt}.log"
        with open(log_path, "wb") as stderr, open(workdir / f"broker-{attempt}.stdout", "wb") as stdout:
            process = subprocess.Popen(
                argv, cwd=workdir, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr
            )
        broker = Broker(kind, "127.0.0.1", port, workdir, log_path, process)

        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline and process.poll() is None and not _is_listening(port):
            time.sleep(0.02)
        if process.poll() is None and _is_listening(port):
            return broker
        broker.stop()
        failures.append(f"attempt {attempt + 1} (port {port}): exit {process.poll()}\n{broker.log_tail(20)}")
    pytest.fail(f"{kind} broker did not start listening:\n" + "\n".join(failures))


def finish_broker(broker: Broker) -> None:
    """Stop ``broker``; print its log tail; fail if it died or panicked by itself."""
    early_exit = broker.exited_early()
    broker.stop()
    log = broker.log_text()
    print(f"--- {broker.kind} log ({broker.log_path}), last {LOG_TAIL_LINES} lines ---")
    print(broker.log_tail())
    if early_exit is not None:
        pytest.fail(f"{broker.kind} broker exited during the test with code {early_exit}")
    if "panicked at" in log:
        pytest.fail(f"{broker.kind} broker panicked during the test (see its log above)")


@pytest.fixture(scope="session")
def broker_kind() -> str:
    """The broker under test, from ``KUBEMQTT_INTEROP_BROKER``."""
    return target_kind()


@pytest.fixture
def broker(tmp_path: Path, broker_kind: str) -> Iterator[Broker]:
    """A fresh broker of the selected kind, stopped after the test."""
    running = start_broker(broker_kind, tmp_path / "broker")
    try:
        yield running
    finally:
        finish_broker(running)


@pytest.fixture
def broker_of_kind(tmp_path: Path) -> Iterator[Callable[[str], Broker]]:
    """Factory starting brokers of a given kind (``"kubemqtt"`` / ``"mosquitto"``).

    For tests that need more than one broker, or a specific one. All are
    stopped after the test.
    """
    started: list[Broker] = []

    def start(kind: str) -> Broker:
        running = start_broker(kind, tmp_path / f"{kind}-{len(started)}")
        started.append(running)
        return running

    yield start
    for running in started:
        finish_broker(running)


@pytest.fixture
def make_client(broker: Broker) -> Iterator[Callable[..., PahoClient]]:
    """Factory for paho clients bound to ``broker``; all are closed after the test.

    Arguments are passed to :class:`mqtt_helpers.PahoClient`.
    """
    clients: list[PahoClient] = []

    def make(*args, **kwargs) -> PahoClient:
        client = PahoClient(broker.host, broker.port, *args, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture(scope="session")
def mosquitto_clients() -> None:
    """Fail clearly when mosquitto_pub / mosquitto_sub are missing."""
    missing = [tool for tool in ("mosquitto_pub", "mosquitto_sub") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: install mosquitto-clients (scripts/test.sh does)")


@pytest.fixture
def cli_subscriber(broker: Broker, mosquitto_clients: None) -> Iterator[Callable[..., CliSubscriber]]:
    """Factory for background ``mosquitto_sub -d`` processes, killed after the test."""
    started: list[CliSubscriber] = []

    def start(*args: str) -> CliSubscriber:
        subscriber = CliSubscriber(broker.host, broker.port, *args)
        started.append(subscriber)
        return subscriber

    yield start
    for subscriber in started:
        subscriber.kill()
