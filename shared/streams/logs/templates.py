"""Log templates: mined by Drain3 from a training history, then only matched while serving.

Mining changes the template tree with every line it sees, so two workers mining on their own would soon
disagree about what a line is. Training mines once (`TemplateVocabulary.mine`); the vocabulary is kept
inside the signed version, and serving only *matches* (`match`: Drain3's exact match against the saved
templates, no mutation), so every worker gives a line the same template. A line that matches none is
`UNSEEN` (-1): a signal of its own, never an error.

Variable parts are masked before mining and matching (block ids, IPs with ports, hex, numbers: the
`Masking` settings say which), so `Receiving block blk_1 src: /10.0.0.1:5` and its thousands of siblings are
one template. Drain3 keeps no locks: matching goes through one lock per vocabulary.

>>> vocabulary = TemplateVocabulary.mine(["open file 12 by alice", "open file 7 by bob", "disk full"])
>>> [vocabulary.templates[i] for i in vocabulary.match(["open file 99 by carol", "disk full"]).tolist()]
['open file <NUM> by <*>', 'disk full']
>>> vocabulary.match(["kernel panic"]).tolist()
[-1]
"""

from __future__ import annotations

import hashlib
import pickle
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import jsonpickle
import numpy as np
from drain3.masking import MaskingInstruction
from drain3.template_miner import TemplateMiner
from drain3.template_miner_config import TemplateMinerConfig

UNSEEN = -1
"""The template index of a line no saved template matches."""

SESSION_END = -2
"""The template index of an end-of-session record (not a line: it has no template)."""

_EDGE_BEFORE, _EDGE_AFTER = r"((?<=[^A-Za-z0-9])|^)", r"((?=[^A-Za-z0-9])|$)"
DEFAULT_MASKS: tuple[tuple[str, str], ...] = (
    (r"blk_-?\d+", "BLK"),
    (_EDGE_BEFORE + r"\d{1,3}(\.\d{1,3}){3}(:\d+)?" + _EDGE_AFTER, "IP"),
    (_EDGE_BEFORE + r"0x[0-9a-fA-F]+" + _EDGE_AFTER, "HEX"),
    (_EDGE_BEFORE + r"[-+]?\d+(\.\d+)?" + _EDGE_AFTER, "NUM"),
)
"""(regex, name) pairs applied in order; a match becomes `<name>`."""


@dataclass(frozen=True)
class Masking:
    """How lines are tokenised and which variable parts are masked before Drain3 sees them."""

    masks: tuple[tuple[str, str], ...] = DEFAULT_MASKS
    similarity: float = 0.4  # Drain's sim_th: share of equal tokens for a line to join a template
    depth: int = 4  # Drain's parse-tree depth
    max_children: int = 100
    extra_delimiters: tuple[str, ...] = ()

    def miner(self) -> TemplateMiner:
        config = TemplateMinerConfig()
        config.masking_instructions = [MaskingInstruction(pattern, name) for pattern, name in self.masks]
        config.drain_sim_th = self.similarity
        config.drain_depth = self.depth
        config.drain_max_children = self.max_children
        config.drain_extra_delimiters = list(self.extra_delimiters)
        return TemplateMiner(config=config)


@dataclass
class TemplateVocabulary:
    """Templates mined from a training history, most frequent first, with how many training lines each had."""

    masking: Masking
    templates: list[str]
    counts: np.ndarray  # training lines per template, in `templates` order (descending)
    _miner: TemplateMiner = field(repr=False)
    _index_of_cluster: dict[int, int] = field(repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def mine(cls, messages: Sequence[str], masking: Masking | None = None) -> TemplateVocabulary:
        masking = masking or Masking()
        miner = masking.miner()
        for message in messages:  # mining is sequential by nature: each line may reshape the tree
            miner.add_log_message(message)
        return cls._of_miner(masking, miner)

    def extended(self, messages: Sequence[str]) -> TemplateVocabulary:
        """A new vocabulary: this one's Drain3 tree (templates and their line counts) mining more lines, for
        incremental training; this vocabulary is left as it is."""
        copy: TemplateVocabulary = pickle.loads(pickle.dumps(self))
        for message in messages:  # sequential, as in `mine`
            copy._miner.add_log_message(message)
        return TemplateVocabulary._of_miner(copy.masking, copy._miner)

    @classmethod
    def empty(cls) -> TemplateVocabulary:
        """A vocabulary that has seen nothing: every line is unseen (a stream before training)."""
        return cls._of_miner(Masking(), Masking().miner())

    @classmethod
    def _of_miner(cls, masking: Masking, miner: TemplateMiner) -> TemplateVocabulary:
        clusters = sorted(miner.drain.clusters, key=lambda c: (-c.size, c.cluster_id))
        return cls(
            masking,
            [cluster.get_template() for cluster in clusters],
            np.array([cluster.size for cluster in clusters], dtype=np.int64),
            miner,
            {cluster.cluster_id: index for index, cluster in enumerate(clusters)},
        )

    def match(self, messages: Sequence[str]) -> np.ndarray:
        """Each message's template index (`UNSEEN` when none matches); the templates are not changed."""
        index_of = self._index_of_cluster
        out = np.empty(len(messages), dtype=np.int64)
        with self._lock:
            # Drain3 matches one line at a time (mask, tokenise, walk the tree): no batch form exists.
            for row, message in enumerate(messages):
                cluster = self._miner.match(message, full_search_strategy="never")
                out[row] = UNSEEN if cluster is None else index_of.get(cluster.cluster_id, UNSEEN)
        return out

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256("\n".join(self.templates).encode()).hexdigest()[:16]
        return f"{len(self.templates)}:{digest}"

    def __getstate__(self) -> dict[str, Any]:
        return {
            "masking": self.masking,
            "drain": jsonpickle.dumps(self._miner.drain, keys=True),
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        masking: Masking = state["masking"]
        miner = masking.miner()
        drain = jsonpickle.loads(state["drain"], keys=True)
        miner.drain.id_to_cluster = drain.id_to_cluster
        miner.drain.clusters_counter = drain.clusters_counter
        miner.drain.root_node = drain.root_node
        self.__dict__.update(vars(TemplateVocabulary._of_miner(masking, miner)))
