"""The one per-video loop: every frame reaches every sink in order, in the writer thread or not; how the loop
ended reaches every sink; a failing sink fails the run; signals stop a real run as interrupted."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from tests.cli.conftest import TINY, official_checkpoint
from trek_tracker.errors import InputError
from trek_tracker.loop import Sink, Start, track_video
from trek_tracker.pipeline import FrameResult


class Counter:
    """A tracker whose object 1's box x is the frame index; raises at ``fail_at``."""

    def __init__(self, fail_at=None, error=RuntimeError):
        self.fail_at, self.error, self.calls = fail_at, error, 0

    def _result(self, t):
        return FrameResult({1: np.array([t, 0, 1, 1.0])}, {1: t % 3 == 2}, np.zeros((2, 2), np.uint8), 0.5)

    def init(self, image, box=None, *, mask=None, keep_probs=False, keep_labels=True):
        assert box is not None and image == 0
        return self._result(0)

    def step(self, image, *, keep_probs=False, keep_labels=True):
        self.calls += 1
        if image == self.fail_at:
            raise self.error("tracker stopped")
        return self._result(image)


class Recorder(Sink):
    def __init__(self, fail_at=None):
        self.seen, self.closed, self.threads, self.fail_at = [], [], set(), fail_at

    def frame(self, index, image, result):
        if index == self.fail_at:
            raise OSError(28, "No space left on device")
        self.threads.add(threading.current_thread().name)
        self.seen.append((index, float(result.box[0])))

    def close(self, status, error=None):
        self.closed.append((status, error))


START = Start(box=np.array([0, 0, 1, 1.0]))


@pytest.mark.parametrize("behind", [True, False])
def test_every_frame_reaches_every_sink_in_order(behind):
    a, b = Recorder(), Recorder()
    result = track_video(Counter(), range(8), START, [a, b], write_behind=behind)
    assert a.seen == b.seen == [(i, float(i)) for i in range(8)]
    assert a.closed == b.closed == [("complete", None)]
    assert result.frames == 8 and result.status == "complete" and result.lost == {1: [2, 5]}
    assert (a.threads == {"sink-writer"}) == behind


@pytest.mark.parametrize("error,status", [(RuntimeError, "failed"), (KeyboardInterrupt, "interrupted")])
def test_frames_before_a_stop_are_kept_and_the_sinks_hear_why(error, status):
    sink = Recorder()
    with pytest.raises(error):
        track_video(Counter(fail_at=5, error=error), range(8), START, [sink])
    assert [i for i, _ in sink.seen] == [0, 1, 2, 3, 4]
    assert sink.closed[0][0] == status
    if status == "failed":
        assert "tracker stopped" in sink.closed[0][1]


def test_a_failing_sink_fails_the_run_and_stops_tracking():
    """A full disk while writing behind: the loop raises it, the run ends as failed, tracking stops soon."""
    tracker, sink = Counter(), Recorder(fail_at=3)
    with pytest.raises(OSError, match="No space"):
        track_video(tracker, range(200), START, [sink])
    assert sink.closed[0][0] == "failed" and "No space" in sink.closed[0][1]
    assert tracker.calls < 20  # at most a writer queue's worth of frames past the failure


def test_start_needs_exactly_one_of_box_and_mask():
    with pytest.raises(InputError, match="exactly one"):
        Start()
    with pytest.raises(InputError, match="exactly one"):
        Start(box=np.ones(4), mask=np.ones((2, 2)))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_stops_a_real_run_as_interrupted(shared, tmp_path, sig):
    """``kill`` / ``timeout`` / Slurm / a closed terminal: finished frames kept, run.json says interrupted,
    no temporary file left, one line on stderr."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "trek_tracker.cli", "run", "--video", str(shared / "data/videos/bedroom.mp4"),
           "--box", "300,200,200,150", "--model", TINY, "--checkpoint", str(official_checkpoint(tmp_path / "t.pth")),
           "--init", "box", "--device", "cpu",
           "--max-long-edge", "160", "--overlay", "--save-masks", "--quiet", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    part = out / "boxes.txt.part"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if part.is_file() and len(part.read_text().splitlines()) >= 5:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be signalled: " + proc.stderr.read()
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, stderr
    assert stderr.count("\n") == 1 and "Traceback" not in stderr and "interrupted" in stderr, stderr
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "interrupted"
    kept = part.read_text().splitlines()
    assert len(kept) == record["video"]["frames"] >= 5
    assert len(list((out / "masks").glob("*.png"))) == len(kept)
    assert not (out / "overlay.mp4").exists() and not [p for p in out.iterdir() if p.name.startswith(".")]
