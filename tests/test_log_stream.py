"""The log-line stream: templates learned once and only matched, sessions and how they close, and lines
through a real trainer and real workers (Kafka and Redis), including a worker killed mid-session."""

from __future__ import annotations

import json
import pickle
import re
import signal
import subprocess
import threading
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from shared.config import StreamSettings, topic_environment
from shared.kafka_client import KafkaConnection
from shared.model_version import DeployedVersion
from shared.output_records import decode_output
from shared.scoring import score_batch
from shared.streams.logs.contract import LogLine
from shared.streams.logs.host_windows import RING_LINES
from shared.streams.logs.sessions import COUNT_FEATURES, FEATURE_NAMES, HostWindows, SessionRule
from shared.streams.logs.stream import LOGS, LogStream
from shared.streams.logs.synthetic import payloads
from shared.streams.logs.templates import UNSEEN, TemplateVocabulary
from shared.training import TrainingData, train_round
from tests.fleet import (
    FLEETWATCH,
    QUICK_FAILOVER,
    Fleet,
    event_ids,
    metric_total,
    open_fleet,
    produce_paced,
    wait_until,
)
from tests.online_batches import online

T0 = datetime(2026, 10, 1, tzinfo=UTC).timestamp()
LOG_SETTINGS = StreamSettings().completed(LOGS)


def line(message: str, second: float, host: str = "dn-1", session_id: str | None = None) -> LogLine:
    return LogLine(
        event_id=f"e{second}-{message[:8]}",
        source_host=host,
        timestamp=datetime.fromtimestamp(T0 + second, tz=UTC),
        message=message,
        session_id=session_id,
    )


def feature(raw: np.ndarray, name: str) -> list[float]:
    return raw[:, FEATURE_NAMES.index(name)].tolist()


HISTORY = [f"open file {i} for job {i % 3}" for i in range(30)] + [f"close file {i}" for i in range(30)]


def test_serving_only_matches_and_a_line_no_template_knows_is_unseen_and_rarest() -> None:
    vocabulary = TemplateVocabulary.mine(HISTORY)
    before = list(vocabulary.templates)
    assert vocabulary.match(["open file 99 for job 7", "kernel panic at 0xdeadbeef"]).tolist()[1] == UNSEEN
    assert vocabulary.templates == before, "matching must not add or change templates"
    stream = LogStream(SessionRule(pattern=None), vocabulary)
    columns = stream.columns([line("open file 1 for job 1", 0), line("kernel panic", 1)])
    raw, _ = stream.advance(stream.empty_states(), columns)
    assert feature(raw, "line_unseen") == [0.0, 1.0]
    rarity = feature(raw, "line_rarity")
    assert rarity[1] > rarity[0] and feature(raw, "session_unseen") == [0.0, 1.0]


def test_a_session_closes_on_idle_timeout_on_its_length_cap_and_on_an_end_template() -> None:
    vocabulary = TemplateVocabulary.mine(HISTORY)
    rule = SessionRule(pattern=None, idle_timeout_s=60, max_lines=3, end_templates=("close file <NUM>",))
    stream = LogStream(rule, vocabulary)
    events = [
        line("open file 1 for job 1", 0, session_id="a"),
        line("open file 2 for job 1", 10, session_id="a"),
        line("open file 3 for job 1", 500, session_id="a"),  # idle for 490 s: a new session
        line("open file 4 for job 1", 510, session_id="a"),
        line("open file 5 for job 1", 520, session_id="a"),
        line("open file 6 for job 1", 530, session_id="a"),  # the cap of 3 lines: a new session
        line("close file 6", 540, session_id="a"),  # closes it
        line("open file 7 for job 1", 550, session_id="a"),
    ]
    raw, after = stream.advance(stream.empty_states(), stream.columns(events))
    assert feature(raw, "session_lines") == [1, 2, 1, 2, 3, 1, 2, 1]
    assert after.records["lines"].tolist() == [1] and after.records["open"].tolist() == [1]


def end_of(session_id: str, second: float) -> LogLine:
    return LogLine(
        event_id=f"end-{session_id}-{second}", source_host="dn-1", session_id=session_id, ends_session=True,
        timestamp=datetime.fromtimestamp(T0 + second, tz=UTC),
    )  # fmt: skip


