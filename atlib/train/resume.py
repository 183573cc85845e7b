"""Resumable training state and graceful preemption, shared by source training and fine-tuning.

A job keeps one file, `<resume dir>/state.pt`, written atomically: model, optimizer,
scheduler, loop position, history and every RNG state (torch CPU and CUDA, numpy, python,
the data-order generator). Reloading it continues the run bit-identically on CPU.
`GracefulExit` turns SIGTERM/SIGUSR1 (SLURM preemption or time limit) into a flag the loop
polls: it saves and raises `Interrupted`, so the job exits non-zero and a retry resumes.
"""

from __future__ import annotations

import random
import shutil
import signal
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from atlib.models.checkpoint import CheckpointError, atomic_save, safe_load

STATE_FILE = "state.pt"
FORMAT = 2  # 2: atlib.train.epochs' layout (model, sums, one RNG state per rank); 1 is refused


class Interrupted(RuntimeError):
    """The job was asked to stop (SIGTERM/SIGUSR1); its state is saved for a resume."""


def capture_rng(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Every RNG state a training loop draws from, in a weights_only-loadable form."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": _to_lists(random.getstate()),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def restore_rng(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Inverse of `capture_rng`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    random.setstate(_to_tuples(state["python"]))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])


def _to_lists(x):
    return [_to_lists(v) for v in x] if isinstance(x, (tuple, list)) else x


def _to_tuples(x):
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x


def scheduler_state(scheduler: torch.optim.lr_scheduler.LRScheduler) -> dict[str, Any]:
    """The scheduler's state without config-derived Counters (not weights_only-loadable).

    MultiStepLR keeps `milestones` as a Counter; the rebuilt scheduler already has it from
    the config, and the fingerprint guarantees the config did not change.
    """
    return {k: v for k, v in scheduler.state_dict().items() if not isinstance(v, Counter)}


def save(directory: str | Path, state: dict[str, Any], fingerprint: dict[str, Any] | None = None) -> Path:
    """Write `state` (tensors, numbers, strings, lists, dicts) atomically to `directory/state.pt`.

    Args:
        directory: the job's resume directory (created if needed).
        state: what the loop needs to continue (model/optimizer/scheduler state_dicts,
            position, history, `capture_rng(...)`).
        fingerprint: what the state belongs to (arch, eps, seed, schedule...): a resume
            with a different fingerprint is refused.
    """
    path = Path(directory) / STATE_FILE
    atomic_save({"format": FORMAT, "fingerprint": dict(fingerprint or {}), "state": state}, path)
    return path


def load(directory: str | Path, fingerprint: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The saved state, or None when there is none; CheckpointError (naming file and reason)
    when it is unreadable or belongs to another job."""
    path = Path(directory) / STATE_FILE
    if not path.exists():
        return None
    fix = f"delete {Path(directory)} to start the job over"
    try:
        obj = safe_load(path)
    except CheckpointError as err:
        # torch's unpickling messages are long and suggest weights_only=False: not for a corrupt file.
        kind = str(err).split("(", 1)[1].split(":", 1)[0] if "(" in str(err) else "unreadable"
        raise CheckpointError(f"{path}: corrupt or truncated resume state ({kind}); {fix}") from None
    if obj.get("format") != FORMAT or not isinstance(obj.get("state"), dict):
        raise CheckpointError(f"{path}: not an atlib resume state (format {obj.get('format')!r}); {fix}")
    if fingerprint is not None:
        saved = obj.get("fingerprint", {})
        for key in sorted(set(saved) | set(fingerprint)):
            if saved.get(key) != fingerprint.get(key):
                raise CheckpointError(f"{path}: resume state belongs to another job ({key}: saved "
                                      f"{saved.get(key)!r}, this job {fingerprint.get(key)!r}); {fix}")
    return obj["state"]


def clear(directory: str | Path) -> None:
    """Remove the resume directory after the job's outputs are written."""
    shutil.rmtree(directory, ignore_errors=True)


class GracefulExit:
    """Context manager: SIGTERM/SIGUSR1 set `requested` instead of killing the process.

    The loop polls `requested` between steps, saves its state and raises `Interrupted`.
    Handlers are only installed in the main thread (signals cannot be caught elsewhere);
    the previous handlers are restored on exit.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.requested: str | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        self.requested = signal.Signals(signum).name

    def __enter__(self) -> "GracefulExit":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)
        self._old.clear()
