"""Time and peak memory of `moejet recycle` on a modern checkpoint: DINOv2 ViT-B/14 -> V-JetMoE-S/14.

    python benchmarks/recycle_modern.py [--images 1024] [--strategies importance graph uniform] [--threads 2]
    python benchmarks/recycle_modern.py --quick      # smoke run: 32 images, batch 16, importance, 2 reference batches

The predecessor is timm's ``vit_base_patch14_dinov2`` and the dense part ``vit_small_patch14_dinov2``, both built
with ``img_size=224`` (16x16 patches + cls = 257 tokens) and random weights (no network; the cost does not
depend on the weights), saved with ``safetensors.torch.save_file``. Each strategy runs the command line that
``moejet recycle`` users run, in its own subprocess (``python -m moejet recycle ... --successor auto
--successor-arg moe_layers=[6,...,11]``: ``jetmoe`` on ViT-S/14 with SpheroMoE in blocks 6-11, 128 core / 256
universal experts), with ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` set to ``--threads``. Recorded per run: wall
time of the subprocess, the report's ``timings`` (``recycle.json``), calibration images/s, the subprocess's peak
RSS and CPU time (``os.wait4``: that child's own resource usage), and the cores other jobs kept busy meanwhile
(``/proc/stat`` busy time less the child's CPU time). Before each run the script waits, at most ``--max-wait``
seconds, until other jobs use under 0.5 cores and the 1-minute load is below ``--max-load``; a run during which
other jobs averaged more than ``--busy-limit`` cores is repeated (``--retries``) and the least disturbed one is
reported, the others kept in the JSON.

The calibration data is ``synthetic-upstream`` (15,000 procedural training images, a seeded subset of
``--images``): plain ``synthetic`` (the downstream task) has only 500 training images, so ``--calib-images
1024`` on it calibrates on 500. A reference subprocess times, over ``--ref-batches`` batches of the same
calibration loader, the loader alone (rendering + timm eval transform) and a plain ``inference_mode`` forward of
the predecessor, to say what part of the calibration time is the forward pass.

Prints a Markdown table; writes benchmarks/results/recycle_modern.json (``--quick``: recycle_modern_quick.json).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import apply_malloc, describe

RESULTS = Path(__file__).parent / "results" / "recycle_modern.json"
QUICK_RESULTS = Path(__file__).parent / "results" / "recycle_modern_quick.json"
PREDECESSOR = "vit_base_patch14_dinov2"
DENSE = "vit_small_patch14_dinov2"
IMG_SIZE = 224
MOE_LAYERS = [6, 7, 8, 9, 10, 11]
CALIB_DATA = "synthetic-upstream"
STRATEGIES = ("importance", "graph", "uniform")


def save_sources(workdir: Path) -> dict:
    """Random-initialised predecessor and dense part, saved as plain state-dict .safetensors files."""
    import timm
    import torch
    from safetensors.torch import save_file

    import moejet  # noqa: F401  (registers jetmoe)

    out = {}
    for role, name, seed in (("predecessor", PREDECESSOR, 0), ("dense", DENSE, 1)):
        torch.manual_seed(seed)
        model = timm.create_model(name, img_size=IMG_SIZE)
        path = workdir / f"{role}.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        out[role] = {"model": name, "kwargs": {"img_size": IMG_SIZE}, "file": str(path),
                     "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
                     "tokens": model.patch_embed.num_patches + model.num_prefix_tokens,
                     "file_mb": path.stat().st_size / 2**20}
        del model
    with torch.device("meta"):
        succ = timm.create_model("jetmoe", base=DENSE, img_size=IMG_SIZE, moe_layers=MOE_LAYERS)
    moe = succ.blocks[MOE_LAYERS[0]].mlp
    out["successor"] = {"model": "jetmoe", "base": DENSE, "moe_layers": MOE_LAYERS,
                        "params_m": sum(p.numel() for p in succ.parameters()) / 1e6,
                        "core_experts": moe.num_core, "univ_experts": moe.num_univ}
    return out


def recycle_command(sources: dict, strategy: str, images: int, batch_size: int, out_dir: Path) -> list[str]:
    return [sys.executable, "-m", "moejet", "recycle",
            "--predecessor", PREDECESSOR, "--predecessor-checkpoint", sources["predecessor"]["file"],
            "--predecessor-arg", f"img_size={IMG_SIZE}",
            "--dense-checkpoint", sources["dense"]["file"], "--dense-model", DENSE,
            "--dense-arg", f"img_size={IMG_SIZE}",
            "--successor", "auto", "--successor-arg", f"moe_layers=[{','.join(map(str, MOE_LAYERS))}]",
            "--strategy", strategy, "--calib-data", CALIB_DATA, "--calib-images", str(images),
            "--batch-size", str(batch_size), "--workers", "0", "--device", "cpu", "--quiet", "--out", str(out_dir)]


def child_env(threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    src = str(Path(__file__).resolve().parent.parent / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


def cpu_busy_s() -> float:
    """CPU seconds all cores have spent busy since boot (``/proc/stat``; idle and iowait excluded)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def others_cores(window: float = 10.0) -> float:
    """Cores kept busy by other processes over ``window`` seconds (this one is asleep meanwhile)."""
    before = cpu_busy_s()
    time.sleep(window)
    return (cpu_busy_s() - before) / window