def test_an_end_of_session_record_scores_the_complete_session_counts_nothing_and_closes_it() -> None:
    stream = LogStream(SessionRule(pattern=None), TemplateVocabulary.mine(HISTORY))
    events = [
        line("open file 1 for job 1", 0, session_id="a"),
        line("close file 1", 1, session_id="a"),
        end_of("a", 2),
        line("open file 2 for job 1", 3, session_id="a"),  # opens a new session
    ]
    raw, after = stream.advance(stream.empty_states(), stream.columns(events))
    assert feature(raw, "session_closed") == [0, 0, 1, 0]
    assert feature(raw, "session_lines") == [1, 2, 2, 1]
    counts = raw[:, [FEATURE_NAMES.index(name) for name in COUNT_FEATURES]]
    np.testing.assert_array_equal(counts[2], counts[1])
    end_key = len(stream.vocabulary.templates) + 2
    assert feature(raw, "key")[2] == end_key and feature(raw, "key_lag_01")[2] == feature(raw, "key")[1]
    assert feature(raw, "line_rarity")[2] == 0 and feature(raw, "session_unseen")[2] == 0
    assert after.records["lines"].tolist() == [1] and after.records["open"].tolist() == [1]
    assert stream.template_text(stream.templates_of(stream.columns(events)))[2] == "(session end)"
    # An alert on the end record names the session's lines' templates in order, then the end.
    recent = stream.alert_context(stream.columns(events), raw)[2]["recent_templates"]
    assert [re.sub(r"^T\d+ ", "", text) for text in recent] == [
        "open file <NUM> for job <NUM>", "close file <NUM>", "(session end)",
    ]  # fmt: skip


@pytest.mark.parametrize("host_windows", ["fixed", "sliding"])
def test_an_idle_sessions_end_read_after_the_next_sessions_first_line_leaves_that_session_open(
    host_windows: HostWindows,
) -> None:
    """A backlog can hold a session's new line ahead of the end record a worker wrote when the old one went idle."""
    rule = SessionRule(pattern=None, idle_timeout_s=10, host_windows=host_windows)
    stream = LogStream(rule, TemplateVocabulary.mine(HISTORY))
    first = [line("open file 1 for job 1", 0, session_id="a"), line("close file 1", 1, session_id="a")]
    _, idle = stream.advance(stream.empty_states(), stream.columns(first))
    (end,) = stream.with_session_ends([*first, line("open file 9 for job 2", 30, session_id="b")]).ends
    later = [line("open file 2 for job 1", 40, session_id="a"), end, line("close file 2", 41, session_id="a")]
    raw, after = stream.advance(idle, stream.columns(later))
    assert feature(raw, "session_closed") == [0, 1, 0]
    assert feature(raw, "session_lines") == [1, 0, 2], "the stale end ends nothing; the new session goes on"
    a = after.records[after.keys.tolist().index("a")]
    assert (a["lines"], a["open"], a["first_s"], a["last_s"]) == (2, 1, T0 + 40, T0 + 41)
    on_time, _ = stream.advance(idle, stream.columns([end]))
    assert feature(on_time, "session_closed") == [1] and feature(on_time, "session_lines") == [2]


def test_with_session_ends_ends_every_open_session_idle_by_the_last_lines_time() -> None:
    rule = SessionRule(pattern=None, idle_timeout_s=10, end_templates=("close file <NUM>",))
    stream = LogStream(rule, TemplateVocabulary.mine(HISTORY))
    lines = [
        line("open file 1 for job 1", 0, session_id="a"),
        line("open file 2 for job 1", 1, session_id="b"),
        line("close file 2", 2, session_id="b"),  # b closed by its end template: nothing left to end
        line("open file 3 for job 1", 5, session_id="a"),
        line("open file 4 for job 1", 20, session_id="c"),  # still running at the end: stays open
    ]
    ends = stream.with_session_ends(lines).ends
    assert [(end.session_id, end.timestamp, end.ends_session) for end in ends] == [("a", lines[3].timestamp, True)]
    raw, after = stream.advance(stream.empty_states(), stream.columns([*lines, *ends]))
    assert feature(raw, "session_lines")[-1] == 2 and after.records["open"].tolist() == [0, 0, 1]


