"""`fleetwatch bench logs`: the log stream on public data (not a timed test, not run in CI).

**Templates** (loghub, https://github.com/logpai/loghub; its licence: free for research or academic work, cite
the loghub paper and keep the notice): each 2k sample is parsed with our preset and mined by Drain3 with the
default masking (no per-file tuning); grouping accuracy is logparser's: a line counts when the set of lines
sharing its template is exactly the set sharing its ground-truth EventId (`*_2k.log_structured.csv`).
Measured twice: the template Drain3 gave the line while mining (Drain's own definition, the figure
logparser publishes, e.g. 0.998 on HDFS), and the template serving matches the line to after mining (what
`fleetwatch logs infer` reports; an unmatched line counts as a group of its own).

**Sessions** (DeepLog's HDFS files, https://github.com/wuyifan18/DeepLog, MIT licence): `hdfs_train` holds 4,855
normal sessions and `hdfs_test_abnormal` 16,838 anomalous ones, as template-key sequences; `hdfs_test_normal`
(553,366 sessions) is not in the snapshot, so a seeded 30 % of `hdfs_train` is held out as the normal test
set and the detectors train on the other 70 %. Every key k becomes a LogLine `E<k>` with its session id,
one second apart, sessions one after another; they go through the real stream (decode, Drain3, sessions,
count vectors) and the trainer's round with the stream's default detectors; a session's verdict is its most
anomalous line. Few normal test sessions make precision depend on the mix, so precision is also given
re-weighted to the paper's 553,366 normal : 16,838 anomalous from the measured false-positive rate.
"""

from __future__ import annotations

import csv
import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from shared.config import StreamSettings
from shared.errors import FleetwatchError
from shared.model_version import DeployedVersion
from shared.streams.logs.contract import LogLine
from shared.streams.logs.formats import PRESETS, parse_log_file
from shared.streams.logs.sessions import SessionRule
from shared.streams.logs.stream import LogStream
from shared.streams.logs.templates import UNSEEN, Masking, TemplateVocabulary
from shared.streams.logs.verdicts import SessionVerdicts
from shared.training import TrainingData, train_round

LOGHUB_SETS = {"HDFS": "hdfs", "BGL": "bgl", "Linux": "linux", "OpenSSH": "openssh", "Apache": "apache"}
"""loghub 2k sets and the preset each is parsed with."""

DRAIN_PUBLISHED = {"HDFS": 0.9975, "BGL": 0.9625, "Linux": 0.69, "OpenSSH": 0.7875, "Apache": 1.0}
"""Drain's grouping accuracy on the same files (logparser's Drain README; Zhu et al., ICSE-SEIP 2019, Table 3)."""

PUBLISHED_HDFS = {
    "PCA (loglizer; Xu et al. 2009)": (0.98, 0.67, 0.79),
    "count-vector clustering (on DeepLog's files)": (0.978, 0.999, 0.989),
    "DeepLog (Du et al. 2017)": (0.95, 0.96, 0.96),
}
"""Published precision, recall, F1 on HDFS sessions, with the full normal test set."""

METRICS = ("precision", "recall", "f1")
PAPER_NORMAL, PAPER_ANOMALOUS = 553_366, 16_838
HELD_OUT_SHARE, SPLIT_SEED = 0.3, 0


def grouping_accuracy(parsed: Sequence[Any], truth: Sequence[Any]) -> float:
    """logparser's grouping accuracy: the share of lines whose parsed group equals their true group as a set.

    >>> grouping_accuracy([1, 1, 2, 3], ["a", "a", "b", "b"])
    0.5
    """
    parsed_ids = np.unique(np.asarray(parsed, dtype=object).astype(str), return_inverse=True)[1].reshape(-1)
    truth_ids = np.unique(np.asarray(truth, dtype=object).astype(str), return_inverse=True)[1].reshape(-1)
    pair = parsed_ids.astype(np.int64) * (truth_ids.max() + 1) + truth_ids
    pairs, pair_count = np.unique(pair, return_counts=True)
    parsed_size = np.bincount(parsed_ids)
    truth_size = np.bincount(truth_ids)
    p, t = pairs // (truth_ids.max() + 1), pairs % (truth_ids.max() + 1)
    exact = (pair_count == parsed_size[p]) & (pair_count == truth_size[t])
    return float(pair_count[exact].sum() / len(parsed_ids))


