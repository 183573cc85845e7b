"""What drives and records runs: the demo, progress, job logs, MLflow tracking, verify, recommend.

May import every stage. Nothing in atlib imports it; the Snakemake rules and scripts do.
"""
