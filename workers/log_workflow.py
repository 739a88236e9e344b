"""`fleetwatch logs`: seed 002's batch workflow over raw log files, on the model registry.

- **train**: scan a folder, parse every file (`shared.streams.logs.formats`), group lines into sessions by the
  session rule, mine Drain3 templates, train every configured log detector with the trainer's round
  (`shared.training.train_round`: thresholds, combination, evaluation with labels), gate against the deployed
  version and publish; the note records files, lines, sessions, templates and time span. `--incremental`
  continues a parent version's Drain3 tree (its templates and their counts) with the new lines, keeps its session
  rule, fits the detectors on the new lines (DeepLog fine-tunes from the parent's network), and records the parent.
- **infer**: per target, `parsed.parquet` (every line with its session and template), `results/<detector>.parquet`
  and `results/fleet.parquet` (per session: worst line's score, threshold, verdict; a DeepLog detector's also the
  keys it expected at that line), `hourly.parquet` and a markdown report with charts, and for the most anomalous
  sessions the lines whose key DeepLog did not expect, beside the keys it did.
- **validate** / **compare**: session-level precision, recall and F1 per detector and for the fleet against a
  labels file (session key -> anomalous), and a quality score out of 100 whose components are stated.

Every line is scored with its session so far; a session is as anomalous as its worst line
(`shared.streams.logs.verdicts`).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from shared.batch_report import HOUR, Concentration
from shared.config import FleetwatchSettings
from shared.detectors.deeplog import DeepLogDetector
from shared.detectors.on_features import OnFeatures
from shared.errors import FleetwatchError
from shared.evaluation import FleetEvaluation
from shared.model_version import DeployedVersion, Manifest
from shared.registry import ModelRegistry, VersionRefused
from shared.streams.logs.contract import LogLine
from shared.streams.logs.formats import LogFormat, ParsedLog, log_format, parse_log_file, scan_log_files
from shared.streams.logs.sessions import FEATURE_NAMES, SessionRule
from shared.streams.logs.stream import LOGS, LogColumns, LogStream
from shared.streams.logs.templates import UNSEEN
from shared.streams.logs.verdicts import SessionVerdicts, session_labels_for
from shared.summary_report import markdown_table, save_chart
from shared.training import GateDecision, TrainingData, quality_gate, train_round

STREAM = LOGS.name
NOTE_PREFIX = "logs: "
SESSION_LINES = FEATURE_NAMES.index("session_lines")
EXPECTED_SESSIONS = 10
"""Anomalous sessions whose unexpected keys the report lists (the most anomalous first), and their lines each."""
EXPECTED_LINES = 4
ANOMALOUS = {"1", "true", "yes", "anomaly", "anomalous", "abnormal"}
NORMAL = {"0", "false", "no", "normal"}


@dataclass(frozen=True)
class ScanOptions:
    """Which files of a target are read, and how their lines are parsed."""

    format: str = "auto"  # a preset, a format string, or auto (detected per file)
    max_depth: int = 3
    max_files: int = 50

    def log_format(self) -> LogFormat | None:
        return log_format(self.format)


@dataclass(frozen=True)
class LogCorpus:
    """The parsed lines of one target's files in time order, and what parsing made of each file."""

    target: Path
    files: list[ParsedLog]  # lines emptied: they are in `lines`
    left_out: int  # files past max_files
    lines: list[LogLine]
    file_of_line: np.ndarray  # index into `files`
    line_number: np.ndarray

    @property
    def unmatched(self) -> int:
        return sum(f.unmatched for f in self.files)

    def featurized(self, stream: LogStream) -> tuple[LogCorpus, LogColumns, np.ndarray, np.ndarray]:
        """These lines with the end records of the sessions idle by their last time (`LogStream.with_session_ends`),
        each right after its session's last line, so the rows stay in time order (end records have no file:
        `file_of_line` -1); and the rows' columns, raw features and template indices, in that order."""
        featurized = stream.with_session_ends(self.lines)
        rows = featurized.rows
        order = np.argsort(featurized.columns.timestamp_s, kind="stable")
        file_of_line = np.r_[self.file_of_line, np.full(len(featurized.ends), -1)][order]
        line_number = np.r_[self.line_number, np.zeros(len(featurized.ends), dtype=np.int64)][order]
        corpus = dataclasses.replace(
            self, lines=[rows[i] for i in order.tolist()], file_of_line=file_of_line, line_number=line_number
        )
        return corpus, featurized.columns.take(order), featurized.raw[order], featurized.templates[order]

    def where(self, rows: np.ndarray) -> list[str]:
        """`file:line` of each row, "(end of input)" for an end record."""
        return [
            f"{self.files[file].source}:{number}" if file >= 0 else "(end of input)"
            for file, number in zip(self.file_of_line[rows].tolist(), self.line_number[rows].tolist(), strict=True)
        ]

    @property
    def untimed(self) -> int:
        return sum(f.untimed for f in self.files)