@dataclass(frozen=True)
class TemplateQuality:
    name: str
    preset: str
    lines: int
    unmatched_lines: int
    true_templates: int
    mined_templates: int
    accuracy_mining: float
    accuracy_serving: float
    unseen_when_serving: int
    drain_published: float
    seconds: float


def template_quality(loghub: Path, name: str, preset: str) -> TemplateQuality:
    started = time.perf_counter()
    parsed = parse_log_file(loghub / name / f"{name}_2k.log", PRESETS[preset])
    with (loghub / name / f"{name}_2k.log_structured.csv").open(newline="") as handle:
        truth = [row["EventId"] for row in csv.DictReader(handle)]
    if len(truth) != len(parsed.lines):
        raise FleetwatchError(f"{name}: {len(parsed.lines)} parsed lines, {len(truth)} in the ground truth")
    messages = [line.message for line in parsed.lines]
    miner = Masking().miner()  # the settings `TemplateVocabulary.mine` uses, to keep each line's mining cluster
    mined = [miner.add_log_message(message)["cluster_id"] for message in messages]
    served = TemplateVocabulary.mine(messages).match(messages)
    unseen = served == UNSEEN
    served_groups = np.where(unseen, -(np.arange(len(served)) + 2), served)  # each unmatched line alone
    return TemplateQuality(
        name=name,
        preset=preset,
        lines=len(messages),
        unmatched_lines=parsed.unmatched,
        true_templates=len(set(truth)),
        mined_templates=len(set(mined)),
        accuracy_mining=round(grouping_accuracy(mined, truth), 4),
        accuracy_serving=round(grouping_accuracy(served_groups.tolist(), truth), 4),
        unseen_when_serving=int(unseen.sum()),
        drain_published=DRAIN_PUBLISHED[name],
        seconds=round(time.perf_counter() - started, 2),
    )


# --- HDFS sessions ----------------------------------------------------------------------------------------------
def read_sessions(path: Path) -> list[list[str]]:
    """DeepLog's files: one session per line, its template keys separated by spaces."""
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


def session_payloads(sessions: Sequence[Sequence[str]], prefix: str, start_s: float) -> tuple[list[bytes], float]:
    """Each key as a LogLine `E<k>` with its session id, one second apart, then the session's end-of-session
    record (DeepLog's files hold complete sessions); the next free second after them."""
    encoder = msgspec.json.Encoder()
    payloads = []
    second = start_s
    for index, keys in enumerate(sessions):
        session = f"{prefix}{index}"
        for offset, key in enumerate(keys):
            line = LogLine(
                event_id=f"{session}-{offset}", source_host="hdfs", message=f"E{key}", session_id=session,
                timestamp=datetime.fromtimestamp(second + offset, UTC),
            )  # fmt: skip
            payloads.append(encoder.encode(line))
        end = LogLine(
            event_id=f"{session}-end", source_host="hdfs", session_id=session, ends_session=True,
            timestamp=datetime.fromtimestamp(second + len(keys), UTC),
        )  # fmt: skip
        payloads.append(encoder.encode(end))
        second += len(keys) + 2
    return payloads, second


def undetectable_by_prefixes(train: Sequence[Sequence[str]], anomalous: Sequence[Sequence[str]]) -> int:
    """Anomalous sessions each of whose prefixes has the count vector of some normal training session's prefix:
    no detector that scores a session by its prefixes (every line with its session so far) can tell them apart."""
    prefixes = set()
    for keys in train:
        counts: Counter[str] = Counter()
        for key in keys:
            counts[key] += 1
            prefixes.add(frozenset(counts.items()))
    hidden = 0
    for keys in anomalous:
        counts = Counter()
        for key in keys:
            counts[key] += 1
            if frozenset(counts.items()) not in prefixes:
                break
        else:
            hidden += 1
    return hidden


def complete_vector_lookup(
    train: Sequence[Sequence[str]], normal: Sequence[Sequence[str]], anomalous: Sequence[Sequence[str]]
) -> dict[str, float]:
    """A reference that is not the stream: a session judged once it is complete, anomalous when its whole count
    vector is none of the training sessions' (what a check at session close could add to prefix scoring)."""
    known = {frozenset(Counter(keys).items()) for keys in train}
    flagged = np.array([frozenset(Counter(keys).items()) not in known for keys in [*normal, *anomalous]])
    return _metrics(flagged, np.r_[np.zeros(len(normal), dtype=bool), np.ones(len(anomalous), dtype=bool)])


