"""The experiment as the config describes it: schema validation with defaults, the job model (which
jobs a config asks for and where their files live) and each result's provenance record.

May import atlib.core, atlib.data and atlib.models (the registries the config is checked against).
"""
