"""Server log lines (seed 002) as a Stream: Drain3 templates learned at training, sessions in Redis.

The catalog's stream has learned nothing (every line is an unseen template); `learn` mines the training
history's templates, and the version keeps that learned stream, its session rule included, so training,
the workers and `fleetwatch logs infer` group and featurize lines alike.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from shared.contracts import DecodedBatch
from shared.entity_state import EntityStates
from shared.pipeline import ArrayColumns, Stream, StreamTopics, SyntheticEvents, WindowDimensions
from shared.streams.logs.contract import LogLine, decode_log_lines
from shared.streams.logs.host_windows import SLIDING_LAYOUT, advance_sessions_and_host_windows
from shared.streams.logs.sessions import (
    COUNT_FEATURES,
    FEATURE_NAMES,
    FEATURE_SPEC,
    HISTORY_KEYS,
    KEY_FEATURES,
    SESSION_LAYOUT,
    Featurization,
    SessionRule,
    advance_sessions,
)
from shared.streams.logs.synthetic import generate_log_lines, payloads
from shared.streams.logs.templates import SESSION_END, UNSEEN, Masking, TemplateVocabulary

if TYPE_CHECKING:
    from pyspark.sql import Column


@dataclass(frozen=True)
class LinesWithEnds:
    """Log lines followed by the end records of the sessions they leave idle, with the columns and raw features of
    all of them in that order (`LogStream.with_session_ends`)."""

    lines: list[LogLine]
    ends: list[LogLine]
    columns: LogColumns
    raw: np.ndarray
    templates: np.ndarray  # each row's template index (`LogStream.templates_of`)

    @property
    def rows(self) -> list[LogLine]:
        return [*self.lines, *self.ends]


@dataclass(frozen=True)
class LogColumns(ArrayColumns):
    event_id: np.ndarray
    source_host: np.ndarray
    component: np.ndarray
    message: np.ndarray
    timestamp_s: np.ndarray
    session: np.ndarray
    host_window: np.ndarray  # bool: keyed by its host's time window (no session id, no match of the rule's pattern)
    ends_session: np.ndarray  # bool: an end-of-session record, not a line

    @property
    def entity(self) -> np.ndarray:
        return self.session

    @property
    def event_time_s(self) -> np.ndarray:
        return self.timestamp_s


def _objects(values: Sequence[Any]) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


class LogStream(Stream[LogLine, LogColumns]):
    name = "logs"
    feature_spec = FEATURE_SPEC
    topics = StreamTopics(input="events.logs", summary="summary.logs")
    windows = WindowDimensions(entity="session_id", time="timestamp", dimensions=("source_host", "component"))
    alert_fields = ("event_id", "session", "source_host", "template", "message")
    default_detectors = (
        # The per-line check: an unseen or very rare template alerts at once, before its session closes.
        {"name": "new_template", "kind": "feature_extreme", "params": {},
         "features": ["line_rarity", "session_unseen"]},
        # Count vectors: off the normal sessions' subspace, and far from every normal session.
        {"name": "pca", "kind": "pca", "params": {}},
        {"name": "knn", "kind": "knn", "params": {"n_neighbors": 5, "max_train_samples": 5_000, "random_state": 0}},
        # Baseline statistics: each template's count against its spread in normal sessions.
        {"name": "count_deviation", "kind": "robust_zscore", "params": {}},
        # DeepLog: the session's last keys predict this line's key (an LSTM; the `deep` extra trains it).
        {"name": "deeplog", "kind": "deeplog", "params": {"history": HISTORY_KEYS, "random_state": 0},
         "features": list(KEY_FEATURES)},
    )  # fmt: skip
    categorical_features = KEY_FEATURES
    # The detectors are specialists (an unseen template, a key the history did not predict, a count off the normal
    # sessions): each sees kinds of fault the others do not, so any one of them alerts. A combined score dilutes
    # the one that alone sees a fault: on HDFS sessions it cut recall from 0.997 to 0.632 (README).
    default_alert_rule = "any_detector"

    def __init__(self, rule: SessionRule | None = None, vocabulary: TemplateVocabulary | None = None) -> None:
        self.rule = rule or SessionRule()
        self.vocabulary = vocabulary or TemplateVocabulary.empty()
        self._featurization = Featurization.of(self.vocabulary, self.rule)
        self._pattern = re.compile(self.rule.pattern) if self.rule.pattern else None
        self.state_layout = SLIDING_LAYOUT if self.rule.host_windows == "sliding" else SESSION_LAYOUT

    def __getstate__(self) -> dict[str, Any]:
        return {"rule": self.rule, "vocabulary": self.vocabulary}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["rule"], state["vocabulary"])  # type: ignore[misc]

    def learn(self, history: LogColumns, masking: Masking | None = None) -> LogStream:
        """This rule with the templates mined from the history's lines."""
        return LogStream(self.rule, TemplateVocabulary.mine(history.message[~history.ends_session].tolist(), masking))

    @property
    def fingerprint(self) -> str:
        return f"{super().fingerprint}:{self.rule}:{self.vocabulary.fingerprint}"

    def decode(self, payloads: Sequence[bytes | None]) -> DecodedBatch[LogLine]:
        return decode_log_lines(payloads)

    def columns(self, events: Sequence[LogLine]) -> LogColumns:
        seconds = np.array([event.timestamp.timestamp() for event in events], dtype=np.float64)
        keys, host_window = self.session_keys(events, seconds)
        return LogColumns(
            event_id=_objects([event.event_id for event in events]),
            source_host=_objects([event.source_host for event in events]),
            component=_objects([event.component or "-" for event in events]),
            message=_objects([event.message for event in events]),
            timestamp_s=seconds,
            session=_objects(keys),
            host_window=host_window,
            ends_session=np.array([event.ends_session for event in events], dtype=bool),
        )

    def session_keys(self, events: Sequence[LogLine], seconds: np.ndarray) -> tuple[list[str], np.ndarray]:
        """The producer's session id, else the rule's pattern found in the message, else the host's window (its
        fixed window `host@start`, or with sliding windows the host alone); and which keys are hosts' windows."""
        pattern, window, sliding = self._pattern, self.rule.window_s, self.rule.host_windows == "sliding"
        keys, host_window = [], np.zeros(len(events), dtype=bool)
        for row, (event, second) in enumerate(zip(events, seconds.tolist(), strict=True)):  # a regex search a line
            found = pattern.search(event.message) if pattern and not event.session_id else None
            if event.session_id:
                keys.append(event.session_id)
            elif found:
                keys.append(found.group(0))
            else:
                host_window[row] = True
                start = int(second // window) * int(window)
                keys.append(event.source_host if sliding else f"{event.source_host}@{start}")
        return keys, host_window

    def spark_partition_key(self, table_columns: Sequence[str]) -> Column:
        """`session_keys` in Spark SQL, so that lines without a session id spread over partitions: the session id,
        else the pattern's first match (Java's regex engine, with Python's Unicode classes: `(?U)`), else the host,
        not its window: a sliding window reads the host's earlier lines. Cut at the first "@", so that a session id
        equal to a host's fixed window (`host@start`) lands with that host's lines."""
        from pyspark.sql import functions as F  # only the Spark path asks, with PySpark installed

        def field(name: str) -> Column:  # an absent field is null in every row, as in the payloads
            return F.col(name).cast("string") if name in table_columns else F.lit(None).cast("string")

        session, message = field("session_id"), field("message")
        key = F.when(F.length(session) > 0, session)
        if self._pattern:
            pattern = f"(?U){self._pattern.pattern}"
            key = key.when(message.rlike(pattern), F.regexp_extract(message, pattern, 0))  # an empty match counts
        return F.substring_index(key.otherwise(field("source_host")), "@", 1)

    def with_session_ends(self, lines: Sequence[LogLine]) -> LinesWithEnds:
        """The lines (in time order), then the end record of every session they leave open that is idle by their
        last time (what the workers would end once the stream's time passed it: the same records, `end_records`),
        with the columns and raw features of both. A session still running at the end of the lines stays open (the
        next file may go on with it). Each end record is advanced from its session's state after its last line, so
        one pass of template matching serves both."""
        columns = self.columns(lines)
        templates = self.templates_of(columns)
        raw, after = self._advance_with(templates, self.empty_states(), columns)
        ends = self._end_lines(after.selected(self.idle_deadlines(after) <= columns.timestamp_s.max(initial=-np.inf)))
        end_columns = self.columns(ends)
        end_templates = self.templates_of(end_columns)  # end records match nothing: no template matching here
        end_raw, _ = self._advance_with(end_templates, after, end_columns)
        return LinesWithEnds(
            list(lines),
            ends,
            columns.followed_by(end_columns),
            np.vstack([raw, end_raw]),
            np.r_[templates, end_templates],
        )

    def idle_deadlines(self, states: EntityStates) -> np.ndarray:
        records = states.records
        return np.where(records["open"] == 1, records["last_s"] + self.rule.idle_timeout_s, np.nan)

    def end_records(self, states: EntityStates) -> list[bytes]:
        return payloads(self._end_lines(states))

    @staticmethod
    def _end_lines(states: EntityStates) -> list[LogLine]:
        """End records at each session's last line's time (so they continue it), named after the session and
        that time: the same idle session always gets the same event id, offline and in any worker."""
        return [
            LogLine(event_id=f"end-{hashlib.blake2b(f'{key}@{last_s}'.encode(), digest_size=12).hexdigest()}",
                    source_host="fleetwatch-idle", session_id=key,
                    timestamp=datetime.fromtimestamp(last_s, UTC), ends_session=True)
            for key, last_s in zip(states.keys.tolist(), states.records["last_s"].tolist(), strict=True)
        ]  # fmt: skip

    def templates_of(self, columns: LogColumns) -> np.ndarray:
        """Each row's template index: `UNSEEN` for a line none matches, `SESSION_END` for an end-of-session record."""
        templates = np.full(len(columns), SESSION_END, dtype=np.int64)
        lines = np.flatnonzero(~columns.ends_session)
        templates[lines] = self.vocabulary.match(columns.message[lines].tolist())
        return templates

    def advance(self, before: EntityStates, columns: LogColumns) -> tuple[np.ndarray, EntityStates]:
        return self._advance_with(self.templates_of(columns), before, columns)

    def _advance_with(
        self, templates: np.ndarray, before: EntityStates, columns: LogColumns
    ) -> tuple[np.ndarray, EntityStates]:
        """`advance` with the rows' templates already matched (matching is the costly part of featurizing)."""
        if self.rule.host_windows == "sliding":
            return advance_sessions_and_host_windows(
                before, columns.session, columns.timestamp_s, templates, columns.host_window, self._featurization
            )
        return advance_sessions(before, columns.session, columns.timestamp_s, templates, self._featurization)

    def template_text(self, indices: np.ndarray) -> list[str]:
        """Each template index as mined, "(unseen)" for a line none matches, "(session end)" for an end record."""
        names = self.vocabulary.templates
        special = {UNSEEN: "(unseen)", SESSION_END: "(session end)"}
        return [special[i] if i < 0 else names[i] for i in indices.tolist()]

    def key_text(self, keys: np.ndarray) -> list[str]:
        """What each template key (the key features) stands for: `T<index> <template>`, unseen, the end of the
        session (any key past the unseen one), or no line (0: the history before a session's first line)."""
        size = len(self.vocabulary.templates)
        templates = np.where(keys <= size, keys - 1, np.where(keys == size + 1, UNSEEN, SESSION_END))
        texts = self.template_text(np.maximum(templates, SESSION_END))
        return [
            "(no line)" if key == 0 else f"T{key - 1} {text}" if key <= size else text
            for key, text in zip(keys.tolist(), texts, strict=True)
        ]

    def alert_context(self, columns: LogColumns, raw_features: np.ndarray) -> list[dict[str, Any]]:
        """The session, the line's template, the templates of the session's last lines up to this row in order
        (what DeepLog read, this row's last), and the session's templates so far with their counts (the count
        vector the detectors saw; the rarer templates share one count)."""
        keys = np.rint(raw_features[:, [FEATURE_NAMES.index(name) for name in KEY_FEATURES]]).astype(np.int64)
        recent = np.asarray(self.key_text(keys.reshape(-1)), dtype=object).reshape(keys.shape)
        counts = raw_features[:, : len(COUNT_FEATURES)]
        named = self.vocabulary.templates[: len(COUNT_FEATURES) - 1]
        names = [*named, *[""] * (len(COUNT_FEATURES) - 1 - len(named)), "(rarer templates)"]
        column = {name: FEATURE_NAMES.index(name) for name in ("session_lines", "session_unseen")}
        return [
            {
                "session": session,
                "template": template,
                "session_lines": int(row[column["session_lines"]]),
                "session_unseen_lines": int(row[column["session_unseen"]]),
                "recent_templates": [
                    text for key, text in zip(keys[i].tolist(), recent[i].tolist(), strict=True) if key
                ],
                "session_templates": {names[j]: int(counts[i, j]) for j in np.flatnonzero(counts[i]).tolist()},
            }
            for i, (session, template, row) in enumerate(
                zip(columns.session.tolist(), self.template_text(self.templates_of(columns)), raw_features, strict=True)
            )
        ]

    def report_table(self, columns: LogColumns) -> dict[str, Any]:
        return {
            "event_id": columns.event_id.tolist(),
            "session": columns.session.tolist(),
            "source_host": columns.source_host.tolist(),
            "component": columns.component.tolist(),
            "template": self.template_text(self.templates_of(columns)),
            "message": columns.message.tolist(),
        }

    def synthetic(self, events: int, entities: int, anomaly_rate: float, seed: int) -> SyntheticEvents:
        """`events` rows (block sessions of 13 lines or more and their end records; the last session cut off) over
        `entities` hosts."""
        generated = generate_log_lines(events // 12 + 1, entities, anomaly_rate, seed)
        if len(generated.lines) < events:  # many sessions cut short: at least 3 rows each
            generated = generate_log_lines(events // 3 + 1, entities, anomaly_rate, seed)
        lines = generated.lines[:events]
        keys, _ = self.session_keys(lines, np.array([line.timestamp.timestamp() for line in lines]))
        return SyntheticEvents(
            payloads=payloads(lines),
            keys=keys,
            event_id=np.array([line.event_id for line in lines], dtype=object),
            is_anomaly=generated.is_anomaly[: len(lines)],
            anomaly_kind=generated.anomaly_kind[: len(lines)],
        )


LOGS = LogStream()