Progress = Callable[[str, int, int], None]
"""(what, done, total): parsing files, then stages (total 0)."""


def _quiet(what: str, done: int, total: int) -> None:
    return None


def read_corpus(target: Path, options: ScanOptions, progress: Progress = _quiet) -> LogCorpus:
    """Scan `target` (a file or folder), parse each file, order all lines by time (stably: file order breaks ties)."""
    chosen = options.log_format()
    found = scan_log_files(target, options.max_depth, options.max_files)
    if not found.files:
        raise FleetwatchError(f"{target}: no log files (.log, .txt, .out, .gz, rotated or no suffix) found")
    parsed: list[ParsedLog] = []
    for done, path in enumerate(found.files):
        progress(f"parsing {found.source_of(path)}", done, len(found.files))
        parsed.append(parse_log_file(path, chosen, found.source_of(path)))
    progress("parsed", len(found.files), len(found.files))
    lines = [line for file in parsed for line in file.lines]
    if not lines:
        raise FleetwatchError(f"{target}: the log files hold no lines")
    file_of_line = np.concatenate([np.full(len(f.lines), i) for i, f in enumerate(parsed)])
    line_number = np.concatenate([np.asarray(f.line_numbers, dtype=np.int64) for f in parsed])
    seconds = np.array([line.timestamp.timestamp() for line in lines])
    order = np.argsort(seconds, kind="stable")
    emptied = [dataclasses.replace(f, lines=[], line_numbers=[]) for f in parsed]
    return LogCorpus(
        target, emptied, found.left_out, [lines[i] for i in order.tolist()], file_of_line[order], line_number[order]
    )


def read_session_labels(path: Path) -> dict[str, bool]:
    """A CSV of `session,label` rows (a header row first, as loghub's `anomaly_label.csv`: BlockId,Label); the label
    is Anomaly/Normal, 1/0, true/false or yes/no."""
    try:
        with path.open(newline="") as handle:
            rows = [row for row in csv.reader(handle) if row]
    except OSError as exc:
        raise FleetwatchError(f"{path}: cannot read labels ({exc})") from exc
    labels: dict[str, bool] = {}
    for number, row in enumerate(rows[1:], start=2):
        value = row[1].strip().lower() if len(row) > 1 else ""
        if value not in ANOMALOUS | NORMAL:
            raise FleetwatchError(f"{path}:{number}: expected session,label with label Anomaly/Normal or 1/0")
        labels[row[0].strip()] = value in ANOMALOUS
    if not labels:
        raise FleetwatchError(f"{path}: no labelled sessions")
    return labels


# --- training --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LogTrainingRequest:
    target: Path
    scan: ScanOptions = dataclasses.field(default_factory=ScanOptions)
    rule: SessionRule = dataclasses.field(default_factory=SessionRule)
    labels: Path | None = None
    incremental_from: int | None = None  # a parent version to extend; None: train from scratch
    incremental: bool = False
    deploy: bool = True


@dataclass(frozen=True)
class LogTrainingOutcome:
    manifest: Manifest
    deployed: bool
    gate: GateDecision
    evaluation: FleetEvaluation | None
    facts: dict[str, Any]


