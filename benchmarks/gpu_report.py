"""Every GPU figure of the README in one command: the CUDA tests, then each GPU benchmark, each in its own
process, into one folder with a ``summary.md`` to read (and paste) and a ``report.json``.

    python benchmarks/gpu_report.py --out gpu-report                      # all stages, on the GPU
    python benchmarks/gpu_report.py --out gpu-report --stages speed,scale  # some of them
    python benchmarks/gpu_report.py --out gpu-report --resume              # the stages not yet done
    python benchmarks/gpu_report.py --out gpu-report --quick               # the targets in ~10 GPU minutes
    python benchmarks/gpu_report.py --out gpu-report --official /path/to/aot-benchmark   # x official column

A stage that fails or outruns ``--stage-timeout`` is recorded as such and the next one runs (a CUDA test
skipped on the report's machine fails the ``tests`` stage, outside ``--smoke``). ``--deadline`` bounds the
whole report (a lease of a GPU ends at a fixed time): each command is stopped when it passes, and the stages
it leaves are recorded as not run. ``--resume`` runs again only what did not finish with exit status 0.
The folder belongs to one report: a second report into it needs ``--resume``. ``--smoke`` runs the same
stages and flags at sizes a CPU finishes in minutes (the tiny or MobileNet models, a few frames): it checks
the commands, not the speed.

Stages and what they measure (each benchmark's docstring says more):

* ``tests``: ``pytest -m cuda`` (golden parity in fp32, ``trek-track run`` per precision and compiled,
  AMP training steps, SAM and Alpha-Refine on CUDA);
* ``speed``: R50-DeAOT-L end to end and network FPS, how busy the GPU is, peak GPU memory, per precision
  and input size (and the official evaluator's FPS with ``--official``);
* ``compile``: the same at 1080p in bf16, eager against ``--compile``;
* ``precision``: bf16 and fp16 boxes and masks against fp32 on DAVIS clips;
* ``memory``: peak memory at 150, 600 and 4,640 frames with the default bounded memory, and the official
  unbounded memory at 150 and 600 frames; the size of ``trek-track run``'s saved state (``resume.pt``) and
  the time to take, write and restore it;
* ``scale``: the TREK-150-shaped workload (10 sequences at full length, sampled) and its projected wall time,
  each run's box-to-mask init (fused SAM ViT-B and Alpha-Refine) included, then the same runs through
  ``trek-track eval``'s runner with 1 and 2 processes on the GPU;
* ``outputs``: how fast ``trek-track run`` writes masks, probabilities and overlays at 1080p with the
  machine's CPUs (one writer thread against the pool);
* ``train``: training throughput and projected hours of every ready config, in bf16.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from benchdata import REPO

STAGES = ("tests", "speed", "compile", "precision", "memory", "scale", "outputs", "train")


# --deadline: a stage is started only with at least this many seconds left.
MIN_STAGE_SECONDS = 10.0

# Scratch folders a command stopped at a time limit leaves in the report's folder: resume_state.py's saved
# states (hundreds of MiB at 1080p), which would swell the folder that is copied off a leased GPU.
SCRATCH = ("resume-state-*",)

# --quick: the targets only, at sizes that fit a short lease of one GPU (about 10 minutes).
QUICK_STAGES = ("tests", "speed", "precision", "memory", "scale")


def stage_commands(stage: str, out: Path, *, device: str, smoke: bool, official: Path | None,
                   quick: bool = False) -> list[list[str]]:
    """The command lines of one stage; ``smoke`` and ``quick`` change only sizes and cases, never which
    flags are given."""
    py, bench = sys.executable, REPO / "benchmarks"
    threads = ["--threads", "1"] if smoke else []
    if stage == "tests":
        return [[py, "-m", "pytest", "-q", "-m", "cuda", "-rs", "-p", "no:cacheprovider",
                 f"--junitxml={out / 'tests.xml'}", str(REPO / "tests")]]
    if stage in ("speed", "compile"):
        model = "deaott" if smoke else "r50_deaotl"
        frames = (["--frames", "8", "--warmup", "2"] if smoke else ["--frames", "150", "--warmup", "10"] if quick
                  else ["--frames", "300", "--warmup", "20"])
        if stage == "speed":
            cases = (["--precisions", "fp32"] if smoke else ["--precisions", "bf16", "fp32"] if quick
                     else ["--precisions", "bf16", "fp16", "fp32"])
            inputs = ["480p"] if smoke else ["1080p"] if quick else ["480p", "1080p"]
            cases += ["--inputs", *inputs]
            cases += ["--official", str(official)] if official else []
        else:
            cases = ["--precisions", "fp32" if smoke else "bf16", "--inputs", "480p" if smoke else "1080p",
                     "--compile", "both"]
        return [[py, str(bench / "gpu_speed.py"), "--models", model, *cases, *frames, "--device", device, *threads,
                 "--json", str(out / f"{stage}.json")]]
    if stage == "precision":
        # VMOS too: its DCNv3 sampling is where half precision would move positions, not only values
        models = ["deaott"] if smoke else ["r50_deaotl", "vmos"] if quick else ["deaott", "r50_deaotl", "vmos"]
        return [[py, str(bench / "precision_agreement.py"), "--models", *models, "--precisions", "bf16", "fp16",
                 "--frames", "4" if smoke else "30" if quick else "60", "--device", device, *threads,
                 "--json", str(out / "precision.json")]]
    if stage == "memory":
        model = "deaott" if smoke else "r50_deaotl"
        common = [py, str(bench / "memory_long_video.py"), "--model", model, "--device", device, *threads,
                  "--precision", "fp32" if smoke else "bf16", "--max-long-edge", "240" if smoke else "1040"]
        return [[*common, "--lengths", "8,16" if smoke else "150,4640" if quick else "150,600,4640", "--settings",
                 "default",
                 "--json", str(out / "memory.json")],
                [*common, "--lengths", "8" if smoke else "150,600", "--settings", "official",
                 "--json", str(out / "memory_official.json")],
                [py, str(bench / "resume_state.py"), "--models", model, "--size", "90x160" if smoke else "1080x1920",
                 "--device", device, "--precision", *(["fp32"] if smoke else ["fp32", "bf16"]), "--repeats", "3",
                 "--dir", str(out), "--json", str(out / "resume_state.json")]]
    if stage == "scale":
        sample = (["--model", "test_deaot_tiny", "--sequences", "1", "--length-scale", "0.02", "--budget-frames", "12",
                   "--init-sam", "none"]
                  if smoke else ["--model", "r50_deaotl", "--sequences", "10", "--length-scale", "1.0",
                                 "--budget-frames", "2000" if quick else "6000", "--init-sam", "vit_b"])
        # a small network input in smoke: the tiny model at 1040 spends minutes of a CPU on 66 frames
        return [[py, str(bench / "trek150_scale.py"), *sample, "--random-weights", "--device", device, *threads,
                 "--max-long-edge", "240" if smoke else "1040", "--workers", "1,2", "--json", str(out / "scale.json")]]
    if stage == "outputs":
        size = ["--size", "160x90", "--frames", "6"] if smoke else ["--size", "1920x1080", "--frames",
                                                                   "60" if quick else "200"]
        return [[py, str(bench / "run_outputs.py"), *size, "--json", str(out / "outputs.json")]]
    if stage == "train":
        which = ["--models", "test_deaot_tiny", "--size", "33", "--frames", "2", "--steps", "1", "--warmup", "0"] \
            if smoke else ["--configs", "all", "--steps", "10" if quick else "20"]
        return [[py, str(bench / "train_throughput.py"), *which, "--precision", "bf16", *threads,
                 "--json", str(out / "train.json")]]
    raise ValueError(f"unknown stage {stage!r}")


def device_info() -> dict:
    """What the figures were measured on."""
    import torch

    from trek_tracker.device import usable_cpus

    info = {"host": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
            "cpus": usable_cpus(), "cuda": torch.version.cuda}  # the CPUs the benchmarks could use
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), gpus=torch.cuda.device_count())
    return info


def _shown(cmd: list[str]) -> str:
    """A command as a reader would type it: paths under the checkout relative to it."""
    parts = [os.path.relpath(c, REPO) if c.startswith(str(REPO)) else c for c in cmd]
    parts[0] = "python" if parts[0] == sys.executable else parts[0]
    return shlex.join(parts)


def run_command(cmd: list[str], log: Path, timeout: float | None) -> tuple[int, float]:
    """Runs one command with its output appended to ``log``; (exit status, seconds). 124 when it outran
    ``timeout``: its whole process group is stopped."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    start = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"$ {_shown(cmd)}\n")
        f.flush()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = 124
            f.write(f"\n[stopped after {timeout:.0f} s]\n")
        except BaseException:  # Ctrl-C or a signal: the stage's processes go with the report
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    return rc, time.perf_counter() - start


