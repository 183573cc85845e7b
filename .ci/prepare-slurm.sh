#!/usr/bin/env bash
# A real single-node SLURM for tests/test_slurm.py: installs Debian's slurm-wlm and munge.
# Idempotent and quiet. Needs root and apt-get; elsewhere it says so and the SLURM tests skip.
# The tests start (and stop) the cluster themselves with scripts/slurm_cluster.sh.
set -euo pipefail

if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
  exit 0
fi
if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
  echo "prepare-slurm: not root with apt-get; the SLURM cluster tests will be skipped" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
install() { apt-get install -y -qq slurm-wlm munge >/dev/null; }
install 2>/dev/null || { apt-get update -qq >/dev/null && install; }