def train_logs(
    settings: FleetwatchSettings, registry: ModelRegistry, request: LogTrainingRequest, progress: Progress = _quiet
) -> LogTrainingOutcome:
    """Parse, learn templates, train every log detector, gate and publish one version."""
    started = time.perf_counter()
    parent_version: DeployedVersion | None = None
    if request.incremental:
        number = request.incremental_from or registry.deployed_version(STREAM)
        if number is None:
            raise FleetwatchError("--incremental extends a version: name one with --from (logs has none deployed)")
        parent_version = registry.load(STREAM, number)
    corpus = read_corpus(request.target, request.scan, progress)
    base = parent_version.stream if parent_version is not None else LogStream(request.rule)
    assert isinstance(base, LogStream)
    columns = base.columns(corpus.lines)
    messages = columns.message.tolist()
    progress(f"mining templates from {len(messages):,} lines", 0, 0)
    if parent_version is not None:
        learned = LogStream(base.rule, base.vocabulary.extended(messages))
    else:
        learned = base.learn(columns)
    progress("building sessions and their features", 0, 0)
    corpus, columns, raw, _ = corpus.featurized(learned)
    is_anomaly = None
    if request.labels is not None:
        labels = read_session_labels(request.labels)
        missing = sum(key not in labels for key in set(columns.session.tolist()))
        if missing:
            raise FleetwatchError(f"{request.labels}: {missing} sessions of the logs have no label")
        is_anomaly = np.array([labels[key] for key in columns.session.tolist()], dtype=bool)
    stream_settings = settings.stream_settings(STREAM)
    progress(f"training {len(stream_settings.detectors)} detectors on {len(raw):,} lines", 0, 0)
    deployed_number = registry.deployed_version(STREAM)
    parent = parent_version.version if parent_version is not None else deployed_number
    source = f"logs:{request.target}"
    data = TrainingData(columns, is_anomaly, source, raw_features=raw)
    result = train_round(data, stream_settings, learned, parent, continuing=parent_version)
    progress("quality gate", 0, 0)
    try:  # the version the pointer held when the round began: the gate's baseline, and the one it may replace
        deployed = None if deployed_number is None else registry.load(STREAM, deployed_number)
    except VersionRefused:
        deployed = None
    gate = quality_gate(result, deployed, is_anomaly, stream_settings)
    facts = corpus_facts(corpus, columns, raw, learned)
    if parent_version is not None:
        facts["incremental_from"] = parent_version.version
        facts["parent_templates"] = len(_log_stream(parent_version).vocabulary.templates)
    note = f"gate: {gate.reason}; {NOTE_PREFIX}{json.dumps(facts, separators=(',', ':'))}"
    draft = msgspec.structs.replace(result.draft, note=note)
    progress("publishing", 0, 0)
    manifest, deployed_now = registry.publish_over(
        result.bundle, draft, deployed_number, deploy=request.deploy and gate.accepted
    )
    facts["seconds"] = round(time.perf_counter() - started, 1)
    return LogTrainingOutcome(manifest, deployed_now, gate, result.evaluation, facts)


def corpus_facts(corpus: LogCorpus, columns: LogColumns, raw: np.ndarray, stream: LogStream) -> dict[str, Any]:
    """What a version's note records of its training logs."""
    return {
        "target": str(corpus.target),
        "formats": sorted({f.pattern for f in corpus.files}),
        "files": [f.source for f in corpus.files],
        "files_left_out": corpus.left_out,
        "lines": int(np.count_nonzero(~columns.ends_session)),
        "unmatched_lines": corpus.unmatched,
        "untimed_lines": corpus.untimed,
        "sessions": int(np.count_nonzero((raw[:, SESSION_LINES] == 1) & ~columns.ends_session)),
        "session_keys": len(np.unique(columns.session)),
        "templates": len(stream.vocabulary.templates),
        "start": _iso(float(columns.timestamp_s.min())),
        "end": _iso(float(columns.timestamp_s.max())),
        "rule": {
            "pattern": stream.rule.pattern,
            "window_s": stream.rule.window_s,
            "host_windows": stream.rule.host_windows,
            "idle_timeout_s": stream.rule.idle_timeout_s,
            "max_lines": stream.rule.max_lines,
            "end_templates": list(stream.rule.end_templates),
        },
    }


def training_facts(manifest: Manifest) -> dict[str, Any]:
    """The facts `train_logs` recorded in a version's note ({} for a version trained otherwise)."""
    _, found, text = manifest.note.partition(NOTE_PREFIX)
    try:  # the facts' JSON, and after it what the registry may have added (why it was not deployed)
        return dict(json.JSONDecoder().raw_decode(text)[0]) if found else {}
    except json.JSONDecodeError:
        return {}


def _log_stream(version: DeployedVersion) -> LogStream:
    stream = version.stream
    if not isinstance(stream, LogStream):
        raise FleetwatchError(f"v{version.version} is not a logs version")
    return stream


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


