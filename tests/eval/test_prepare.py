"""``dataset prepare`` from an annotations zip and "videos", with a stand-in ffmpeg that records its
arguments and writes numbered frames (the real ffmpeg is not needed for the logic)."""

from __future__ import annotations

import errno
import json
import os
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
    print("ffmpeg version 9.9-fake"); sys.exit(0)
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
    assert manifest["ffmpeg"] == "ffmpeg version 9.9-fake" and manifest["frames"]["P01-P01_01-10"] == 5
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
    with pytest.raises(InputError, match=r"P01-P01_01-2.zip: member groundtruth_rect.txt is damaged \(Bad CRC-32"):
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
