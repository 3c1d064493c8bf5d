"""``dataset prepare`` from an annotations zip and "videos", with a stand-in ffmpeg that records its
arguments and writes numbered frames (the real ffmpeg is not needed for the logic)."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.eval.helpers import SYN_A, SYN_B, build_synthetic
from trek_tracker.errors import InputError, UserError
from trek_tracker.eval.dataset import Trek150
from trek_tracker.eval.prepare import PrepareConfig, prepare

FAKE_FFMPEG = '''#!{python}
import sys, pathlib
log = pathlib.Path({log!r})
if sys.argv[1:] == ["-version"]:
    print("ffmpeg version 9.9-fake Copyright (c) the fakers\\nbuilt with a fake compiler"); sys.exit(0)
with open(log, "a") as f:  # one append: two of these may run at once (--jobs)
    f.write(" ".join(sys.argv[1:]) + "\\n")
n = int(pathlib.Path(sys.argv[2]).read_text())
out = sys.argv[5]
for i in range(1, n + 1):
    pathlib.Path(out % i).write_bytes(b"jpeg %d" % i)
'''


def _annotations_zip(path: Path, src: Path, sequences: dict[str, str]) -> Path:
    """An annotations zip in the official layout: ``sequences.txt`` and, per sequence ``name``, an inner
    ``<name>.zip`` holding the files of ``src / folder``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("TREK-150-annotations/sequences.txt", "".join(f"{name}\n" for name in sequences))
        for name, folder in sequences.items():
            inner = path.with_name(f"{name}.zip")
            with zipfile.ZipFile(inner, "w") as zs:
                for f in sorted((src / folder).iterdir()):
                    if f.is_file():
                        zs.write(f, f.name)
            z.write(inner, f"TREK-150-annotations/{name}.zip")
    return path


