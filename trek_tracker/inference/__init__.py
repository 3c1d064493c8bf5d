"""Per-video inference state: the engine (object groups, resizing, label feedback), the one memory
implementation (shared with training), test-time augmentation and lock-step ensembles. No file I/O."""