def _metrics(flagged: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    tp, fp = int((flagged & truth).sum()), int((flagged & ~truth).sum())
    fn, normal = int((~flagged & truth).sum()), int((~truth).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    fpr = fp / normal
    expected_fp = fpr * PAPER_NORMAL
    # With 0 false positives the rate is only known to be below 3/n (the "rule of three", 95 %).
    fpr_upper = max(fpr, 3.0 / normal) if fp == 0 else fpr
    return {
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(2 * precision * recall / (precision + recall) if precision + recall else 0.0, 4),
        "true_positives": tp,
        "false_positives": fp,
        "false_positive_rate": round(fpr, 5),
        "precision_at_paper_ratio": round(tp / (tp + expected_fp) if tp + expected_fp else 0.0, 4),
        "precision_at_paper_ratio_95_lower": round(tp / (tp + fpr_upper * PAPER_NORMAL) if tp else 0.0, 4),
    }


def hdfs_sessions(deeplog_data: Path, on_stage: Callable[[str], None] = lambda stage: None) -> dict[str, Any]:
    """Session-level precision/recall/F1 of each default log detector and of the fleet on DeepLog's HDFS sessions."""
    normal = read_sessions(deeplog_data / "hdfs_train")
    anomalous = read_sessions(deeplog_data / "hdfs_test_abnormal")
    order = np.random.default_rng(SPLIT_SEED).permutation(len(normal))
    held_out = int(len(normal) * HELD_OUT_SHARE)
    test_normal = [normal[i] for i in np.sort(order[:held_out])]
    train = [normal[i] for i in np.sort(order[held_out:])]
    stream = LogStream(SessionRule(pattern=None))  # producers' session ids; no idle split (sessions are dense)
    settings = StreamSettings().completed(stream)
    on_stage(f"training on {len(train):,} normal sessions")
    train_payloads, next_second = session_payloads(train, "train-", datetime(2008, 11, 9, tzinfo=UTC).timestamp())
    started = time.perf_counter()
    columns = stream.columns(stream.decode(train_payloads).events)
    result = train_round(TrainingData(columns, None, "deeplog:hdfs_train"), settings, stream, None)
    train_seconds = time.perf_counter() - started
    version = DeployedVersion.assemble(msgspec.structs.replace(result.draft, version=1), result.bundle)
    normal_payloads, next_second = session_payloads(test_normal, "normal-", next_second + 3600)
    anomalous_payloads, _ = session_payloads(anomalous, "anomalous-", next_second + 3600)
    on_stage(f"scoring {len(test_normal):,} normal and {len(anomalous):,} anomalous sessions")
    started = time.perf_counter()
    offline = version.stream.offline(normal_payloads + anomalous_payloads)
    verdicts = SessionVerdicts.of(version, offline.columns.session, offline.columns.timestamp_s, offline.raw_features)
    score_seconds = time.perf_counter() - started
    truth = np.array([key.startswith("anomalous-") for key in verdicts.keys.tolist()])
    rows = {}
    for j, name in enumerate(verdicts.detector_names):
        flagged = verdicts.flags[:, j]
        rows[name] = {"mode": "shadow" if name in verdicts.shadow else "alerting", **_metrics(flagged, truth)}
    rows["fleet"] = {"mode": "combined" if verdicts.combined else "any detector", **_metrics(verdicts.alert, truth)}
    if verdicts.combined:  # the other alert rule on the same detectors and thresholds
        alerting = np.array([name not in verdicts.shadow for name in verdicts.detector_names])
        any_flags = np.asarray(verdicts.flags[:, alerting].any(axis=1))
        rows["fleet, any detector"] = {"mode": "any detector", **_metrics(any_flags, truth)}
    train_keys = {key for keys in train for key in keys}
    with_unseen = sum(any(key not in train_keys for key in keys) for keys in anomalous)
    hidden = undetectable_by_prefixes(train, anomalous)
    return {
        "source": "wuyifan18/DeepLog data/hdfs_train, data/hdfs_test_abnormal (MIT licence)",
        "split": (
            f"hdfs_train's 4,855 normal sessions shuffled with numpy default_rng({SPLIT_SEED}); the first "
            f"{held_out:,} ({HELD_OUT_SHARE:.0%}) are the normal test set, the other {len(train):,} train (the round's "
            "time split: the first 80 % of their lines fit the detectors, the last 20 % calibrate the thresholds); "
            f"all {len(anomalous):,} sessions of hdfs_test_abnormal are the anomalous test set; hdfs_test_normal is "
            "not in the snapshot"
        ),
        "train_sessions": len(train),
        "train_lines": len(columns),
        "test_normal_sessions": int((~truth).sum()),
        "test_anomalous_sessions": int(truth.sum()),
        "templates_learned": len(version.stream.vocabulary.templates),  # type: ignore[attr-defined]
        "anomalous_with_a_key_unseen_in_training": with_unseen,
        "anomalous_undetectable_by_prefix_scoring": hidden,
        "recall_ceiling_of_prefix_scoring": round(1 - hidden / len(anomalous), 4),
        "detectors": rows,
        "reference_complete_vector_lookup": complete_vector_lookup(train, test_normal, anomalous),
        "combination_weights": result.draft.combination["weights"] if result.draft.combination else None,
        "train_seconds": round(train_seconds, 1),
        "score_seconds": round(score_seconds, 1),
        "published": {name: dict(zip(METRICS, values, strict=True)) for name, values in PUBLISHED_HDFS.items()},
    }


def run_logs_quality(data_dir: Path, on_stage: Callable[[str], None] = lambda stage: None) -> dict[str, Any]:
    """Both benchmarks over `data_dir/loghub` and `data_dir/DeepLog/data` (clones of the two repositories)."""
    loghub, deeplog = data_dir / "loghub", data_dir / "DeepLog" / "data"
    missing = [str(p) for p in (loghub / "HDFS", deeplog / "hdfs_train") if not p.exists()]
    if missing:
        raise FleetwatchError(
            f"missing {', '.join(missing)}; clone https://github.com/logpai/loghub into {loghub} and "
            f"https://github.com/wuyifan18/DeepLog into {deeplog.parent}"
        )
    templates = []
    for name, preset in LOGHUB_SETS.items():
        on_stage(f"templates: {name}")
        templates.append(template_quality(loghub, name, preset))
    return {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "templates": {
            "source": "logpai/loghub *_2k.log and *_2k.log_structured.csv (free for research or academic work; "
            "cite Zhu et al., ISSRE 2023)",
            "masking": [name for _, name in Masking().masks],
            "sets": [t.__dict__ for t in templates],
        },
        "hdfs_sessions": hdfs_sessions(deeplog, on_stage),
    }


def markdown(results: dict[str, Any]) -> str:
    """The two tables of the README draft."""
    lines = [
        "| loghub 2k set | preset | lines | true templates | mined | accuracy (mining) | accuracy (serving) "
        "| Drain published |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for t in results["templates"]["sets"]:
        lines.append(
            f"| {t['name']} | {t['preset']} | {t['lines']:,} | {t['true_templates']} | {t['mined_templates']} | "
            f"{t['accuracy_mining']:.3f} | {t['accuracy_serving']:.3f} | {t['drain_published']:.3f} |"
        )
    hdfs = results["hdfs_sessions"]
    lines += ["", "| HDFS sessions | P | R | F1 | FP | FPR | P at 553,366:16,838 (95 % lower) |",
              "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for name, row in hdfs["detectors"].items():
        lines.append(
            f"| {name} ({row['mode']}) | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f} | "
            f"{row['false_positives']} | {row['false_positive_rate']:.4f} | {row['precision_at_paper_ratio']:.3f} "
            f"({row['precision_at_paper_ratio_95_lower']:.3f}) |"
        )
    row = hdfs["reference_complete_vector_lookup"]
    lines.append(
        f"| reference, not the stream: complete count vector unknown | {row['precision']:.3f} | {row['recall']:.3f} "
        f"| {row['f1']:.3f} | {row['false_positives']} | {row['false_positive_rate']:.4f} "
        f"| {row['precision_at_paper_ratio']:.3f} ({row['precision_at_paper_ratio_95_lower']:.3f}) |"
    )
    for name, row in hdfs["published"].items():
        lines.append(f"| published: {name} | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f} | | | |")
    return "\n".join(lines)


RESULTS_FILE = Path(__file__).resolve().parent / "results" / "logs_quality.json"


def logs_benchmark(data_dir: Path, out_dir: Path | None, on_stage: Callable[[str], None]) -> str:
    """`fleetwatch bench logs [DATA_DIR]`: both benchmarks, `logs_quality.json` into `out_dir` (default
    bench/results); the tables returned for printing."""
    results = run_logs_quality(data_dir, on_stage)
    path = out_dir / RESULTS_FILE.name if out_dir is not None else RESULTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    return markdown(results) + f"\n\nresults: {path}"
