"""Training a source model: attacks, the epoch runner, resume, augmentation, DDP, evaluation, and the
import of a published model as a source (`imported`: it reads the config's `source_models` entries
and evaluates the model as training does, so it sits here and not in `models`).

May import atlib.core, atlib.data, atlib.models and atlib.spec.
"""
