"""The Stream interface: everything the engine needs to know about one kind of event, and nothing more.

The engine (worker loop, trainer round, batch mode, registry, output records, summarizer windows)
knows no stream. A stream supplies:

- its event contract, as a batch decoder that never raises (`decode`: bad records come back as
  `DecodeError` values with the reason and the original bytes);
- its columns (`columns`): a batch as arrays, with the entity key and the event time every stream has;
- its feature spec (names and version) and its entity state (`state_layout`: a fixed-size record);
- `advance`, the one function that takes the entities' state before a batch and the batch, and
  returns every event's raw features and the state after it: called once over a whole time-ordered
  history offline (training, batch mode), and per micro-batch online (worker), so the two cannot drift;
- optionally `learn`: what featurization learns from a training history (log templates), kept inside
  the signed version; `feature_groups`: which named part of the event (a sensor) each feature follows,
  so alerts can name the parts that contribute most; `table_payloads`: how rows of a tabular file
  (Parquet, CSV) become its payloads; `spark_partition_key`: what the Spark path groups such rows by;
- its default detectors, the event fields an alert report headlines, the dimensions its summaries
  are windowed by, its default topics, and a synthetic generator with ground truth kept apart.

A stream is one subpackage of `shared/streams/` implementing this class, plus one line in
`shared/streams/catalog.py` (or a `stream_plugins` entry in the configuration).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, Self, TypeVar

import numpy as np
import pyarrow as pa

from shared.contracts import DecodedBatch, DecodeError
from shared.entity_state import EntityStates, StateLayout
from shared.event_files import table_payloads

if TYPE_CHECKING:
    from pyspark.sql import Column


class EventColumns(Protocol):
    """A batch of one stream's events as arrays; what the engine itself reads of any stream's columns."""

    @property
    def event_id(self) -> np.ndarray: ...

    @property
    def entity(self) -> np.ndarray:
        """The key whose history the features follow (user, session, asset): object array of str."""
        ...

    @property
    def event_time_s(self) -> np.ndarray:
        """Each event's own time, seconds since the epoch (float64)."""
        ...

    def take(self, rows: np.ndarray) -> Self:
        """The columns of `rows`, in that order."""
        ...

    def __len__(self) -> int: ...


class ArrayColumns:
    """Base of a stream's columns as a frozen dataclass whose every field holds one entry per event: selecting,
    joining and counting rows are the same for all of them.

    >>> @dataclass(frozen=True)
    ... class Pair(ArrayColumns):
    ...     a: np.ndarray
    ...     b: np.ndarray
    >>> both = Pair(np.array([1, 2]), np.array(["x", "y"])).followed_by(Pair(np.array([3]), np.array(["z"])))
    >>> both.take(np.array([2, 0])), len(both)
    (Pair(a=array([3, 1]), b=array(['z', 'x'], dtype='<U1')), 3)
    """

    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    def take(self, rows: np.ndarray) -> Self:
        """The columns of `rows`, in that order."""
        return dataclasses.replace(self, **{f.name: getattr(self, f.name)[rows] for f in dataclasses.fields(self)})

    def followed_by(self, other: Self) -> Self:
        """These rows, then `other`'s."""
        return dataclasses.replace(
            self,
            **{
                f.name: np.concatenate([getattr(self, f.name), getattr(other, f.name)])
                for f in dataclasses.fields(self)
            },
        )

    def __len__(self) -> int:
        return len(getattr(self, dataclasses.fields(self)[0].name))


EventT = TypeVar("EventT")
ColumnsT = TypeVar("ColumnsT", bound=EventColumns)


@dataclass(frozen=True)
class FeatureSpec:
    """Names of the raw feature columns `advance` returns, and the version of their definitions."""

    version: int
    names: tuple[str, ...]

    def mismatch(self, version: int, names: Sequence[str]) -> str | None:
        """Why a model trained on (version, names) cannot score this spec's features; None if it can."""
        if version != self.version or tuple(names) != self.names:
            return f"trained on feature spec {version} ({len(names)} features); this build computes spec " + (
                f"{self.version} ({len(self.names)} features)"
            )
        return None


