"""`python -m atlib.workflow.tracking.ui RESULTS` (`make ui`): the address that opens the MLflow UI on
the experiment's runs table.

`http://127.0.0.1:5000/#/experiments/<id>/runs`, the id looked up by name in `<results>/mlflow.db`
(read only: looking never creates or migrates the store); the plain address where the store or the
experiment does not exist yet. The experiment's own page (`#/experiments/<id>`) opens on the GenAI
overview in a new browser, whatever the experiment's kind tag (atlib.workflow.tracking.ingest): MLflow
3.17 stores no default page for an experiment, so the address names the runs table.
"""

from __future__ import annotations

import argparse
import sqlite3
from pathlib import Path

# Where `make ui` serves the UI (its `mlflow ui --host 127.0.0.1 --port 5000`).
LOCAL_UI = "http://127.0.0.1:5000"


def experiment_id(store: Path, experiment: str) -> str | None:
    """The id of the active experiment named `experiment` in a sqlite MLflow store; None without one."""
    if not store.is_file():
        return None
    try:
        with sqlite3.connect(f"{store.resolve().as_uri()}?mode=ro", uri=True) as db:
            row = db.execute("SELECT experiment_id FROM experiments WHERE name = ? AND lifecycle_stage = 'active'",
                             (experiment,)).fetchone()
    except sqlite3.Error:  # not an MLflow store (yet): the plain address
        return None
    return str(row[0]) if row else None


def runs_address(results: str | Path, experiment: str, base: str = LOCAL_UI) -> str:
    """The UI address of the experiment's runs table for the store `<results>/mlflow.db` (`base` without one)."""
    eid = experiment_id(Path(results) / "mlflow.db", experiment)
    return f"{base}/#/experiments/{eid}/runs" if eid is not None else base


def experiment_name(configs: list[str]) -> str:
    """The MLflow experiment of a run with these config files (tracking.experiment, its default filled in)."""
    from atlib.spec.config import check_config
    from atlib.spec.schema import merge_files

    return check_config(merge_files(configs))["tracking"]["experiment"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="?", default="results", help="the results tree (default: results)")
    ap.add_argument("--config", nargs="+", default=["config/demo.yaml"],
                    help="the run's config file(s), for its experiment name (default: config/demo.yaml)")
    ap.add_argument("--base", default=LOCAL_UI, help=f"the UI's address (default: {LOCAL_UI})")
    args = ap.parse_args(argv)
    experiment = experiment_name(args.config)
    address = runs_address(args.results, experiment, args.base)
    what = f"the runs of experiment {experiment!r}" if address != args.base else \
        f"no experiment {experiment!r} in {Path(args.results) / 'mlflow.db'} yet"
    print(f"MLflow UI: {address}  ({what}; open it once the server below has started)", flush=True)


if __name__ == "__main__":
    main()
