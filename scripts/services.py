#!/usr/bin/env python3
"""Run a local Kafka broker (KRaft) and Redis server for profilestream's tests.

Standard library only, so it runs with any Python 3.11+ (no virtualenv needed):

    python3 scripts/services.py up [kafka|redis|all]      start (default: all)
    python3 scripts/services.py down [kafka|redis|all]    SIGTERM, SIGKILL after 20 s
    python3 scripts/services.py restart [kafka|redis|all]
    python3 scripts/services.py crash [kafka|redis|all]   SIGKILL (fault tests)
    python3 scripts/services.py status [kafka|redis|all]  exit 0 only if all running
    python3 scripts/services.py env [kafka|redis|all]     print export lines
    python3 scripts/services.py wipe                      down + delete the state dir

Kafka is not installed system-wide: its jars are fetched once from Maven Central
with ``mvn dependency:copy-dependencies`` into ``$PROFILESTREAM_CACHE`` (default
``~/.cache/profilestream``) under ``kafka-<version>/libs``. ``redis-server`` is
installed with apt-get when it is missing.

Everything else lives in the state dir, ``$PROFILESTREAM_SERVICES_DIR`` (default
``<repo>/.services``): ``ports.json`` (loopback ports picked on first start and
reused afterwards, so a restarted service keeps its address and its data),
``<service>.pid``, ``<service>.log``, the data dirs ``kafka/data`` and ``redis``,
and ``env`` (the same ``export KAFKA_BOOTSTRAP=...`` / ``export REDIS_URL=...``
lines that ``env`` prints). ``up`` prints the export lines of the services it
was asked for on stdout (progress goes to stderr), so a shell can do
``eval "$(python3 scripts/services.py up)"``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import json
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

REPO_ROOT: Final = Path(__file__).resolve().parent.parent

KAFKA_VERSION: Final = "4.1.1"
SCALA_VERSION: Final = "2.13"
MAVEN_DEPENDENCIES: Final = (
    ("org.slf4j", "slf4j-api", "2.0.17"),
    ("org.apache.kafka", f"kafka_{SCALA_VERSION}", KAFKA_VERSION),
    ("org.apache.logging.log4j", "log4j-slf4j2-impl", "2.24.3"),
    ("org.apache.logging.log4j", "log4j-core", "2.24.3"),
)
DEPENDENCY_PLUGIN: Final = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
KAFKA_HEAP: Final = "512m"
KAFKA_READY_LINE: Final = "Kafka Server started"

SERVICES: Final = ("kafka", "redis")
STATE_MARKER: Final = ".profilestream-services"
STOP_GRACE_SECONDS: Final = 20.0
DEFAULT_START_TIMEOUT: Final = 120.0
LOOPBACK: Final = "127.0.0.1"
# Ports are drawn from below the kernel's ephemeral range so that a port we
# reuse on restart cannot have been grabbed as the source port of some client.
PORT_RANGE_LOW: Final = 20000

Ports = dict[str, dict[str, int]]


class ServiceError(Exception):
    """A failure that ends the command with a readable message and exit code 1."""


def log(message: str) -> None:
    """Print a progress message on stderr (stdout is reserved for env lines)."""
    print(f"services: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- paths


@dataclass(frozen=True)
class Layout:
    """Where the state dir keeps each file."""

    root: Path

    @property
    def ports_file(self) -> Path:
        return self.root / "ports.json"

    @property
    def env_file(self) -> Path:
        return self.root / "env"

    @property
    def marker(self) -> Path:
        return self.root / STATE_MARKER

    @property
    def lock_file(self) -> Path:
        return self.root / ".lock"

    @property
    def kafka_dir(self) -> Path:
        return self.root / "kafka"

    @property
    def kafka_data(self) -> Path:
        return self.kafka_dir / "data"

    @property
    def kafka_properties(self) -> Path:
        return self.kafka_dir / "server.properties"

    @property
    def kafka_log4j(self) -> Path:
        return self.kafka_dir / "log4j2.yaml"

    @property
    def kafka_tls(self) -> Path:
        return self.kafka_dir / "tls"

    @property
    def kafka_cluster_id(self) -> Path:
        return self.kafka_dir / "cluster.id"

    @property
    def redis_dir(self) -> Path:
        return self.root / "redis"

    def pid_file(self, service: str) -> Path:
        return self.root / f"{service}.pid"

    def log_file(self, service: str) -> Path:
        return self.root / f"{service}.log"


def state_layout() -> Layout:
    configured = os.environ.get("PROFILESTREAM_SERVICES_DIR")
    root = Path(configured) if configured else REPO_ROOT / ".services"
    return Layout(root.expanduser().resolve())


def cache_root() -> Path:
    configured = os.environ.get("PROFILESTREAM_CACHE")
    root = Path(configured) if configured else Path.home() / ".cache" / "profilestream"
    return root.expanduser().resolve()


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (released automatically on crash)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def state_lock(layout: Layout) -> Iterator[None]:
    """Create the state dir if needed and serialise commands that change it."""
    if (
        layout.root.exists()
        and not layout.marker.exists()
        and any(layout.root.iterdir())
    ):
        raise ServiceError(
            f"{layout.root} exists, is not empty and was not created by this script "
            f"(no {STATE_MARKER}); point PROFILESTREAM_SERVICES_DIR elsewhere"
        )
    layout.root.mkdir(parents=True, exist_ok=True)
    layout.marker.touch()
    with file_lock(layout.lock_file):
        yield


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def tail(path: Path, lines: int = 40, start: int = 0) -> str:
    """The last ``lines`` lines of ``path`` from byte offset ``start``."""
    try:
        with path.open("rb") as handle:
            handle.seek(start)
            data = handle.read()
    except OSError:
        return f"(no log at {path})"
    text = data.decode("utf-8", "replace").splitlines()[-lines:]
    return "\n".join(f"    {line}" for line in text) or "    (log is empty)"


# --------------------------------------------------------------------------- ports


def load_ports(layout: Layout) -> Ports:
    try:
        raw = json.loads(layout.ports_file.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ServiceError(f"cannot read {layout.ports_file}: {exc}") from exc
    ports: Ports = {}
    if isinstance(raw, dict):
        for service, entry in raw.items():
            if service in SERVICES and isinstance(entry, dict):
                ports[service] = {
                    str(k): int(v) for k, v in entry.items() if isinstance(v, int)
                }
    return ports


def save_ports(layout: Layout, ports: Ports) -> None:
    write_atomic(layout.ports_file, json.dumps(ports, indent=2, sort_keys=True) + "\n")


def port_is_free(port: int) -> bool:
    """Whether a listener could bind ``127.0.0.1:port`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def ephemeral_range_low() -> int:
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        return int(text.split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def pick_ports(count: int, taken: set[int]) -> list[int]:
    """``count`` distinct free loopback ports, preferably outside the ephemeral
    range; falls back to kernel-assigned ports."""
    rng = random.SystemRandom()
    high = max(PORT_RANGE_LOW + 1000, min(ephemeral_range_low(), 65536) - 1)
    chosen: list[int] = []
    for _ in range(1000):
        if len(chosen) == count:
            return chosen
        port = rng.randint(PORT_RANGE_LOW, high)
        if port not in taken and port not in chosen and port_is_free(port):
            chosen.append(port)
    while len(chosen) < count:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((LOOPBACK, 0))
            port = int(sock.getsockname()[1])
        if port not in taken and port not in chosen:
            chosen.append(port)
    return chosen


#: The broker's ports: plain clients, the KRaft controller, and a SASL/PLAIN
#: listener for the tests of authenticated clients.
KAFKA_PORT_KEYS: Final = ["port", "controller_port", "sasl_port", "ssl_port"]
#: Test-only SASL/PLAIN credentials of the local broker (never for production).
KAFKA_SASL_USER: Final = "profilestream"
KAFKA_SASL_PASSWORD: Final = "profilestream-test-secret"


def ensure_ports(layout: Layout, services: Sequence[str]) -> Ports:
    """Ports for ``services``: the saved ones, or new ones saved for next time."""
    ports = load_ports(layout)
    taken = {p for entry in ports.values() for p in entry.values()}
    changed = False
    for service in services:
        needed = KAFKA_PORT_KEYS if service == "kafka" else ["port"]
        have = ports.setdefault(service, {})
        # Pick only what is missing: a state dir made before a port was added
        # keeps the addresses its clients already know.
        missing = [key for key in needed if key not in have]
        if not missing:
            continue
        picked = pick_ports(len(missing), taken)
        taken.update(picked)
        have.update(zip(missing, picked, strict=True))
        changed = True
        log(f"{service}: picked port(s) {', '.join(map(str, picked))}")
    if changed:
        save_ports(layout, ports)
    return ports


def env_lines(layout: Layout, ports: Ports, services: Sequence[str]) -> list[str]:
    lines: list[str] = []
    if "kafka" in services and "kafka" in ports:
        value = f"{LOOPBACK}:{ports['kafka']['port']}"
        lines.append(f"export KAFKA_BOOTSTRAP={shlex.quote(value)}")
        if "sasl_port" in ports["kafka"]:
            value = f"{LOOPBACK}:{ports['kafka']['sasl_port']}"
            lines.append(f"export KAFKA_SASL_BOOTSTRAP={shlex.quote(value)}")
        ca = layout.kafka_tls / "ca.pem"
        if "ssl_port" in ports["kafka"] and ca.exists():
            value = f"{LOOPBACK}:{ports['kafka']['ssl_port']}"
            lines.append(f"export KAFKA_SSL_BOOTSTRAP={shlex.quote(value)}")
            lines.append(f"export KAFKA_SSL_CAFILE={shlex.quote(str(ca))}")
    if "redis" in services and "redis" in ports:
        value = f"redis://{LOOPBACK}:{ports['redis']['port']}/0"
        lines.append(f"export REDIS_URL={shlex.quote(value)}")
    return lines


def write_env_file(layout: Layout, ports: Ports) -> None:
    lines = env_lines(layout, ports, SERVICES)
    write_atomic(layout.env_file, "".join(f"{line}\n" for line in lines))


# --------------------------------------------------------------------------- processes


def process_alive(pid: int) -> bool:
    """True for a live (non-zombie) process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        if Path("/proc/self/stat").exists():
            return False  # /proc works, so the process is gone
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    # The state follows the parenthesised command name, which may contain spaces.
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X")


def process_matches(pid: int, service: str, layout: Layout, ports: Ports) -> bool:
    """Guard against a recycled pid: is ``pid`` really our service?"""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc: trust the pid file
    cmdline = raw.replace(b"\0", b" ").decode("utf-8", "replace")
    if service == "kafka":
        return "kafka.Kafka" in cmdline and str(layout.kafka_properties) in cmdline
    port = ports.get("redis", {}).get("port")
    # redis-server rewrites its title to "redis-server 127.0.0.1:<port>".
    return "redis-server" in cmdline and (port is None or f":{port}" in cmdline)


def running_pid(layout: Layout, service: str, ports: Ports) -> int | None:
    try:
        pid = int(layout.pid_file(service).read_text().strip())
    except (OSError, ValueError):
        return None
    if process_alive(pid) and process_matches(pid, service, layout, ports):
        return pid
    return None


def wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not process_alive(pid):
            return True
        time.sleep(0.1)
    return not process_alive(pid)


def signal_process(pid: int, sig: signal.Signals, group: bool) -> None:
    """Signal ``pid`` (and its process group if it leads one and ``group``)."""
    with contextlib.suppress(ProcessLookupError):
        if group and os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def terminate(pid: int, grace: float) -> str:
    signal_process(pid, signal.SIGTERM, group=False)
    if wait_gone(pid, grace):
        return "stopped"
    signal_process(pid, signal.SIGKILL, group=True)
    if not wait_gone(pid, 10.0):
        raise ServiceError(f"pid {pid} survived SIGKILL")
    return f"killed (no exit {grace:.0f} s after SIGTERM)"


def spawn(argv: Sequence[str], log_path: Path, cwd: Path) -> tuple[int, int]:
    """Start ``argv`` detached in its own session, appending output to
    ``log_path``. Returns (pid, offset of this run's output in the log)."""
    with log_path.open("ab") as log_handle:
        log_handle.write(
            f"\n===== services.py: starting at {time.strftime('%Y-%m-%d %H:%M:%S')}: "
            f"{shlex.join(argv)}\n".encode()
        )
        log_handle.flush()
        offset = log_handle.tell()
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log_handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    return proc.pid, offset


def tcp_connects(port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout):
            return True
    except OSError:
        return False


def redis_ping(port: int, timeout: float = 1.0) -> bool:
    """Send a raw RESP ``PING``; True when the answer is ``+PONG``."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = sock.recv(256)
                if not chunk:
                    break
                reply += chunk
    except OSError:
        return False
    return reply.startswith(b"+PONG")


def log_contains(path: Path, start: int, needle: str) -> bool:
    try:
        with path.open("rb") as handle:
            handle.seek(start)
            return needle.encode() in handle.read()
    except OSError:
        return False


def is_ready(layout: Layout, service: str, ports: Ports, log_start: int = 0) -> bool:
    port = ports[service]["port"]
    if service == "redis":
        return redis_ping(port)
    if log_start >= 0 and not log_contains(
        layout.log_file("kafka"), log_start, KAFKA_READY_LINE
    ):
        return False
    return tcp_connects(port)


def wait_ready(
    layout: Layout,
    service: str,
    ports: Ports,
    pid: int,
    log_start: int,
    timeout: float,
) -> float:
    """Block until ``service`` answers; on failure stop it and raise."""
    started = time.monotonic()
    deadline = started + timeout
    log_path = layout.log_file(service)
    while True:
        if is_ready(layout, service, ports, log_start):
            return time.monotonic() - started
        if not process_alive(pid):
            layout.pid_file(service).unlink(missing_ok=True)
            raise ServiceError(
                f"{service} exited during startup; last lines of {log_path}:\n"
                + tail(log_path, start=log_start)
            )
        if time.monotonic() > deadline:
            terminate(pid, 5.0)
            layout.pid_file(service).unlink(missing_ok=True)
            what = (
                f"the '{KAFKA_READY_LINE}' log line and a TCP connect"
                if service == "kafka"
                else "a PONG reply to PING"
            )
            raise ServiceError(
                f"{service} not ready after {timeout:.0f} s (waited for {what} on "
                f"{LOOPBACK}:{ports[service]['port']}); stopped it. Last lines of "
                f"{log_path}:\n" + tail(log_path, start=log_start)
            )
        time.sleep(0.2)


def require_free(service: str, ports: Ports, layout: Layout) -> None:
    busy = [p for p in ports[service].values() if not port_is_free(p)]
    if busy:
        raise ServiceError(
            f"{service}: port(s) {', '.join(map(str, busy))} saved in "
            f"{layout.ports_file} are in use by another process; stop it, or run "
            "'services.py wipe' to start over with new ports"
        )


# --------------------------------------------------------------------------- kafka


def find_java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise ServiceError(
            "java not found; Kafka needs a JDK 17+ "
            "(apt-get install -y openjdk-17-jdk-headless)"
        )
    return java


def maven_pom() -> str:
    deps = "\n".join(
        "    <dependency>\n"
        f"      <groupId>{group}</groupId>\n"
        f"      <artifactId>{artifact}</artifactId>\n"
        f"      <version>{version}</version>\n"
        "    </dependency>"
        for group, artifact, version in MAVEN_DEPENDENCIES
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0"
         xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
         xsi:schemaLocation="http://maven.apache.org/POM/4.0.0
                             http://maven.apache.org/xsd/maven-4.0.0.xsd">
  <modelVersion>4.0.0</modelVersion>
  <groupId>profilestream.local</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>{KAFKA_VERSION}</version>
  <packaging>pom</packaging>
  <dependencies>
{deps}
  </dependencies>
</project>
"""


def kafka_libs() -> Path:
    """The cached Kafka runtime classpath dir, fetched with Maven if incomplete."""
    cache = cache_root() / f"kafka-{KAFKA_VERSION}"
    libs = cache / "libs"
    marker = cache / "libs.complete"
    with file_lock(cache / ".lock"):
        if marker.is_file():
            names = marker.read_text().split()
            if names and all((libs / name).is_file() for name in names):
                return libs
            log(f"kafka: cached jars in {libs} are incomplete; fetching again")
        mvn = shutil.which("mvn")
        if mvn is None:
            raise ServiceError(
                f"Kafka {KAFKA_VERSION} is not cached in {libs} and mvn is not "
                "installed to fetch it (apt-get install -y maven)"
            )
        find_java()
        pom = cache / "pom.xml"
        pom.write_text(maven_pom())
        staging = cache / "libs.partial"
        shutil.rmtree(staging, ignore_errors=True)
        maven_log = cache / "maven.log"
        log(f"kafka: fetching Kafka {KAFKA_VERSION} jars from Maven Central")
        started = time.monotonic()
        with maven_log.open("wb") as out:
            result = subprocess.run(
                [
                    mvn,
                    "-q",
                    "-B",
                    "-f",
                    str(pom),
                    f"{DEPENDENCY_PLUGIN}:copy-dependencies",
                    f"-DoutputDirectory={staging}",
                    "-DincludeScope=runtime",
                ],
                cwd=cache,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                check=False,
            )
        jars = sorted(p.name for p in staging.glob("*.jar"))
        main_jar = f"kafka_{SCALA_VERSION}-{KAFKA_VERSION}.jar"
        if result.returncode != 0 or main_jar not in jars:
            raise ServiceError(
                f"Maven could not fetch Kafka (exit {result.returncode}); "
                f"last lines of {maven_log}:\n" + tail(maven_log)
            )
        shutil.rmtree(libs, ignore_errors=True)
        staging.rename(libs)
        write_atomic(marker, "\n".join(jars) + "\n")
        log(
            f"kafka: cached {len(jars)} jars in {libs} "
            f"({time.monotonic() - started:.1f} s)"
        )
        return libs


def kafka_properties(layout: Layout, ports: Ports) -> str:
    port = ports["kafka"]["port"]
    cport = ports["kafka"]["controller_port"]
    sport = ports["kafka"]["sasl_port"]
    keystore = layout.kafka_tls / "keystore.pem"
    ssl: dict[str, str] = {}
    ssl_listener = ssl_advertised = ssl_map = ""
    if keystore.exists():
        tport = ports["kafka"]["ssl_port"]
        ssl_listener = f",SSL://{LOOPBACK}:{tport}"
        ssl_advertised = f",SSL://{LOOPBACK}:{tport}"
        ssl_map = ",SSL:SSL"
        ssl = {
            "listener.name.ssl.ssl.keystore.type": "PEM",
            "listener.name.ssl.ssl.keystore.location": str(keystore),
            "listener.name.ssl.ssl.client.auth": "none",
        }
    jaas = (
        "org.apache.kafka.common.security.plain.PlainLoginModule required "
        f'username="{KAFKA_SASL_USER}" password="{KAFKA_SASL_PASSWORD}" '
        f'user_{KAFKA_SASL_USER}="{KAFKA_SASL_PASSWORD}";'
    )
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{LOOPBACK}:{cport}",
        "listeners": (
            f"PLAINTEXT://{LOOPBACK}:{port},CONTROLLER://{LOOPBACK}:{cport},"
            f"SASL_PLAINTEXT://{LOOPBACK}:{sport}{ssl_listener}"
        ),
        "advertised.listeners": (
            f"PLAINTEXT://{LOOPBACK}:{port},SASL_PLAINTEXT://{LOOPBACK}:{sport}"
            f"{ssl_advertised}"
        ),
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": (
            "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT"
            f"{ssl_map}"
        ),
        "sasl.enabled.mechanisms": "PLAIN",
        "listener.name.sasl_plaintext.plain.sasl.jaas.config": jaas,
        **ssl,
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(layout.kafka_data),
        "num.partitions": "4",
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "true",
        # Test-broker tweaks beyond the stock recipe: small internal topics make
        # the first consumer group / transaction quick, and a short broker
        # session lets a SIGKILLed broker re-register within seconds instead of
        # being refused (DUPLICATE_BROKER_REGISTRATION) for the default 9 s.
        "offsets.topic.num.partitions": "4",
        "transaction.state.log.num.partitions": "4",
        "share.coordinator.state.topic.num.partitions": "4",
        "broker.heartbeat.interval.ms": "1000",
        "broker.session.timeout.ms": "5000",
    }
    body = "".join(f"{key}={value}\n" for key, value in settings.items())
    return "# Written by scripts/services.py; regenerated on every start.\n" + body


KAFKA_LOG4J2: Final = """\
Configuration:
  name: profilestream-kafka
  Appenders:
    Console:
      name: STDOUT
      target: SYSTEM_OUT
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: INFO
      AppenderRef:
        - ref: STDOUT
"""


def new_cluster_id() -> str:
    """A Kafka ``Uuid`` string (base64url of 16 random bytes, as ``StorageTool
    random-uuid`` prints) that does not start with '-'."""
    while True:
        value = base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode()
        if not value.startswith("-"):
            return value


def ensure_kafka_tls(layout: Layout) -> bool:
    """A throwaway CA and a PEM keystore for the broker's SSL listener.

    Test-only material, made once per state dir with openssl; without
    openssl the broker simply has no SSL listener.
    """
    tls = layout.kafka_tls
    keystore, ca = tls / "keystore.pem", tls / "ca.pem"
    if keystore.exists() and ca.exists():
        return True
    if shutil.which("openssl") is None:
        return False
    tls.mkdir(parents=True, exist_ok=True)
    (tls / "ext.cnf").write_text(f"subjectAltName=IP:{LOOPBACK},DNS:localhost\n")
    steps = [
        [
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "3650",
            "-subj",
            "/CN=profilestream-test-ca",
        ],
        [
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "broker.key",
            "-out",
            "broker.csr",
            "-subj",
            f"/CN={LOOPBACK}",
        ],
        [
            "x509",
            "-req",
            "-in",
            "broker.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "broker.pem",
            "-days",
            "3650",
            "-extfile",
            "ext.cnf",
        ],
    ]
    for step in steps:
        subprocess.run(["openssl", *step], cwd=tls, check=True, capture_output=True)
    write_atomic(
        keystore, (tls / "broker.key").read_text() + (tls / "broker.pem").read_text()
    )
    return True


def start_kafka(layout: Layout, ports: Ports, timeout: float) -> None:
    java = find_java()
    libs = kafka_libs()
    classpath = f"{libs}/*"
    layout.kafka_data.mkdir(parents=True, exist_ok=True)
    ensure_kafka_tls(layout)
    layout.kafka_properties.write_text(kafka_properties(layout, ports))
    layout.kafka_log4j.write_text(KAFKA_LOG4J2)
    if not (layout.kafka_data / "meta.properties").exists():
        if not layout.kafka_cluster_id.exists():
            layout.kafka_cluster_id.write_text(new_cluster_id() + "\n")
        cluster_id = layout.kafka_cluster_id.read_text().strip()
        log(f"kafka: formatting {layout.kafka_data} (cluster id {cluster_id})")
        result = subprocess.run(
            [
                java,
                f"-Dlog4j2.configurationFile={layout.kafka_log4j}",
                "-cp",
                classpath,
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cluster_id,
                "-c",
                str(layout.kafka_properties),
            ],
            cwd=layout.kafka_dir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise ServiceError(
                f"kafka storage format failed (exit {result.returncode}):\n"
                + result.stdout
                + result.stderr
            )
    require_free("kafka", ports, layout)
    argv = [
        java,
        f"-Xmx{KAFKA_HEAP}",
        "-XX:+ExitOnOutOfMemoryError",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={layout.kafka_log4j}",
        "-cp",
        classpath,
        "kafka.Kafka",
        str(layout.kafka_properties),
    ]
    pid, offset = spawn(argv, layout.log_file("kafka"), layout.kafka_dir)
    layout.pid_file("kafka").write_text(f"{pid}\n")
    log(f"kafka: started pid {pid}, waiting for {LOOPBACK}:{ports['kafka']['port']}")
    took = wait_ready(layout, "kafka", ports, pid, offset, timeout)
    log(f"kafka: ready on {LOOPBACK}:{ports['kafka']['port']} after {took:.1f} s")


# --------------------------------------------------------------------------- redis


def redis_server() -> str:
    found = shutil.which("redis-server")
    if found is not None:
        return found
    apt_get = shutil.which("apt-get")
    if apt_get is None:
        raise ServiceError("redis-server not found and apt-get unavailable")
    prefix: list[str] = []
    if os.geteuid() != 0:
        sudo = shutil.which("sudo")
        if sudo is None:
            raise ServiceError(
                "redis-server not found; install it: apt-get install -y redis-server"
            )
        prefix = [sudo, "-n"]
    log("redis: redis-server missing, installing it with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (
        [*prefix, apt_get, "update"],
        [*prefix, apt_get, "install", "-y", "redis-server"],
    ):
        result = subprocess.run(
            argv, env=env, stdin=subprocess.DEVNULL, check=False, stdout=sys.stderr
        )
        if result.returncode != 0:
            raise ServiceError(f"{shlex.join(argv)} failed (exit {result.returncode})")
    found = shutil.which("redis-server")
    if found is None:
        raise ServiceError("apt-get installed redis-server but it is not on PATH")
    return found


def start_redis(layout: Layout, ports: Ports, timeout: float) -> None:
    binary = redis_server()
    layout.redis_dir.mkdir(parents=True, exist_ok=True)
    require_free("redis", ports, layout)
    port = ports["redis"]["port"]
    argv = [
        binary,
        "--port",
        str(port),
        "--bind",
        LOOPBACK,
        "--save",
        "",
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--dir",
        str(layout.redis_dir),
        "--daemonize",
        "no",
    ]
    pid, offset = spawn(argv, layout.log_file("redis"), layout.redis_dir)
    layout.pid_file("redis").write_text(f"{pid}\n")
    took = wait_ready(layout, "redis", ports, pid, offset, timeout)
    log(f"redis: ready on {LOOPBACK}:{port} (pid {pid}) after {took:.1f} s")


# --------------------------------------------------------------------------- commands


def selected(choice: str) -> list[str]:
    return list(SERVICES) if choice == "all" else [choice]


def up(layout: Layout, services: Sequence[str], timeout: float) -> Ports:
    ports = ensure_ports(layout, services)
    for service in services:
        pid = running_pid(layout, service, ports)
        if pid is not None:
            if is_ready(layout, service, ports, log_start=-1):
                log(f"{service}: already running (pid {pid})")
                continue
            log(f"{service}: pid {pid} is running but not answering yet; waiting")
            wait_ready(layout, service, ports, pid, -1, timeout)
            continue
        layout.pid_file(service).unlink(missing_ok=True)
        if service == "kafka":
            start_kafka(layout, ports, timeout)
        else:
            start_redis(layout, ports, timeout)
    write_env_file(layout, ports)
    return ports


def stop(layout: Layout, services: Sequence[str], hard: bool) -> None:
    ports = load_ports(layout)
    for service in services:
        pid = running_pid(layout, service, ports)
        if pid is None:
            log(f"{service}: not running")
        elif hard:
            signal_process(pid, signal.SIGKILL, group=True)
            if not wait_gone(pid, 10.0):
                raise ServiceError(f"{service}: pid {pid} survived SIGKILL")
            log(f"{service}: killed pid {pid} with SIGKILL")
        else:
            log(f"{service}: stopping pid {pid}")
            outcome = terminate(pid, STOP_GRACE_SECONDS)
            log(f"{service}: {outcome}")
        layout.pid_file(service).unlink(missing_ok=True)


def cmd_up(args: argparse.Namespace) -> int:
    layout = state_layout()
    services = selected(args.service)
    with state_lock(layout):
        ports = up(layout, services, args.timeout)
    for line in env_lines(layout, ports, services):
        print(line)
    return 0


def cmd_down(args: argparse.Namespace, hard: bool = False) -> int:
    layout = state_layout()
    if not layout.root.exists():
        log(f"nothing to stop ({layout.root} does not exist)")
        return 0
    with state_lock(layout):
        stop(layout, selected(args.service), hard)
    return 0


def cmd_crash(args: argparse.Namespace) -> int:
    return cmd_down(args, hard=True)


def cmd_restart(args: argparse.Namespace) -> int:
    layout = state_layout()
    services = selected(args.service)
    with state_lock(layout):
        stop(layout, services, hard=False)
        ports = up(layout, services, args.timeout)
    for line in env_lines(layout, ports, services):
        print(line)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    layout = state_layout()
    ports = load_ports(layout)
    print(f"state dir: {layout.root}")
    all_running = True
    for service in selected(args.service):
        if service not in ports:
            print(f"{service:6} not configured (run: services.py up {service})")
            all_running = False
            continue
        address = f"{LOOPBACK}:{ports[service]['port']}"
        pid = running_pid(layout, service, ports)
        if pid is None:
            all_running = False
            print(f"{service:6} stopped  {address}  log {layout.log_file(service)}")
            continue
        health = "ready" if is_ready(layout, service, ports, -1) else "NOT ANSWERING"
        print(
            f"{service:6} running  {address}  pid {pid}  {health}  "
            f"log {layout.log_file(service)}"
        )
    return 0 if all_running else 3


def cmd_env(args: argparse.Namespace) -> int:
    layout = state_layout()
    lines = env_lines(layout, load_ports(layout), selected(args.service))
    if not lines:
        log(f"no services configured in {layout.root}; run 'services.py up' first")
        return 1
    for line in lines:
        print(line)
    return 0


def cmd_wipe(args: argparse.Namespace) -> int:
    layout = state_layout()
    if not layout.root.exists():
        log(f"nothing to wipe ({layout.root} does not exist)")
        return 0
    with state_lock(layout):
        stop(layout, SERVICES, hard=False)
        shutil.rmtree(layout.root)
    log(f"deleted {layout.root}")
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="services.py",
        description="Local Kafka and Redis for profilestream tests.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    handlers = {
        "up": (cmd_up, "start services (default all)"),
        "down": (cmd_down, "stop services: SIGTERM, then SIGKILL after 20 s"),
        "restart": (cmd_restart, "stop then start, same ports and data"),
        "crash": (cmd_crash, "SIGKILL services, for fault tests"),
        "status": (cmd_status, "show state; exit 0 only if all are running"),
        "env": (cmd_env, "print export lines for KAFKA_BOOTSTRAP / REDIS_URL"),
        "wipe": (cmd_wipe, "stop everything and delete the state dir"),
    }
    for name, (handler, help_text) in handlers.items():
        sub = commands.add_parser(name, help=help_text)
        sub.set_defaults(handler=handler)
        if name == "wipe":
            continue
        sub.add_argument(
            "service", nargs="?", default="all", choices=[*SERVICES, "all"]
        )
        if name in ("up", "restart"):
            sub.add_argument(
                "--timeout",
                type=float,
                default=DEFAULT_START_TIMEOUT,
                help="seconds to wait for each service to become ready",
            )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    handler = args.handler
    try:
        result: int = handler(args)
    except (ServiceError, OSError) as exc:
        print(f"services: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