# --- scoring -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScoredLogs:
    """One target's lines scored by a version: columns, templates and the session verdicts."""

    corpus: LogCorpus
    columns: LogColumns
    templates: np.ndarray  # each line's template index (UNSEEN = -1)
    verdicts: SessionVerdicts
    stream: LogStream
    raw_features: np.ndarray

    @property
    def line_count(self) -> int:
        """Rows that are lines (the others are the sessions' end records)."""
        return int(np.count_nonzero(~self.columns.ends_session))


@dataclass(frozen=True)
class KeyPredictor:
    """A version's DeepLog detector and the feature columns (the key history, then the key) it reads."""

    name: str
    detector: DeepLogDetector
    columns: np.ndarray

    @classmethod
    def of_version(cls, version: DeployedVersion) -> list[KeyPredictor]:
        """The version's detectors of kind deeplog, unwrapped from the column selection training put round them."""
        found = []
        for entry in version.manifest.detectors:
            fitted = version.bundle.detectors[entry.name]
            if isinstance(fitted, OnFeatures) and isinstance(fitted.detector_, DeepLogDetector):
                found.append(cls(entry.name, fitted.detector_, fitted.columns_))
            elif isinstance(fitted, DeepLogDetector):
                found.append(cls(entry.name, fitted, np.arange(len(version.feature_names))))
        return found

    def rows(self, version: DeployedVersion, raw_features: np.ndarray) -> np.ndarray:
        """The detector's input for these lines: their scaled features (keys pass the scaler unchanged), its columns."""
        if not len(raw_features):
            return np.zeros((0, len(self.columns)))
        return version.bundle.scaler.transform(raw_features)[:, self.columns]


def score_logs(version: DeployedVersion, corpus: LogCorpus) -> ScoredLogs:
    stream = _log_stream(version)
    corpus, columns, raw, templates = corpus.featurized(stream)
    verdicts = SessionVerdicts.of(version, columns.session, columns.timestamp_s, raw)
    return ScoredLogs(corpus, columns, templates, verdicts, stream, raw)


@dataclass(frozen=True)
class InferenceResult:
    target: Path
    out_dir: Path
    lines: int
    sessions: int
    anomalous_sessions: int
    unseen_lines: int
    report: Path


def infer_logs(
    version: DeployedVersion,
    targets: Sequence[Path],
    out_dir: Path,
    scan: ScanOptions,
    top_n: int = 20,
    progress: Progress = _quiet,
) -> list[InferenceResult]:
    """Seed 002's batch inference: every target scored and written to its own folder under `out_dir`."""
    results = []
    used: set[str] = set()
    for target in targets:
        name = target.name.removesuffix(".gz") or "logs"
        while name in used:
            name += "_"
        used.add(name)
        corpus = read_corpus(target, scan, progress)
        progress(f"scoring {len(corpus.lines):,} lines of {target}", 0, 0)
        scored = score_logs(version, corpus)
        folder = out_dir / name
        progress(f"writing {folder}", 0, 0)
        results.append(write_inference(version, scored, folder, top_n))
    return results


