"""Training a source model: attacks, the epoch runner, resume, augmentation, DDP, evaluation, and the
import of a published model as a source.

May import atlib.core, atlib.data, atlib.models and atlib.spec.
"""
