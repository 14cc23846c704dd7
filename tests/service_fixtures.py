"""Pytest plugin: session-scoped Kafka and Redis endpoints for integration tests.

Load it with ``pytest_plugins = ["tests.service_fixtures"]`` in a conftest (or
``-p tests.service_fixtures`` on the command line). It provides

* ``kafka_bootstrap`` -> ``"host:port"`` of a Kafka broker, and
* ``redis_url`` -> ``"redis://host:port/0"``.

Each is resolved on first use, in this order:

1. the ``KAFKA_BOOTSTRAP`` / ``REDIS_URL`` environment variable, used as is;
2. if a Docker engine answers ``docker info``: a testcontainers container
   (``apache/kafka:4.1.1`` in KRaft mode, ``redis:7``), removed at session end;
3. otherwise the local processes of ``scripts/services.py`` (Kafka from Maven
   Central, apt's redis-server). ``up`` is run for the one service needed; if
   this fixture was the one that started it, ``down`` runs at session end.

testcontainers is imported only in the Docker branch.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVICES_SCRIPT = REPO_ROOT / "scripts" / "services.py"

KAFKA_IMAGE = "apache/kafka:4.1.1"
REDIS_IMAGE = "redis:7"
KAFKA_CONTAINER_PORT = 9092
KAFKA_START_SCRIPT = "/tmp/profilestream-kafka-start.sh"
KAFKA_READY_LINE = b"Kafka Server started"
CONTAINER_START_TIMEOUT = 180.0
SERVICES_UP_TIMEOUT = 600.0
SERVICE_STATUS_RUNNING = 0


# --------------------------------------------------------------------------- docker


@pytest.fixture(scope="session")
def _profilestream_docker_available() -> bool:
    """Whether a Docker engine answers (``docker info`` exits 0)."""
    docker = shutil.which("docker")
    if docker is None:
        return False
    try:
        result = subprocess.run(
            [docker, "info"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


@contextlib.contextmanager
def _third_party_warnings_ignored() -> Iterator[None]:
    """testcontainers and the docker SDK may emit deprecation warnings that the
    suite's ``filterwarnings = error`` would turn into setup errors."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        warnings.simplefilter("ignore", ResourceWarning)
        yield


def _kafka_container_start_script(host: str, port: int) -> bytes:
    # The same trick as testcontainers-java's apache/kafka support: the mapped
    # host port is only known once the container exists, so the container waits
    # for this script, which sets the advertised listeners and runs the image's
    # normal entrypoint (/etc/kafka/docker/run).
    return (
        "#!/bin/bash\n"
        f"export KAFKA_ADVERTISED_LISTENERS=PLAINTEXT://{host}:{port},"
        "BROKER://$(hostname):9093\n"
        "exec /etc/kafka/docker/run\n"
    ).encode()


def _copy_into_container(container: Any, path: str, content: bytes) -> None:
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(name=path.lstrip("/"))
        info.size = len(content)
        info.mode = 0o755
        info.mtime = int(time.time())
        tar.addfile(info, io.BytesIO(content))
    container.get_wrapped_container().put_archive("/", buffer.getvalue())


def _start_kafka_container(stack: contextlib.ExitStack) -> str:
    """Start ``apache/kafka`` in KRaft mode and return its bootstrap address.

    testcontainers' own ``KafkaContainer`` only drives Confluent images
    (its ``with_kraft()`` rejects tag 4.1.1 and its boot script targets
    ``/etc/confluent/docker``), so the official image is driven through the
    generic ``DockerContainer`` instead.
    """
    from testcontainers.core.container import DockerContainer

    container = DockerContainer(KAFKA_IMAGE)
    container.with_exposed_ports(KAFKA_CONTAINER_PORT)
    settings = {
        "CLUSTER_ID": "4L6g3nShT-eMCtK--X86sw",
        "KAFKA_NODE_ID": "1",
        "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_LISTENERS": (
            f"PLAINTEXT://0.0.0.0:{KAFKA_CONTAINER_PORT},"
            "BROKER://0.0.0.0:9093,CONTROLLER://0.0.0.0:9094"
        ),
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": (
            "PLAINTEXT:PLAINTEXT,BROKER:PLAINTEXT,CONTROLLER:PLAINTEXT"
        ),
        "KAFKA_INTER_BROKER_LISTENER_NAME": "BROKER",
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
        "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9094",
        "KAFKA_NUM_PARTITIONS": "4",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_OFFSETS_TOPIC_NUM_PARTITIONS": "4",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR": "1",
        "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
        "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "true",
    }
    for key, value in settings.items():
        container.with_env(key, value)
    container.with_command(
        [
            "sh",
            "-c",
            f"while [ ! -f {KAFKA_START_SCRIPT} ]; do sleep 0.1; done; "
            f"exec bash {KAFKA_START_SCRIPT}",
        ]
    )
    container.start()
    stack.callback(container.stop)
    host = container.get_container_host_ip()
    port = int(container.get_exposed_port(KAFKA_CONTAINER_PORT))
    _copy_into_container(
        container, KAFKA_START_SCRIPT, _kafka_container_start_script(host, port)
    )
    deadline = time.monotonic() + CONTAINER_START_TIMEOUT
    while True:
        stdout, stderr = container.get_logs()
        if KAFKA_READY_LINE in stdout or KAFKA_READY_LINE in stderr:
            return f"{host}:{port}"
        if time.monotonic() > deadline:
            log_tail = (stdout + stderr).decode("utf-8", "replace")[-4000:]
            raise RuntimeError(
                f"{KAFKA_IMAGE} not ready after {CONTAINER_START_TIMEOUT:.0f} s; "
                f"container log tail:\n{log_tail}"
            )
        time.sleep(0.5)