def write_inference(version: DeployedVersion, scored: ScoredLogs, folder: Path, top_n: int) -> InferenceResult:
    (folder / "results").mkdir(parents=True, exist_ok=True)
    columns, verdicts, corpus = scored.columns, scored.verdicts, scored.corpus
    template_text = np.asarray(scored.stream.template_text(scored.templates), dtype=object)
    timestamps = pa.array((columns.timestamp_s * 1000).astype("datetime64[ms]"), pa.timestamp("ms", tz="UTC"))
    pq.write_table(
        pa.table(
            {
                "event_id": columns.event_id.tolist(),
                "file": [corpus.files[i].source if i >= 0 else None for i in corpus.file_of_line.tolist()],
                "line": corpus.line_number,
                "timestamp": timestamps,
                "source_host": columns.source_host.tolist(),
                "level": [line.level for line in corpus.lines],
                "component": columns.component.tolist(),
                "session": columns.session.tolist(),
                "template_id": scored.templates,
                "template": template_text.tolist(),
                "message": columns.message.tolist(),
                "is_alert": verdicts.line_scores.alert,
            }
        ),
        folder / "parsed.parquet",
    )
    predictors = {predictor.name: predictor for predictor in KeyPredictor.of_version(version)}
    for j, name in enumerate(verdicts.detector_names):
        worst = verdicts.worst_line[:, j]
        table = _session_table(scored, worst, verdicts.scores[:, j], np.full(len(worst), verdicts.offsets[j]),
                               verdicts.flags[:, j], "shadow" if name in verdicts.shadow else "alerting")  # fmt: skip
        if name in predictors:
            table = _with_expected_keys(table, version, scored, predictors[name], worst)
        pq.write_table(table, folder / "results" / f"{name}.parquet")
    pq.write_table(
        _session_table(scored, verdicts.fleet_line, verdicts.fleet_margin, np.zeros(len(verdicts.keys)),
                       verdicts.alert, "combined" if verdicts.combined else "any detector"),
        folder / "results" / "fleet.parquet",
    )  # fmt: skip
    is_line = ~columns.ends_session
    hours = ((columns.timestamp_s[is_line] // 3600) % 24).astype(np.int64)
    line_alert = verdicts.line_scores.alert[is_line]
    by_hour = Concentration.of(HOUR, hours, line_alert)
    session_hours = ((verdicts.first_s // 3600) % 24).astype(np.int64)
    anomalous_by_hour = np.bincount(session_hours[verdicts.alert], minlength=24)
    sessions_by_hour = np.bincount(session_hours, minlength=24)
    pq.write_table(
        pa.table(
            {
                "hour": np.arange(24),
                "lines": np.bincount(hours, minlength=24),
                "alerting_lines": np.bincount(hours, weights=line_alert, minlength=24).astype(np.int64),
                "sessions_started": sessions_by_hour,
                "anomalous_sessions_started": anomalous_by_hour,
            }
        ),
        folder / "hourly.parquet",
    )
    report = write_log_report(version, scored, folder, top_n, by_hour, sessions_by_hour, anomalous_by_hour)
    return InferenceResult(
        corpus.target, folder, scored.line_count, len(verdicts.keys), int(verdicts.alert.sum()),
        int(np.count_nonzero(scored.templates == UNSEEN)), report,
    )  # fmt: skip


def _session_table(
    scored: ScoredLogs, worst: np.ndarray, score: np.ndarray, threshold: np.ndarray, verdict: np.ndarray, mode: str
) -> pa.Table:
    """One row per session key: its worst line under one detector (or the fleet), score, threshold, verdict."""
    verdicts, columns = scored.verdicts, scored.columns
    return pa.table(
        {
            "session": verdicts.keys.tolist(),
            "lines": verdicts.lines,
            "sessions": verdicts.sessions,
            "first_time": pa.array((verdicts.first_s * 1000).astype("datetime64[ms]"), pa.timestamp("ms", tz="UTC")),
            "last_time": pa.array((verdicts.last_s * 1000).astype("datetime64[ms]"), pa.timestamp("ms", tz="UTC")),
            "score": score,
            "threshold": threshold,
            "anomalous": verdict,
            "mode": [mode] * len(verdict),
            "worst_event_id": columns.event_id[worst].tolist(),
            "worst_template": scored.stream.template_text(scored.templates[worst]),
            "worst_message": columns.message[worst].tolist(),
        }
    )


def _with_expected_keys(
    table: pa.Table, version: DeployedVersion, scored: ScoredLogs, predictor: KeyPredictor, worst: np.ndarray
) -> pa.Table:
    """A DeepLog detector's session table with the key of each session's worst line and the `top_g` keys it
    expected there (most probable first), their probabilities and templates."""
    rows = predictor.rows(version, scored.raw_features[worst])
    keys, probabilities = predictor.detector.expected_keys(rows)
    texts = scored.stream.key_text(keys.reshape(-1))
    width = keys.shape[1]
    return (
        table.append_column("worst_key", pa.array(np.rint(rows[:, -1]).astype(np.int64)))
        .append_column("expected_keys", pa.array(keys.tolist(), pa.list_(pa.int64())))
        .append_column("expected_probabilities", pa.array(probabilities.tolist(), pa.list_(pa.float64())))
        .append_column("expected_templates", pa.array([texts[i : i + width] for i in range(0, len(texts), width)]))
    )


SESSION_HEADER = ["session", "lines", "first line", "detectors below threshold", "worst line's template", "worst line"]


def write_log_report(
    version: DeployedVersion,
    scored: ScoredLogs,
    folder: Path,
    top_n: int,
    by_hour: Concentration,
    sessions_by_hour: np.ndarray,
    anomalous_by_hour: np.ndarray,
) -> Path:
    """`report.md` with charts: anomalous sessions, top templates, timeline, hour of day."""
    verdicts, columns, corpus = scored.verdicts, scored.columns, scored.corpus
    alert = verdicts.alert
    session_rows, session_chart = _anomalous_sessions(scored, folder, top_n)
    template_rows, template_chart = _top_templates(scored, folder)
    bucket, timeline_chart = _timeline(scored, folder)
    hour_chart = save_chart(
        folder / "by-hour-of-day.png",
        "share of lines that alerted, by hour of day (UTC)",
        [str(v) for v in by_hour.values],
        by_hour.rates.tolist(),
    )
    hour_rows = [
        [
            str(h),
            f"{sessions_by_hour[h]:,}",
            f"{anomalous_by_hour[h]:,}",
            f"{anomalous_by_hour[h] / sessions_by_hour[h]:.1%}",
        ]
        for h in range(24)
        if sessions_by_hour[h]
    ]
    detector_rows = [
        [
            name,
            "shadow" if name in verdicts.shadow else "alerting",
            f"{verdicts.offsets[j]:.4g}",
            f"{verdicts.flags[:, j].sum():,}",
        ]
        for j, name in enumerate(verdicts.detector_names)
    ]
    expectations = [
        _expected_and_seen_keys(version, scored, predictor) for predictor in KeyPredictor.of_version(version)
    ]
    unseen = int(np.count_nonzero(scored.templates == UNSEEN))
    left_out = f" ({corpus.left_out} more left out)" if corpus.left_out else ""
    charts = [*session_chart, template_chart, timeline_chart, hour_chart]
    text = "\n\n".join(
        [
            f"# Log inference report: {corpus.target}",
            f"Model version v{version.version} ({STREAM}); {len(corpus.files)} file(s){left_out}, "
            f"{scored.line_count:,} lines ({corpus.unmatched:,} not matching their format, {corpus.untimed:,} "
            "without a parsable time), "
            f"{_iso(float(columns.timestamp_s.min()))} to {_iso(float(columns.timestamp_s.max()))}; "
            f"{len(verdicts.keys):,} sessions, **{int(alert.sum()):,} anomalous ({alert.mean():.2%})**; "
            f"{unseen:,} lines ({unseen / scored.line_count:.2%}) match no saved template.",
            "A session is as anomalous as its worst line (every line is scored with its session so far) or its end "
            "(the complete session, scored once more at the end of the input).",
            f"## Anomalous sessions (top {len(session_rows)} by depth below the fleet threshold)",
            markdown_table(SESSION_HEADER, session_rows) if session_rows else "None.",
            "## Detectors",
            markdown_table(["detector", "mode", "threshold", "anomalous sessions"], detector_rows),
            *expectations,
            "## Top templates",
            markdown_table(["id", "template", "lines", "share", "lines in anomalous sessions"], template_rows),
            "## Timeline",
            f"Anomalous sessions by the {_duration(bucket)} they started in: see `{timeline_chart.name}`.",
            "## Hour of day (UTC)",
            markdown_table(["hour", "sessions started", "anomalous", "rate"], hour_rows),
            by_hour.markdown().replace("### By hour of day", "### Lines that alerted, by hour of day"),
            *(f"![{chart.stem}]({chart.name})" for chart in charts),
        ]
    )
    path = folder / "report.md"
    path.write_text(text + "\n")
    return path


def _anomalous_sessions(scored: ScoredLogs, folder: Path, top_n: int) -> tuple[list[list[str]], list[Path]]:
    """The most anomalous sessions (deepest below the fleet threshold) as table rows, and their chart."""
    verdicts, columns = scored.verdicts, scored.columns
    anomalous = np.flatnonzero(verdicts.alert)
    ranked = anomalous[np.argsort(verdicts.fleet_margin[anomalous], kind="stable")][:top_n]
    alerting = ~np.isin(np.array(verdicts.detector_names), list(verdicts.shadow))
    fired = verdicts.flags & alerting[None, :]
    rows = []
    for i in ranked.tolist():
        line = int(verdicts.fleet_line[i])
        names = [name for name, flag in zip(verdicts.detector_names, fired[i].tolist(), strict=True) if flag]
        template = scored.stream.template_text(scored.templates[[line]])[0]
        rows.append(
            [
                str(verdicts.keys[i]),
                f"{verdicts.lines[i]:,}",
                _iso(float(verdicts.first_s[i])),
                ", ".join(names) or "(the combined score only)",
                _short(template),
                _short(str(columns.message[line])),
            ]
        )
    if not len(ranked):
        return rows, []
    chart = save_chart(
        folder / "anomalous-sessions.png",
        "most anomalous sessions (depth below the fleet threshold)",
        [str(verdicts.keys[i])[-18:] for i in ranked.tolist()],
        (-verdicts.fleet_margin[ranked]).tolist(),
    )
    return rows, [chart]


def _expected_and_seen_keys(version: DeployedVersion, scored: ScoredLogs, predictor: KeyPredictor) -> str:
    """For the most anomalous sessions (the fleet's, then those only DeepLog judged anomalous), the lines whose key
    was not among DeepLog's `top_g` predictions: the key that came, with its probability, and the keys it expected."""
    verdicts, corpus = scored.verdicts, scored.corpus
    detector = predictor.detector
    j = verdicts.detector_names.index(predictor.name)
    judged = np.flatnonzero(verdicts.alert | verdicts.flags[:, j])
    depth = verdicts.scores[judged, j] - verdicts.offsets[j]
    rank = np.full(len(verdicts.keys), len(judged))
    rank[judged[np.lexsort((depth, verdicts.fleet_margin[judged]))]] = np.arange(len(judged))
    session_of_line = np.searchsorted(verdicts.keys, scored.columns.session)
    candidates = np.flatnonzero(rank[session_of_line] < len(judged))
    flagged = candidates[detector.top_g_flags(predictor.rows(version, scored.raw_features[candidates]))]
    flagged = flagged[np.lexsort((flagged, rank[session_of_line[flagged]]))]  # by session rank, then line order
    session = session_of_line[flagged]
    opens = np.r_[True, session[1:] != session[:-1]] if len(flagged) else np.zeros(0, dtype=bool)
    group = np.cumsum(opens) - 1
    position = np.arange(len(flagged)) - np.flatnonzero(opens)[group]
    shown = flagged[(group < EXPECTED_SESSIONS) & (position < EXPECTED_LINES)]
    title = f"## DeepLog ({predictor.name}): expected and seen keys"
    if not len(shown):
        return f"{title}\n\nNo line of an anomalous session has a key outside DeepLog's top {detector.top_g}."
    rows = predictor.rows(version, scored.raw_features[shown])
    seen_p = np.exp(detector.score_samples(rows))
    keys, probabilities = detector.expected_keys(rows)
    seen = scored.stream.key_text(np.rint(rows[:, -1]).astype(np.int64))
    expected = scored.stream.key_text(keys.reshape(-1))
    out = [
        title,
        f"Anomalous sessions (at most {EXPECTED_SESSIONS}: the fleet's by depth below its threshold, then those only "
        f"{predictor.name} judged anomalous) with lines whose key was not among the {detector.top_g} keys DeepLog "
        f"expected after the session's previous {detector.history} keys; at most {EXPECTED_LINES} such lines each, "
        "with the key that came (its probability) and the expected keys (theirs).",
    ]
    width = keys.shape[1]
    for i, line in enumerate(shown.tolist()):
        key = session_of_line[line]
        if i == 0 or key != session_of_line[shown[i - 1]]:
            verdict = "anomalous" if verdicts.alert[key] else f"anomalous for {predictor.name} only"
            total = np.count_nonzero(session == key)
            out.append(f"### {verdicts.keys[key]} ({verdict}; {total:,} unexpected key(s))")
        (where,) = corpus.where(np.array([line]))
        guesses = " · ".join(
            f"`{_short(text, 60)}` {p:.3f}"
            for text, p in zip(expected[i * width : (i + 1) * width], probabilities[i].tolist(), strict=True)
        )
        out.append(f"- {where}: seen `{_short(seen[i], 60)}` ({seen_p[i]:.2g}); expected {guesses}")
    return "\n\n".join(out)


def _top_templates(scored: ScoredLogs, folder: Path, top: int = 15) -> tuple[list[list[str]], Path]:
    """The most frequent templates of the target with their lines in anomalous sessions, and their chart."""
    verdicts, columns = scored.verdicts, scored.columns
    ids, counts = np.unique(scored.templates[~columns.ends_session], return_counts=True)
    chosen = np.argsort(-counts, kind="stable")[:top]
    in_anomalous = verdicts.alert[np.searchsorted(verdicts.keys, columns.session)]
    texts = scored.stream.template_text(ids[chosen])
    rows = [
        [
            f"T{ids[rank]}" if ids[rank] != UNSEEN else "unseen",
            _short(text, 90),
            f"{counts[rank]:,}",
            f"{counts[rank] / scored.line_count:.1%}",
            f"{np.count_nonzero((scored.templates == ids[rank]) & in_anomalous):,}",
        ]
        for rank, text in zip(chosen.tolist(), texts, strict=True)
    ]
    chart = save_chart(
        folder / "top-templates.png",
        f"lines per template (top {top})",
        [row[0] for row in rows],
        counts[chosen].tolist(),
    )
    return rows, chart


def _timeline(scored: ScoredLogs, folder: Path) -> tuple[int, Path]:
    """Anomalous sessions per time bucket (by the bucket of their first line), as a line chart."""
    verdicts, seconds = scored.verdicts, scored.columns.timestamp_s
    bucket = _bucket_seconds(max(float(seconds.max() - seconds.min()), 1.0))
    start = math.floor(float(seconds.min()) / bucket) * bucket
    of_session = ((verdicts.first_s - start) // bucket).astype(np.int64)
    counts = np.bincount(of_session[verdicts.alert], minlength=int(of_session.max()) + 1)
    labels = [datetime.fromtimestamp(start + b * bucket, UTC).strftime("%m-%d %H:%M") for b in range(len(counts))]
    title = f"anomalous sessions started per {_duration(bucket)}"
    return bucket, save_chart(folder / "timeline.png", title, labels, counts.tolist(), kind="line")


def _short(text: str, limit: int = 70) -> str:
    text = text.replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _bucket_seconds(span_s: float) -> int:
    """A round bucket size that cuts the span into at most about 48 buckets."""
    for size in (60, 300, 900, 3600, 4 * 3600, 86400, 7 * 86400):
        if span_s / size <= 48:
            return size
    return 30 * 86400


def _duration(seconds: int) -> str:
    if seconds < 3600:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h" if seconds < 86400 else f"{seconds // 86400} d"


# --- validation and comparison --------------------------------------------------------------------------------
@dataclass(frozen=True)
class LogValidation:
    """A version on labelled (or unlabelled) logs: session-level metrics and the quality score's components."""

    version: int
    sessions: int
    labelled: int
    evaluation: FleetEvaluation | None
    components: dict[str, float]  # each in [0, 1]; the score is their mean

    @property
    def score(self) -> float:
        return 100.0 * float(np.mean(list(self.components.values())))

    def markdown(self) -> str:
        lines = [
            f"v{self.version} on {self.sessions:,} sessions ({self.labelled:,} labelled): quality score "
            f"**{self.score:.1f} / 100**, the mean of:",
            *(f"- {name}: {value:.3f}" for name, value in self.components.items()),
        ]
        if self.evaluation is not None:
            lines = [self.evaluation.to_markdown(), *lines]
        return "\n".join(lines)


def validate_logs(version: DeployedVersion, scored: ScoredLogs, labels: dict[str, bool] | None) -> LogValidation:
    """Session-level quality: with labels, precision/recall/F1 per detector and for the fleet, the normal sessions'
    false-positive rate and template coverage of their lines; without, the data are taken as normal."""
    verdicts = scored.verdicts
    known = np.zeros(len(verdicts.keys), dtype=bool)
    truth = np.zeros(0, dtype=bool)
    evaluation = None
    if labels is not None:
        known, truth = session_labels_for(verdicts.keys, labels)
        if not known.any():
            raise FleetwatchError("no session of the logs has a label in the labels file")
        evaluation = verdicts.evaluate(truth, np.flatnonzero(known))
    normal_keys = np.flatnonzero(known)[~truth] if labels is not None else np.arange(len(verdicts.keys))
    line_key = np.searchsorted(verdicts.keys, scored.columns.session)
    normal_lines = np.isin(line_key, normal_keys)
    components = {
        "template coverage (lines of normal sessions matching a saved template)": float(
            np.mean(scored.templates[normal_lines] != UNSEEN) if normal_lines.any() else 0.0
        ),
        "specificity (1 - false-positive rate on normal sessions)": float(
            1.0 - verdicts.alert[normal_keys].mean() if len(normal_keys) else 0.0
        ),
    }
    if evaluation is not None:
        components["fleet recall on labelled anomalous sessions"] = evaluation.fleet.recall
        components["fleet precision"] = evaluation.fleet.precision
    return LogValidation(version.version, len(verdicts.keys), int(known.sum()), evaluation, components)
