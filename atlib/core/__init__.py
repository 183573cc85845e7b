"""Shared ground every stage stands on: compat shims, the device and autocast runtime, numerics,
atomic file writes.

Imports nothing from atlib.
"""