@pytest.mark.parametrize("host_windows", ["fixed", "sliding"])
def test_end_records_advanced_from_the_lines_states_have_the_features_of_one_pass_in_time_order(
    host_windows: str,
) -> None:
    rule = SessionRule(
        pattern=r"job \d+",
        window_s=30,
        idle_timeout_s=10,
        end_templates=("close file <NUM>",),
        host_windows=host_windows,  # type: ignore[arg-type]
    )
    stream = LogStream(rule, TemplateVocabulary.mine(HISTORY))
    rng = np.random.default_rng(3)
    messages = [*(f"open file {i} for job {i % 7}" for i in range(40)), *(f"close file {i}" for i in range(40))]
    lines = [
        line(messages[i], float(second), host=f"dn-{i % 3}", session_id="s" if i % 11 == 0 else None)
        for i, second in zip(rng.integers(0, len(messages), 300), np.sort(rng.uniform(0, 200, 300)), strict=True)
    ]
    featurized = stream.with_session_ends(lines)
    assert len(featurized.ends) >= 3  # sessions (and, with fixed host windows, hosts' windows) left idle
    order = np.argsort(featurized.columns.timestamp_s, kind="stable")
    in_time_order = [featurized.rows[i] for i in order.tolist()]
    raw, _ = stream.advance(stream.empty_states(), stream.columns(in_time_order))
    np.testing.assert_array_equal(featurized.raw[order], raw)
    np.testing.assert_array_equal(featurized.templates[order], stream.templates_of(stream.columns(in_time_order)))


def test_a_session_cut_short_is_caught_at_its_end_record_and_not_before() -> None:
    history = LOGS.synthetic(events=12_000, entities=8, anomaly_rate=0.0, seed=5)
    result = train_round(TrainingData(LOGS.history(history.payloads)[0], None, "test"), LOG_SETTINGS, LOGS, None)
    version = DeployedVersion.assemble(msgspec.structs.replace(result.draft, version=1), result.bundle)
    live = LOGS.synthetic(events=6_000, entities=8, anomaly_rate=0.3, seed=6)
    offline = version.stream.offline(live.payloads)
    alert = score_batch(version, offline.raw_features).alert
    kind = dict(zip(live.event_id.tolist(), live.anomaly_kind.tolist(), strict=True))
    cut = np.array([kind[e] == "cut_short" for e in offline.columns.event_id.tolist()])
    sessions_cut = set(offline.columns.session[cut].tolist())
    assert len(sessions_cut) >= 10
    ends = offline.columns.ends_session
    caught = set(offline.columns.session[cut & ends & alert].tolist())
    assert len(caught) / len(sessions_cut) >= 0.8, (len(caught), len(sessions_cut))
    in_cut_sessions = np.isin(offline.columns.session, list(sessions_cut))
    assert not (alert & in_cut_sessions & ~ends).any(), "every line of a session cut short is a normal prefix"


def test_session_key_is_the_producers_id_else_the_pattern_else_the_hosts_window() -> None:
    stream = LogStream(SessionRule(window_s=60))
    columns = stream.columns(
        [
            line("Receiving block blk_-42 src", 0, session_id="job-7"),
            line("Receiving block blk_-42 src", 1),
            line("no block here", 61, host="dn-9"),
        ]
    )
    assert columns.session.tolist() == ["job-7", "blk_-42", f"dn-9@{int((T0 + 61) // 60) * 60}"]


def test_a_learned_stream_survives_pickling_and_featurizes_alike() -> None:
    generated = LOGS.synthetic(events=2_000, entities=5, anomaly_rate=0.05, seed=4)
    learned = LOGS.trained_on(generated.payloads)
    copy = pickle.loads(pickle.dumps(learned))
    assert copy.fingerprint == learned.fingerprint and copy.vocabulary.templates == learned.vocabulary.templates
    np.testing.assert_array_equal(
        copy.offline(generated.payloads).raw_features, learned.offline(generated.payloads).raw_features
    )


def test_states_carried_between_batches_equal_one_pass() -> None:
    generated = LOGS.synthetic(events=3_000, entities=10, anomaly_rate=0.05, seed=8)
    learned = LOGS.trained_on(generated.payloads)
    whole = learned.offline(generated.payloads)
    sizes = [len(rows) for rows in np.array_split(np.arange(len(whole.columns)), 7)]
    np.testing.assert_array_equal(online(learned, whole.columns, sizes), whole.raw_features)


SLIDING = SessionRule(pattern=None, window_s=25, host_windows="sliding")


