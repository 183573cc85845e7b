"""Rule features: a probe model's features of one dataset -> distance/{probe}/{dataset}.features.npz."""

import logging
from pathlib import Path

from atlib.checkpoint import CheckpointError, load_model
from atlib.data import Prepared
from atlib.distance import FeatureSet, dataset_features
from atlib.logs import job_logging
from atlib.runtime import pick_device, set_threads

sm = snakemake  # noqa: F821 - injected by Snakemake
with job_logging(sm.log[0]):
    set_threads(sm.threads)
    probe = sm.params.probe
    try:
        model, meta = load_model(sm.input.model)
        data = Prepared(Path(sm.input.data).parent)
        feats, labels = dataset_features(model, meta, data, sm.params.max_images, sm.params.seed,
                                         sm.params.batch_size, pick_device(sm.params.device), name=probe)
        fs = FeatureSet(feats, labels, probe, sm.wildcards.dataset, data.num_classes)
    except (CheckpointError, ValueError, FileNotFoundError) as err:
        raise SystemExit(str(err)) from None
    fs.save(sm.output.features)
    logging.info("%s on %s: %d images, %d classes, feature dim %d", probe, data.name, len(labels),
                 len(fs.classes), feats.shape[1])
