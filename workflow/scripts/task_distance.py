"""Rule task_distance: EMD / domain similarity / OTDD of a dataset from the probe's source."""

import logging

from atlib.distance import FeatureSet, task_distance, write_json
from atlib.logs import job_logging

sm = snakemake  # noqa: F821 - injected by Snakemake
with job_logging(sm.log[0]):
    try:
        record = task_distance(FeatureSet.load(sm.input.source), FeatureSet.load(sm.input.target),
                               gamma=sm.params.gamma, pca_dim=sm.params.pca_dim,
                               max_points=sm.params.otdd_points, seed=sm.params.seed)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    write_json(record, sm.output.json)
    logging.info("%s -> %s under %s: EMD %.4f, similarity %.4f, OTDD %.4f", record["source"],
                 record["dataset"], record["probe"], record["emd"], record["similarity"], record["otdd"])
