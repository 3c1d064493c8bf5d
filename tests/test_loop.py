"""The one per-video loop: every frame reaches every sink in order, in the writer thread or not; how the loop
ended reaches every sink; a failing sink fails the run; signals stop a real run as interrupted."""

from __future__ import annotations

import json
import logging
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
from trek_tracker.video import IndexedFrames


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
        track_video(Counter(fail_at=1, error=KeyboardInterrupt), range(8), START, [Recorder()])  # after frame 0
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


class Keeps(Counter):
    """A Counter that records what it was asked to keep at each frame."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.kept = []

    def init(self, image, box=None, *, mask=None, keep_probs=False, keep_labels=True):
        self.kept.append((keep_probs, keep_labels))
        return super().init(image, box)

    def step(self, image, *, keep_probs=False, keep_labels=True):
        self.kept.append((keep_probs, keep_labels))
        return super().step(image)


class Labels(Recorder):
    needs_labels = True


class Probs(Recorder):
    needs_probs = True


class Pixels(Recorder):
    needs_image = True

    def frame(self, index, image, result):
        super().frame(index, image, result)
        self.images = [*getattr(self, "images", []), image]


@pytest.mark.parametrize("sinks,kept", [([Recorder], (False, False)), ([Recorder, Labels], (False, True)),
                                        ([Probs], (True, False)), ([Probs, Labels], (True, True))])
def test_the_tracker_hands_over_labels_and_probs_only_when_a_sink_needs_them(sinks, kept):
    tracker = Keeps()
    track_video(tracker, range(3), START, [s() for s in sinks])
    assert tracker.kept == [kept] * 3


@pytest.mark.parametrize("behind", [True, False])
def test_sinks_get_the_frames_pixels_only_when_one_needs_them(behind):
    class Images(Recorder):
        def frame(self, index, image, result):
            super().frame(index, image, result)
            self.images = [*getattr(self, "images", []), image]

    plain = Images()
    track_video(Counter(), range(3), START, [plain], write_behind=behind)
    assert plain.images == [None] * 3
    pixels, other = Pixels(), Images()
    track_video(Counter(), range(3), START, [pixels, other], write_behind=behind)
    assert pixels.images == other.images == [0, 1, 2]


def test_a_loop_needs_a_start_or_a_resume():
    with pytest.raises(ValueError, match="needs a start"):
        track_video(Counter(), range(3), None, [])


@pytest.mark.parametrize("behind", [True, False])
def test_a_sink_that_cannot_store_its_last_frames_fails_the_run(behind):
    class FailsToFlush(Recorder):
        def flush(self):
            raise OSError(28, "No space left on device")

    sink, after = FailsToFlush(), Recorder()
    with pytest.raises(OSError, match="No space"):
        track_video(Counter(), range(4), START, [sink, after], write_behind=behind)
    assert sink.closed[0][0] == after.closed[0][0] == "failed" and "No space" in after.closed[0][1]


def test_the_loops_time_is_the_wall_time_of_its_frames():
    class Slow(Counter):
        def step(self, image, **kw):
            time.sleep(0.02)
            return super().step(image, **kw)

    began = time.perf_counter()
    result = track_video(Slow(), range(5), START, [])
    took = time.perf_counter() - began
    assert 4 * 0.02 <= result.seconds <= took


def test_a_mask_start_reaches_the_trackers_init():
    class Masked(Counter):
        def init(self, image, box=None, *, mask=None, keep_probs=False, keep_labels=True):
            self.start = (box, mask)
            return self._result(0)

    tracker, mask = Masked(), np.eye(3, dtype=np.uint8)
    track_video(tracker, range(2), Start(mask=mask), [])
    assert tracker.start[0] is None and tracker.start[1] is mask


@pytest.mark.parametrize("depth,threads,reader", [(0, None, "MainThread"), (1, 1, "other"), (2, 1, "other"),
                                                  (2, 3, "frame-decode"), (2, None, "frame-decode")])
def test_frames_are_read_ahead_in_as_many_threads_as_asked(monkeypatch, depth, threads, reader):
    """``prefetch_depth=0`` reads in the loop's own thread; frame files are decoded by ``decode_threads``
    threads (default :func:`decode_threads`, here 3)."""
    monkeypatch.setattr("trek_tracker.loop.default_decode_threads", lambda: 3)
    readers = []

    def read(i):
        readers.append(threading.current_thread().name)
        return i

    sink = Recorder()
    track_video(Counter(), IndexedFrames(read, range(6)), START, [sink], prefetch_depth=depth,
                decode_threads=threads)
    assert [i for i, _ in sink.seen] == list(range(6))
    names = set(readers)
    if reader == "other":
        assert len(names) == 1 and "MainThread" not in names and not any("frame-decode" in n for n in names)
    elif reader == "frame-decode":
        assert all(n.startswith("frame-decode") for n in names)
    else:
        assert names == {"MainThread"}


def test_a_sink_failing_on_the_last_frame_behind_the_tracker_fails_the_run():
    """The last frames are still being written when the tracker is done: their failure must not be lost."""
    sink, after = Recorder(fail_at=5), Recorder()
    with pytest.raises(OSError, match="No space"):
        track_video(Counter(), range(6), START, [sink, after])
    assert sink.closed[0][0] == after.closed[0][0] == "failed"
    assert [i for i, _ in after.seen] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_frames_still_queued_for_a_slow_sink_reach_it_when_tracking_stops(error):
    class Slow(Recorder):
        def frame(self, index, image, result):
            time.sleep(0.02)
            super().frame(index, image, result)

    sink = Slow()
    with pytest.raises(error):
        track_video(Counter(fail_at=4, error=error), range(8), START, [sink])
    assert [i for i, _ in sink.seen] == [0, 1, 2, 3]


def test_a_slow_sink_holds_the_tracker_a_few_frames_ahead_at_most():
    """Memory stays bounded whatever the video's length: the writer's queue is short."""
    release, ahead = threading.Event(), []

    class Stuck(Recorder):
        def frame(self, index, image, result):
            release.wait(5)
            super().frame(index, image, result)

    tracker = Counter()

    def measure():
        deadline = time.monotonic() + 5
        while tracker.calls == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # the tracker, unless held, would finish meanwhile
        ahead.append(tracker.calls)
        release.set()

    measuring = threading.Thread(target=measure)
    measuring.start()
    sink = Stuck()
    track_video(tracker, range(50), START, [sink], prefetch_depth=0)
    measuring.join()
    assert 1 <= ahead[0] <= 8 and len(sink.seen) == 50 and sink.threads == {"sink-writer"}  # behind, by default


def test_when_several_sinks_fail_to_close_the_first_error_is_raised():
    class FailsToClose(Recorder):
        def __init__(self, message):
            super().__init__()
            self.message = message

        def close(self, status, error=None):
            super().close(status, error)
            raise OSError(self.message)

    first, second = FailsToClose("box file"), FailsToClose("manifest")
    with pytest.raises(OSError, match="box file"):
        track_video(Counter(), range(3), START, [first, second])
    assert second.closed == [("failed", "OSError: box file")]


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


def test_on_frame_hears_every_index_including_those_of_a_resumed_loop():
    heard = []
    track_video(Counter(), range(4), START, [], on_frame=heard.append)
    assert heard == [0, 1, 2, 3]
    heard.clear()
    state = {"tracker": {"last": 5}, "lost": {}}
    track_video(Stateful(), range(6, 9), None, [], on_frame=heard.append, resume=Resumed(5, state))
    assert heard == [6, 7, 8]


def _last_bar(err):
    return err.strip().split("\r")[-1]


def test_a_progress_bar_counts_frames_on_stderr_from_where_a_resumed_loop_began(capsys):
    track_video(Counter(), range(4), START, [], total=4)
    assert capsys.readouterr().err == ""
    track_video(Counter(), range(4), START, [], total=4, progress="clip")
    bar = _last_bar(capsys.readouterr().err)
    assert bar.startswith("clip") and "4/4" in bar and "frame/s" in bar
    state = {"tracker": {"last": 5}, "lost": {}}
    track_video(Stateful(), range(6, 9), None, [], total=9, progress=True, resume=Resumed(5, state))
    assert "9/9" in _last_bar(capsys.readouterr().err)


def test_a_progress_bar_ends_its_line_before_the_error_that_stopped_the_loop_is_told(capsys):
    with pytest.raises(RuntimeError) as stopped:  # the traceback, kept, still holds the bar
        track_video(Counter(fail_at=2), range(4), START, [], total=4, progress="clip")
    err = capsys.readouterr().err
    assert stopped.traceback and err.endswith("\n") and "2/4" in _last_bar(err)


def test_a_state_read_back_from_json_resumes_with_integer_object_ids():
    """JSON turns the lost frames' object ids into strings; the resumed loop's lost frames must merge with them."""
    state = {"tracker": {"last": 5}, "lost": {"1": [2, 5]}}
    result = track_video(Stateful(), range(6, 10), None, [], resume=Resumed(5, state))
    assert result.lost == {1: [2, 5, 8]}


@pytest.mark.parametrize("behind", [True, False])
def test_a_state_is_saved_only_once_every_sink_stored_the_frames_before_it(behind):
    class Buffered(Recorder):
        def __init__(self):
            super().__init__()
            self.stored = []

        def flush(self):
            self.stored = [i for i, _ in self.seen]

    class Checks(Saver):
        def save(self, index, state):
            assert sink.stored == list(range(index + 1))
            super().save(index, state)

    sink = Buffered()
    saver = Checks(every=3)
    track_video(Stateful(), range(7), START, [sink], saver=saver, write_behind=behind)
    assert [i for i, _ in saver.saved] == [2, 5] and sink.stored == list(range(7))


@pytest.mark.parametrize("stop,saved", [(0, []), (3, [2]), (4, [2, 3])])
def test_an_interrupt_between_frames_saves_the_state_after_the_last_frame_unless_it_is_saved(stop, saved):
    """Ctrl-C while the next frame is read (not inside a tracked frame): the state after the last frame is
    saved, once; with no frame tracked there is nothing to save."""
    sink = Recorder()
    saver = Saver(every=3, sinks=[sink])
    with pytest.raises(KeyboardInterrupt):
        track_video(Stateful(), _interrupted_at(stop), START, [sink], saver=saver)
    assert [i for i, _ in saver.saved] == saved and sink.closed == [("interrupted", "interrupted")]
    if saved:
        assert saver.saved[-1][1]["tracker"] == {"last": stop - 1}


@pytest.mark.parametrize("stop,saved", [(0, []), (1, [6])])
def test_a_resumed_loop_interrupted_saves_only_a_state_past_the_one_it_began_from(stop, saved):
    saver = Saver(every=100)
    state = {"tracker": {"last": 5}, "lost": {}}
    with pytest.raises(KeyboardInterrupt):
        track_video(Stateful(), _frames_then_interrupt(6, stop), None, [], saver=saver, resume=Resumed(5, state))
    assert [i for i, _ in saver.saved] == saved


def _frames_then_interrupt(first, count):
    yield from range(first, first + count)
    raise KeyboardInterrupt


def test_a_state_that_cannot_be_saved_on_an_interrupt_is_a_warning_and_the_interrupt_stands(caplog):
    class Full(Saver):
        def save(self, index, state):
            raise OSError(28, "No space left on device")

    sink = Recorder()
    with caplog.at_level(logging.WARNING, logger="trek_tracker.loop"), pytest.raises(KeyboardInterrupt):
        track_video(Stateful(), _interrupted_at(2), START, [sink], saver=Full(every=100))
    assert "could not save the state" in caplog.text and "No space" in caplog.text
    assert sink.closed == [("interrupted", "interrupted")]