def test_a_sliding_window_holds_the_hosts_lines_of_the_last_window_s_and_counts_drop_expired_ones() -> None:
    stream = LogStream(SLIDING, TemplateVocabulary.mine(HISTORY))
    events = [line("open file 1 for job 1" if i % 2 else "close file 1", 10 * i) for i in range(6)]
    events.append(line("kernel panic", 60))
    raw, after = stream.advance(stream.empty_states(), stream.columns(events))
    assert stream.columns(events).session.tolist() == ["dn-1"] * 7
    assert feature(raw, "session_lines") == [1, 2, 3, 3, 3, 3, 3]
    assert feature(raw, "session_seconds") == [0, 10, 20, 20, 20, 20, 20]
    closes, opens = (
        FEATURE_NAMES.index(f"template_{template:02d}")
        for template in stream.vocabulary.match(["close file 1", "open file 1 for job 1"]).tolist()
    )
    assert raw[:, closes].tolist() == [1, 1, 2, 1, 2, 1, 1]  # the lines at 0, 20, 40 leave the window in turn
    assert raw[:, opens].tolist() == [0, 1, 1, 2, 1, 2, 1]
    assert feature(raw, "session_unseen") == [0, 0, 0, 0, 0, 0, 1] and feature(raw, "session_closed") == [0] * 7
    keys = feature(raw, "key")
    assert feature(raw, "key_lag_01")[1:] == keys[:-1] and feature(raw, "key_lag_02")[2:] == keys[:-2]
    assert feature(raw, "key_lag_03") == [0] * 7, "a window's history is its own lines"
    assert after.keys.tolist() == ["dn-1"] and np.isnan(stream.idle_deadlines(after)).all()


def test_sliding_states_carried_between_batches_equal_one_pass_with_sessions_in_the_same_batches() -> None:
    stream = LogStream(SLIDING, TemplateVocabulary.mine(HISTORY))
    rng = np.random.default_rng(3)
    messages = [*HISTORY, "kernel panic"]
    events = [
        line(messages[rng.integers(len(messages))], second, host=f"dn-{rng.integers(3)}",
             session_id=f"s{rng.integers(4)}" if rng.random() < 0.3 else None)
        for second in np.cumsum(rng.exponential(4.0, 1_500)).tolist()
    ]  # fmt: skip
    columns = stream.columns(events)
    whole, after = stream.advance(stream.empty_states(), columns)
    sizes = [len(rows) for rows in np.array_split(np.arange(len(columns)), 9)]
    np.testing.assert_array_equal(online(stream, columns, sizes), whole)
    # Lines with a session id are its session, as with fixed windows: the same features, and an idle deadline.
    sessions = columns.take(np.flatnonzero(~columns.host_window))
    fixed = LogStream(SessionRule(pattern=None, window_s=25), stream.vocabulary)
    np.testing.assert_array_equal(whole[~columns.host_window], fixed.advance(fixed.empty_states(), sessions)[0])
    assert after.keys.tolist() == ["dn-0", "dn-1", "dn-2", "s0", "s1", "s2", "s3"]
    deadlines = stream.idle_deadlines(after)
    assert np.isnan(deadlines[:3]).all() and np.isfinite(deadlines[3:]).all()


def test_a_busy_hosts_window_holds_its_last_ring_lines_lines_in_one_pass_as_in_batches() -> None:
    stream = LogStream(SLIDING, TemplateVocabulary.mine(HISTORY))
    columns = stream.columns([line(f"open file {i} for job 1", i / 100) for i in range(RING_LINES + 100)])
    whole, _ = stream.advance(stream.empty_states(), columns)
    assert feature(whole, "session_lines")[-101:] == [RING_LINES] * 101
    assert feature(whole, "session_seconds")[-1] == pytest.approx((RING_LINES - 1) / 100)
    np.testing.assert_array_equal(online(stream, columns, [300, 7, 250]), whole)


def test_a_host_window_is_never_reported_idle_and_never_ended() -> None:
    stream = LogStream(SLIDING, TemplateVocabulary.mine(HISTORY))
    lines = [line("open file 1 for job 1", 0), line("open file 2 for job 1", 1, session_id="a"),
             line("close file 2", 5_000, host="dn-2")]  # fmt: skip
    assert [end.session_id for end in stream.with_session_ends(lines).ends] == ["a"]


