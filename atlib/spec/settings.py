"""Typed settings at a job's boundary: a train or finetune schedule as a frozen dataclass.

A config carries schedules as dicts (what Snakemake validates, hashes and hands to a rule); a job's
script turns its entry into one of these with `from_config`, which fills the schema's defaults
(atlib.spec.schema.schedule_defaults), so the fields are the schema's keys and their defaults its
defaults. The nested sections (attack, augment, evaluation) stay the schema's dicts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, TypeVar

from atlib.spec.schema import ConfigError, schedule_defaults

S = TypeVar("S", bound="Schedule")


@dataclass(frozen=True, kw_only=True)
class Schedule:
    """The keys a train and a finetune schedule share: SGD, its learning-rate schedule, the data,
    the numerics and the final robustness evaluation."""

    KIND: ClassVar[str]
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    lr_schedule: str
    milestones: tuple[int, ...]
    gamma: float
    augment: dict[str, Any]
    max_train: int | None
    bf16: bool
    channels_last: bool
    evaluation: dict[str, Any]

    @classmethod
    def from_config(cls: type[S], entry: Mapping[str, Any] | None = None) -> S:
        """The schedule of a config entry (missing keys take the schema's defaults); a ConfigError
        names unknown keys, or the key whose value the schema refuses."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(entry or {}) - known)
        if unknown:
            raise ConfigError(f"{cls.KIND} error: unknown key(s) {', '.join(map(repr, unknown))}; "
                              f"known: {', '.join(sorted(known))}")
        filled = schedule_defaults(dict(entry or {}), cls.KIND)
        return cls(**{**filled, "milestones": tuple(filled["milestones"])})

    def as_dict(self) -> dict[str, Any]:
        """The schedule as its config entry with every default filled (what a resume fingerprint holds)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True, kw_only=True)
class TrainSchedule(Schedule):
    """How a source model is trained (`train_schedules` entry; atlib.train.source)."""

    KIND: ClassVar[str] = "train_schedule"
    objective: str
    trades_beta: float
    attack: dict[str, Any]
    checkpoint_every: int
    world_size: int


@dataclass(frozen=True, kw_only=True)
class FinetuneSchedule(Schedule):
    """How a transferred model is fine-tuned (`finetune_schedules` entry; atlib.transfer.finetune)."""

    KIND: ClassVar[str] = "finetune_schedule"
    bn_policy: str
    cache_features: str
    cache_max_mb: int
