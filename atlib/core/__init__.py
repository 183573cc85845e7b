"""Shared ground every stage stands on: compat shims, the device and autocast runtime, numerics.

Imports nothing from atlib.
"""
