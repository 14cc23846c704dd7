"""Authenticated connections: Kafka SASL/PLAIN, a Redis ACL user, Redis TLS.

The local broker of ``scripts/services.py`` has a SASL_PLAINTEXT listener with
test-only credentials (exported as ``KAFKA_SASL_BOOTSTRAP``); where the
services come from elsewhere and have no such listener, the Kafka half is
skipped with that reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from redis.asyncio import Redis

from tests.events import Events
from tests.harness import WorkerProcess, free_port, unique

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from services import KAFKA_SASL_PASSWORD, KAFKA_SASL_USER


async def assert_a_click_is_applied(worker: WorkerProcess) -> None:
    """One event in through Kafka, its signal out through the API."""
    tenant = unique("tn")
    now = await worker.now()
    await worker.publish([Events(tenant).click("c1", now - timedelta(minutes=1))])
    await worker.settle()
    signals = (await worker.contact(tenant, "c1"))["signals"]
    assert signals["links_clicked_7d"] == 1


@pytest.fixture
async def acl_user(redis_url: str) -> AsyncIterator[tuple[str, str]]:
    name, password = unique("ps-user-"), uuid.uuid4().hex
    admin = Redis.from_url(redis_url)
    await admin.execute_command(
        "ACL", "SETUSER", name, "on", f">{password}", "~*", "&*", "+@all"
    )
    try:
        yield name, password
    finally:
        await admin.execute_command("ACL", "DELUSER", name)
        await admin.aclose()


async def test_a_worker_with_sasl_and_a_redis_acl_user(
    kafka_bootstrap: str, redis_url: str, acl_user: tuple[str, str]
) -> None:
    sasl_bootstrap = os.environ.get("KAFKA_SASL_BOOTSTRAP")
    if not sasl_bootstrap:
        pytest.skip("no SASL listener: KAFKA_SASL_BOOTSTRAP is not set")
    user, password = acl_user
    host = redis_url.split("://", 1)[1]
    worker = WorkerProcess(
        kafka_bootstrap,
        redis_url,
        extra_env={
            "KAFKA_BOOTSTRAP": sasl_bootstrap,
            "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "KAFKA_SASL_MECHANISM": "PLAIN",
            "KAFKA_SASL_USERNAME": KAFKA_SASL_USER,
            "KAFKA_SASL_PASSWORD": KAFKA_SASL_PASSWORD,
            "REDIS_URL": f"redis://{user}:{password}@{host}",
        },
    )
    await worker.start()
    try:
        await assert_a_click_is_applied(worker)
        clients = await worker.redis.execute_command("CLIENT", "LIST")
        assert f"user={user}".encode() in clients
    finally:
        await worker.stop()
    log = worker.log_path.read_text()
    assert password not in log
    assert KAFKA_SASL_PASSWORD not in log


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[str]:
    """A TLS-only redis-server with a throwaway CA; its rediss:// URL."""
    if shutil.which("openssl") is None or shutil.which("redis-server") is None:
        pytest.skip("openssl or redis-server is not installed")
    ca_key, ca, key, csr, cert = (
        tmp_path / n for n in ("ca.key", "ca.pem", "s.key", "s.csr", "s.pem")
    )
    ext = tmp_path / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for command in (
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(ca_key),
            "-out",
            str(ca),
            "-days",
            "1",
            "-subj",
            "/CN=test-ca",
        ],
        [
            "openssl",
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(csr),
            "-subj",
            "/CN=127.0.0.1",
        ],
        [
            "openssl",
            "x509",
            "-req",
            "-in",
            str(csr),
            "-CA",
            str(ca),
            "-CAkey",
            str(ca_key),
            "-CAcreateserial",
            "-out",
            str(cert),
            "-days",
            "1",
            "-extfile",
            str(ext),
        ],
    ):
        subprocess.run(command, check=True, capture_output=True)
    port = free_port()
    server = subprocess.Popen(
        [
            "redis-server",
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--tls-cert-file",
            str(cert),
            "--tls-key-file",
            str(key),
            "--tls-ca-cert-file",
            str(ca),
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--bind",
            "127.0.0.1",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}"
        deadline = time.monotonic() + 10
        while True:
            try:
                if redis.Redis.from_url(url).ping():
                    break
            except redis.RedisError:
                if server.poll() is not None:
                    pytest.skip("this redis-server was built without TLS")
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield url
    finally:
        server.terminate()
        server.wait(10)


async def test_a_worker_over_redis_tls(kafka_bootstrap: str, tls_redis: str) -> None:
    worker = WorkerProcess(kafka_bootstrap, tls_redis)
    await worker.start()
    try:
        await assert_a_click_is_applied(worker)
    finally:
        await worker.stop()


async def test_a_worker_over_kafka_ssl(kafka_bootstrap: str, redis_url: str) -> None:
    ssl_bootstrap = os.environ.get("KAFKA_SSL_BOOTSTRAP")
    cafile = os.environ.get("KAFKA_SSL_CAFILE")
    if not ssl_bootstrap or not cafile:
        pytest.skip("no SSL listener: KAFKA_SSL_BOOTSTRAP is not set")
    worker = WorkerProcess(
        kafka_bootstrap,
        redis_url,
        extra_env={
            "KAFKA_BOOTSTRAP": ssl_bootstrap,
            "KAFKA_SECURITY_PROTOCOL": "SSL",
            "KAFKA_SSL_CAFILE": cafile,
        },
    )
    await worker.start()
    try:
        await assert_a_click_is_applied(worker)
    finally:
        await worker.stop()
