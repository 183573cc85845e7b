"""Which numerics settings change the bits of a small training run, and what pinning them costs.

The workload is the demo's training in miniature, through atlib's own code (train.Objective,
train_step, the demo's schedule): ResNet-8 width 0.25, 1 thread, PGD-1 L2 (eps 1) adversarial
training with SGD on the first Fashion-MNIST images of classes 0-4 (fixed random images where the
system copy is missing), bf16 autocast + channels_last unless a setting says otherwise. Each setting
runs in its own process (the variables are read when torch loads), the settings interleaved round
by round so that load from other jobs spreads over all of them. Per setting: the sha256 of the final
weights and buffers, the final loss, the training loop's CPU seconds (min over rounds) and its ratio
to the default's. One short run under ONEDNN_VERBOSE lists the oneDNN implementations that ran, per
precision. Writes benchmarks/results/numerics.json.

Usage: python benchmarks/bench_numerics.py [--steps 24] [--rounds 2] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from atlib.core.numerics import ENV_VARS, describe  # noqa: E402

PIN_AVX2 = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2"}
# name -> (environment on top of a clean one, bf16 autocast, torch.use_deterministic_algorithms)
SETTINGS: dict[str, tuple[dict[str, str], bool, bool]] = {
    "default": ({}, True, False),
    "onednn_avx2": ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, True, False),
    "onednn_sse41": ({"ONEDNN_MAX_CPU_ISA": "SSE41"}, True, False),
    "aten_avx2": ({"ATEN_CPU_CAPABILITY": "avx2"}, True, False),
    "aten_default": ({"ATEN_CPU_CAPABILITY": "default"}, True, False),
    "mkl_cbwr_compatible": ({"MKL_CBWR": "COMPATIBLE"}, True, False),
    "deterministic": ({}, True, True),
    "pinned_avx2": (PIN_AVX2, True, False),
    "fp32": ({}, False, False),
    "fp32_onednn_avx2": ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, False, False),
    "fp32_onednn_avx": ({"ONEDNN_MAX_CPU_ISA": "AVX"}, False, False),
    "fp32_onednn_sse41": ({"ONEDNN_MAX_CPU_ISA": "SSE41"}, False, False),
    "fp32_aten_avx2": ({"ATEN_CPU_CAPABILITY": "avx2"}, False, False),
    "fp32_aten_default": ({"ATEN_CPU_CAPABILITY": "default"}, False, False),
    "fp32_mkl_cbwr_avx2": ({"MKL_CBWR": "AVX2"}, False, False),
    "fp32_mkl_cbwr_compatible": ({"MKL_CBWR": "COMPATIBLE"}, False, False),
    "fp32_deterministic": ({}, False, True),
    "fp32_pinned_avx2": (PIN_AVX2, False, False),
}
CLASSES, BATCH, EPS = 5, 128, 1.0


def fixed_data(n: int) -> tuple[np.ndarray, np.ndarray, str]:
    """The first `n` Fashion-MNIST training images of classes 0-4 as float [0, 1] (N, 1, 28, 28), their
    labels, and where they came from; seeded random images where the system copy is missing."""
    from atlib.data.offline import IDX_FILES, SYSTEM_FASHION, read_idx

    x_file = SYSTEM_FASHION / f"{IDX_FILES['train_x']}.gz"
    if x_file.is_file():
        x, y = read_idx(x_file), read_idx(SYSTEM_FASHION / f"{IDX_FILES['train_y']}.gz").astype(np.int64)
        keep = np.flatnonzero(y < CLASSES)[:n]
        return (x[keep, None] / 255.0).astype(np.float32), y[keep], str(SYSTEM_FASHION)
    rng = np.random.default_rng(0)
    return rng.random((n, 1, 28, 28), dtype=np.float32), rng.integers(0, CLASSES, n), "random (seed 0)"


def train(data: Path, steps: int, bf16: bool, deterministic: bool) -> dict:
    """The workload, in this process: final weights' sha256, last batch's mean loss, loop CPU seconds."""
    import torch

    from atlib.core.runtime import seed_everything, set_threads, to_memory_format
    from atlib.models.resnet import build_model
    from atlib.spec.settings import TrainSchedule
    from atlib.train.optim import make_optimizer
    from atlib.train.source import Objective, train_step

    set_threads(1)  # the demo's `threads: 1`
    torch.use_deterministic_algorithms(deterministic)
    arrays = np.load(data)
    x_all, y_all = torch.from_numpy(arrays["x"]), torch.from_numpy(arrays["y"])
    sched = TrainSchedule.from_config({"batch_size": BATCH, "lr": 0.1, "lr_schedule": "cosine", "weight_decay": 5e-4,
                                       "attack": {"norm": "l2", "steps": 1, "step_size_factor": 2.5}, "bf16": bf16})
    seed_everything(0)
    net = build_model("resnet8", CLASSES, 1, 0.25, None).to(memory_format=torch.channels_last)
    objective, opt = Objective(net, EPS, sched).train(), make_optimizer(net.parameters(), sched)
    cpu, n = torch.device("cpu"), len(y_all)
    t0 = time.process_time()
    for i in range(steps):
        idx = torch.arange(i * BATCH, (i + 1) * BATCH) % n
        x = to_memory_format(x_all[idx], sched.channels_last)
        losses, _, _ = train_step(objective, opt, x, y_all[idx], cpu, bf16, 1.0 / BATCH)
        opt.step()
    seconds = time.process_time() - t0
    digest = hashlib.sha256()
    for name, t in sorted(net.state_dict().items()):  # contiguous: channels_last weights hash as NCHW
        digest.update(name.encode() + t.detach().contiguous().numpy().tobytes())
    return {"weights_sha256": digest.hexdigest(), "loss": float(losses.mean()), "seconds": seconds,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "onednn_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())}


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """This environment without any numerics variable, plus `extra`: "default" means torch's own choice."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS and not k.startswith(("DNNL_", "ONEDNN_"))}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **extra}


