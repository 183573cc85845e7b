"""Render the config schema as the README's key table (`python -m atlib.spec.schema_doc`)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from atlib.spec.schema import load_schema

BEGIN, END = "<!-- config-keys:begin -->", "<!-- config-keys:end -->"


def _rows(schema: dict, defs: dict, prefix: str) -> list[tuple[str, str, str]]:
    rows = []
    for key, sub in schema.get("properties", {}).items():
        if "$ref" in sub:  # the definition, with the keys beside the $ref (its default) on top
            sub = {**defs[sub["$ref"].split("/")[-1]], **{k: v for k, v in sub.items() if k != "$ref"}}
        name = f"{prefix}{key}"
        default = json.dumps(sub["default"]) if "default" in sub and sub.get("type") != "object" else ""
        rows.append((name, default, " ".join(sub.get("description", "").split())))
        if sub.get("type") == "object" and "properties" in sub:
            rows += _rows(sub, defs, f"{name}.")
        extra = sub.get("additionalProperties")
        if isinstance(extra, dict):
            item = defs[extra["$ref"].split("/")[-1]] if "$ref" in extra else extra
            if "properties" in item:
                rows += _rows(item, defs, f"{name}.<name>.")
    return rows


def render() -> str:
    schema = load_schema()
    lines = ["| key | default | description |", "|---|---|---|"]
    for name, default, desc in _rows(schema, schema.get("$defs", {}), ""):
        lines.append(f"| `{name}` | {f'`{default}`' if default else ''} | {desc.replace('|', '/')} |")
    return "\n".join(lines)


def update_readme(path: Path) -> bool:
    """Replace the table between the markers; return True if the file changed."""
    text = path.read_text()
    new = re.sub(f"{re.escape(BEGIN)}.*?{re.escape(END)}", f"{BEGIN}\n{render()}\n{END}", text, flags=re.S)
    if new != text:
        path.write_text(new)
    return new != text


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("README.md")
    print("updated" if update_readme(target) else "up to date", target)
