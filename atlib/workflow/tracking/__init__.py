"""The MLflow view of the results tree; result files stay the source of truth.

    discovery  the finished jobs of the results tree (atlib.spec.jobs finds them) and their job_key
    mapping    one job -> its MLflow run: params, metrics, tags, dataset inputs, name, parent, start and end
    ingest     the idempotent ingest: exactly one run per finished job, found again by its job_key tag
    live       optional live logging from a running job, and the runs of `make recommend`
    ui         the address that opens the UI on the experiment's runs table (`make ui`, the demo)

Import from the submodules; this package re-exports nothing.
"""