def _start_redis_container(stack: contextlib.ExitStack) -> str:
    try:
        from testcontainers.community.redis import RedisContainer
    except ImportError:  # testcontainers < 4.14 kept modules at the top level
        from testcontainers.redis import RedisContainer

    container = RedisContainer(REDIS_IMAGE)
    container.start()
    stack.callback(container.stop)
    host = container.get_container_host_ip()
    port = int(container.get_exposed_port(container.port))
    return f"redis://{host}:{port}/0"


# --------------------------------------------------------------------------- local


def _run_services(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SERVICES_SCRIPT), *args],
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=SERVICES_UP_TIMEOUT,
        check=False,
    )


def _parse_exports(output: str) -> dict[str, str]:
    """``{"KAFKA_BOOTSTRAP": ...}`` from ``export NAME=value`` lines."""
    exported: dict[str, str] = {}
    for line in output.splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            name, _, value = words[1].partition("=")
            exported[name] = value
    return exported


@contextlib.contextmanager
def _local_service(service: str, variable: str) -> Iterator[str]:
    """``services.py up <service>``; ``down <service>`` afterwards only if this
    call is what started it."""
    already_running = _run_services("status", service).returncode == (
        SERVICE_STATUS_RUNNING
    )
    result = _run_services("up", service)
    if result.returncode != 0:
        raise RuntimeError(
            f"'scripts/services.py up {service}' failed (exit {result.returncode}):"
            f"\n{result.stderr}{result.stdout}"
        )
    value = _parse_exports(result.stdout).get(variable)
    if not value:
        raise RuntimeError(
            f"'scripts/services.py up {service}' printed no {variable}:\n"
            f"{result.stdout}{result.stderr}"
        )
    try:
        yield value
    finally:
        if not already_running:
            stopped = _run_services("down", service)
            if stopped.returncode != 0:
                warnings.warn(
                    f"'scripts/services.py down {service}' failed:\n{stopped.stderr}",
                    RuntimeWarning,
                    stacklevel=1,
                )


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def kafka_bootstrap(_profilestream_docker_available: bool) -> Iterator[str]:
    """Bootstrap address (``host:port``) of a real Kafka broker."""
    from_env = os.environ.get("KAFKA_BOOTSTRAP")
    if from_env:
        yield from_env
        return
    if _profilestream_docker_available:
        with contextlib.ExitStack() as stack:
            with _third_party_warnings_ignored():
                address = _start_kafka_container(stack)
            yield address
            with _third_party_warnings_ignored():
                stack.close()
        return
    with _local_service("kafka", "KAFKA_BOOTSTRAP") as address:
        yield address


@pytest.fixture(scope="session")
def redis_url(_profilestream_docker_available: bool) -> Iterator[str]:
    """URL (``redis://host:port/0``) of a real Redis server."""
    from_env = os.environ.get("REDIS_URL")
    if from_env:
        yield from_env
        return
    if _profilestream_docker_available:
        with contextlib.ExitStack() as stack:
            with _third_party_warnings_ignored():
                url = _start_redis_container(stack)
            yield url
            with _third_party_warnings_ignored():
                stack.close()
        return
    with _local_service("redis", "REDIS_URL") as url:
        yield url