def test_a_learned_stream_with_sliding_windows_survives_pickling_and_featurizes_alike() -> None:
    generated = LOGS.synthetic(events=2_000, entities=5, anomaly_rate=0.05, seed=4)
    learned = LogStream(SessionRule(pattern=None, host_windows="sliding")).trained_on(generated.payloads)
    copy = pickle.loads(pickle.dumps(learned))
    assert copy.state_layout == learned.state_layout != LOGS.state_layout
    fixed = LogStream(SessionRule(pattern=None)).trained_on(generated.payloads)
    assert copy.fingerprint == learned.fingerprint != fixed.fingerprint
    np.testing.assert_array_equal(
        copy.offline(generated.payloads).raw_features, learned.offline(generated.payloads).raw_features
    )


def test_an_unknown_host_windows_option_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="host_windows must be 'fixed' or 'sliding'; got 'rolling'"):
        SessionRule(host_windows="rolling")  # type: ignore[arg-type]


def session_verdicts(records: list[Any]) -> dict[str, bool]:
    verdict: dict[str, bool] = defaultdict(bool)
    for record in records:
        output = decode_output(record.value())
        event = LOGS.decode([bytes(output.event)]).events
        verdict[LOGS.columns(event).session[0]] |= output.__class__.__name__ == "AlertRecord"
    return verdict