def wait_for_quiet(max_load: float, max_wait: float) -> dict:
    """Waits, at most ``max_wait`` s, until the other jobs on the machine keep less than 0.5 cores busy (measured
    over 10 s from ``/proc/stat``) and the 1-minute load average (which our own previous run still inflates for a
    minute) is below ``max_load``."""
    start = time.monotonic()
    first = os.getloadavg()
    while True:
        busy = others_cores()
        if (busy < 0.5 and os.getloadavg()[0] < max_load) or time.monotonic() - start >= max_wait:
            break
        time.sleep(5)
    return {"load_first_seen": list(first), "load_at_start": list(os.getloadavg()), "others_cores_at_start": busy,
            "waited_s": round(time.monotonic() - start, 1), "quiet": busy < 0.5 and os.getloadavg()[0] < max_load}


def measure(cmd: list[str], env: dict, log: Path) -> dict:
    """Runs ``cmd``; its wall time, exit status and its own peak RSS / CPU time (``os.wait4`` on that child)."""
    with open(log, "w") as f:
        busy = cpu_busy_s()
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        busy = cpu_busy_s() - busy
    proc.returncode = os.waitstatus_to_exitcode(status)
    cpu = usage.ru_utime + usage.ru_stime
    return {"returncode": proc.returncode, "wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024,
            "cpu_s": cpu, "user_s": usage.ru_utime, "sys_s": usage.ru_stime, "cpu_per_wall": cpu / wall,
            "others_cores": max(busy - cpu, 0.0) / wall}


def reference(args: argparse.Namespace) -> dict:
    """Child: the calibration loader alone, and a plain predecessor forward, over ``--ref-batches`` batches."""
    import timm
    import torch
    from safetensors.torch import load_file

    from moejet.recycle import calibration_loader

    malloc = apply_malloc()  # what the moejet program sets, so the forward sees the recycle runs' malloc
    model = timm.create_model(PREDECESSOR, img_size=IMG_SIZE).eval()
    model.load_state_dict(load_file(args.ref_checkpoint))
    n = args.ref_batches * args.batch_size
    loader, info = calibration_loader(CALIB_DATA, model, n, args.batch_size, 0, 0)
    t = time.perf_counter()
    batches = [x for x, _ in loader]
    load_s = time.perf_counter() - t
    with torch.inference_mode():
        model(batches[0][:8])  # warm-up, untimed
        t = time.perf_counter()
        for x in batches:
            model(x)
        forward_s = time.perf_counter() - t
    return {"images": n, "malloc": malloc, "input_size": info["input_size"], "threads": torch.get_num_threads(),
            "loader_s": load_s, "forward_s": forward_s,
            "loader_ms_per_image": 1e3 * load_s / n, "forward_ms_per_image": 1e3 * forward_s / n}


