#!/usr/bin/env python3
"""Benchmarks kubemqtt-bridge against real sinks and a naive subscriber.

    cargo build --release -p kubemqtt-broker -p kubemqtt-bridge --example bench_load
    python3 scripts/bench-bridge.py [--count 100000] [--markdown]

Starts, on free loopback ports in a temp dir: the kubemqtt broker (the
source), PostgreSQL 15, nats-server with JetStream, RabbitMQ and an HTTP
server (Python, in this process). For each scenario it starts the bridge
(release build) with one route to the sink, publishes COUNT readings at
QoS 1 as fast as the broker acknowledges them (bridge/examples/bench_load.rs)
and times until the bridge reports all of them committed by the sink
(`forwarded` in GET /status; for PostgreSQL also `count(*)`). It samples
the bridge's CPU time and peak memory from /proc.

Then, at 1,000 messages/s, the end-to-end latency from the device's
publish (a timestamp in the payload) to the row's insert in PostgreSQL
(`clock_timestamp()` in the inserting statement, which commits right after).

The same two measurements for the naive way: a paho-mqtt Python subscriber
inserting and committing each row with psycopg2 (acknowledging each message
on receipt, as such scripts do).

Needs: Debian's postgresql, nats-server, rabbitmq-server, python3-psycopg2;
PyPI's paho-mqtt >= 2. Binaries: KUBEMQTT_BROKER_BIN, KUBEMQTT_BRIDGE_BIN,
BENCH_LOAD_BIN (default: target/release/...).
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
BROKER = os.environ.get("KUBEMQTT_BROKER_BIN", os.path.join(TARGET, "release/kubemqtt-broker"))
BRIDGE = os.environ.get("KUBEMQTT_BRIDGE_BIN", os.path.join(TARGET, "release/kubemqtt-bridge"))
LOAD = os.environ.get("BENCH_LOAD_BIN", os.path.join(TARGET, "release/examples/bench_load"))
PG_BIN = "/usr/lib/postgresql/15/bin"
RABBIT_BIN = "/usr/lib/rabbitmq/bin"
PROCESSES = []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, what, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} does not listen on {port}")


def spawn(args, log, **kwargs):
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, **kwargs)
    PROCESSES.append(process)
    return process


def as_postgres(args):
    return ["runuser", "-u", "postgres", "--"] + args if os.geteuid() == 0 else args


class Postgres:
    def __init__(self, work):
        self.dir = os.path.join(work, "pg")
        os.makedirs(self.dir)
        shutil.chown(self.dir, "postgres", "postgres")
        self.port = free_port()
        subprocess.run(as_postgres([f"{PG_BIN}/initdb", "-A", "trust", "-U", "postgres",
                                    "-D", f"{self.dir}/data"]), check=True, capture_output=True)
        # Durable commits (fsync on, synchronous_commit on): what a real
        # deployment pays per transaction.
        subprocess.run(as_postgres([f"{PG_BIN}/pg_ctl", "-D", f"{self.dir}/data", "-w", "-l",
                                    f"{self.dir}/log", "-o",
                                    f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1",
                                    "start"]), check=True, capture_output=True)
        import psycopg2
        self.connection = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres",
                                           dbname="postgres")
        self.connection.autocommit = True

    def sql(self, statement, *args):
        with self.connection.cursor() as cursor:
            cursor.execute(statement, args)
            return cursor.fetchall() if cursor.description else None

    def reset(self):
        self.sql("DROP TABLE IF EXISTS readings")
        self.sql("CREATE TABLE readings (id bigint, device text, temp double precision, "
                 "sent_ns bigint, inserted_at timestamptz DEFAULT clock_timestamp(), "
                 "mqtt_key text PRIMARY KEY)")

    def conninfo(self):
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    def stop(self):
        self.connection.close()
        subprocess.run(as_postgres([f"{PG_BIN}/pg_ctl", "-D", f"{self.dir}/data", "-m",
                                    "immediate", "stop"]), capture_output=True)


class Hook(BaseHTTPRequestHandler):
    received = 0
    lock = threading.Lock()

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        records = json.loads(body)
        with Hook.lock:
            Hook.received += len(records) if isinstance(records, list) else 1
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def rabbit(work, log):
    base = os.path.join(work, "rabbit")
    for sub in ("mnesia", "log"):
        os.makedirs(os.path.join(base, sub))
    with open(os.path.join(base, "enabled_plugins"), "w") as f:
        f.write("[].\n")
    port = free_port()
    node = f"bench-{port}@localhost"
    env = dict(os.environ, HOME=base, RABBITMQ_NODENAME=node, RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
               RABBITMQ_NODE_PORT=str(port), RABBITMQ_DIST_PORT=str(free_port()),
               RABBITMQ_MNESIA_BASE=f"{base}/mnesia", RABBITMQ_LOG_BASE=f"{base}/log",
               RABBITMQ_ENABLED_PLUGINS_FILE=f"{base}/enabled_plugins",
               RABBITMQ_CONFIG_FILE=f"{base}/rabbitmq",
               RABBITMQ_FEATURE_FLAGS_FILE=f"{base}/feature_flags",
               RABBITMQ_PLUGINS_EXPAND_DIR=f"{base}/plugins-expand")
    spawn([f"{RABBIT_BIN}/rabbitmq-server"], log, env=env)
    wait_port(port, "rabbitmq-server")
    def ctl(*args):
        return subprocess.run([f"{RABBIT_BIN}/rabbitmqctl", "-n", node, *args], env=env,
                              capture_output=True, check=True)
    return port, ctl


def status(http_port):
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/status", timeout=5) as r:
        return json.load(r)


def proc_cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def bridge_config(broker_port, http_port, sink, batch, route_map=None):
    mapping = route_map or {"id": "payload.id", "device": "segment(topic, 1)",
                            "temp": "payload.temp", "sent_ns": "payload.sent_ns"}
    map_toml = ", ".join(f'{k} = "{v}"' for k, v in mapping.items())
    return f"""name = "bench"

