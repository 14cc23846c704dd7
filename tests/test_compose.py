"""docker-compose.yml and the Dockerfile: valid, and shaped as the docs promise.

No Docker engine is needed. Where the ``docker compose`` plugin answers, the
file is checked by Compose itself (``config --quiet``) and the structure is
read from Compose's own normalised model (``config --format json``, variables
interpolated). Without the plugin, the YAML is parsed with PyYAML, in this
interpreter or, failing that, in a ``python3`` on PATH that has it; only when
neither exists are the structural checks skipped. The topic-creation script is
run for real by bash, against a stand-in for ``kafka-topics.sh`` that records
its arguments.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from streams.kafka import DEADLETTER_TOPIC, INPUT_TOPICS, MEMBERSHIP_TOPIC

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
KAFKA_IMAGE = "apache/kafka:4.1.1"
ALL_TOPICS = (*INPUT_TOPICS, DEADLETTER_TOPIC, MEMBERSHIP_TOPIC)
WORKERS = ("worker-1", "worker-2")
DAY_MS = 24 * 3600 * 1000

#: Variables the compose file interpolates; unset so the defaults are checked.
COMPOSE_VARIABLES = ("ADMIN_TOKEN", "API_TOKENS", "KAFKA_HOST_PORT")


def _compose_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in COMPOSE_VARIABLES}
    env.pop("COMPOSE_PROFILES", None)
    return env


def docker_compose() -> list[str] | None:
    """``[docker, "compose"]`` if the Compose plugin answers, else ``None``."""
    docker = shutil.which("docker")
    if docker is None:
        return None
    try:
        result = subprocess.run(
            [docker, "compose", "version"],
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return [docker, "compose"] if result.returncode == 0 else None


def _yaml_with_pyyaml() -> Any:
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:
        pass
    else:
        return yaml.safe_load(COMPOSE.read_text())
    # The project's virtualenv may lack PyYAML while the system Python has it.
    for name in ("python3", "python"):
        python = shutil.which(name)
        if python is None or Path(python).resolve() == Path(sys.executable).resolve():
            continue
        result = subprocess.run(
            [
                python,
                "-c",
                "import json, sys, yaml; "
                "json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)",
                str(COMPOSE),
            ],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=60,
            check=False,
        )
        if result.returncode == 0:
            return json.loads(result.stdout)
        if "No module named 'yaml'" not in result.stderr:
            raise AssertionError(
                f"{python} could not parse {COMPOSE}:\n{result.stderr}"
            )
    return None


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The compose model: Compose's normalised one, else the parsed YAML."""
    command = docker_compose()
    if command is not None:
        result = subprocess.run(
            [
                *command,
                "-f",
                str(COMPOSE),
                "--profile",
                "demo",
                "config",
                "--format",
                "json",
            ],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            env=_compose_env(),
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        model: dict[str, Any] = json.loads(result.stdout)
        return model
    parsed = _yaml_with_pyyaml()
    if parsed is None:
        pytest.skip(
            "neither the docker compose plugin nor PyYAML (in this interpreter or a "
            "python3 on PATH) is available to read docker-compose.yml"
        )
    assert isinstance(parsed, dict)
    return parsed


# ------------------------------------------------------------ reading services
# The raw YAML and Compose's normalised model spell some fields differently
# (lists or mappings, strings or numbers); these read either.


def _interpolate(value: str) -> str:
    """``${NAME:-default}`` spanning the whole value, resolved to its default
    (as Compose does with NAME unset)."""
    if value.startswith("${") and value.endswith("}") and ":-" in value:
        return value[2:-1].partition(":-")[2]
    return value


def env(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {k: "" if v is None else _interpolate(str(v)) for k, v in raw.items()}


def text(value: Any) -> str:
    if value is None:
        return ""
    return " ".join(str(v) for v in value) if isinstance(value, list) else str(value)


def depends(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("depends_on") or {}
    if isinstance(raw, list):
        return dict.fromkeys(raw, "service_started")
    return {
        name: spec.get("condition", "service_started") for name, spec in raw.items()
    }


def ports(service: dict[str, Any]) -> set[tuple[int, int]]:
    found = set()
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            found.add((int(_interpolate(str(port["published"]))), int(port["target"])))
        else:
            host, _, target = str(port).rpartition(":")
            found.add((int(_interpolate(host)), int(target)))
    return found


def volume_targets(service: dict[str, Any]) -> set[str]:
    targets = set()
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            targets.add(str(volume["target"]))
        else:
            targets.add(str(volume).split(":")[1])
    return targets


def healthcheck(service: dict[str, Any]) -> str:
    check = service.get("healthcheck") or {}
    assert not check.get("disable"), "health check disabled"
    return text(check.get("test"))


# ------------------------------------------------------------ the checks


def test_compose_config_is_valid_for_compose_itself() -> None:
    command = docker_compose()
    if command is None:
        pytest.skip("the docker compose plugin is not installed here")
    for profile in ([], ["--profile", "demo"]):
        result = subprocess.run(
            [*command, "-f", str(COMPOSE), *profile, "config", "--quiet"],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            env=_compose_env(),
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr


def test_the_stack_has_every_service(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) >= {
        "kafka",
        "redis",
        "topics",
        *WORKERS,
        "demo-publisher",
    }
    volumes = compose.get("volumes") or {}
    assert "redis-data" in volumes and "kafka-data" in volumes


def test_kafka_is_a_single_kraft_node_with_a_health_check(
    compose: dict[str, Any],
) -> None:
    kafka = compose["services"]["kafka"]
    assert kafka["image"] == KAFKA_IMAGE
    settings = env(kafka)
    assert set(settings["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "CONTROLLER" in settings["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert "PLAINTEXT://kafka:9092" in settings["KAFKA_ADVERTISED_LISTENERS"]
    assert settings["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert "/var/lib/kafka/data" in volume_targets(kafka)
    assert "kafka-broker-api-versions.sh" in healthcheck(kafka)


def test_redis_persists_and_never_evicts(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    assert str(redis["image"]).startswith("redis:7")
    command = text(redis.get("command"))
    assert "--appendonly yes" in command
    assert "--appendfsync everysec" in command
    assert "--maxmemory-policy noeviction" in command
    assert "/data" in volume_targets(redis)
    assert "redis-cli ping" in healthcheck(redis)


def test_topics_service_creates_all_eight_topics(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    topics = compose["services"]["topics"]
    assert topics["image"] == KAFKA_IMAGE
    assert depends(topics) == {"kafka": "service_healthy"}
    assert str(topics.get("restart", "no")) == "no"
    entrypoint = topics["entrypoint"]
    command = topics["command"]
    assert entrypoint[0] == "/bin/bash" and len(command) == 1
    # Run the script as the container would, with a stand-in kafka-topics.sh.
    calls = tmp_path / "calls.jsonl"
    stub = tmp_path / "kafka-topics.sh"
    stub.write_text(
        "#!/bin/bash\n"
        f"{shlex.quote(sys.executable)} -c "
        "'import json, sys; print(json.dumps(sys.argv[1:]))' \"$@\" "
        f">> {shlex.quote(str(calls))}\n"
    )
    stub.chmod(0o755)
    script = command[0].replace("$$", "$")  # Compose's escape for a literal $
    assert "/opt/kafka/bin/kafka-topics.sh" in script
    script = script.replace("/opt/kafka/bin/kafka-topics.sh", str(stub))
    result = subprocess.run(
        [*entrypoint, script],
        env={**os.environ, **env(topics)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    created: dict[str, dict[str, str]] = {}
    for line in calls.read_text().splitlines():
        args = json.loads(line)
        if "--create" not in args:
            continue
        assert "--if-not-exists" in args  # a second `up` must succeed too
        assert args[args.index("--bootstrap-server") + 1] == "kafka:9092"
        options = {
            "partitions": args[args.index("--partitions") + 1],
            "replication": args[args.index("--replication-factor") + 1],
            **dict(
                args[i + 1].split("=", 1) for i, a in enumerate(args) if a == "--config"
            ),
        }
        created[args[args.index("--topic") + 1]] = options
    assert set(created) == set(ALL_TOPICS)
    partitions = {c["partitions"] for c in created.values()}
    assert len(partitions) == 1 and int(partitions.pop()) >= 2  # one count for all
    for name in INPUT_TOPICS:
        assert int(created[name]["retention.ms"]) >= 7 * DAY_MS
    assert int(created[DEADLETTER_TOPIC]["retention.ms"]) == 14 * DAY_MS
    membership = created[MEMBERSHIP_TOPIC]
    # Folding needs every change: time retention, never compaction.
    assert membership.get("cleanup.policy", "delete") == "delete"
    assert int(membership["retention.ms"]) == 30 * DAY_MS


def test_two_workers_share_one_group_on_distinct_ports(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    groups, published = set(), set()
    for name in WORKERS:
        worker = services[name]
        settings = env(worker)
        assert settings["KAFKA_BOOTSTRAP"] == "kafka:9092"
        assert settings["REDIS_URL"].startswith("redis://redis:6379")
        assert settings["ADMIN_TOKEN"]
        tokens = json.loads(settings["API_TOKENS"])
        assert isinstance(tokens, dict) and all(
            isinstance(v, list) for v in tokens.values()
        )
        groups.add(settings["CONSUMER_GROUP"])
        port = int(settings["HTTP_PORT"])
        assert ports(worker) == {(port, port)}
        published.add(port)
        assert depends(worker) == {
            "kafka": "service_healthy",
            "topics": "service_completed_successfully",
            "redis": "service_healthy",
        }
        assert "/healthz" in healthcheck(worker)
        assert "build" in worker
    assert len(groups) == 1
    assert published == {6066, 6067}


def test_demo_publisher_is_behind_the_demo_profile(compose: dict[str, Any]) -> None:
    demo = compose["services"]["demo-publisher"]
    assert demo["profiles"] == ["demo"]
    assert env(demo)["KAFKA_BOOTSTRAP"] == "kafka:9092"
    script = text(demo.get("command"))
    assert "profilestream publish --sample" in script
    assert "profilestream generate" in script
    assert depends(demo)["topics"] == "service_completed_successfully"


def test_dockerfile_builds_a_non_root_worker_image_with_a_health_check() -> None:
    lines = _dockerfile_instructions()
    froms = [args for op, args in lines if op == "FROM"]
    assert froms and all(f.split()[0] == "python:3.11-slim" for f in froms)
    users = [args for op, args in lines if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    health = [args for op, args in lines if op == "HEALTHCHECK"]
    assert len(health) == 1 and "/healthz" in health[0]
    assert any(op == "RUN" and "pip install ." in args for op, args in lines)
    entry = json.loads(next(args for op, args in lines if op == "ENTRYPOINT"))
    cmd = json.loads(next(args for op, args in lines if op == "CMD"))
    assert entry + cmd == ["profilestream", "worker"]
    # Every package pyproject installs is copied into the build stage.
    copied = {args.split()[0] for op, args in lines if op == "COPY"}
    pyproject = (ROOT / "pyproject.toml").read_text()
    include = re.search(r"include = \[([^\]]*)\]", pyproject)
    assert include is not None
    packages = {p.strip().strip('"').rstrip("*") for p in include.group(1).split(",")}
    assert packages <= copied


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(instruction, arguments) with continuation lines joined, comments dropped."""
    joined: list[str] = []
    current = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        joined.append(current + stripped)
        current = ""
    out = []
    for instruction in joined:
        op, _, args = instruction.partition(" ")
        out.append((op.upper(), args.strip()))
    return out
