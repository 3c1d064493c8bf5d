"""trek-track: box-initialised object tracking for egocentric video.

The one pipeline behind the CLI and the Python API is :class:`trek_tracker.pipeline.Tracker`.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "Tracker"]


def __getattr__(name: str):
    # Lazy so that `import trek_tracker` (and `trek-track --help`) does not pay for torch.
    if name == "Tracker":
        from trek_tracker.pipeline import Tracker

        return Tracker
    raise AttributeError(name)