[broker]
host = "127.0.0.1"
port = {broker_port}
receive_maximum = 1000

[http]
bind = "127.0.0.1:{http_port}"

[[routes]]
name = "bench"
filters = ["bench/+/temp"]
map = {{ {map_toml} }}
batch = {{ max_messages = {batch}, linger_ms = 20 }}
{sink}
"""


def run_bridge(work, config, log):
    http_port = int(config.split('bind = "127.0.0.1:')[1].split('"')[0])
    path = os.path.join(work, "bridge.toml")
    with open(path, "w") as f:
        f.write(config)
    process = spawn([BRIDGE, "-c", path], log, env=dict(os.environ, HOSTNAME="bench-0"))
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=1):
                return process, http_port
        except OSError:
            time.sleep(0.05)
    sys.exit("the bridge is not ready: see " + log.name)


def measure_bridge(name, work, broker_port, sink, batch, count, log, check=None):
    http_port = free_port()
    process, http_port = run_bridge(work, bridge_config(broker_port, http_port, sink, batch), log)
    cpu_before = proc_cpu_seconds(process.pid)
    started = time.time()
    load = subprocess.run([LOAD, str(broker_port), str(count), "0"], capture_output=True, text=True,
                          check=True)
    deadline = time.time() + 600
    while status(http_port)["forwarded"] < count:
        if time.time() > deadline:
            sys.exit(f"{name}: only {status(http_port)['forwarded']} of {count} forwarded")
        time.sleep(0.02)
    took = time.time() - started
    cpu = proc_cpu_seconds(process.pid) - cpu_before
    rss = proc_peak_rss_mib(process.pid)
    if check:
        check(count)
    process.terminate()
    process.wait(timeout=60)
    publish_took = float(load.stdout.strip())
    return {"scenario": name, "messages": count, "seconds": took, "rate": count / took,
            "cpu": cpu / took * 100, "rss": rss, "publish_rate": count / publish_took}


NAIVE = r'''
import sys, json, time, psycopg2
import paho.mqtt.client as mqtt
port, pg_port, count = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
db = psycopg2.connect(host="127.0.0.1", port=pg_port, user="postgres", dbname="postgres")
cursor = db.cursor()
done = 0
def on_message(client, userdata, message):
    global done
    reading = json.loads(message.payload)
    cursor.execute("INSERT INTO readings (id, device, temp, sent_ns, mqtt_key) VALUES (%s, %s, %s, %s, %s)",
                   (reading["id"], message.topic.split("/")[1], reading["temp"], reading["sent_ns"],
                    str(reading["id"])))
    db.commit()
    done += 1
    if done >= count:
        client.disconnect()
def on_connect(client, userdata, flags, reason, properties):
    client.subscribe("bench/+/temp", qos=1)
    print("subscribed", flush=True)
client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="naive", protocol=mqtt.MQTTv5)
client.on_connect = on_connect
client.on_message = on_message
client.connect("127.0.0.1", port)
client.loop_forever()
'''


def measure_naive(work, broker_port, pg, count, rate, log):
    script = os.path.join(work, "naive.py")
    with open(script, "w") as f:
        f.write(NAIVE)
    process = subprocess.Popen([sys.executable, script, str(broker_port), str(pg.port), str(count)],
                               stdout=subprocess.PIPE, stderr=log, text=True)
    PROCESSES.append(process)
    if process.stdout.readline().strip() != "subscribed":
        sys.exit("the naive subscriber did not subscribe")
    started = time.time()
    subprocess.run([LOAD, str(broker_port), str(count), str(rate)], capture_output=True, check=True)
    process.wait(timeout=1200)
    took = time.time() - started
    return {"took": took, "rate": count / took}


def latency(pg):
    rows = pg.sql("SELECT percentile_cont(ARRAY[0.5, 0.9, 0.99]) WITHIN GROUP (ORDER BY lat), "
                  "max(lat), count(*) FROM (SELECT (extract(epoch FROM inserted_at) * 1e9 - sent_ns)"
                  " / 1e6 AS lat FROM readings) AS l")
    (p50, p90, p99), worst, n = rows[0][0], rows[0][1], rows[0][2]
    return {"p50": p50, "p90": p90, "p99": p99, "max": worst, "rows": n}


def broker(work, log):
    port = free_port()
    path = os.path.join(work, "broker.toml")
    with open(path, "w") as f:
        f.write(f"""allow_anonymous = true

