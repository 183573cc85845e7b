# atlib: "Adversarial Training Reduces Information and Improves Transferability", as a workflow.
# Demo:   snakemake --profile profiles/local --configfile config/demo.yaml
# Paper:  snakemake --profile profiles/slurm --configfile config/config.yaml
from snakemake.utils import min_version

min_version("9.0")


# --configfile merges into a `configfile:` directive's file, so the demo is only the fallback:
# `--configfile config/config.yaml` must plan the paper's grid alone, not the demo on top.
if "experiments" not in config:

    configfile: "config/demo.yaml"


# Jobs import atlib from this checkout, whatever the environment (venv, conda, SLURM node).
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [workflow.basedir, os.environ.get("PYTHONPATH")]))

# One validation (jsonschema, defaults filled from the schema: atlib.spec.schema.validate_config)
# and the checks a schema cannot express: one message naming the key.
sys.path.insert(0, workflow.basedir)
from atlib.spec.config import check_config, missing_source_files
from atlib.spec.schema import ConfigError

try:
    # Image folders (datasets with base folder) are decoded once, here, not again in every job.
    check_config(config, decode_images=workflow.is_main_process)
except ConfigError as err:
    raise WorkflowError(str(err)) from None
missing = missing_source_files(config)
if missing:
    raise WorkflowError("\n".join(missing))
# Read by atlib.data.Prepared in every job, wherever the job opens a dataset. (A line of its own:
# `snakemake --lint` would read the whole line after `os.environ[` as the variable's name.)
verify_data = "1" if config["verify_data"] else "0"
os.environ["ATLIB_VERIFY_DATA"] = verify_data
# CPU kernel caps (config numerics.isa): torch reads them when it loads, so here, before any job starts;
# a value already in the environment wins (atlib.core.numerics).
from atlib.core.numerics import apply_env

numerics_vars = apply_env(config["numerics"])


# All set above; declared, so that executors that do not share this environment pass them to jobs.
envvars:
    "PYTHONPATH",
    "ATLIB_VERIFY_DATA",
    *numerics_vars,


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/transfer.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/distance.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/track.smk"


rule all:
    default_target: True
    input:
        all_targets(),
