"""Shared by the benchmark scripts: write a result record where `make bench` collects them."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch


def write_record(record: dict, out: Path, show: dict | None = None) -> None:
    """Add the machine facts, write `record` as JSON to `out`, print `show` (default: all of it)."""
    record = {**record, "torch": torch.__version__, "cpu": platform.processor() or platform.machine()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record if show is None else show, indent=1))