[[listeners]]
bind = "127.0.0.1:{port}"

[limits]
max_inflight = 1000
receive_maximum = 1000
max_queued_messages = 10000000
max_queued_bytes = 4294967296
queue_high_water = 10000000
queue_high_water_bytes = 4294967296
""")
    process = spawn([BROKER, "-c", path], log)
    wait_port(port, "kubemqtt-broker")
    return process, port


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--single-count", type=int, default=20_000,
                        help="messages for the one-per-message and naive runs")
    parser.add_argument("--latency-count", type=int, default=10_000)
    args = parser.parse_args()
    for binary in (BROKER, BRIDGE, LOAD):
        if not os.path.exists(binary):
            sys.exit(f"{binary} missing: cargo build --release -p kubemqtt-broker "
                     "-p kubemqtt-bridge --example bench_load")
    work = tempfile.mkdtemp(prefix="bench-bridge-")
    os.chmod(work, 0o755)
    log = open(os.path.join(work, "log.txt"), "w")
    results = []
    pg = rabbitctl = None
    succeeded = False
    try:
        pg = Postgres(work)
        nats_port = free_port()
        spawn(["/usr/sbin/nats-server", "-js", "-a", "127.0.0.1", "-p", str(nats_port), "-sd",
               os.path.join(work, "nats")], log)
        wait_port(nats_port, "nats-server")
        rabbit_port, rabbitctl = rabbit(work, log)
        ThreadingHTTPServer.request_queue_size = 256
        hook = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
        threading.Thread(target=hook.serve_forever, daemon=True).start()

        def pg_count(count):
            rows = pg.sql("SELECT count(*) FROM readings")[0][0]
            assert rows == count, f"{rows} rows, expected {count}"

        pg_sink = f'[routes.sink.postgres]\nconnection = "{pg.conninfo()}"\ntable = "readings"\n'
        scenarios = [
            ("PostgreSQL, batches of up to 500", pg_sink, 500, args.count, pg_count),
            ("PostgreSQL, one insert per message", pg_sink, 1, args.single_count, pg_count),
            ("HTTP webhook, batch mode (up to 500 per POST)",
             f'[routes.sink.http]\nurl = "http://127.0.0.1:{hook.server_port}/"\nmode = "batch"\n',
             500, args.count, None),
            ("HTTP webhook, one POST per message",
             f'[routes.sink.http]\nurl = "http://127.0.0.1:{hook.server_port}/"\n',
             500, args.single_count, None),
            ("NATS JetStream (file storage)",
             f"[routes.sink.nats]\nurl = \"nats://127.0.0.1:{nats_port}\"\nsubject = \"'iot.' + segment(topic, 1)\"\n",
             500, args.count, None),
            ("RabbitMQ, persistent, publisher confirms",
             f'[routes.sink.amqp]\nurl = "amqp://guest:guest@127.0.0.1:{rabbit_port}/%2f"\n'
             f'routing_key = "\'readings\'"\n', 500, args.count, None),
        ]
        # The stream and queue the sinks need.
        declare_sinks(nats_port, rabbitctl, log)
        for name, sink, batch, count, check in scenarios:
            broker_process, broker_port = broker(work, log)
            pg.reset()
            result = measure_bridge(name, work, broker_port, sink, batch, count, log, check)
            results.append(result)
            print(f"{name}: {result['rate']:.0f} msg/s, bridge CPU {result['cpu']:.0f} %, "
                  f"peak RSS {result['rss']:.1f} MiB", flush=True)
            broker_process.terminate()
            broker_process.wait()

        # Latency at 1,000 msg/s into PostgreSQL: bridge, then naive.
        broker_process, broker_port = broker(work, log)
        pg.reset()
        http_port = free_port()
        bridge_process, http_port = run_bridge(
            work, bridge_config(broker_port, http_port, pg_sink, 500), log)
        subprocess.run([LOAD, str(broker_port), str(args.latency_count), "1000"], check=True,
                       capture_output=True)
        while status(http_port)["forwarded"] < args.latency_count:
            time.sleep(0.05)
        bridge_latency = latency(pg)
        bridge_process.terminate()
        bridge_process.wait()
        print(f"bridge latency at 1k msg/s: {bridge_latency}", flush=True)

        pg.reset()
        naive_rate = measure_naive(work, broker_port, pg, args.single_count, 0, log)
        print(f"naive subscriber flat out: {naive_rate['rate']:.0f} msg/s", flush=True)
        pg.reset()
        measure_naive(work, broker_port, pg, args.latency_count, 1000, log)
        naive_latency = latency(pg)
        print(f"naive latency at 1k msg/s: {naive_latency}", flush=True)
        broker_process.terminate()
        broker_process.wait()
        report(results, bridge_latency, naive_rate, naive_latency, args)
        succeeded = True
    finally:
        # PostgreSQL and RabbitMQ detach from their launchers: stop them
        # by their own tools, also when a run fails.
        if pg is not None:
            pg.stop()
        if rabbitctl is not None:
            try:
                rabbitctl("stop")
            except subprocess.CalledProcessError as error:
                print(f"cannot stop RabbitMQ: {error.stderr}", file=sys.stderr)
        for process in PROCESSES:
            if process.poll() is None:
                process.kill()
        log.close()
        if succeeded:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"logs kept in {work}", file=sys.stderr)


def declare_sinks(nats_port, rabbitctl, log):
    """A JetStream stream for iot.> (a request to nats-server's JetStream API
    over a plain NATS connection) and a durable RabbitMQ queue `readings`
    (rabbitmqctl eval)."""
    sock = socket.create_connection(("127.0.0.1", nats_port))
    sock.recv(4096)
    config = json.dumps({"name": "IOT", "subjects": ["iot.>"], "storage": "file"})
    sock.sendall(b'CONNECT {"verbose":false}\r\nSUB _INBOX.bench 1\r\n'
                 + f"PUB $JS.API.STREAM.CREATE.IOT _INBOX.bench {len(config)}\r\n{config}\r\n".encode())
    reply = b""
    deadline = time.time() + 10
    while b"MSG _INBOX.bench" not in reply and time.time() < deadline:
        reply += sock.recv(4096)
    sock.close()
    if b'"error"' in reply:
        sys.exit(f"cannot create the stream: {reply!r}")
    rabbitctl("eval", 'rabbit_amqqueue:declare(rabbit_misc:r(<<"/">>, queue, <<"readings">>), '
              'true, false, [], none, <<"bench">>).')


def report(results, bridge_latency, naive_rate, naive_latency, args):
    print("\n| sink | messages | msg/s | bridge CPU | bridge peak RSS |")
    print("|---|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['scenario']} | {r['messages']} | {r['rate']:,.0f} | {r['cpu']:.0f} % | "
              f"{r['rss']:.1f} MiB |")
    print(f"| naive paho-mqtt + psycopg2 subscriber, one commit per message | {args.single_count} "
          f"| {naive_rate['rate']:,.0f} | | |")
    print("\n| at 1,000 msg/s into PostgreSQL | p50 | p90 | p99 | max |")
    print("|---|---:|---:|---:|---:|")
    for name, l in (("kubemqtt-bridge (batches up to 500)", bridge_latency),
                    ("naive paho-mqtt + psycopg2 subscriber", naive_latency)):
        print(f"| {name} | {l['p50']:.2f} ms | {l['p90']:.2f} ms | {l['p99']:.2f} ms | "
              f"{l['max']:.2f} ms |")


if __name__ == "__main__":
    main()
