"""A model version: the pickled bundle (the stream as trained, scaler, fitted detectors) and its manifest.

The manifest is what people and workers read without unpickling anything: detectors and their
parameters, every threshold method's value and which one is active, shadow or alerting, the feature
spec, the training window, evaluation metrics, parent version and the artifact's hash and signature.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Literal

import joblib
import msgspec
import numpy as np

from shared.detectors import Detector
from shared.detectors.combination import ScoreCombination
from shared.feature_scaler import FeatureScaler
from shared.pipeline import Stream
from shared.thresholds import DetectorThresholds, ThresholdMethod

DetectorMode = Literal["alerting", "shadow"]


class DetectorEntry(msgspec.Struct, kw_only=True):
    name: str
    kind: str
    params: dict[str, Any]
    features: list[str] | None = None  # the columns it sees, when not every non-categorical one
    mode: DetectorMode = "alerting"
    active_method: str = ThresholdMethod.FLEET_BUDGET.value
    thresholds: dict[str, Any] = msgspec.field(default_factory=dict)  # DetectorThresholds.to_dict()
    training_seconds: float = 0.0

    def active_offset(self) -> float:
        return DetectorThresholds.from_dict(self.thresholds).offset(ThresholdMethod(self.active_method))


class TrainingInfo(msgspec.Struct, kw_only=True):
    source: str
    window_start: str | None = None
    window_end: str | None = None
    rows_train: int = 0
    rows_calibration: int = 0
    rows_evaluation: int = 0
    seconds: float = 0.0


class ArtifactRef(msgspec.Struct, kw_only=True):
    version: int  # the version whose bytes these are (a thresholds change reuses its parent's)
    sha256: str
    signature: str
    size: int


class Manifest(msgspec.Struct, kw_only=True):
    stream: str
    version: int
    parent_version: int | None
    created_at: str
    feature_spec_version: int
    feature_names: list[str]
    detectors: list[DetectorEntry]
    training: TrainingInfo
    artifact: ArtifactRef
    evaluation: dict[str, Any] | None = None
    note: str = ""
    combination: dict[str, Any] | None = None  # ScoreCombination.to_dict(); None (older versions): any-detector rule

    def detector(self, name: str) -> DetectorEntry:
        for entry in self.detectors:
            if entry.name == name:
                return entry
        raise KeyError(f"v{self.version} has no detector {name!r}; it has {[d.name for d in self.detectors]}")


@dataclass
class ModelBundle:
    """What the artifact holds: the stream as trained (with what it learned), the fitted feature scaler and the
    fitted detectors by name."""

    stream: Stream[Any, Any]
    scaler: FeatureScaler
    detectors: dict[str, Detector]

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        joblib.dump(self, buffer, compress=3)
        return buffer.getvalue()

    @staticmethod
    def from_verified_bytes(payload: bytes) -> ModelBundle:
        """Unpickle; only ever called on bytes whose hash and signature were checked first."""
        bundle = joblib.load(io.BytesIO(payload))
        if not isinstance(bundle, ModelBundle):
            raise TypeError(f"artifact holds a {type(bundle).__name__}, not a ModelBundle")
        return bundle


@dataclass(frozen=True)
class DeployedVersion:
    """A verified, loaded version ready to score: detectors set to their active thresholds."""

    manifest: Manifest
    bundle: ModelBundle
    combination: ScoreCombination | None = None  # the alert rule when the manifest has one

    @classmethod
    def assemble(cls, manifest: Manifest, bundle: ModelBundle) -> DeployedVersion:
        """Detectors set to the manifest's active thresholds; the feature spec was checked before unpickling."""
        if bundle.stream.name != manifest.stream:
            raise ValueError(f"v{manifest.version}'s artifact featurizes stream {bundle.stream.name!r}")
        missing = [entry.name for entry in manifest.detectors if entry.name not in bundle.detectors]
        if missing:
            raise ValueError(f"v{manifest.version}'s artifact lacks detectors {missing}")
        for entry in manifest.detectors:
            bundle.detectors[entry.name].set_offset(entry.active_offset())
        combination = ScoreCombination.from_dict(manifest.combination) if manifest.combination else None
        return cls(manifest, bundle, combination)

    @property
    def version(self) -> int:
        return self.manifest.version

    @property
    def stream(self) -> Stream[Any, Any]:
        """The stream that featurizes for this version: the catalog's, with what training taught it."""
        return self.bundle.stream

    @property
    def feature_names(self) -> list[str]:
        return self.manifest.feature_names

    @property
    def detector_names(self) -> list[str]:
        return [entry.name for entry in self.manifest.detectors]

    @property
    def alerting_mask(self) -> np.ndarray:
        return np.array([entry.mode == "alerting" for entry in self.manifest.detectors])

    @property
    def offsets(self) -> np.ndarray:
        return np.array([self.bundle.detectors[name].offset_ for name in self.detector_names])

    def score(self, scaled_features: np.ndarray) -> np.ndarray:
        """`score_samples` of every detector, shape (rows, detectors), in manifest order."""
        return score_matrix(self.bundle.detectors, self.detector_names, scaled_features)


def score_matrix(detectors: dict[str, Detector], names: list[str], scaled: np.ndarray) -> np.ndarray:
    if len(scaled) == 0:
        return np.empty((0, len(names)))
    return np.column_stack([detectors[name].score_samples(scaled) for name in names])
