"""Which source and which item each global sample number draws from, for a weighted mixture of datasets.

Sample numbers are cut into blocks of ``BLOCK``. Each block gives source ``s`` either ``floor(p_s * BLOCK)``
or one more slot, the extra slots drawn by systematic sampling so that a source is drawn with probability
``p_s`` exactly (a source with a weight below ``1 / BLOCK`` still gets its share over many blocks); the
block's slots are then shuffled. Within a source, its visits walk through a fresh permutation of its items
every epoch, so every item is seen once per epoch of its source. Everything is a pure function of the seed
and the sample number, which keeps resumed and multi-process runs exact.
"""

from __future__ import annotations

import numpy as np

BLOCK = 1024


class Mixture:
    def __init__(self, sizes: list[int], weights: list[float], seed: int, block: int = BLOCK) -> None:
        if len(sizes) != len(weights) or not sizes:
            raise ValueError("one weight per source is needed")
        w = np.asarray(weights, np.float64)
        if (w <= 0).any() or min(sizes) < 1:
            raise ValueError("every source needs a positive weight and at least one item")
        self.sizes = [int(n) for n in sizes]
        self.p = w / w.sum()
        self.seed, self.block = seed, block
        self._visits = [np.zeros(len(sizes), np.int64)]  # visits of each source before block b
        self._block_id, self._order, self._rank = -1, np.zeros(0, np.int64), np.zeros(0, np.int64)
        self._perms: dict[int, tuple[int, np.ndarray]] = {}

    def block_counts(self, b: int) -> np.ndarray:
        """Slots of each source in block ``b`` (they sum to the block size)."""
        share = self.p * self.block
        base = np.floor(share).astype(np.int64)
        frac = share - base
        u = np.random.default_rng([self.seed, 17, b]).random()
        edges = np.concatenate([[0.0], np.cumsum(frac)])
        extra = np.floor(edges[1:] - u + 1.0).astype(np.int64) - np.floor(edges[:-1] - u + 1.0).astype(np.int64)
        counts = base + np.maximum(extra, 0)
        counts[int(np.argmax(self.p))] += self.block - int(counts.sum())  # float rounding in the fractions
        return counts

    def _load_block(self, b: int) -> None:
        while len(self._visits) <= b:
            self._visits.append(self._visits[-1] + self.block_counts(len(self._visits) - 1))
        counts = self.block_counts(b)
        order = np.repeat(np.arange(len(counts)), counts)
        order = order[np.random.default_rng([self.seed, 19, b]).permutation(len(order))]
        rank = np.zeros(len(order), np.int64)  # how many earlier slots of the block went to the same source
        for s in range(len(counts)):
            where = np.flatnonzero(order == s)
            rank[where] = np.arange(len(where))
        self._block_id, self._order, self._rank = b, order, rank

    def source_and_visit(self, g: int) -> tuple[int, int]:
        """The source of sample ``g`` and how many samples of that source came before it."""
        b, j = divmod(int(g), self.block)
        if b != self._block_id:
            self._load_block(b)
        s = int(self._order[j])
        return s, int(self._visits[b][s] + self._rank[j])

    def item(self, s: int, visit: int) -> int:
        """Item index of visit number ``visit`` to source ``s``: a new permutation every epoch of the source."""
        epoch, k = divmod(visit, self.sizes[s])
        cached = self._perms.get(s)
        if cached is None or cached[0] != epoch:
            cached = (epoch, np.random.default_rng([self.seed, 7, s, epoch]).permutation(self.sizes[s]))
            self._perms[s] = cached
        return int(cached[1][k])

    def __call__(self, g: int) -> tuple[int, int]:
        """``(source, item)`` of global sample number ``g``."""
        s, visit = self.source_and_visit(g)
        return s, self.item(s, visit)