@dataclass(frozen=True)
class FeatureGroups:
    """Which named group (a sensor) each feature column follows; alerts report each group's share of the residual.

    `of_feature[j]` is the index into `names` of feature column j, or -1 for a column of no group."""

    names: tuple[str, ...]
    of_feature: np.ndarray


@dataclass(frozen=True)
class StreamTopics:
    """Default topic names; a deployment overrides them in the stream's settings."""

    input: str
    summary: str


@dataclass(frozen=True)
class WindowDimensions:
    """How the summarizer windows a stream's scored events: fields of the event as it arrived (JSON)."""

    entity: str  # the field counted as distinct entities and top entities
    time: str  # RFC 3339 event time: windows follow it, not Kafka's timestamps
    dimensions: tuple[str, ...]  # a window per combination of these fields' values
    measure: str | None = None  # a numeric field summed and averaged per window


@dataclass(frozen=True)
class SyntheticEvents:
    """Generated events as the producers would send them, and their ground truth, kept apart."""

    payloads: list[bytes]
    keys: list[str]
    event_id: np.ndarray
    is_anomaly: np.ndarray
    anomaly_kind: np.ndarray  # "" for normal events

    def labels(self) -> dict[str, tuple[bool, str]]:
        return dict(
            zip(
                self.event_id.tolist(),
                zip(self.is_anomaly.tolist(), self.anomaly_kind.tolist(), strict=True),
                strict=True,
            )
        )


@dataclass(frozen=True)
class OfflineBatch(Generic[ColumnsT]):
    """A whole history featurized at once: valid events in time order, their raw features, the rejects."""

    columns: ColumnsT
    raw_features: np.ndarray
    errors: list[DecodeError]