def run_setting(name: str, data: Path, steps: int, extra_env: dict[str, str] | None = None) -> tuple[dict, str]:
    """One setting in a fresh process: (its result, its stdout)."""
    env, bf16, det = SETTINGS[name]
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [sys.executable, __file__, "--worker", str(data), "--steps", str(steps), "--out", out.name]
        cmd += ["--bf16"] * bf16 + ["--deterministic"] * det
        r = subprocess.run(cmd, env=clean_env({**env, **(extra_env or {})}), capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"setting {name} failed:\n{r.stderr[-3000:]}")
        return json.loads(Path(out.name).read_text()), r.stdout


def onednn_impls(stdout: str) -> dict[str, int]:
    """`primitive kind: implementation` -> executions, from ONEDNN_VERBOSE=1 output."""
    seen: Counter = Counter()
    for line in stdout.splitlines():
        f = line.split(",")
        if line.startswith("onednn_verbose") and "exec" in f and len(f) > f.index("exec") + 3:
            i = f.index("exec")
            seen[f"{f[i + 2]}: {f[i + 3]} ({f[i + 4]})" if len(f) > i + 4 else f"{f[i + 2]}: {f[i + 3]}"] += 1
    return dict(sorted(seen.items()))


def verbose_runs(data: Path) -> dict[str, dict[str, int]]:
    """oneDNN's implementations per precision and ISA cap (2 steps each)."""
    out = {}
    for name in ("default", "onednn_sse41", "fp32", "fp32_onednn_sse41"):
        _, stdout = run_setting(name, data, 2, {"ONEDNN_VERBOSE": "1"})
        out[name] = onednn_impls(stdout)
    return out


def compare(results: dict[str, list[dict]]) -> dict[str, dict]:
    """Per setting: its hash and loss, whether its bits equal its precision's default, CPU seconds (min over
    rounds), ratio to that default, and whether its own rounds agreed bit for bit."""
    out: dict[str, dict] = {}
    for name, runs in results.items():
        base = "default" if SETTINGS[name][1] else "fp32"
        best = min(r["seconds"] for r in runs)
        out[name] = {"env": SETTINGS[name][0], "bf16": SETTINGS[name][1], "deterministic": SETTINGS[name][2],
                     "weights_sha256": runs[0]["weights_sha256"], "loss": runs[0]["loss"],
                     "repeatable": len({r["weights_sha256"] for r in runs}) == 1,
                     "same_bits_as": base if runs[0]["weights_sha256"] == results[base][0]["weights_sha256"] else None,
                     "seconds": round(best, 3), "seconds_all": [round(r["seconds"], 3) for r in runs],
                     "cpu_capability": runs[0]["cpu_capability"], "onednn_bf16": runs[0]["onednn_bf16"]}
    for name, row in out.items():
        base = "default" if row["bf16"] else "fp32"
        row["ratio_to_default"] = round(row["seconds"] / out[base]["seconds"], 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--only", nargs="+", choices=list(SETTINGS), help="a subset (default and fp32 always run)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "numerics.json")
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--deterministic", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        args.out.write_text(json.dumps(train(args.worker, args.steps, args.bf16, args.deterministic)))
        return
    names = list(dict.fromkeys(["default", "fp32", *(args.only or SETTINGS)]))
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data.npz"
        x, y, origin = fixed_data(args.steps * BATCH)
        np.savez(data, x=x, y=y)
        results: dict[str, list[dict]] = {n: [] for n in names}
        for r in range(args.rounds):
            for name in names:
                results[name].append(run_setting(name, data, args.steps)[0])
                print(f"round {r + 1} {name:26s} {results[name][-1]['seconds']:6.2f} s "
                      f"{results[name][-1]['weights_sha256'][:12]}", flush=True)
        impls = verbose_runs(data)
    from record import write_record  # benchmarks/ is on sys.path when run

    settings = compare(results)
    report = {
        "what": f"{args.steps} SGD steps (batch {BATCH}) of PGD-1 L2 eps {EPS} training, atlib resnet8 width 0.25, "
                f"{CLASSES} classes, 1 thread, channels_last; data: {origin}",
        "machine": {**describe(), "load_before": load_before, "load_after": os.getloadavg()[0]},
        "rounds": args.rounds, "clock": "process CPU time of the training loop (startup excluded)",
        "statistic": "min over interleaved rounds; ratio to the default of the same precision",
        "onednn_note": "oneDNN primitives executed in 2 steps, by ONEDNN_VERBOSE; {} = none ran (bf16 without oneDNN bf16 kernels: ATen's own)",
        "settings": settings, "onednn_implementations": impls,
        "fp32_over_bf16": round(settings["fp32"]["seconds"] / settings["default"]["seconds"], 3),
    }
    write_record(report, args.out, show={n: {k: s[k] for k in ("same_bits_as", "repeatable", "ratio_to_default")}
                                         for n, s in settings.items()})


if __name__ == "__main__":
    main()
