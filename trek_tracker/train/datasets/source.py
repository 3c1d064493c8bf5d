"""One training data source as a config lists it (``[[data]]`` in TOML)."""

from __future__ import annotations

from dataclasses import dataclass, field

from trek_tracker.errors import InputError


@dataclass
class DataSource:
    """One dataset in its published layout (``kind``, see docs/datasets.md) and how to sample it.

    ``kind = "video"`` is any DAVIS / YouTube-VOS style folder (JPEGImages/ + Annotations/); ``kind =
    "static"`` a folder of images and masks with matching names (``images``/``masks`` sub-folders).
    """

    root: str
    kind: str = "video"
    split: str | None = None  # the dataset's split (train, val, ...); None: the reader's default (train)
    weight: float | None = None  # sampling weight; give it for every source or for none (then: items x repeat)
    repeat: int = 1  # how many times its items enter the pool when no weights are given (DAVIS: 5 officially)
    min_gap: int = 1  # video: gaps between clip frames drawn in min_gap..max_gap annotated frames
    max_gap: int = 3  # (official: 3 for YouTube-VOS, 12 for DAVIS)
    sequences: list[str] | None = None  # video: restrict to these sequences
    exclude: list[str] = field(default_factory=list)  # video: never use these (held-out validation)
    max_sequences: int | None = None  # a fixed random subset of this many sequences (EgoTracks: 300)
    images: str = "images"  # static: folder names under root
    masks: str = "masks"
    mask_root: str | None = None  # box datasets: masks made by `trek-track train-data masks-from-boxes` (or RTS's)
    options: dict = field(default_factory=dict)  # reader-specific settings (docs/datasets.md)

    def __post_init__(self) -> None:
        from trek_tracker.train.datasets import READERS

        if self.kind not in READERS:
            raise InputError(f"data source kind {self.kind!r} is unknown; choose one of: {', '.join(READERS)}")
        if self.repeat < 1 or self.min_gap < 1 or self.max_gap < self.min_gap:
            raise InputError(f"data source {self.root}: repeat and min_gap must be at least 1 and "
                             f"max_gap at least min_gap (got {self.repeat}, {self.min_gap}, {self.max_gap})")
        if self.weight is not None and not self.weight > 0:
            raise InputError(f"data source {self.root}: weight must be positive, got {self.weight}")
        if not isinstance(self.options, dict):
            raise InputError(f"data source {self.root}: options must be a table, e.g. options = {{sbd = \"...\"}}")
        if (self.sequences is not None and not isinstance(self.sequences, list)) or not isinstance(self.exclude, list):
            raise InputError(f"data source {self.root}: sequences and exclude must be lists of names")
        if self.max_sequences is not None and self.max_sequences < 1:
            raise InputError(f"data source {self.root}: max_sequences must be at least 1")