def successor_file(out_dir: Path) -> dict:
    from safetensors import safe_open

    path = out_dir / "model.safetensors"
    numel = 0
    with safe_open(str(path), "pt") as f:
        for key in f.keys():
            shape = f.get_slice(key).get_shape()
            count = 1
            for s in shape:
                count *= s
            numel += count
    return {"model_safetensors_mb": path.stat().st_size / 2**20, "model_safetensors_tensors_m": numel / 1e6}


def recycle_run(sources: dict, strategy: str, args: argparse.Namespace, env: dict, work: Path,
                attempt: int) -> dict:
    quiet = wait_for_quiet(args.max_load, args.max_wait)
    out_dir = work / f"out_{strategy}_{attempt}"
    cmd = recycle_command(sources, strategy, args.images, args.batch_size, out_dir)
    log = work / f"{strategy}_{attempt}.log"
    run = measure(cmd, env, log)
    if run["returncode"] != 0:
        sys.exit(f"{strategy} failed (exit {run['returncode']}):\n{log.read_text()[-3000:]}")
    report = json.loads((out_dir / "recycle.json").read_text())
    timings = report["timings"]
    calib_images = (report.get("calibration") or {}).get("images", args.images)
    row = {"strategy": strategy, "attempt": attempt, **quiet, **run, "timings": timings,
           "calibration_images": calib_images,
           "calibration_images_per_s": calib_images / timings["calibration_s"] if timings["calibration_s"] else None,
           "outside_report_s": run["wall_s"] - timings["total_s"], **successor_file(out_dir),
           "successor": report.get("successor"), "calibration": report.get("calibration"),
           "command": ["python" if c == sys.executable else c for c in cmd]}
    (out_dir / "model.safetensors").unlink()  # 5 GB each
    print(f"{strategy} (attempt {attempt}): {run['wall_s']:.1f} s wall, peak RSS {run['peak_rss_mb']:.0f} MB, "
          f"load before {quiet['load_at_start'][0]:.2f} (waited {quiet['waited_s']:.0f} s), CPU/wall "
          f"{run['cpu_per_wall']:.2f}, other jobs {run['others_cores']:.2f} cores", file=sys.stderr, flush=True)
    return row