def junit_counts(junit: Path) -> dict[str, int]:
    """Passed, failed, errors and skipped of a pytest JUnit XML file."""
    import xml.etree.ElementTree as ET

    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    return {"passed": n["tests"] - n["failures"] - n["errors"] - n["skipped"], "failed": n["failures"],
            "errors": n["errors"], "skipped": n["skipped"]}


def summary(report: dict) -> str:
    """``summary.md``: the device, then per stage its commands, status, time and the benchmark's own table."""
    d = report["device"]
    size = {"smoke": "smoke run: commands checked, figures meaningless", "quick": "quick: the targets, fewer frames",
            "full": "full"}[report.get("size", "smoke" if report["smoke"] else "full")]
    lines = [f"# GPU report ({size})",
             "", f"device: {d.get('gpu', 'no GPU')}"
             + (f" ({d['gpu_memory_gib']} GiB, {d['gpus']} visible)" if "gpu" in d else "")
             + f"; {d['cpus']} CPUs; torch {d['torch']} (CUDA {d['cuda']}); python {d['python']}", ""]
    for name, st in report["stages"].items():
        status = ("ok" if st["rc"] == 0 else "not run (the --deadline had passed)" if st["rc"] is None
                  else f"FAILED (exit {st['rc']})")
        if "tests" in st:
            status += " (" + ", ".join(f"{v} {k}" for k, v in st["tests"].items()) + ")"
        lines += [f"## {name}: {status}, {st['seconds']:.0f} s",
                  "", "```bash", *st["commands"], "```", "", "```", *st["tail"], "```", ""]
    return "\n".join(lines)


