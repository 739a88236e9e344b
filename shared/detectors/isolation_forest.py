"""Isolation forest: the fleet's default detector, fast to fit and to score on wide tabular batches.

Anomalies are the rows that random axis-aligned splits isolate in few steps. This wraps
scikit-learn's `IsolationForest` so it keeps the fleet's contract (`offset_` from `contamination`,
movable with `set_offset`).

>>> import numpy as np
>>> from shared.detectors.isolation_forest import IsolationForestDetector
>>> X = np.random.default_rng(0).normal(size=(200, 2))
>>> detector = IsolationForestDetector(n_estimators=50, random_state=0).fit(X)
>>> detector.predict([[0.0, 0.1], [6.0, -6.0]])
array([ 1, -1])
"""

from __future__ import annotations

from numbers import Integral
from typing import Any, ClassVar

import numpy as np
from sklearn.ensemble import IsolationForest
from sklearn.ensemble._iforest import _average_path_length
from sklearn.utils._param_validation import Interval, RealNotInt, StrOptions

from shared.detectors.base import Detector, Matrix, Vector


class IsolationForestDetector(Detector):
    """Parameters as in `sklearn.ensemble.IsolationForest`; `n_jobs` parallelises fit and scoring."""

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        **Detector._parameter_constraints,
        "n_estimators": [Interval(Integral, 1, None, closed="left")],
        "max_samples": [
            StrOptions({"auto"}),
            Interval(Integral, 1, None, closed="left"),
            Interval(RealNotInt, 0.0, 1.0, closed="right"),
        ],
        "max_features": [
            Interval(Integral, 1, None, closed="left"),
            Interval(RealNotInt, 0.0, 1.0, closed="right"),
        ],
        "n_jobs": [Integral, None],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        *,
        n_estimators: int = 100,
        max_samples: int | float | str = "auto",
        max_features: int | float = 1.0,
        contamination: float = 0.01,
        n_jobs: int | None = None,
        random_state: int | None = None,
    ) -> None:
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.max_features = max_features
        self.contamination = contamination
        self.n_jobs = n_jobs
        self.random_state = random_state

    def _fit(self, X: Matrix) -> None:
        # contamination="auto" keeps the inner forest from scoring the training set a second time:
        # the base class places offset_ itself.
        self.forest_ = IsolationForest(
            n_estimators=self.n_estimators,
            max_samples=self.max_samples,
            max_features=self.max_features,
            contamination="auto",
            n_jobs=self.n_jobs,
            random_state=self.random_state,
        ).fit(X)
        self.walks_ = self._walks()
        self.depth_norm_ = len(self.forest_.estimators_) * float(_average_path_length([self.forest_.max_samples_])[0])

    def _score(self, X: Matrix) -> Vector:
        """`forest_.score_samples`, bit for bit, at about half its cost on a micro-batch.

        scikit-learn validates the input once per tree before walking it; here the rows are cast once to
        the trees' float32 and each tree's compiled `apply` is called directly, adding the per-leaf path
        lengths in the same order. Each row's score depends on that row only.
        """
        rows = np.ascontiguousarray(X, dtype=np.float32)
        depths = np.zeros(len(rows))
        for tree, features, lengths in self.walks_:
            depths += lengths[tree.apply(rows if features is None else np.ascontiguousarray(rows[:, features]))]
        return -(2.0 ** (-depths / self.depth_norm_))

    def _walks(self) -> list[tuple[Any, np.ndarray | None, np.ndarray]]:
        """Per tree: its compiled tree, its feature subset (None: all, in order), and per node the node's depth
        plus the expected path length below it, as scikit-learn adds them."""
        forest, every = self.forest_, np.arange(self.n_features_in_)
        return [
            (
                estimator.tree_,
                None if np.array_equal(features, every) else np.asarray(features),
                forest._decision_path_lengths[i] + forest._average_path_length_per_tree[i] - 1.0,
            )
            for i, (estimator, features) in enumerate(zip(forest.estimators_, forest.estimators_features_, strict=True))
        ]