def train_logs(fleet: Fleet, history: list[bytes], tmp_path: Path, **worker_env: str) -> None:
    """Point the fleet's workers at the logs stream alone (with `worker_env`) and train its first version on
    `history` with a real `fleetwatch train`."""
    (tmp_path / "history.jsonl").write_bytes(b"\n".join(history) + b"\n")
    fleet.env.update(
        {
            "FLEETWATCH_WORKER__STREAMS": '["logs"]',
            **worker_env,
            **topic_environment({"input": fleet.topics["input"], "summary": fleet.topics["summary"]}, "logs"),
        }
    )
    trained = subprocess.run(
        [FLEETWATCH, "train", "--stream", "logs", str(tmp_path / "history.jsonl")],
        env=fleet.env, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr


def test_log_lines_through_the_trainer_and_two_workers_one_killed_mid_session_and_idle_sessions_ended(
    kafka: KafkaConnection, redis_server: Any, unique_name: str, tmp_path: Path
) -> None:
    history = LOGS.synthetic(events=20_000, entities=12, anomaly_rate=0.002, seed=21)
    generated = LOGS.synthetic(events=6_000, entities=12, anomaly_rate=0.06, seed=22)
    # Half the sessions lose their producer's end record: the workers must end them once they are idle, which
    # lines two hours later (in event time) show.
    events = LOGS.decode(generated.payloads).events
    kept = [not (e.ends_session and int(e.session_id[-1]) % 2) for e in events]  # type: ignore[index]
    lines = [e for e, keep in zip(events, kept, strict=True) if keep]
    later = [
        msgspec.structs.replace(e, timestamp=e.timestamp + timedelta(hours=2))
        for e in LOGS.decode(LOGS.synthetic(events=300, entities=12, anomaly_rate=0.0, seed=23).payloads).events
    ]
    live = [*lines, *later]
    live_payloads = payloads(live)
    live_keys = LOGS.columns(live).session.tolist()
    with open_fleet(kafka, redis_server.url, unique_name, tmp_path) as fleet:
        train_logs(fleet, history.payloads, tmp_path, FLEETWATCH_WORKER__IDLE_SWEEP_INTERVAL_S="1")
        first, _ = fleet.start_worker(FLEETWATCH_WORKER__BATCH_SIZE="100", **QUICK_FAILOVER)
        producing = threading.Thread(
            target=produce_paced, args=(fleet, [*live_payloads, b"{broken"], [*live_keys, "x"], 2_000), daemon=True
        )
        producing.start()
        assert wait_until(lambda: fleet.scored_count() > 1_000, 60)
        first.send_signal(signal.SIGKILL)
        first.wait()
        assert fleet.scored_count() < len(live), "the kill came too late to test anything"
        fleet.start_worker(**QUICK_FAILOVER)
        producing.join()
        deployed = fleet.registry.load_deployed("logs")
        assert deployed is not None
        left_open = {end.session_id for end in deployed.stream.with_session_ends(live).ends}  # type: ignore[attr-defined]
        assert len(left_open) > 100
        outputs = fleet.wait_for_outputs(len(live) + 1 + len(left_open))
    records = outputs["alerts"] + outputs["summary"]
    ids = event_ids(records)
    assert [e for e, n in Counter(ids).items() if n > 1] == []
    assert sorted(set(ids) - {e.event_id for e in live}) == sorted(i for i in ids if i.startswith("end-"))
    assert {e.event_id for e in live} <= set(ids)
    ended = [LOGS.decode([bytes(decode_output(r.value()).event)]).events[0] for r in records]
    ended_sessions = [e.session_id for e in ended if e.event_id.startswith("end-")]
    assert sorted(ended_sessions) == sorted(left_open), "each idle session ended once, and only those"
    assert [r.value() for r in outputs["deadletter"]] == [b"{broken"]
    # Sessions lived in Redis across the kill: the alerts are exactly those of one pass over the lines and the
    # end records of the idle sessions (there made as `with_session_ends` makes them at a file's end).
    offline = deployed.stream.offline(live_payloads + payloads(deployed.stream.with_session_ends(live).ends))  # type: ignore[attr-defined]
    offline_alert, ends = score_batch(deployed, offline.raw_features).alert, offline.columns.ends_session
    alerted = [LOGS.decode([bytes(decode_output(r.value()).event)]).events[0] for r in outputs["alerts"]]
    assert {e.event_id for e in alerted if not e.ends_session} == set(
        offline.columns.event_id[offline_alert & ~ends].tolist()
    )
    assert {e.session_id for e in alerted if e.ends_session} == set(
        offline.columns.session[offline_alert & ends].tolist()
    )
    # Sessions with an injected fault alert; normal sessions mostly do not.
    verdict = session_verdicts(records)
    session_of = dict(zip(generated.event_id.tolist(), generated.keys, strict=True))
    faulty = {session_of[e] for e in generated.event_id[generated.is_anomaly].tolist()}
    caught = sum(verdict[s] for s in faulty) / len(faulty)
    normal = [s for s in verdict if s not in faulty]
    false_alarms = sum(verdict[s] for s in normal) / len(normal)
    assert caught >= 0.7 and false_alarms <= 0.05, (caught, false_alarms)
    alert = decode_output(outputs["alerts"][0].value())
    assert alert.stream == "logs" and alert.context["session"] and alert.context["session_templates"]
    assert {d.name for d in alert.detectors} == {entry["name"] for entry in LOGS.default_detectors}
    assert json.loads(bytes(alert.event))["message"] or alert.context["template"] == "(session end)"


def test_a_session_closed_by_the_batch_that_moves_time_past_its_deadline_is_not_also_ended_as_idle(
    kafka: KafkaConnection, redis_server: Any, unique_name: str, tmp_path: Path
) -> None:
    """The idle sweep judges by the event times of batches whose states are stored: a batch that closes session
    `a` and carries a line two hours later must not also claim `a`, still open in Redis, as idle."""
    history = LOGS.synthetic(events=3_000, entities=6, anomaly_rate=0.0, seed=31)
    first = [line("open file 1 for job 1", 0, session_id="a"), line("open file 2 for job 1", 1, session_id="a")]
    end_of_a = LogLine(event_id="a-end", source_host="dn-1", timestamp=first[-1].timestamp, session_id="a",
                       ends_session=True)  # fmt: skip
    second = [end_of_a, line("open file 3 for job 2", 7_200, session_id="b")]  # past a's idle deadline
    with open_fleet(kafka, redis_server.url, unique_name, tmp_path) as fleet:
        train_logs(
            fleet, history.payloads, tmp_path,
            FLEETWATCH_WORKER__IDLE_SWEEP_INTERVAL_S="0.01",
            FLEETWATCH_WORKER__BATCH_MIN_SIZE="2",  # each pair below is one batch
            FLEETWATCH_WORKER__BATCH_TIMEOUT_S="5",
        )  # fmt: skip
        _, metrics_port = fleet.start_worker()
        fleet.produce(payloads(first), ["k", "k"])  # one key: one partition, whose newest time the sweep reads
        assert wait_until(lambda: fleet.scored_count() == 2, 60), "a's first lines were not scored (and stored)"
        fleet.produce(payloads(second), ["k", "k"])
        assert wait_until(lambda: fleet.scored_count() >= 4, 60)
        time.sleep(1)  # the worker sweeps every 10 ms
        ended = metric_total(metrics_port, "fleetwatch_idle_sessions_ended", stream="logs")
    assert ended == 0, "session a was closed by its end record and also ended as idle"
