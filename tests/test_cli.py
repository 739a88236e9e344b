"""The `fleetwatch` command as a user runs it: help, one-line errors, generation, the dev stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from shared.kafka_client import KafkaConnection, produce_all, producer, read_all, topic_partitions
from shared.local_infra.processes import free_port, pid_is_alive
from shared.local_infra.redis_server import RedisServer

FLEETWATCH = str(Path(sys.executable).with_name("fleetwatch"))


def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FLEETWATCH, *args], capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=cwd, timeout=300
    )


def test_help_explains_every_subcommand() -> None:
    result = run("--help")
    assert result.returncode == 0
    for command in ("dev", "generate"):
        assert command in result.stdout
    assert "FLEETWATCH_" in result.stdout
    dev_help = run("dev", "--help").stdout
    assert all(sub in dev_help for sub in ("up", "status", "down"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["generate", "--events", "-3"], "--events"),
        (["generate", "--out", "events.csv"], "unsupported file type"),
        (["generate", "--stream", "weather"], "unknown stream 'weather'; known streams: logs, metrics, transactions"),
        (["generate", "--stream", "logs", "--days", "3"], "--days applies to transactions only"),
        (["generate", "--out", "e.jsonl", "--labels", "l.csv"], "l.csv: unsupported file type '.csv'"),
        (["no-such-command"], "No such command"),
        (["trainer", "--spark-master", "local[1]"], "--spark-master needs --file"),
        (["trainer", "--labels", "events.labels.jsonl"], "--labels needs --file"),
    ],
)
def test_bad_arguments_get_one_line_and_no_traceback(args: list[str], message: str, tmp_path: Path) -> None:
    result = run(*args, cwd=tmp_path)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "env", "files", "message"),
    [
        (["models", "list"], {"FLEETWATCH_STREAMS__TRANSACTIONS__FLEET_FPR_BUDGET": "2"}, {},
         "invalid settings (FLEETWATCH_* variables, the config file or .fleetwatch/connection.env): "
         "streams.transactions.fleet_fpr_budget: Input should be less than 1"),
        (["models", "list"], {"FLEETWATCH_LOG_LEVEL": "loud"}, {}, "log_level: String should match pattern"),
        (["models", "list"], {}, {"fleetwatch.toml": "streams = [\n"}, "unreadable settings"),
        (["models", "list", "--stream", "bogus"], {}, {}, "unknown stream 'bogus'"),
        (["train", "missing.jsonl"], {}, {}, "missing.jsonl: No such file or directory"),
        (["train", "--request", "--stream", "weather"], {}, {}, "unknown stream 'weather'; known streams: logs"),
        (["report", "events.parquet"], {}, {"events.parquet": "not a table"}, "cannot read the file as a table"),
        (["generate", "--seed", "-1"], {}, {}, "--seed"),
        (["console", "verify-audit"], {"FLEETWATCH_CONSOLE__STORE_URL": "sqlite:///nowhere/c.db"}, {},
         "no console store at nowhere/c.db"),
        (["worker", "--metrics-port", "99999"], {}, {}, "--metrics-port"),
        (["worker", "--group", ""], {}, {}, "group_id: String should have at least 1 character"),
        (["models", "list"], {}, {"fleetwatch.toml": "[worker]\nbatch_sise = 10\n"},
         "worker.batch_sise: Extra inputs are not permitted"),
        (["models", "list"], {"FLEETWATCH_STREAMS__TRANSACTIONS__INPUT_TOPICS": "x"}, {},
         "streams.transactions.input_topics: Extra inputs are not permitted"),
        (["models", "list"], {"FLEETWATCH_STREAMS__TRANSACTIONS__QUANTILE": "1"}, {},
         "streams.transactions: Value error, quantile must be in (0, 1), got 1.0"),
        (["train", "e.jsonl"], {},
         {"fleetwatch.toml": '[streams.transactions]\ndetectors = [{name="a", kind="hbos"}]\n'},
         "streams.transactions.detectors: Value error, detector 'a': unknown detector kind 'hbos'"),
    ],
)  # fmt: skip
def test_bad_settings_and_unreadable_files_get_one_line_and_no_traceback(
    args: list[str], env: dict[str, str], files: dict[str, str], message: str, tmp_path: Path
) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    result = run(*args, env=env, cwd=tmp_path)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]  # a progress line may precede
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr


def test_a_variable_that_names_no_setting_is_named_in_a_warning(tmp_path: Path) -> None:
    """pydantic ignores FLEETWATCH_* variables that name no setting: a misspelt one would silently be the default."""
    env = {"FLEETWATCH_REDIS_ULR": "redis://elsewhere:6379/0", "FLEETWATCH_DEV_DIR": str(tmp_path / "dev")}
    result = run("generate", "--out", "e.jsonl", "--users", "5", "--events", "10", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (warning,) = [line for line in result.stderr.splitlines() if "unknown_environment_variables" in line]
    assert "FLEETWATCH_REDIS_ULR" in warning and "FLEETWATCH_DEV_DIR" not in warning


def test_training_without_a_reachable_redis_says_how_to_start_one(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    assert run("generate", "--out", str(events), "--users", "100", "--events", "1000", cwd=tmp_path).returncode == 0
    unused = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    result = run("train", str(events), env={"FLEETWATCH_REDIS_URL": unused}, cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "cannot reach Redis" in result.stderr and "fleetwatch dev up" in result.stderr


def test_generate_writes_events_and_separate_labels(tmp_path: Path) -> None:
    out = tmp_path / "events.parquet"
    result = run("generate", "--out", str(out), "--users", "500", "--events", "5000", "--seed", "9", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert out.exists() and (tmp_path / "events.labels.parquet").exists()
    for segment in ("loose-passive", "tight-passive", "loose-aggressive", "tight-aggressive"):
        assert segment in result.stderr
    assert "events/s" in result.stderr and "amount_spike=" in result.stderr


@pytest.mark.parametrize("stream", ["metrics", "logs"])
def test_another_streams_events_generate_and_train_with_no_configuration(
    stream: str, redis_server: RedisServer, unique_name: str, tmp_path: Path
) -> None:
    events, labels = tmp_path / f"{stream}.jsonl", tmp_path / f"{stream}.labels.jsonl"
    generated = run("generate", "--stream", stream, "--out", str(events), "--events", "3000", "--entities", "6",
                    "--anomaly-rate", "0.03", cwd=tmp_path)  # fmt: skip
    assert generated.returncode == 0, generated.stderr
    payloads = [json.loads(line) for line in events.read_text().splitlines()]
    truth = [json.loads(line) for line in labels.read_text().splitlines()]
    assert len(payloads) == 3000 and [p["event_id"] for p in payloads] == [t["event_id"] for t in truth]
    assert 0 < sum(t["is_anomaly"] for t in truth) < 3000 and "injected anomalies: " in generated.stderr
    env = {"FLEETWATCH_REDIS_URL": redis_server.url, "FLEETWATCH_REDIS_PREFIX": f"{unique_name}:"}
    trained = run("train", "--stream", stream, str(events), "--labels", str(labels), env=env, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr  # the catalog's defaults: no [streams.<name>] needed
    assert f"{stream} v1: " in trained.stderr
    refused = run("generate", "--stream", stream, "--out", str(tmp_path / "events.parquet"), cwd=tmp_path)
    assert refused.returncode == 1 and refused.stderr.strip().endswith("written as .jsonl (one payload per line)")


def test_generate_produces_to_kafka(kafka: KafkaConnection, make_topic, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    topic = make_topic("generated")
    labels = tmp_path / "labels.jsonl"
    result = run(
        "generate", "--topic", topic, "--labels", str(labels), "--users", "300", "--events", "3000",
        env={"FLEETWATCH_KAFKA_BOOTSTRAP": kafka.bootstrap}, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    records = read_all(kafka, topic)
    assert len(records) == 3000 and len(labels.read_text().splitlines()) == 3000
    assert all(record.key().startswith(b"u") for record in records)


def test_generate_produces_another_streams_events_keyed_as_it_keys_them(
    kafka: KafkaConnection, make_topic, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    topic = make_topic("pumps")
    result = run(
        "generate", "--stream", "metrics", "--topic", topic, "--entities", "5", "--events", "2000",
        "--labels", str(tmp_path / "pumps.labels.jsonl"),
        env={"FLEETWATCH_KAFKA_BOOTSTRAP": kafka.bootstrap}, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    records = read_all(kafka, topic)
    assert len(records) == 2000 and len({record.key() for record in records}) == 5
    assert all(json.loads(record.value())["asset_id"].encode() == record.key() for record in records)
    assert len((tmp_path / "pumps.labels.jsonl").read_text().splitlines()) == 2000


def test_producing_more_than_the_producers_queue_holds_waits_for_room(kafka: KafkaConnection, make_topic) -> None:  # type: ignore[no-untyped-def]
    topic = make_topic("queued")
    payloads = [b"event %d" % i for i in range(5000)]
    assert produce_all(kafka, topic, [f"k{i % 7}" for i in range(5000)], payloads, queue_limit=100) == 0
    assert sorted(record.value() for record in read_all(kafka, topic)) == sorted(payloads)


def test_dev_up_serves_an_independent_client_and_down_leaves_nothing(tmp_path: Path) -> None:
    ports = {"KAFKA_PORT": free_port(), "CONTROLLER_PORT": free_port(), "REDIS_PORT": free_port()}
    env = {f"FLEETWATCH_DEV__{name}": str(port) for name, port in ports.items()}
    env["FLEETWATCH_DEV_DIR"] = str(tmp_path / "stack")
    env["FLEETWATCH_DEV__PARTITIONS"] = "4"
    try:
        up = run("dev", "up", env=env, cwd=tmp_path)
        assert up.returncode == 0, up.stderr
        lines = dict(line.split("=", 1) for line in up.stdout.strip().splitlines())
        assert lines["FLEETWATCH_KAFKA_BOOTSTRAP"] == f"127.0.0.1:{ports['KAFKA_PORT']}"
        assert lines["FLEETWATCH_REDIS_URL"] == f"redis://127.0.0.1:{ports['REDIS_PORT']}/0"

        connection = KafkaConnection(lines["FLEETWATCH_KAFKA_BOOTSTRAP"])
        writer = producer(connection)
        writer.produce("alerts", key=b"k", value=b"hello from an independent client")
        assert writer.flush(30) == 0
        assert [r.value() for r in read_all(connection, "alerts")] == [b"hello from an independent client"]

        assert topic_partitions(connection, "events.transactions") == [0, 1, 2, 3]
        status = run("dev", "status", env=env, cwd=tmp_path)
        assert status.returncode == 0 and status.stdout == up.stdout
        state = (tmp_path / "stack" / "stack.json").read_text()
    finally:
        down = run("dev", "down", "--purge", env=env, cwd=tmp_path)
    assert down.returncode == 0
    pids = json.loads(state)
    assert not pid_is_alive(pids["kafka_pid"]) and not pid_is_alive(pids["redis_pid"])
    assert not (tmp_path / "stack").exists()
    assert run("dev", "status", env=env, cwd=tmp_path).returncode == 1


def test_dev_up_refuses_a_taken_port(tmp_path: Path, redis_server: RedisServer) -> None:
    env = {
        "FLEETWATCH_DEV_DIR": str(tmp_path / "stack"),
        "FLEETWATCH_DEV__REDIS_PORT": str(redis_server.port),
        "FLEETWATCH_DEV__KAFKA_PORT": str(free_port()),
        "FLEETWATCH_DEV__CONTROLLER_PORT": str(free_port()),
    }
    result = run("dev", "up", env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert f"port {redis_server.port}" in result.stderr and "Traceback" not in result.stderr


def test_bench_without_its_extra_says_what_to_install_in_one_line(tmp_path: Path) -> None:
    # None in sys.modules is how Python marks a module as not importable: psutil is "not installed".
    (tmp_path / "sitecustomize.py").write_text("import sys\n\nsys.modules['psutil'] = None\n")
    python_path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    result = run("bench", "--quick", env={"PYTHONPATH": python_path}, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "psutil not installed" in lines[0], result.stderr
    assert ".[bench]" in lines[0] and "bench/peers-requirements.txt" in lines[0]


def test_models_list_and_rollback_show_a_version_signed_with_a_rotated_out_key_as_refused(
    redis_server: RedisServer, unique_name: str, tmp_path: Path
) -> None:
    from shared.artifact_store import RedisArtifactStore
    from shared.registry import ModelRegistry
    from tests.small_models import train_small

    trained, client, prefix = (
        train_small(events=2_000, seed=4),
        redis.Redis.from_url(redis_server.url),
        f"{unique_name}:",
    )
    old_key, new_key = "old-key-0123456789abcdef", "new-key-0123456789abcdef"
    for key in (old_key, new_key, new_key):
        registry = ModelRegistry(client, RedisArtifactStore(client, prefix), key.encode(), prefix)
        registry.publish(trained.bundle, trained.draft, deploy=True)
    env = {"FLEETWATCH_REDIS_URL": redis_server.url, "FLEETWATCH_REDIS_PREFIX": prefix,
           "FLEETWATCH_REGISTRY_KEY": new_key}  # fmt: skip
    listed = run("models", "list", env=env, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "│ 1       │" in listed.stderr and "│ REFUSED " in listed.stderr, listed.stderr
    assert "transactions v1: the manifest's signature" in listed.stderr and "│ * │ 3 " in listed.stderr
    rolled = run("models", "rollback", env=env, cwd=tmp_path)
    assert rolled.returncode == 0 and "rolled back to v2" in rolled.stderr, rolled.stderr
    again = run("models", "rollback", env=env, cwd=tmp_path)
    assert again.returncode == 1 and "Traceback" not in again.stderr
    assert "no earlier deployed version loads; the pointer stays at v2: transactions v1: " in again.stderr