class Stream(ABC, Generic[EventT, ColumnsT]):
    """One kind of event, as the engine sees it. Subclasses set the attributes and implement the methods."""

    name: str
    feature_spec: FeatureSpec
    state_layout: StateLayout
    topics: StreamTopics
    windows: WindowDimensions
    alert_fields: tuple[str, ...]
    """Columns of `report_table` an alert report headlines (batch report's top anomalies)."""
    default_detectors: tuple[Mapping[str, Any], ...]
    """`{name, kind, params[, features]}` entries, as a stream's `detectors` setting lists them."""
    categorical_features: tuple[str, ...] = ()
    """Features that are identifiers, not quantities (a log line's template key): they reach detectors unscaled,
    and only the detectors whose entry names them."""
    default_alert_rule: str = "combined"
    """The `alert_rule` setting's value when a stream's settings do not set it."""

    @abstractmethod
    def decode(self, payloads: Sequence[bytes | None]) -> DecodedBatch[EventT]:
        """Raw payloads to events; never raises for bad input."""

    @abstractmethod
    def columns(self, events: Sequence[EventT]) -> ColumnsT:
        """Decoded events as columns, in the given order."""

    @abstractmethod
    def advance(self, before: EntityStates, columns: ColumnsT) -> tuple[np.ndarray, EntityStates]:
        """Raw features of every event (rows in input order, `feature_spec.names` columns), computed from
        each entity's history before the event, and the states of the batch's entities after it. The engine
        calls it with at least one event."""

    @abstractmethod
    def report_table(self, columns: ColumnsT) -> dict[str, Any]:
        """Per-event columns worth keeping beside the scores (batch mode's Parquet and report)."""

    @abstractmethod
    def synthetic(self, events: int, entities: int, anomaly_rate: float, seed: int) -> SyntheticEvents:
        """Labelled synthetic events in time order, for demos and tests."""

    def learn(self, history: ColumnsT) -> Stream[EventT, ColumnsT]:
        """This stream with what its featurization learns from a time-ordered training history (a log stream's
        templates). The version keeps the learned stream inside its signed artifact and scores with it, so
        every worker featurizes alike; a stream that learns nothing returns itself."""
        return self

    def configured(self, parameters: Mapping[str, int]) -> Stream[EventT, ColumnsT]:
        """This stream, before learning, with the featurization parameters of its `featurization` setting (a sensor
        stream's window size and step); ValueError names one it does not take or a value it refuses. Training
        configures the catalog's stream, and the version keeps the result: workers never configure it."""
        if parameters:
            raise ValueError(f"the {self.name} stream takes no featurization parameters; got {', '.join(parameters)}")
        return self

    def training_rows(self, history: ColumnsT) -> np.ndarray:
        """Which events of a time-ordered history the detectors fit on (bool mask); all of them by default. Scoring,
        calibration and evaluation still take every event."""
        return np.ones(len(history), dtype=bool)

    def feature_spec_mismatch(self, version: int, names: Sequence[str]) -> str | None:
        """Why no configuration of this stream computes the features (version, names) a version was trained on;
        None if one does. Read before a version is unpickled."""
        return self.feature_spec.mismatch(version, names)

    def idle_deadlines(self, states: EntityStates) -> np.ndarray | None:
        """Per entity, the event time after which its open session is idle (NaN: none open), for the workers
        to end it (`shared.idle_sessions`); None for a stream without sessions to end."""
        return None

    def end_records(self, states: EntityStates) -> list[bytes]:
        """The input records that end these entities' idle sessions (a stream with `idle_deadlines` makes them)."""
        raise NotImplementedError(f"the {self.name} stream has no sessions to end")

    def feature_groups(self) -> FeatureGroups | None:
        """The named groups of the feature columns (a sensor stream's sensors), or None: alerts name features only."""
        return None

    def table_payloads(self, table: pa.Table) -> list[bytes]:
        """Rows of a tabular event file (Parquet, CSV) as this stream's payloads; by default, one row is one event."""
        return table_payloads(table)

    def spark_partition_key(self, table_columns: Sequence[str]) -> str | Column:
        """What the Spark path partitions a table's rows by (`table_columns`: its column names), as a column's name
        or a Spark expression: equal for all rows of one entity, so each partition holds whole histories. By default
        the entity field; a stream that derives its entity from several fields (a log line's session) derives it."""
        return self.windows.entity

    def alert_context(self, columns: ColumnsT, raw_features: np.ndarray) -> list[dict[str, Any]]:
        """What an alert report says about each of these alerted events beyond the event itself (a log line's
        session and its templates so far); nothing by default."""
        return [{} for _ in range(len(columns))]

    @property
    def fingerprint(self) -> str:
        """Equal fingerprints compute equal features for equal events (a learned stream adds what it learned)."""
        return f"{self.name}:{self.feature_spec.version}"

    def empty_states(self) -> EntityStates:
        return EntityStates.empty(self.state_layout)

    def history(self, payloads: Sequence[bytes | None]) -> tuple[ColumnsT, list[DecodeError]]:
        """Decode a whole history and order it by event time: what `learn` and `offline` start from."""
        decoded = self.decode(payloads)
        columns = self.columns(decoded.events)
        return columns.take(np.argsort(columns.event_time_s, kind="stable")), decoded.errors

    def trained_on(self, payloads: Sequence[bytes | None]) -> Stream[EventT, ColumnsT]:
        """This stream after learning from a history of payloads (`learn` on their time-ordered columns)."""
        return self.learn(self.history(payloads)[0])

    def offline(self, payloads: Sequence[bytes | None]) -> OfflineBatch[ColumnsT]:
        """Decode a whole history, order it by event time, featurize it from empty states."""
        columns, errors = self.history(payloads)
        if not len(columns):  # nothing valid (a Spark partition without rows, malformed records only)
            return OfflineBatch(columns, np.empty((0, len(self.feature_spec.names))), errors)
        raw, _ = self.advance(self.empty_states(), columns)
        return OfflineBatch(columns, raw, errors)
