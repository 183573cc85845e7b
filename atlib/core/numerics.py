"""The numerics of a run: the CPU and its vector ISA, torch's build and kernels, and the variables
that pin them (config `numerics`).

The same code and seed repeat bit for bit on one machine but not across CPUs: oneDNN (convolutions,
bf16 matmuls), ATen's vectorised kernels and MKL each pick code for the instructions the CPU has, and
a wider vector unit or native bf16 adds in another order. `numerics.isa` caps all three at one ISA
through their environment variables (benchmarks/results/numerics.json measures what that costs).
They are read when torch loads, so the Snakefile sets them (`apply_env`) before any job starts; a
variable already in the environment wins. `describe` records it all in every job's provenance.json
without importing torch where the job has not (dataset preparation).
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any, Mapping, MutableMapping

# What each `numerics.isa` sets. oneDNN's cap also turns off PyTorch's oneDNN bf16 kernels on CPUs
# with AVX-512 (PyTorch asks oneDNN's effective ISA whether bf16 is supported), so bf16 ops take the
# ATen path they take on an AVX2-only CPU. MKL_CBWR fixes MKL's code branch (fp32 matmuls, e.g. the head).
ISA_ENV: dict[str, dict[str, str]] = {
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2"},
}
# Every variable that changes CPU numerics or threading, recorded whether set or not.
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
ENV_VARS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS",
            "ONEDNN_DEFAULT_FPMATH_MODE", *THREAD_VARS)
# CPU flags that decide which kernels run (and so the rounding): vector width, FMA, bf16/fp16 units.
ISA_FLAGS = ("sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512vl",
             "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")
CPUINFO = Path("/proc/cpuinfo")


def pinned_env(numerics: Mapping[str, Any] | None) -> dict[str, str]:
    """The environment variables that config section `numerics` asks for (none for isa null)."""
    isa = (numerics or {}).get("isa")
    return dict(ISA_ENV[isa]) if isa else {}


def apply_env(numerics: Mapping[str, Any] | None, environ: MutableMapping[str, str] = os.environ) -> list[str]:
    """Set the pinned variables in `environ` where it has none yet (a user's own value wins); return
    their names. Call before any process that will import torch starts."""
    wanted = pinned_env(numerics)
    for name, value in wanted.items():
        environ.setdefault(name, value)
    return list(wanted)


@functools.lru_cache(maxsize=1)
def cpu() -> dict[str, Any]:
    """The CPU model, architecture and its numerics-relevant ISA flags (Linux's /proc/cpuinfo)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        text = CPUINFO.read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return {"model": model, "machine": platform.machine(), "cores": os.cpu_count(),
            "isa": [f for f in ISA_FLAGS if f in flags]}


@functools.lru_cache(maxsize=2)
def _torch(loaded: bool) -> dict[str, Any]:
    if not loaded:  # never import torch for a record: a job without it would pay ~1 s
        try:
            return {"version": importlib.metadata.version("torch"), "loaded": False}
        except importlib.metadata.PackageNotFoundError:
            return {"version": None, "loaded": False}
    import torch

    return {"version": torch.__version__, "loaded": True, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "onednn_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
            "mkl": torch.backends.mkl.is_available(), "build": build_summary(torch.__config__.show())}


def build_summary(show: str) -> list[str]:
    """The lines of torch.__config__.show() that name the compiler and the math libraries."""
    keep = ("GCC", "clang", "MSVC", "Math Kernel Library", "MKL-DNN", "oneDNN", "OpenMP", "CPU capability usage")
    return [ln.strip(" -") for ln in show.splitlines() if ln.startswith("  - ") and any(k in ln for k in keep)]


def torch_info() -> dict[str, Any]:
    """torch's version; with torch already imported also its kernel ISA (ATen), whether oneDNN's bf16
    kernels are used, its threads and its build (compiler, MKL, oneDNN)."""
    loaded = "torch" in sys.modules
    out = dict(_torch(loaded))
    if loaded:  # not cached: a job sets its threads after its first record may have been made
        out["threads"] = sys.modules["torch"].get_num_threads()
    return out


def bf16_schedules(config: Mapping[str, Any]) -> dict[str, dict[str, bool]]:
    """bf16 autocast on or off, per train and finetune schedule of the config."""
    return {section: {name: bool(s.get("bf16", True)) for name, s in config.get(section, {}).items()}
            for section in ("train_schedules", "finetune_schedules")}


def describe(config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Machine and numerics of this process: CPU, torch, the numerics variables (null = unset) and, with
    a config, its `numerics` section and bf16 per schedule."""
    out: dict[str, Any] = {"cpu": cpu(), "torch": torch_info(), "env": {k: os.environ.get(k) for k in ENV_VARS}}
    if config is not None:
        out["config"] = dict(config.get("numerics") or {})
        out["bf16"] = bf16_schedules(config)
    return out


def setup_key(rec: Mapping[str, Any]) -> str:
    """What must match for two runs to be bit-comparable: CPU model and ISA, torch and its kernels, the
    pinning variables. (Threads matter too, but they are the config's, the same on every machine.)"""
    t, c = rec.get("torch", {}), rec.get("cpu", {})
    pins = {k: v for k, v in (rec.get("env") or {}).items() if k not in THREAD_VARS}
    key = [c.get("model"), c.get("isa"), t.get("version"), t.get("cpu_capability"), t.get("onednn_bf16"), pins]
    return json.dumps(key, sort_keys=True)


def summary(rec: Mapping[str, Any]) -> str:
    """One line for people: CPU and ISA, torch and its kernels, pinned variables, bf16 schedules."""
    c, t = rec.get("cpu", {}), rec.get("torch", {})
    isa = c.get("isa", [])
    shown = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in isa]
    absent = [f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f not in isa]
    text = f"{c.get('model', '?')} ({c.get('machine', '?')}: {' '.join(shown) or 'no avx2'}"
    text += f"; no {' '.join(absent)})" if absent else ")"
    text += f", torch {t.get('version', '?')}"
    if t.get("loaded"):
        text += (f" (ATen kernels {t.get('cpu_capability')}, oneDNN bf16 kernels "
                 f"{'on' if t.get('onednn_bf16') else 'off'})")
    pins = [f"{k}={v}" for k, v in (rec.get("env") or {}).items() if v is not None and k not in THREAD_VARS]
    text += "; pinned: " + (", ".join(pins) or "nothing")
    if "config" in rec:
        text += f" (numerics.isa: {rec['config'].get('isa') or 'null'})"
    on = [f"{sec.split('_')[0]} {name}" for sec, scheds in (rec.get("bf16") or {}).items()
          for name, bf16 in scheds.items() if bf16]
    return text + (f"; bf16 autocast: {', '.join(on)}" if on else "; bf16 autocast: off" if "bf16" in rec else "")
