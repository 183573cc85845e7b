"""atlib: adversarial training, information and transferability (Terzi et al., AAAI 2021).

The packages follow the workflow's DAG. Each may import the ones before it in `STAGES`, never one
after it (tests/test_architecture.py checks this from the imports, and that there are no cycles):

    core      compat shims, the device and autocast runtime, the numerics pinning, atomic writes
    data      registry, acquisition, the prepared format, derived datasets, image folders
    models    the ResNets, checkpoints, the adapter of other libraries' networks
    spec      the experiment as the config describes it: schema validation, the job model, provenance
    train     attacks, the epoch runner, resume, augmentation, DDP, evaluation, source training and import
    info      the Fisher, the weight posterior Q*, inversion, representations, Task2Vec
    distance  features of a dataset in a model, and the distances between datasets
    transfer  fine-tuning in the paper's three modes
    report    tables, figures, the claims check
    workflow  what drives and records runs: the demo, progress, logs, MLflow tracking, verify, recommend

`workflow` is imported only by itself, by the Snakemake rules and scripts, and by tests.
"""

__version__ = "0.1.0"

STAGES = ("core", "data", "models", "spec", "train", "info", "distance", "transfer", "report", "workflow")
