"""The config schema: one validation that fills its defaults, and defaults of one part of a config.

Validation is jsonschema's, with the `properties` keyword extended to fill each property's declared
default first (jsonschema's documented recipe, what `snakemake.utils.validate(set_default=True)` does
inside): the Snakefile and every job validate the same way, and a job never imports Snakemake.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import yaml
from jsonschema import validators

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """A config problem; the message names the key."""


def load_schema(path: Path = SCHEMA_PATH) -> dict:
    """The config schema (for its documentation, atlib.spec.schema_doc)."""
    return yaml.safe_load(Path(path).read_text())


def key_of(path) -> str:
    """Dotted key of a jsonschema error path, e.g. experiments.demo.eps[1]."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<top level>"


def _with_defaults(cls: type) -> type:
    """`cls` whose `properties` keyword first sets every missing property that declares a default; the
    default is a copy, so no two keys (nor the schema) share one object."""
    properties = cls.VALIDATORS["properties"]

    def fill(validator, props: dict, instance: Any, schema: dict) -> Iterator[jsonschema.ValidationError]:
        if validator.is_type(instance, "object"):
            for name, sub in props.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from properties(validator, props, instance, schema)

    return validators.extend(cls, {"properties": fill})


@functools.lru_cache(maxsize=1)
def _validator() -> Any:
    schema = load_schema()
    return _with_defaults(validators.validator_for(schema))(schema)


def validate_config(config: dict) -> dict:
    """Validate `config` against the schema in place, filling every default the schema declares (the
    one validation of a config, in the workflow or out of it); raise ConfigError naming the key."""
    try:
        _validator().validate(config)
    except jsonschema.ValidationError as e:
        extra = f" (at least {e.validator_value} items)" if e.validator == "minItems" else ""
        raise ConfigError(f"config error at {key_of(e.absolute_path)}: {e.message}{extra}") from None
    # JSON values throughout (string keys, lists), as the config file read back would give them.
    config.update(json.loads(json.dumps(config)))
    return config


# Entries of these kinds sit under a named key of these sections (section_defaults).
NAMED_SECTIONS = {"train_schedule": "train_schedules", "finetune_schedule": "finetune_schedules",
                  "source_model": "source_models"}


@functools.lru_cache(maxsize=64)
def _filled(text: str, kind: str) -> str:
    section = NAMED_SECTIONS.get(kind, kind)
    entry = json.loads(text)
    # The smallest valid config holding the entry: its defaults are filled as in a workflow config.
    cfg = {"experiments": {"_": {"source": "_", "arch": "_", "eps": [0]}},
           section: {"_": entry} if kind in NAMED_SECTIONS else entry}
    prefix = f"{section}._" if kind in NAMED_SECTIONS else section
    try:
        validate_config(cfg)
    except ConfigError as err:
        raise ConfigError(str(err).replace(f"config error at {prefix}.", f"{kind} error at ")
                          .replace(f"config error at {prefix}:", f"{kind} error at <top level>:")) from None
    return json.dumps(cfg[section]["_"] if kind in NAMED_SECTIONS else cfg[section])


def section_defaults(entry: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    """A copy of one part of a config with the schema's defaults filled in (and validated), for
    library calls outside a workflow: `kind` is a top-level section (fisher, invert, ...) or an entry
    of a named section (train_schedule, finetune_schedule, source_model)."""
    # Cached by content: a batched job checks the same schedule once, not once per target.
    return json.loads(_filled(json.dumps(entry or {}, sort_keys=True), kind))


def schedule_defaults(schedule: dict[str, Any] | None, kind: str = "train_schedule") -> dict[str, Any]:
    """A train (or finetune) schedule with the schema's defaults filled in (section_defaults)."""
    return section_defaults(schedule, kind)


def merge_files(paths: list[str]) -> dict:
    """Config files merged the way Snakemake merges several --configfile (nested keys of later files
    win), before validation: what the files say, no defaults."""
    from snakemake.utils import update_config

    merged: dict = {}
    for path in paths:
        update_config(merged, yaml.safe_load(Path(path).read_text()) or {})
    return merged


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]
