"""Small statistical helpers shared by the analyses and the report.

* :func:`holm`: Holm's step-down adjustment of a family of p-values (controls the
  family-wise error rate under any dependence between the tests).
"""

from __future__ import annotations

from collections.abc import Sequence

#: the level every decision of the report is taken at (on Holm-adjusted p-values)
ALPHA = 0.05
#: random permutations of a permutation test, unless told otherwise
N_PERMUTATIONS = 1000


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm-adjusted p-values, in the input order: with the m known p-values sorted,
    p_(1) <= ... <= p_(m), the adjusted p_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)).
    ``None`` (a test that could not be made) stays ``None`` and is not counted in m."""
    known = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    m = len(known)
    out: list[float | None] = [None] * len(p_values)
    running = 0.0
    for j, (p, i) in enumerate(known):
        running = max(running, min(1.0, (m - j) * float(p)))
        out[i] = running
    return out
