"""Approximate nearest-neighbour distance with Annoy (seed 003's ANNOY model): a window far from every
training window is anomalous.

The training rows (for the sensor stream: whole windows as vectors) go into an Annoy forest of random
projection trees (`n_trees`, at most `max_train_samples` rows); a row's residual is its Euclidean
distance to its `n_neighbors`-th nearest training row as the index finds it. The index lives inside the
detector: pickling saves it to bytes and unpickling loads it back, so a model version is one artifact
and never points at a file. `feature_contributions` splits a row's squared distance to its nearest
training row over the features.

>>> import numpy as np
>>> from shared.detectors.annoy_neighbours import AnnoyDetector
>>> X = np.random.default_rng(0).normal(size=(300, 2))
>>> AnnoyDetector(random_state=0).fit(X).predict([[0.0, 0.1], [6.0, -6.0]])
array([ 1, -1])
"""

from __future__ import annotations

import os
import tempfile
from numbers import Integral
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from annoy import AnnoyIndex
from numpy.typing import ArrayLike
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted, validate_data

from shared.detectors.base import Detector, Matrix, Vector


class AnnoyDetector(Detector):
    """`n_trees` of the forest; `search_k` nodes inspected per query (-1: Annoy's default, n_trees * k)."""

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        **Detector._parameter_constraints,
        "n_neighbors": [Interval(Integral, 1, None, closed="left")],
        "n_trees": [Interval(Integral, 1, None, closed="left")],
        "search_k": [Interval(Integral, -1, None, closed="left")],
        "max_train_samples": [Interval(Integral, 2, None, closed="left")],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        *,
        n_neighbors: int = 5,
        n_trees: int = 20,
        search_k: int = -1,
        max_train_samples: int = 50_000,
        contamination: float = 0.01,
        random_state: int | None = None,
    ) -> None:
        self.n_neighbors = n_neighbors
        self.n_trees = n_trees
        self.search_k = search_k
        self.max_train_samples = max_train_samples
        self.contamination = contamination
        self.random_state = random_state

    def _fit(self, X: Matrix) -> None:
        random_state = check_random_state(self.random_state)
        if X.shape[0] > self.max_train_samples:
            X = X[random_state.choice(X.shape[0], self.max_train_samples, replace=False)]
        index = AnnoyIndex(X.shape[1], "euclidean")
        index.set_seed(int(random_state.randint(1, 2**31 - 1)))
        for item, row in enumerate(X.tolist()):  # Annoy takes items one at a time
            index.add_item(item, row)
        index.build(self.n_trees, n_jobs=1)  # one thread: the same seed builds the same forest
        self.index_ = index
        self.n_neighbors_ = min(self.n_neighbors, X.shape[0])

    def _neighbours(self, X: Matrix) -> tuple[list[list[int]], list[list[float]]]:
        # Annoy answers one query at a time (no batch API); each costs microseconds at these sizes.
        found = [
            self.index_.get_nns_by_vector(row, self.n_neighbors_, search_k=self.search_k, include_distances=True)
            for row in X.tolist()
        ]
        return [items for items, _ in found], [distances for _, distances in found]

    def _score(self, X: Matrix) -> Vector:
        _, distances = self._neighbours(X)
        return -np.array([row[-1] for row in distances], dtype=np.float64).reshape(len(X))

    def feature_contributions(self, X: ArrayLike) -> Matrix:
        """Each feature's squared difference to the row's nearest training row (they sum to that squared distance)."""
        check_is_fitted(self)
        rows = validate_data(self, X, dtype=np.float64, reset=False)
        items, _ = self._neighbours(rows)
        nearest = np.array([self.index_.get_item_vector(found[0]) for found in items]).reshape(rows.shape)
        return np.asarray((rows - nearest) ** 2)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if "index_" in state:
            state["index_"] = _index_bytes(state["index_"])
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if isinstance(state.get("index_"), bytes):
            state = {**state, "index_": _index_from_bytes(state["index_"], state["n_features_in_"])}
        self.__dict__.update(state)


def _index_bytes(index: AnnoyIndex) -> bytes:
    """Annoy saves only to a path: a private temporary file, read back and removed."""
    with tempfile.TemporaryDirectory(prefix="annoy-") as folder:
        path = Path(folder) / "index.ann"
        index.save(str(path))
        return path.read_bytes()


def _index_from_bytes(data: bytes, dimensions: int) -> AnnoyIndex:
    """Annoy loads only from a path (it maps the file): written to a private temporary file, loaded, unlinked
    (the mapping outlives the name)."""
    index = AnnoyIndex(dimensions, "euclidean")
    handle, name = tempfile.mkstemp(prefix="annoy-", suffix=".ann")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        index.load(name, prefault=True)
    finally:
        os.unlink(name)
    return index