def _tail(log: Path, n: int = 40) -> list[str]:
    text = log.read_text(errors="replace").splitlines()
    return [line for line in text if not line.startswith("$ ")][-n:]


def main(argv: list[str] | None = None) -> int:
    began = time.perf_counter()  # --deadline counts from here: importing torch and opening the GPU take time too
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the report's folder (new, or with --resume)")
    parser.add_argument("--stages", default=None,
                        help=f"comma-separated, of: {', '.join(STAGES)} (default: all; with --quick "
                             f"{','.join(QUICK_STAGES)})")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--official", type=Path, default=None, help="an aot-benchmark checkout (speed stage)")
    parser.add_argument("--stage-timeout", type=float, default=None, help="seconds a stage may run")
    parser.add_argument("--deadline", type=float, default=None,
                        help="seconds the whole report may run; the stages it leaves are recorded as not run")
    parser.add_argument("--smoke", action="store_true", help="CPU-sized cases: checks the commands only")
    parser.add_argument("--quick", action="store_true",
                        help="the issue's targets only, on fewer frames and cases (about 10 minutes of one GPU)")
    parser.add_argument("--resume", action="store_true", help="run the stages not yet finished with status 0")
    args = parser.parse_args(argv)
    chosen = args.stages if args.stages is not None else ",".join(QUICK_STAGES if args.quick else STAGES)
    stages = [s for s in chosen.split(",") if s]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        print(f"gpu_report: unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}", file=sys.stderr)
        return 2
    # the stages run in the checkout: a relative path is the caller's, and a wrong one would cost the speed stage
    official = None if args.official is None else args.official.resolve()
    if official is not None and not (official / "configs" / "pre_ytb_dav.py").is_file():
        print(f"gpu_report: --official {args.official} is not an aot-benchmark checkout (no "
              "configs/pre_ytb_dav.py in it); give the folder of a clone of yoxu515/aot-benchmark", file=sys.stderr)
        return 2
    out = args.out.resolve()
    saved = out / "report.json"
    if saved.exists() and not args.resume:
        print(f"gpu_report: {out} already holds a report; give --resume to finish it, or another --out",
              file=sys.stderr)
        return 2
    if not saved.exists() and out.exists() and any(out.iterdir()):
        print(f"gpu_report: {out} is not empty and holds no report; give an empty or new --out", file=sys.stderr)
        return 2
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / ".writable").touch()
        (out / ".writable").unlink()
    except OSError as err:
        from trek_tracker.files import os_error_message

        print(f"gpu_report: {os_error_message(err, out, 'create')}", file=sys.stderr)
        return 2
    kind = "smoke" if args.smoke else "quick" if args.quick else "full"
    report = json.loads(saved.read_text()) if saved.exists() else {"smoke": args.smoke, "size": kind, "stages": {}}
    if report.get("size", "smoke" if report["smoke"] else "full") != kind:
        print(f"gpu_report: {out} holds a {report.get('size')} report; resume it the same way", file=sys.stderr)
        return 2
    report["device"] = device_info()

    def save() -> None:
        """The report so far, atomically (a full disk leaves the last complete one and ends the report)."""
        from trek_tracker.files import os_error_message, write_json, write_text

        try:
            write_json(saved, report, indent=1)
            write_text(out / "summary.md", summary(report))
        except OSError as err:
            print(f"gpu_report: {os_error_message(err, out)}; the stages finished so far are in report.json",
                  file=sys.stderr)
            raise SystemExit(2) from None

    save()
    failed, not_run = [], []
    ends = None if args.deadline is None else began + args.deadline
    for stage in stages:
        if report["stages"].get(stage, {}).get("rc") == 0:
            print(f"{stage}: done before, kept", flush=True)
            continue
        if ends is not None and ends - time.perf_counter() < MIN_STAGE_SECONDS:
            report["stages"][stage] = {"rc": None, "seconds": 0.0, "commands": [], "tail": []}
            save()
            print(f"{stage}: not run (the --deadline has passed)", flush=True)
            not_run.append(stage)
            continue
        cmds = stage_commands(stage, out, device=args.device, smoke=args.smoke, official=official,
                              quick=args.quick)
        log = out / f"{stage}.log"
        log.write_text("")
        rc, seconds = 0, 0.0
        print(f"{stage}: running ({len(cmds)} command{'s' * (len(cmds) > 1)}; log {log})", flush=True)
        try:
            for cmd in cmds:
                limits = [] if args.stage_timeout is None else [args.stage_timeout - seconds]
                limits += [] if ends is None else [ends - time.perf_counter()]
                left = max(0.1, min(limits)) if limits else None
                try:
                    rc, took = run_command(cmd, log, left)
                finally:
                    for path in (p for pattern in SCRATCH for p in out.glob(pattern)):
                        shutil.rmtree(path, ignore_errors=True)
                seconds += took
                if rc != 0:
                    break
        except KeyboardInterrupt:
            report["stages"][stage] = {"rc": 130, "seconds": seconds, "commands": list(map(_shown, cmds)),
                                       "tail": _tail(log)}
            save()
            print(f"gpu_report: interrupted during {stage}; what finished is in {out} (--resume goes on)",
                  file=sys.stderr)
            return 130
        report["stages"][stage] = {"rc": rc, "seconds": round(seconds, 1), "commands": list(map(_shown, cmds)),
                                   "tail": _tail(log)}
        if stage == "tests" and (out / "tests.xml").exists():
            counts = junit_counts(out / "tests.xml")
            report["stages"][stage]["tests"] = counts
            if rc == 0 and counts["skipped"] and not args.smoke:  # on a GPU machine every CUDA test must run
                rc = 3
                with open(log, "a") as f:
                    f.write(f"\n{counts['skipped']} CUDA test(s) skipped on the report's machine (reasons above)\n")
                report["stages"][stage].update(rc=rc, tail=_tail(log))
        save()
        print(f"{stage}: {'ok' if rc == 0 else f'FAILED (exit {rc}); see {log}'} in {seconds:.0f} s", flush=True)
        if rc != 0:
            failed.append(stage)
    print(f"summary: {out / 'summary.md'}")
    if failed or not_run:
        said = []
        if failed:
            said.append(f"{len(failed)} stage(s) failed: {', '.join(failed)}")
        if not_run:
            said.append(f"{len(not_run)} not run before the deadline: {', '.join(not_run)} (--resume runs them)")
        print(f"gpu_report: {'; '.join(said)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a SIGTERM ends the report like Ctrl-C
    raise SystemExit(main())