def git_state() -> dict:
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "src"], cwd=root, capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {"commit": head, "src_modified": bool(dirty)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=1024, help="calibration images")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2, help="OMP / MKL threads of each subprocess")
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    p.add_argument("--ref-batches", type=int, default=4, help="batches of the reference forward (0: skip it)")
    p.add_argument("--max-load", type=float, default=1.5, help="wait before each run while the load is above this")
    p.add_argument("--max-wait", type=float, default=600.0, help="seconds to wait at most for a quiet machine")
    p.add_argument("--retries", type=int, default=1,
                   help="reruns of a strategy whose run other jobs disturbed (the least disturbed one is reported)")
    p.add_argument("--busy-limit", type=float, default=0.2,
                   help="a run is disturbed when other jobs kept more than this many cores busy on average")
    p.add_argument("--quick", action="store_true", help="smoke run: 32 images, importance, 2 reference batches")
    p.add_argument("--workdir", type=Path, help="where to put the checkpoints and outputs (default: a temp dir)")
    p.add_argument("--out", type=Path, help="results JSON (default: benchmarks/results/recycle_modern.json)")
    p.add_argument("--reference-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ref-checkpoint", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.reference_child:
        print(json.dumps(reference(args)))
        return
    if args.quick:
        args.images, args.strategies, args.ref_batches = 32, ["importance"], 2
        args.batch_size = min(args.batch_size, 16)
    out_path = args.out or (QUICK_RESULTS if args.quick else RESULTS)

    machine = describe("cpu")
    started = datetime.datetime.now().astimezone()
    env = child_env(args.threads)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        t = time.perf_counter()
        sources = save_sources(work)
        print(f"saved sources in {time.perf_counter() - t:.1f} s: predecessor "
              f"{sources['predecessor']['params_m']:.1f} M, "
              f"dense {sources['dense']['params_m']:.1f} M, successor {sources['successor']['params_m']:.1f} M",
              file=sys.stderr, flush=True)
        ref = None
        rows = []

        def write() -> None:  # after each strategy too, so that an interrupted run keeps the strategies done
            out_path.parent.mkdir(parents=True, exist_ok=True)
            out_path.write_text(json.dumps({
                "date": started.isoformat(timespec="seconds"), "machine": machine, "threads": args.threads,
                "malloc": "C library default" if os.environ.get("MOEJET_MALLOC") == "default"
                else "keep freed memory (moejet)",
                "images": args.images, "batch_size": args.batch_size, "calib_data": CALIB_DATA,
                "img_size": IMG_SIZE, "quick": args.quick, "git": git_state(),
                "sources": {k: {kk: vv for kk, vv in v.items() if kk != "file"} for k, v in sources.items()},
                "reference": ref, "runs": rows, "complete": len(rows) == len(args.strategies),
            }, indent=2) + "\n")

        if args.ref_batches:
            quiet = wait_for_quiet(args.max_load, args.max_wait)
            cmd = [sys.executable, __file__, "--reference-child", "--ref-checkpoint", sources["predecessor"]["file"],
                   "--ref-batches", str(args.ref_batches), "--batch-size", str(args.batch_size)]
            log = work / "reference.log"
            run = measure(cmd, env, log)
            if run["returncode"] != 0:
                sys.exit(f"reference forward failed:\n{log.read_text()[-3000:]}")
            ref = {**quiet, **run, **json.loads(log.read_text().strip().splitlines()[-1])}
            print(f"reference: loader {ref['loader_ms_per_image']:.1f} ms/image, forward "
                  f"{ref['forward_ms_per_image']:.1f} ms/image, other jobs {ref['others_cores']:.2f} cores",
                  file=sys.stderr, flush=True)
            write()

        for strategy in args.strategies:
            attempts = []
            for attempt in range(1 + args.retries):
                attempts.append(recycle_run(sources, strategy, args, env, work, attempt))
                if attempts[-1]["others_cores"] <= args.busy_limit:
                    break
            row = min(attempts, key=lambda r: r["others_cores"])  # the least disturbed attempt
            rows.append({**row, "attempts": len(attempts),
                         "other_attempts": [{k: a[k] for k in ("attempt", "wall_s", "others_cores", "timings")}
                                            for a in attempts if a is not row]})
            write()

    print(f"\nmoejet recycle {PREDECESSOR} -> jetmoe on {DENSE} (img_size={IMG_SIZE}, MoE blocks "
          f"{MOE_LAYERS[0]}-{MOE_LAYERS[-1]}), {args.images} {CALIB_DATA} images, batch {args.batch_size}, "
          f"{args.threads} threads, {machine}, {started:%Y-%m-%d}\n")
    print(f"params (M): predecessor {sources['predecessor']['params_m']:.1f}, dense part "
          f"{sources['dense']['params_m']:.1f}, successor {sources['successor']['params_m']:.1f} "
          f"({sources['successor']['core_experts']} core / {sources['successor']['univ_experts']} universal experts)\n")
    print("| strategy | wall (s) | load (s) | calibration (s) | calib images/s | selection (s) | build (s) | "
          "total (s) | peak RSS (MB) | model.safetensors (MB) | CPU / wall | other jobs (cores) | runs |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        t = r["timings"]
        print(f"| {r['strategy']} | {r['wall_s']:.1f} | {t['load_s']:.1f} | {t['calibration_s']:.1f} | "
              f"{r['calibration_images_per_s']:.2f} | {t['selection_s']:.2f} | {t['build_s']:.1f} | "
              f"{t['total_s']:.1f} | {r['peak_rss_mb']:.0f} | {r['model_safetensors_mb']:.0f} | "
              f"{r['cpu_per_wall']:.2f} | {r['others_cores']:.2f} | {r['attempts']} |")
    if ref:
        print(f"\nreference ({ref['images']} images, same loader): loader {ref['loader_ms_per_image']:.1f} ms/image, "
              f"plain predecessor forward {ref['forward_ms_per_image']:.1f} ms/image "
              f"({1e3 / (ref['loader_ms_per_image'] + ref['forward_ms_per_image']):.2f} images/s together; other jobs "
              f"{ref['others_cores']:.2f} cores)")
    write()
    print(f"\nwrote {out_path}")


if __name__ == "__main__":
    main()
