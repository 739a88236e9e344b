"""Detector kinds by name, as a stream's `model_configs` lists them: `{name, kind, params}`.

>>> build_detector("robust_zscore", {"contamination": 0.05})
RobustZScoreDetector(contamination=0.05)
>>> build_detector("knn", {"n_neighbors": 10})
KNNDetector(n_neighbors=10)
>>> sorted(DETECTOR_KINDS)  # doctest: +NORMALIZE_WHITESPACE
['aakr', 'annoy', 'autoencoder', 'copod', 'deeplog', 'ecod', 'feature_extreme', 'ica', 'isolation_forest', 'knn',
 'lof', 'mscred', 'ocsvm', 'pca', 'robust_zscore', 'vae']
>>> build_detector("hbos", {})  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
ValueError: unknown detector kind 'hbos'; valid kinds: ...
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shared.detectors.aakr import AAKRDetector
from shared.detectors.annoy_neighbours import AnnoyDetector
from shared.detectors.autoencoder import AutoencoderDetector
from shared.detectors.base import Detector, ExplainsResidual
from shared.detectors.deeplog import DeepLogDetector
from shared.detectors.empirical_cdf import COPODDetector, ECODDetector
from shared.detectors.feature_extreme import FeatureExtremeDetector
from shared.detectors.ica import ICADetector
from shared.detectors.isolation_forest import IsolationForestDetector
from shared.detectors.mscred import MSCREDDetector
from shared.detectors.neighbours import KNNDetector, LOFDetector
from shared.detectors.ocsvm import OneClassSVMDetector
from shared.detectors.pca import PCADetector
from shared.detectors.robust_zscore import RobustZScoreDetector
from shared.detectors.vae import VAEDetector

DETECTOR_KINDS: Mapping[str, type[Detector]] = {
    "aakr": AAKRDetector,
    "annoy": AnnoyDetector,
    "autoencoder": AutoencoderDetector,
    "copod": COPODDetector,
    "deeplog": DeepLogDetector,  # trains with the `deep` extra; scores with numpy only
    "ecod": ECODDetector,
    "feature_extreme": FeatureExtremeDetector,
    "ica": ICADetector,
    "isolation_forest": IsolationForestDetector,
    "knn": KNNDetector,
    "lof": LOFDetector,
    "mscred": MSCREDDetector,  # trains and scores with the `deep` extra
    "ocsvm": OneClassSVMDetector,
    "pca": PCADetector,
    "robust_zscore": RobustZScoreDetector,
    "vae": VAEDetector,  # trains with the optional `deep` extra (Keras 3 on JAX); scores with numpy only
}


def build_detector(kind: str, params: Mapping[str, Any]) -> Detector:
    """An unfitted detector of `kind`; a `ValueError` names the bad kind, parameter or value.

    Values are validated here, not at the first `fit`, so a bad stream config is refused before
    any training data is read.
    """
    if kind not in DETECTOR_KINDS:
        raise ValueError(f"unknown detector kind {kind!r}; valid kinds: {', '.join(sorted(DETECTOR_KINDS))}")
    detector_class = DETECTOR_KINDS[kind]
    valid_params = detector_class().get_params()
    if unknown := sorted(set(params) - set(valid_params)):
        raise ValueError(
            f"{kind} detector has no parameter {', '.join(map(repr, unknown))}; "
            f"valid parameters: {', '.join(sorted(valid_params))}"
        )
    detector = detector_class(**params)
    # scikit-learn's InvalidParameterError is a ValueError that names the parameter and its range.
    detector._validate_params()
    return detector


__all__ = [
    "DETECTOR_KINDS",
    "AAKRDetector",
    "AnnoyDetector",
    "AutoencoderDetector",
    "COPODDetector",
    "Detector",
    "ECODDetector",
    "ExplainsResidual",
    "ICADetector",
    "IsolationForestDetector",
    "KNNDetector",
    "LOFDetector",
    "OneClassSVMDetector",
    "PCADetector",
    "RobustZScoreDetector",
    "VAEDetector",
    "build_detector",
]
