"""Verdict stability: how often a claim's verdict survives another draw of seeds.

Floating-point differences between CPUs move a run's numbers by about what another seed draw moves
them, so a verdict that a different seed draw would flip is not one to rely on. Every claim is
judged again on (a) the run without each seed in turn (leave one seed out) and (b) the seed
bootstrap: seed labels drawn with replacement, all draws enumerated with their multinomial
probabilities when there are few (3 seeds: 10 draws), else a fixed Monte Carlo sample. A drawn
seed brings every result of that seed (sources, transfers, analyses); task distances come from the
declared probe and are kept. Stability is the weighted share of draws with the full run's verdict;
"not testable" after a draw counts as a change.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass, fields, replace
from typing import Callable

import numpy as np
import pandas as pd

from atlib.report.load import Results
from atlib.report.stats import MIN_UNITS

FRAGILE_BELOW = 0.95
MAX_ENUMERATED = 100  # seed-bootstrap draws enumerated exactly up to this many multisets
MC_DRAWS = 100


@dataclass(frozen=True)
class Draw:
    """One resample of the seeds: the seeds in order (repeats allowed) and its probability weight."""

    kind: str  # "loso" or "boot"
    seeds: tuple[int, ...]
    weight: float


def seed_draws(seeds: list[int], rng_seed: int = 0) -> list[Draw]:
    """Leave-one-seed-out draws and the seed bootstrap (exact when small, Monte Carlo otherwise)."""
    seeds = sorted(seeds)
    n = len(seeds)
    if n < 2:
        return []
    out = [Draw("loso", tuple(s for s in seeds if s != left), 1 / n) for left in seeds]
    if math.comb(2 * n - 1, n) <= MAX_ENUMERATED:
        for combo in itertools.combinations_with_replacement(seeds, n):
            ways = math.factorial(n) / math.prod(math.factorial(c) for c in Counter(combo).values())
            out.append(Draw("boot", combo, ways / n**n))
    else:
        rng = np.random.default_rng(rng_seed)
        out += [Draw("boot", tuple(sorted(rng.choice(seeds, n))), 1 / MC_DRAWS) for _ in range(MC_DRAWS)]
    return out


def _relabel(df: pd.DataFrame, seeds: tuple[int, ...]) -> pd.DataFrame:
    """The rows of each drawn seed, relabelled by its position in the draw (a seed drawn twice
    becomes two seeds), so pairing across eps and tables is kept."""
    if "seed" not in df.columns or df.empty:
        return df
    parts = [df[df["seed"] == s].assign(seed=k) for k, s in enumerate(seeds)]
    return pd.concat(parts, ignore_index=True) if parts else df.iloc[0:0]


def resample(res: Results, seeds: tuple[int, ...]) -> Results:
    """`res` as if the run had had the drawn seeds (distances, from the declared probe, are kept)."""
    frames = {f.name: _relabel(getattr(res, f.name), seeds) for f in fields(res)
              if isinstance(getattr(res, f.name), pd.DataFrame) and f.name != "distances"}
    recon = {(*k[:3], j, k[4]): v for k, v in res.invert_recon.items() for j, s in enumerate(seeds) if k[3] == s}
    return replace(res, **frames, invert_recon=recon)


def run_seeds(res: Results) -> list[int]:
    """Every seed of the run's models."""
    return sorted(set(res.sources["seed"].dropna().astype(int)) | set(res.transfers["seed"].dropna().astype(int)))


def stability(res: Results, judge: Callable[[Results], pd.DataFrame], full: pd.DataFrame) -> pd.DataFrame:
    """Per claim: stability (the smaller of the two shares below), stability_loso, stability_boot
    and the draws judged. judge(res) -> frame with claim, verdict, n, unit (check_claims without
    stability); full: its result on the whole run.

    A leave-one-out draw that leaves a claim on seeds with fewer than MIN_UNITS seeds cannot decide
    it by the rule: that draw is not counted for that claim (claims on base sets keep their n)."""
    draws = seed_draws(run_seeds(res))
    base = full.set_index("claim")["verdict"]
    same = {kind: {c: [0.0, 0.0] for c in base.index} for kind in ("loso", "boot")}
    for d in draws:
        judged = judge(resample(res, d.seeds)).set_index("claim")
        for c, row in judged.iterrows():
            if d.kind == "loso" and row["unit"] == "seeds" and row["n"] < MIN_UNITS:
                continue
            same[d.kind][c][0] += d.weight * (row["verdict"] == base[c])
            same[d.kind][c][1] += d.weight
    rows = []
    for c in base.index:
        shares = {k: (same[k][c][0] / same[k][c][1] if same[k][c][1] else np.nan) for k in same}
        known = [v for v in shares.values() if np.isfinite(v)]
        rows.append({"claim": c, "stability": min(known) if known else np.nan, "stability_loso": shares["loso"],
                     "stability_boot": shares["boot"], "draws": len(draws)})
    return pd.DataFrame(rows)


def marker(verdict: str, stab: float) -> str:
    """'stable 1.00', 'fragile 0.71' or '' (not testable: nothing to keep)."""
    if verdict == "not testable here":
        return ""
    if not np.isfinite(stab):
        return "stability unmeasured (one seed)"
    return f"{'fragile' if stab < FRAGILE_BELOW else 'stable'} {stab:.2f}"
