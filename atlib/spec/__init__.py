"""The experiment as the config describes it: schema validation with defaults (`schema`), the grid the
config implies (`grid`), the checks a schema cannot express (`config`), the typed schedules a job gets
(`settings`), the job model (which jobs a config asks for and where their files live: `jobs`) and each
result's provenance record (`provenance`).

May import atlib.core, atlib.data and atlib.models (the registries the config is checked against).
"""
