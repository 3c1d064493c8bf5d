"""``dataset prepare`` from an annotations zip and "videos", with a stand-in ffmpeg that records its
arguments and writes numbered frames (the real ffmpeg is not needed for the logic)."""

from __future__ import annotations

import json
import stat
import sys
import zipfile
from pathlib import Path

import pytest

from tests.eval.helpers import build_synthetic
from trek_tracker.errors import InputError
from trek_tracker.eval.dataset import Trek150
from trek_tracker.eval.prepare import PrepareConfig, prepare

FAKE_FFMPEG = '''#!{python}
import sys, pathlib
log = pathlib.Path({log!r})
if sys.argv[1:] == ["-version"]:
    print("ffmpeg version 9.9-fake"); sys.exit(0)
log.write_text(log.read_text() + " ".join(sys.argv[1:]) + "\\n" if log.exists() else " ".join(sys.argv[1:]) + "\\n")
n = int(pathlib.Path(sys.argv[2]).read_text())
out = sys.argv[5]
for i in range(1, n + 1):
    pathlib.Path(out % i).write_bytes(b"jpeg %d" % i)
'''


@pytest.fixture()
def sources(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    """The annotations zip (layout of the official one), a videos folder and a fake ffmpeg."""
    src = build_synthetic(tmp_path / "src")
    zpath = tmp_path / "TREK-150-annotations.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        z.write(src / "TREK-150-annotations" / "sequences.txt", "TREK-150-annotations/sequences.txt")
        for seq in ("P01-P01_01-2", "P01-P01_01-10"):
            inner = tmp_path / f"{seq}.zip"
            with zipfile.ZipFile(inner, "w") as zs:
                for f in sorted((src / seq).iterdir()):
                    if f.is_file():
                        zs.write(f, f.name)
            z.write(inner, f"TREK-150-annotations/{seq}.zip")
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


def test_missing_video_lists_official_urls(sources, tmp_path: Path) -> None:
    zpath, _, ffmpeg, _ = sources
    with pytest.raises(InputError, match=r"videos/train/P01/P01_01.MP4"):
        prepare(PrepareConfig(root=tmp_path / "trek", annotations_zip=zpath, videos=tmp_path, ffmpeg=str(ffmpeg)),
                echo=lambda s: None)


def test_missing_annotations(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="TREK-150-annotations.zip"):
        prepare(PrepareConfig(root=tmp_path / "trek"), echo=lambda s: None)
