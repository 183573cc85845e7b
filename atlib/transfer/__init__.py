"""Transfer: fine-tuning a source model on a target in the paper's three modes.

May import every stage up to atlib.distance.
"""
