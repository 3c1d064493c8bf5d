"""Official checkpoints: the registry (``weights/registry.toml``), the cache, download and verification.

Every ``--checkpoint`` option goes through :func:`resolve_checkpoint`, which accepts a file path or a
registry name, so ``--checkpoint sam_vit_b`` and ``--checkpoint ~/sam_vit_b_01ec64.pth`` both work.
"""

from __future__ import annotations

from trek_tracker.weights.cache import (
    CacheStatus,
    VerifyResult,
    cached_path,
    import_file,
    status,
    trek_home,
    verify,
    weights_dir,
)
from trek_tracker.weights.download import DownloadResult, download
from trek_tracker.weights.registry import (
    CheckpointEntry,
    Registry,
    default_registry,
    registry_entry,
    registry_path,
)
from trek_tracker.weights.resolve import resolve_checkpoint

__all__ = [
    "CacheStatus",
    "CheckpointEntry",
    "DownloadResult",
    "Registry",
    "VerifyResult",
    "cached_path",
    "default_registry",
    "download",
    "import_file",
    "registry_entry",
    "registry_path",
    "resolve_checkpoint",
    "status",
    "trek_home",
    "verify",
    "weights_dir",
]