@pytest.fixture()
def sources(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    """The annotations zip (layout of the official one), a videos folder and a fake ffmpeg."""
    src = build_synthetic(tmp_path / "src")
    zpath = _annotations_zip(tmp_path / "TREK-150-annotations.zip", src,
                             {"P01-P01_01-2": "P01-P01_01-2", "P01-P01_01-10": "P01-P01_01-10"})
    videos = tmp_path / "videos" / "P01"
    videos.mkdir(parents=True)
    (videos / "P01_01.MP4").write_text("200")  # "a video" with 200 frames at 60 fps
    log = tmp_path / "ffmpeg.log"
    ffmpeg = tmp_path / "ffmpeg"
    ffmpeg.write_text(FAKE_FFMPEG.format(python=sys.executable, log=str(log)))
    ffmpeg.chmod(ffmpeg.stat().st_mode | stat.S_IEXEC)
    return zpath, tmp_path / "videos", ffmpeg, log


def test_prepare_builds_the_official_layout_and_resumes(sources, tmp_path: Path) -> None:
    zpath, videos, ffmpeg, log = sources
    root = tmp_path / "trek"
    cfg = PrepareConfig(root=root, annotations_zip=zpath, videos=videos, ffmpeg=str(ffmpeg))
    manifest = prepare(cfg, echo=lambda s: None)
    args = log.read_text().splitlines()
    assert len(args) == 1  # one extraction per video, shared by both sequences
    assert args[0] == f"-i {videos / 'P01' / 'P01_01.MP4'} -r 60 {root / '.frames-P01_01' / 'frame_%010d.jpg'}"
    ds = Trek150(root)
    seq = ds["P01-P01_01-2"]
    assert [p.name for p in seq.img_files][:2] == ["frame_0000000101.jpg", "frame_0000000103.jpg"]
    assert seq.img_files[1].read_bytes() == b"jpeg 103"  # the frame with that ffmpeg number
    assert seq.hoi == [(1, 4, 0), (5, 7, 2)]
    assert manifest["ffmpeg"] == "ffmpeg version 9.9-fake Copyright (c) the fakers"  # the first line of -version
    assert manifest["frames"]["P01-P01_01-10"] == 5
    assert json.loads((root / "trek-track-prepare.json").read_text())["counts"]["with_hoi"] == 1
    assert not (root / ".frames-P01_01").exists()
    # resume: nothing to do, no ffmpeg run; a stale extraction without anchors_hoi.txt is refreshed
    (root / "P01-P01_01-2" / "anchors_hoi.txt").unlink()
    prepare(cfg, echo=lambda s: None)
    assert len(log.read_text().splitlines()) == 1
    assert Trek150(root)["P01-P01_01-2"].hoi == [(1, 4, 0), (5, 7, 2)]


@pytest.mark.skipif(not Path("/proc/self/fd/0").exists(), reason="needs Linux /proc to see ffmpeg's stdin")
def test_ffmpeg_gets_no_terminal_input(sources, tmp_path: Path) -> None:
    """ffmpeg reads keys from its stdin: one that inherits a terminal stops a `prepare ... &` in the
    background (SIGTTIN) for as long as nobody looks. Here the test's stdin is a pipe, which ffmpeg must
    not inherit either."""
    zpath, videos, ffmpeg, log = sources
    stdin_seen = tmp_path / "stdin.txt"
    ffmpeg.write_text(ffmpeg.read_text() + f"""
import os
import re
import shutil
pathlib.Path({str(stdin_seen)!r}).write_text(os.path.realpath("/proc/self/fd/0"))
""")
    read, write = os.pipe()
    saved = os.dup(0)
    try:
        os.dup2(read, 0)
        prepare(PrepareConfig(root=tmp_path / "trek", annotations_zip=zpath, videos=videos, ffmpeg=str(ffmpeg)),
                echo=lambda s: None)
    finally:
        os.dup2(saved, 0)
        for fd in (saved, read, write):
            os.close(fd)
    assert stdin_seen.read_text() == "/dev/null"


def _used_frames(tmp_path: Path) -> set[int]:
    """The frame numbers the fixture's two sequences list (the video's frames a preparation keeps)."""
    return {int(line) for name in ("P01-P01_01-2", "P01-P01_01-10")
            for line in (tmp_path / "src" / name / "frames.txt").read_text().split()}


def test_frames_no_sequence_uses_are_deleted_while_ffmpeg_writes(sources, tmp_path: Path) -> None:
    """An hour of EK-55 at 60 fps is 216,000 JPEGs: the extraction folder must not hold them all. The fake
    ffmpeg, once it has written its 200 frames, waits (up to 20 s) for the folder to shrink and records
    what it saw, so the deletion is shown to happen while ffmpeg runs; ``--keep-frames`` keeps every one."""
    zpath, videos, ffmpeg, log = sources
    used = _used_frames(tmp_path)
    assert 0 < len(used) < 200
    seen = tmp_path / "seen.txt"
    ffmpeg.write_text(ffmpeg.read_text() + f"""
import glob, os, time
folder = os.path.dirname(out)
for _ in range(400):
    left = len(glob.glob(os.path.join(folder, "frame_*.jpg")))
    if left <= {len(used)}:
        break
    time.sleep(0.05)
pathlib.Path({str(seen)!r}).write_text(str(left))
""")
    root = tmp_path / "trek"
    prepare(PrepareConfig(root=root, annotations_zip=zpath, videos=videos, ffmpeg=str(ffmpeg)), echo=lambda s: None)
    assert int(seen.read_text()) == len(used)
    ds = Trek150(root)
    assert ds["P01-P01_01-2"].img_files[1].read_bytes() == b"jpeg 103"
    assert {int(p.stem.split("_")[1]) for n in ds.names for p in ds[n].img_files} == used

    kept = tmp_path / "kept"
    prepare(PrepareConfig(root=kept, annotations_zip=zpath, videos=videos, ffmpeg=str(ffmpeg), keep_frames=True),
            echo=lambda s: None)
    frames = kept / ".frames-P01_01"
    assert len(list(frames.glob("frame_*.jpg"))) == 200 and int(seen.read_text()) == 200
    assert json.loads((frames / ".complete").read_text()) == {"frames": "all"}


def test_a_kept_extraction_is_reused_only_when_it_holds_every_frame_needed(sources, tmp_path: Path) -> None:
    """A finished extraction left behind (an interrupt after ffmpeg, or ``--keep-frames``) is reused when its
    marker covers the frames now needed (an old empty marker: all of them); one extracted for other
    sequences is extracted again."""
    zpath, videos, ffmpeg, log = sources
    used = sorted(_used_frames(tmp_path))
    root = tmp_path / "trek"
    frames = root / ".frames-P01_01"
    frames.mkdir(parents=True)
    for fid in used:
        (frames / f"frame_{fid:010d}.jpg").write_bytes(b"kept %d" % fid)
    (frames / ".complete").write_text("")  # a marker from before frames were deleted: every frame
    cfg = PrepareConfig(root=root, annotations_zip=zpath, videos=videos, ffmpeg=str(ffmpeg))
    prepare(cfg, echo=lambda s: None)
    assert not log.exists()  # no ffmpeg run
    assert Trek150(root)["P01-P01_01-2"].img_files[1].read_bytes() == b"kept 103"

    other = tmp_path / "other"
    frames = other / ".frames-P01_01"
    frames.mkdir(parents=True)
    (frames / f"frame_{used[0]:010d}.jpg").write_bytes(b"kept")
    (frames / ".complete").write_text(json.dumps({"frames": used[:1]}))  # extracted for one frame only
    prepare(PrepareConfig(root=other, annotations_zip=zpath, videos=videos, ffmpeg=str(ffmpeg)),
            echo=lambda s: None)
    assert len(log.read_text().splitlines()) == 1
    assert Trek150(other)["P01-P01_01-2"].img_files[1].read_bytes() == b"jpeg 103"

    exact = tmp_path / "exact"  # extracted for exactly these sequences (stopped before its frames were placed)
    frames = exact / ".frames-P01_01"
    frames.mkdir(parents=True)
    for fid in used:
        (frames / f"frame_{fid:010d}.jpg").write_bytes(b"kept %d" % fid)
    (frames / ".complete").write_text(json.dumps({"frames": used}))
    prepare(PrepareConfig(root=exact, annotations_zip=zpath, videos=videos, ffmpeg=str(ffmpeg)),
            echo=lambda s: None)
    assert len(log.read_text().splitlines()) == 1
    assert Trek150(exact)["P01-P01_01-2"].img_files[1].read_bytes() == b"kept 103"


def test_missing_video_lists_official_urls(sources, tmp_path: Path) -> None:
    zpath, _, ffmpeg, _ = sources
    with pytest.raises(InputError, match=r"videos/train/P01/P01_01.MP4"):
        prepare(PrepareConfig(root=tmp_path / "trek", annotations_zip=zpath, videos=tmp_path, ffmpeg=str(ffmpeg)),
                echo=lambda s: None)


def test_missing_annotations(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="TREK-150-annotations.zip"):
        prepare(PrepareConfig(root=tmp_path / "trek"), echo=lambda s: None)


# ------------------------------------------------------------------------------------- damaged inputs


def _prepare(root: Path, zpath: Path, videos: Path, ffmpeg: Path, echo=None) -> dict:
    cfg = PrepareConfig(root=root, annotations_zip=zpath, videos=videos, ffmpeg=str(ffmpeg))
    return prepare(cfg, echo=echo or (lambda s: None))


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_damaged_annotations_zip_is_named(sources, tmp_path: Path, damage: str) -> None:
    zpath, videos, ffmpeg, _ = sources
    data = zpath.read_bytes()
    zpath.write_bytes(b"<html>quota exceeded</html>" if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(InputError, match=r"TREK-150-annotations.zip is not a readable zip file .*download it again"):
        _prepare(tmp_path / "trek", zpath, videos, ffmpeg)


def test_damaged_member_leaves_no_file_that_looks_extracted(sources, tmp_path: Path) -> None:
    zpath, videos, ffmpeg, _ = sources
    root = tmp_path / "trek"
    _prepare(root, zpath, videos, ffmpeg)
    inner = root / "TREK-150-annotations" / "P01-P01_01-2.zip"
    gt = root / "P01-P01_01-2" / "groundtruth_rect.txt"
    good = gt.read_bytes()
    data = inner.read_bytes()
    at = data.index(good)  # stored, not compressed: the member's bytes are in the zip as they are
    inner.write_bytes(data[:at] + good[:5] + (b"9" if good[5:6] != b"9" else b"8") + good[6:] + data[at + len(good):])
    gt.unlink()
    with pytest.raises(InputError, match=r"P01-P01_01-2.zip: member groundtruth_rect.txt is damaged \(Bad CRC-32.*\); "
                                         r"download the annotations zip again from https://\S+ and delete \S+"
                                         r"P01-P01_01-2.zip$"):
        _prepare(root, zpath, videos, ffmpeg)
    assert not gt.exists() and list((root / "P01-P01_01-2").glob(".*.part")) == []


def test_a_cut_annotation_file_is_extracted_again_with_normal_permissions(sources, tmp_path: Path) -> None:
    zpath, videos, ffmpeg, log = sources
    root = tmp_path / "trek"
    _prepare(root, zpath, videos, ffmpeg)
    hoi = root / "P01-P01_01-2" / "anchors_hoi.txt"
    whole = hoi.read_bytes()
    hoi.write_bytes(whole[:3])  # an extraction cut short by an older version
    _prepare(root, zpath, videos, ffmpeg)
    assert hoi.read_bytes() == whole and len(log.read_text().splitlines()) == 1
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(hoi.stat().st_mode) == 0o666 & ~umask


def test_ffmpeg_decoding_errors_are_a_warning_and_failures_one_line(sources, tmp_path: Path) -> None:
    zpath, videos, ffmpeg, _ = sources
    script = ffmpeg.read_text()
    ffmpeg.write_text(script.replace("for i in range(1, n + 1):",
                                     "sys.stderr.write('[h264 @ 0x1] error while decoding MB 3 4\\n')\n"
                                     "for i in range(1, n + 1):"))
    echoed: list[str] = []
    _prepare(tmp_path / "trek", zpath, videos, ffmpeg, echo=echoed.append)
    (warning,) = [line for line in echoed if line.startswith("warning:")]
    assert "P01_01.MP4" in warning and "error while decoding MB 3 4" in warning and "--decode" in warning
    ffmpeg.write_text(script.replace("n = int(", "sys.stderr.write('banner\\nmore\\nNo space left on device\\n');"
                                                " sys.exit(1)\nn = int("))
    with pytest.raises(UserError, match=r"ffmpeg failed on .*P01_01.MP4 \(exit 1\): .*No space left on device$"):
        _prepare(tmp_path / "trek2", zpath, videos, ffmpeg)


def test_root_under_a_file_is_one_line(sources, tmp_path: Path) -> None:
    from tests.damaged import assert_one_line_error, run_cli

    zpath, videos, ffmpeg, _ = sources
    (tmp_path / "afile").write_text("x")
    proc = run_cli("dataset", "prepare", "--root", tmp_path / "afile" / "trek", "--annotations", zpath,
                   "--videos", videos, "--ffmpeg", ffmpeg)
    assert_one_line_error(proc, f"cannot create {tmp_path / 'afile' / 'trek'}: {tmp_path / 'afile'} is a file",
                          "choose another --root")


@pytest.mark.parametrize(("code", "reason"), [(errno.EROFS, "read-only file system"),
                                              (errno.ENOSPC, "no space left on the device")])
def test_unwritable_root_is_one_line(sources, tmp_path: Path, code: int, reason: str) -> None:
    from tests.damaged import assert_one_line_error, failing_fs, run_cli

    zpath, videos, ffmpeg, _ = sources
    root = tmp_path / "trek"
    root.mkdir()
    proc = run_cli("dataset", "prepare", "--root", root, "--annotations", zpath, "--videos", videos,
                   "--ffmpeg", ffmpeg, env=failing_fs(tmp_path, root, code))
    assert_one_line_error(proc, f"cannot write {root / 'TREK-150-annotations'}", reason, "choose another --root")


@pytest.fixture()
def two_videos(sources, tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    """The sources with a second video: sequence P02-P02_03-7 (the frames of P01-P01_01-10) in P02_03.MP4."""
    zpath, videos, ffmpeg, log = sources
    two = _annotations_zip(tmp_path / "two" / "TREK-150-annotations.zip", build_synthetic(tmp_path / "src2"),
                           {"P01-P01_01-2": "P01-P01_01-2", "P02-P02_03-7": "P01-P01_01-10"})
    (videos / "P02").mkdir()
    (videos / "P02" / "P02_03.MP4").write_text("200")
    return two, videos, ffmpeg, log


def test_several_videos_at_once_and_frames_are_links_not_copies(two_videos, tmp_path: Path) -> None:
    zpath, videos, ffmpeg, log = two_videos
    root = tmp_path / "trek"
    cfg = PrepareConfig(root=root, annotations_zip=zpath, videos=videos, ffmpeg=str(ffmpeg), jobs=2, keep_frames=True)
    echoed: list[str] = []
    prepare(cfg, echo=echoed.append)
    assert sorted(line.split()[1] for line in log.read_text().splitlines()) == [
        str(videos / "P01" / "P01_01.MP4"), str(videos / "P02" / "P02_03.MP4")]
    assert {line.split(" ", 1)[0] for line in echoed if "extracting" in line} == {"[1/2]", "[2/2]"}
    seq = Trek150(root)["P02-P02_03-7"]
    first = seq.img_files[0]
    assert first.read_bytes() == f"jpeg {int(first.stem.split('_')[1])}".encode()
    assert os.path.samefile(first, root / ".frames-P02_03" / first.name)  # a hard link: no copy
    assert not list(root.rglob(".*.part"))


def test_a_failing_video_leaves_the_others_done(two_videos, tmp_path: Path) -> None:
    zpath, videos, ffmpeg, _ = two_videos
    script = ffmpeg.read_text()
    ffmpeg.write_text(script.replace("n = int(", "sys.exit(3) if 'P02_03' in sys.argv[2] else None\nn = int("))
    root = tmp_path / "trek"
    with pytest.raises(UserError, match=r"ffmpeg failed on .*P02_03.MP4 \(exit 3\)"):
        prepare(PrepareConfig(root=root, annotations_zip=zpath, videos=videos, ffmpeg=str(ffmpeg), jobs=2),
                echo=lambda s: None)
    assert len(list((root / "P01-P01_01-2" / "img").glob("*.jpg"))) == len(SYN_A)
    assert not (root / "P02-P02_03-7" / "img").exists() or not list((root / "P02-P02_03-7" / "img").iterdir())


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc to see the ffmpeg processes")
def test_a_signal_stops_every_running_ffmpeg(two_videos, tmp_path: Path) -> None:
    """SIGTERM while two videos extract at once: the command ends as interrupted and no ffmpeg is left running."""
    zpath, videos, ffmpeg, _ = two_videos
    pids = tmp_path / "pids"
    pids.mkdir()
    ffmpeg.write_text(ffmpeg.read_text().replace(
        "n = int(", f"import os, time; pathlib.Path({str(pids)!r}, str(os.getpid())).touch(); time.sleep(60)\n"
                    "n = int("))
    proc = subprocess.Popen([sys.executable, "-m", "trek_tracker.cli", "dataset", "prepare", "--root",
                             str(tmp_path / "trek"), "--annotations", str(zpath), "--videos", str(videos), "--ffmpeg",
                             str(ffmpeg), "--jobs", "2"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 60
    while len(list(pids.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(list(pids.iterdir())) == 2, "both ffmpeg processes should be running"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in stderr
    assert "interrupted by SIGTERM; finished work was kept" in stderr  # what is extracted, resumed per sequence
    time.sleep(0.5)
    for pid in (int(p.name) for p in pids.iterdir()):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_an_interrupt_starts_no_ffmpeg_after_it(two_videos, tmp_path: Path, monkeypatch) -> None:
    """Ctrl-C while one video's ffmpeg runs and another's job is still getting ready (deleting an old frame
    folder): the second must not start its ffmpeg after the running ones were stopped, or the interrupted
    command would wait for a whole extraction before it ends."""
    import threading

    import trek_tracker.eval.prepare as prep

    zpath, videos, ffmpeg, log = two_videos
    started = tmp_path / "started"
    ffmpeg.write_text(ffmpeg.read_text().replace(
        "n = int(", f"import time\nif 'P01_01' in sys.argv[2]: pathlib.Path({str(started)!r}).touch(); time.sleep(60)\n"
                    "n = int("))
    extracted = prep._extracted
    main = threading.main_thread().ident

    def slow_to_start(tmp: Path, used: list[int]) -> bool:
        if tmp.name.endswith("P02_03"):  # the interrupt comes while this job gets ready
            deadline = time.monotonic() + 30
            while not started.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            signal.pthread_kill(main, signal.SIGINT)
            time.sleep(1)
        return extracted(tmp, used)

    monkeypatch.setattr(prep, "_extracted", slow_to_start)
    with pytest.raises(KeyboardInterrupt):
        prepare(PrepareConfig(root=tmp_path / "trek", annotations_zip=zpath, videos=videos, ffmpeg=str(ffmpeg),
                              jobs=2), echo=lambda s: None)
    time.sleep(2)  # what the second job does after the interrupt
    assert [line for line in log.read_text().splitlines() if "P02_03" in line] == []


def test_images_frames_txt_does_not_list_are_deleted_without_extracting_again(sources, tmp_path: Path) -> None:
    """An image in ``img/`` that frames.txt does not list (a frame of an older frames.txt, a copied-in file, a
    macOS ``._`` file) makes the reader refuse the sequence: preparing again deletes it, with a warning, and
    needs no extraction when every listed frame is there."""
    zpath, videos, ffmpeg, log = sources
    root = tmp_path / "trek"
    _prepare(root, zpath, videos, ffmpeg)
    img = root / "P01-P01_01-2" / "img"
    (img / "frame_0000000102.jpg").write_bytes(b"stray")
    (img / "._frame_0000000101.jpg").write_bytes(b"apple double")
    with pytest.raises(InputError, match="10 images"):
        Trek150(root)["P01-P01_01-2"].img_files  # noqa: B018
    echoed: list[str] = []
    _prepare(root, zpath, videos, ffmpeg, echo=echoed.append)
    assert len(log.read_text().splitlines()) == 1  # no second extraction
    assert [line for line in echoed if line.startswith("warning:")] == [
        "warning: P01-P01_01-2: deleted 2 image(s) that frames.txt does not list (first: ._frame_0000000101.jpg)"]
    assert len(Trek150(root)["P01-P01_01-2"].img_files) == len(SYN_A)


def test_a_missing_sequence_zip_is_taken_again_from_the_annotations_zip(sources, tmp_path: Path) -> None:
    """An extraction of the annotations zip cut short after sequences.txt, or a damaged sequence zip deleted
    as its error says: the next run takes the sequence zip from the annotations zip again instead of
    stopping; without that zip, one line says what to do."""
    zpath, videos, ffmpeg, _ = sources
    root = tmp_path / "trek"
    _prepare(root, zpath, videos, ffmpeg)
    shutil.rmtree(root / "P01-P01_01-10")
    (root / "TREK-150-annotations" / "P01-P01_01-10.zip").unlink()
    _prepare(root, zpath, videos, ffmpeg)
    assert len(Trek150(root)["P01-P01_01-10"].img_files) == len(SYN_B)
    shutil.rmtree(root / "P01-P01_01-10")
    (root / "TREK-150-annotations" / "P01-P01_01-10.zip").unlink()
    with pytest.raises(InputError, match=r"annotations of P01-P01_01-10 not found: .*; download the annotations zip "
                                         r"from https://\S+ and pass --annotations$"):
        _prepare(root, tmp_path / "elsewhere.zip", videos, ffmpeg)


def test_no_videos_folder_says_to_pass_one(sources, tmp_path: Path) -> None:
    zpath, _, ffmpeg, _ = sources
    with pytest.raises(InputError, match=r"1 EK-55 video\(s\) needed for frames and no videos folder was given "
                                         r"\(--videos DIR\); (.|\n)*videos/train/P01/P01_01.MP4") as err:
        prepare(PrepareConfig(root=tmp_path / "trek", annotations_zip=zpath, ffmpeg=str(ffmpeg)), echo=lambda s: None)
    assert "None" not in str(err.value)


# ------------------------------------------------------------------------------ zip safety and resuming


@pytest.mark.parametrize("member", ["../outside.txt", "TREK-150-annotations/../../outside.txt", "../trek-x/outside.txt",
                                    "ABSOLUTE"])
def test_a_zip_member_outside_the_root_stops_before_anything_is_written(tmp_path: Path, member: str) -> None:
    root = tmp_path / "trek"
    outside = tmp_path / "abs" / "outside.txt"
    member = str(outside) if member == "ABSOLUTE" else member
    zpath = tmp_path / "TREK-150-annotations.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        z.writestr("TREK-150-annotations/sequences.txt", "P01-P01_01-2\n")
        z.writestr(member, "escaped")
    with pytest.raises(InputError, match=f"member {re.escape(repr(member))} would be written outside {root}; "
                                         "not extracting$"):
        prepare(PrepareConfig(root=root, annotations_zip=zpath), echo=lambda s: None)
    assert not list(tmp_path.rglob("outside.txt")) and list(root.iterdir()) == []


def test_a_member_of_a_sequence_zip_outside_its_folder_is_refused(sources, tmp_path: Path) -> None:
    zpath, videos, ffmpeg, _ = sources
    root = tmp_path / "trek"
    with zipfile.ZipFile(zpath) as z:
        z.extractall(root)
    inner = root / "TREK-150-annotations" / "P01-P01_01-2.zip"
    with zipfile.ZipFile(inner, "a") as z:
        z.writestr("../P01-P01_01-10/groundtruth_rect.txt", "1,1,1,1\n")
    with pytest.raises(InputError, match=r"P01-P01_01-2.zip: member '\.\./P01-P01_01-10/groundtruth_rect.txt' would "
                                         r"be written outside"):
        _prepare(root, zpath, videos, ffmpeg)
    assert not (root / "P01-P01_01-10").exists() and list((root / "P01-P01_01-2").glob("*")) == []


def test_a_sequence_missing_one_frame_is_extracted_again_and_the_others_are_not(two_videos, tmp_path: Path) -> None:
    zpath, videos, ffmpeg, log = two_videos
    root = tmp_path / "trek"
    echoed: list[str] = []
    first = _prepare(root, zpath, videos, ffmpeg, echo=echoed.append)
    assert "2 sequences listed; annotations extracted for 2" in echoed
    img = root / "P02-P02_03-7" / "img"
    lost = sorted(img.iterdir())[2]
    lost.unlink()
    echoed.clear()
    _prepare(root, zpath, videos, ffmpeg, echo=echoed.append)
    assert "2 sequences listed; annotations extracted for 0" in echoed
    assert f"[1/1] P02_03: extracting frames at 60 fps for 1 sequence(s), keeping the {len(SYN_B)} they use" in echoed
    runs = log.read_text().splitlines()
    assert len(runs) == 3 and "P02_03.MP4" in runs[2]  # only the video of the sequence that lost a frame
    assert lost.read_bytes() == f"jpeg {int(lost.stem.split('_')[1])}".encode()
    assert json.loads((root / "trek-track-prepare.json").read_text())["frames"] == first["frames"]


def test_a_prepared_root_needs_no_ffmpeg_and_keeps_the_recorded_version(sources, tmp_path: Path) -> None:
    zpath, videos, ffmpeg, _ = sources
    root = tmp_path / "new" / "trek"  # folders above it are made too
    _prepare(root, zpath, videos, ffmpeg)
    again = _prepare(root, zpath, videos, tmp_path / "no-ffmpeg-here")  # nothing to extract: ffmpeg never runs
    version = "ffmpeg version 9.9-fake Copyright (c) the fakers"  # the first line of `ffmpeg -version`
    assert again["ffmpeg"] == version
    assert json.loads((root / "trek-track-prepare.json").read_text())["ffmpeg"] == version


@pytest.mark.parametrize("broken", ["missing", "failing"])
def test_an_ffmpeg_that_cannot_run_is_one_line(sources, tmp_path: Path, broken: str) -> None:
    zpath, videos, ffmpeg, _ = sources
    if broken == "missing":
        ffmpeg, why = tmp_path / "no-ffmpeg-here", "No such file"
    else:  # not ffmpeg, or a broken install: `-version` fails
        ffmpeg.write_text(f"#!{sys.executable}\nimport sys\nprint('usage: something else'); sys.exit(1)\n")
        why = "returned non-zero exit status 1"
    with pytest.raises(UserError, match=rf"^cannot run {re.escape(repr(str(ffmpeg)))} \(.*{why}.*\); "
                                        r"install ffmpeg or pass --ffmpeg PATH$"):
        _prepare(tmp_path / "trek", zpath, videos, ffmpeg)


@pytest.mark.parametrize(("stderr", "said"), [
    ("", "no message"), ("banner\n\nfirst  line\nsecond\nthird\n", "first line / second / third"),
    ("a" * 300 + "\n" + "b" * 300 + "\n", ("a" * 300 + " / " + "b" * 300)[-400:])],  # at most 400 characters
    ids=["silent", "last-three", "long"])
def test_a_failed_ffmpeg_is_named_with_its_last_lines(sources, tmp_path: Path, stderr: str, said: str) -> None:
    zpath, videos, ffmpeg, _ = sources
    ffmpeg.write_text(ffmpeg.read_text().replace("n = int(", f"sys.stderr.write({stderr!r}); sys.exit(1)\nn = int("))
    with pytest.raises(UserError) as err:
        _prepare(tmp_path / "trek", zpath, videos, ffmpeg)
    assert str(err.value).endswith(f"P01_01.MP4 (exit 1): {said}")


def test_the_decoding_warning_counts_errors_names_the_first_and_skips_configuration(sources, tmp_path: Path) -> None:
    zpath, videos, ffmpeg, _ = sources
    script = ffmpeg.read_text()
    config = "sys.stderr.write('  configuration: --enable-gpl --disable-error-resilience\\n')\nn = int("
    ffmpeg.write_text(script.replace("n = int(", config))
    echoed: list[str] = []
    _prepare(tmp_path / "trek", zpath, videos, ffmpeg, echo=echoed.append)
    assert [line for line in echoed if "warning" in line] == []
    ffmpeg.write_text(script.replace("n = int(", "sys.stderr.write('[h264] invalid NAL unit 7\\n[h264] error while "
                                                 "decoding MB 1 2\\n')\n" + config))
    _prepare(tmp_path / "trek2", zpath, videos, ffmpeg, echo=echoed.append)
    (warning,) = [line for line in echoed if "warning" in line]
    assert "reported 2 decoding error(s)" in warning and "(first: [h264] invalid NAL unit 7)" in warning


@pytest.mark.parametrize("where", ["P01_01.MP4", "P01_01.mp4", "P01/P01_01.mp4"])
def test_videos_are_found_flat_or_per_participant_with_either_extension_case(sources, tmp_path: Path,
                                                                             where: str) -> None:
    zpath, videos, ffmpeg, log = sources
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / where).parent.mkdir(parents=True, exist_ok=True)
    (videos / "P01" / "P01_01.MP4").rename(elsewhere / where)
    _prepare(tmp_path / "trek", zpath, elsewhere, ffmpeg)
    assert log.read_text().split()[1] == str(elsewhere / where)


def _damage(zpath: Path, content: bytes) -> None:
    """Change one byte of a stored (not compressed) member whose bytes are ``content``: its CRC fails."""
    data = zpath.read_bytes()
    at = data.index(content) + len(content) // 2
    zpath.write_bytes(data[:at] + bytes([data[at] ^ 1]) + data[at + 1:])


def test_a_damaged_member_of_the_annotations_zip_says_to_download_it_again(sources, tmp_path: Path) -> None:
    zpath, videos, ffmpeg, _ = sources
    good = zpath.read_bytes()
    _damage(zpath, b"P01-P01_01-2\nP01-P01_01-10\n")
    fix = r"download it again from https://machinelearning\.uniud\.it/\S+$"
    with pytest.raises(InputError, match=r"member TREK-150-annotations/sequences.txt is damaged \(Bad CRC-32.*\); "
                                         + fix):
        _prepare(tmp_path / "trek", zpath, videos, ffmpeg)
    zpath.write_bytes(good)
    root = tmp_path / "trek2"
    _prepare(root, zpath, videos, ffmpeg)
    inner = root / "TREK-150-annotations" / "P01-P01_01-10.zip"
    _damage(zpath, inner.read_bytes())  # the sequence zip is taken again from a damaged annotations zip
    shutil.rmtree(root / "P01-P01_01-10")
    inner.unlink()
    with pytest.raises(InputError, match=r"member TREK-150-annotations/P01-P01_01-10.zip is damaged .*; " + fix):
        _prepare(root, zpath, videos, ffmpeg)
    assert not inner.exists()


def test_zip_folders_are_extracted_whether_listed_or_present_already(sources, tmp_path: Path, monkeypatch) -> None:
    """An official zip lists its folders as members; a zip without them, or an extraction cut short that left
    the folders, must extract all the same. Files are written beside their final name (renamed, not moved
    across file systems), whatever the temporary folder."""
    import tempfile

    zpath, videos, ffmpeg, _ = sources
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-tmp"))
    listed = tmp_path / "listed.zip"
    with zipfile.ZipFile(zpath) as src, zipfile.ZipFile(listed, "w") as dst:
        dst.writestr("TREK-150-annotations/", b"")
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        dst.writestr("TREK-150-annotations/docs/", b"")
        dst.writestr("TREK-150-annotations/more/empty/", b"")
        dst.writestr("TREK-150-annotations/extra/notes/readme.txt", "no folder entries above me")
    root = tmp_path / "trek"
    (root / "TREK-150-annotations" / "docs").mkdir(parents=True)  # left by an extraction cut short
    _prepare(root, listed, videos, ffmpeg)
    readme = root / "TREK-150-annotations" / "extra" / "notes" / "readme.txt"
    assert readme.read_text() == "no folder entries above me"
    assert (root / "TREK-150-annotations" / "more" / "empty").is_dir()
    assert sorted(Trek150(root).names) == ["P01-P01_01-10", "P01-P01_01-2"]


def test_a_part_file_left_by_an_interrupted_run_does_not_turn_frames_into_copies(sources, tmp_path: Path) -> None:
    zpath, videos, ffmpeg, _ = sources
    root = tmp_path / "trek"
    img = root / "P01-P01_01-2" / "img"
    img.mkdir(parents=True)
    (img / ".frame_0000000101.jpg.part").write_bytes(b"cut")
    prepare(PrepareConfig(root=root, annotations_zip=zpath, videos=videos, ffmpeg=str(ffmpeg), keep_frames=True),
            echo=lambda s: None)
    frame = img / "frame_0000000101.jpg"
    assert frame.read_bytes() == b"jpeg 101" and os.path.samefile(frame, root / ".frames-P01_01" / frame.name)
    assert list(img.glob(".*")) == []


def test_a_prepared_root_without_its_sequence_zips_resumes_from_the_extracted_files(sources, tmp_path: Path) -> None:
    zpath, videos, ffmpeg, _ = sources
    root = tmp_path / "trek"
    _prepare(root, zpath, videos, ffmpeg)
    for inner in (root / "TREK-150-annotations").glob("*.zip"):
        inner.unlink()
    echoed: list[str] = []
    _prepare(root, tmp_path / "no-annotations.zip", videos, ffmpeg, echo=echoed.append)
    assert echoed[0] == "2 sequences listed; annotations extracted for 0"
    assert echoed[-1] == f"2 sequences, {len(SYN_A) + len(SYN_B)} frames; 2 with anchors.txt, 1 with anchors_hoi.txt"
    assert len(Trek150(root)["P01-P01_01-2"].img_files) == len(SYN_A)


def test_ctrl_c_while_the_only_ffmpeg_runs_stops_it_and_interrupts(sources, tmp_path: Path) -> None:
    """One video at a time (no thread pool): the interrupt reaches the wait for ffmpeg, which must stop
    ffmpeg and end the command as interrupted, not report ffmpeg's death as a failed extraction."""
    import threading

    zpath, videos, ffmpeg, log = sources
    pid = tmp_path / "pid"
    ffmpeg.write_text(ffmpeg.read_text().replace(
        "n = int(", f"import os, time; pathlib.Path({str(pid)!r}).write_text(str(os.getpid())); time.sleep(60)\n"
                    "n = int("))
    main = threading.main_thread().ident

    def interrupt() -> None:
        deadline = time.monotonic() + 30
        while not (pid.exists() and pid.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        signal.pthread_kill(main, signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        _prepare(tmp_path / "trek", zpath, videos, ffmpeg)
    assert time.monotonic() - started < 30
    time.sleep(0.2)
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid.read_text()), 0)


def test_a_video_shorter_than_frames_txt_needs_is_named(sources, tmp_path: Path) -> None:
    zpath, videos, ffmpeg, _ = sources
    (videos / "P01" / "P01_01.MP4").write_text("104")  # P01-P01_01-2 lists frames 101, 103, 105, ...
    with pytest.raises(InputError, match=r"P01_01.MP4 gave no frame frame_0000000105.jpg at 60 fps \(sequence "
                                         r"P01-P01_01-2\); the video is shorter than frames.txt needs"):
        _prepare(tmp_path / "trek", zpath, videos, ffmpeg)


@pytest.mark.parametrize("count", [10, 12])
def test_many_missing_videos_list_ten_urls_and_count_the_rest(tmp_path: Path, count: int) -> None:
    src = build_synthetic(tmp_path / "src")
    names = [f"P{k:02d}-P{k:02d}_01-1" for k in range(1, count + 1)]
    zpath = _annotations_zip(tmp_path / "TREK-150-annotations.zip", src, dict.fromkeys(names, "P01-P01_01-2"))
    (tmp_path / "videos").mkdir()
    with pytest.raises(InputError) as err:
        prepare(PrepareConfig(root=tmp_path / "trek", annotations_zip=zpath, videos=tmp_path / "videos"),
                echo=lambda s: None)
    lines = str(err.value).splitlines()
    assert lines[0].startswith(f"{count} EK-55 video(s) needed for frames are not in {tmp_path / 'videos'}; ")
    assert lines[1:] == [f"  https://data.bris.ac.uk/datasets/3h91syskeag572hl6tvuovwv4d/videos/train/{n[:3]}/"
                         f"{n[:3]}_01.MP4" for n in names[:10]] + [f"  ... and {count - 10} more"] * (count > 10)


def test_a_relative_root_is_prepared(sources, tmp_path: Path, monkeypatch) -> None:
    zpath, videos, ffmpeg, _ = sources
    monkeypatch.chdir(tmp_path)
    _prepare(Path("trek"), zpath, videos, ffmpeg)
    assert len(Trek150(tmp_path / "trek")["P01-P01_01-2"].img_files) == len(SYN_A)


def test_an_annotations_folder_linked_to_another_disk_is_extracted_into(sources, tmp_path: Path) -> None:
    """Only the members' names decide what is outside the root: a folder of the root that the user made a link
    to another disk is written through, not refused as outside."""
    zpath, videos, ffmpeg, _ = sources
    root, disk = tmp_path / "trek", tmp_path / "disk" / "annotations"
    disk.mkdir(parents=True)
    root.mkdir()
    (root / "TREK-150-annotations").symlink_to(disk, target_is_directory=True)
    _prepare(root, zpath, videos, ffmpeg)
    assert (disk / "sequences.txt").is_file() and (disk / "P01-P01_01-2.zip").is_file()
    assert (root / "TREK-150-annotations").is_symlink()
    assert (root / "P01-P01_01-2" / "groundtruth_rect.txt").is_file()
