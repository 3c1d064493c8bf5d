"""The one per-video loop: every frame reaches every sink in order, in the writer thread or not; how the loop
ended reaches every sink; a failing sink fails the run; signals stop a real run as interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from tests.cli.conftest import TINY, official_checkpoint
from trek_tracker.errors import InputError
from trek_tracker.loop import Resumed, Sink, Start, track_video
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


def test_once_a_frame_is_tracked_an_interrupt_may_say_finished_work_was_kept():
    """Without a saved state (`run --overlay`) the frames tracked still reach the sinks: the CLI's line may say
    they were kept once the first one was handed over, not before."""
    from trek_tracker.signals import work_has_started

    work_has_started(reset=True)
    with pytest.raises(KeyboardInterrupt):
        track_video(Counter(), _interrupted_at(0), START, [Recorder()])
    assert not work_has_started(reset=True)
    with pytest.raises(KeyboardInterrupt):
        track_video(Counter(fail_at=3, error=KeyboardInterrupt), range(8), START, [Recorder()])
    assert work_has_started(reset=True)


def _interrupted_at(stop: int):
    yield from range(stop)
    raise KeyboardInterrupt


def test_a_failing_sink_fails_the_run_and_stops_tracking():
    """A full disk while writing behind: the loop raises it, the run ends as failed, tracking stops soon."""
    tracker, sink = Counter(), Recorder(fail_at=3)
    with pytest.raises(OSError, match="No space"):
        track_video(tracker, range(200), START, [sink])
    assert sink.closed[0][0] == "failed" and "No space" in sink.closed[0][1]
    assert tracker.calls < 20  # at most a writer queue's worth of frames past the failure


def test_no_frame_after_a_sinks_failure_reaches_any_sink():
    """The writer's failure is raised once in the loop's thread, but it stays failed: frames queued after the
    failed one must not reach the other sinks, whose files would then skip a frame. The race needs the
    threads to switch often; every trial must hold."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for _ in range(150):
            failing, after = Recorder(fail_at=5), Recorder()
            with pytest.raises(OSError):
                track_video(Counter(), range(40), START, [failing, after])
            assert [i for i, _ in after.seen] == list(range(len(after.seen))) and len(after.seen) <= 5
    finally:
        sys.setswitchinterval(before)


def test_a_sink_that_fails_to_close_fails_the_sinks_closed_after_it():
    """A box file that cannot be committed (a full disk at the very end) must not leave the manifest, closed
    after it, saying the run is complete."""

    class FailsToClose(Recorder):
        def close(self, status, error=None):
            super().close(status, error)
            raise OSError(28, "No space left on device")

    first, manifest = FailsToClose(), Recorder()
    with pytest.raises(OSError, match="No space"):
        track_video(Counter(), range(4), START, [first, manifest])
    assert first.closed == [("complete", None)]
    assert manifest.closed == [("failed", "OSError: [Errno 28] No space left on device")]


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


# --------------------------------------------------------------------------- resuming
class Stateful(Counter):
    """A Counter whose state is the last frame it saw (what a restored tracker must continue from); ``kill``
    maps a frame to the signals it sends itself while tracking that frame."""

    def __init__(self, kill=None, **kw):
        super().__init__(**kw)
        self.last, self.kill = None, kill or {}

    def init(self, image, box=None, **kw):
        self.last = 0
        return super().init(image, box, **kw)

    def step(self, image, **kw):
        assert self.last == image - 1, "a frame was skipped or repeated"
        for sig in self.kill.get(image, ()):
            os.kill(os.getpid(), sig)
        time.sleep(0.01)  # the handler runs here, inside the frame
        self.last = image
        return super().step(image, **kw)

    def state(self):
        return {"last": self.last}

    def restore(self, state):
        self.last = state["last"]


class Saver:
    def __init__(self, every=3, sinks=()):
        self.every, self.sinks, self.saved = every, sinks, []

    def due(self, index):
        return (index + 1) % self.every == 0

    def save(self, index, state):
        for sink in self.sinks:  # every frame up to the state's is stored before it is saved
            assert sink.seen[-1][0] == index, (sink.seen[-1], index)
        self.saved.append((index, state))


@pytest.mark.parametrize("behind", [True, False])
def test_a_resumed_loop_continues_from_the_saved_state(behind):
    sink = Recorder()
    saver = Saver(sinks=[sink])
    track_video(Stateful(), range(10), START, [sink], saver=saver, write_behind=behind)
    assert [i for i, _ in saver.saved] == [2, 5, 8]
    index, state = saver.saved[1]
    assert state == {"tracker": {"last": 5}, "lost": {1: [2, 5]}}
    again = Recorder()
    result = track_video(Stateful(), range(6, 10), None, [again], resume=Resumed(index, state), write_behind=behind)
    assert again.seen == sink.seen[6:] and again.closed == [("complete", None)]
    assert (result.frames, result.first, result.tracked) == (10, 6, 4) and result.lost == {1: [2, 5, 8]}


def test_a_signal_during_a_frame_takes_effect_after_it_and_that_state_is_saved():
    sink = Recorder()
    saver = Saver(every=100, sinks=[sink])
    with pytest.raises(KeyboardInterrupt):
        track_video(Stateful(kill={5: [signal.SIGINT]}), range(10), START, [sink], saver=saver)
    assert [i for i, _ in sink.seen] == [0, 1, 2, 3, 4, 5] and sink.closed[0][0] == "interrupted"
    assert saver.saved == [(5, {"tracker": {"last": 5}, "lost": {1: [2, 5]}})]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the loop's handlers are gone


def test_a_second_signal_stops_a_frame_at_once_and_no_state_of_it_is_saved():
    """A hung frame can still be stopped; what it leaves is not a state between frames, so the last one
    saved stays the one to resume from."""
    sink = Recorder()
    saver = Saver(every=3, sinks=[sink])
    with pytest.raises(KeyboardInterrupt):
        track_video(Stateful(kill={7: [signal.SIGINT, signal.SIGINT]}), range(10), START, [sink], saver=saver)
    assert [i for i, _ in saver.saved] == [2, 5]
    assert [i for i, _ in sink.seen] == list(range(7))


def test_an_error_inside_a_frame_saves_no_state_of_it():
    saver = Saver(every=3)
    with pytest.raises(RuntimeError):
        track_video(Stateful(fail_at=4), range(10), START, [], saver=saver)
    with pytest.raises(KeyboardInterrupt):  # raised, not signalled: the frame may be half done
        track_video(Stateful(fail_at=7, error=KeyboardInterrupt), range(10), START, [], saver=saver)
    assert [i for i, _ in saver.saved] == [2, 2, 5]
