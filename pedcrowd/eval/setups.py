"""Evaluation setups: which ground truth counts, by height and visibility.

A setup is a frozen dataclass with the official name. Bounds are those of the
official tables (docs/evaluation.md sections "CityPersons: setups" and "Caltech");
whether the upper height bound is inclusive is the protocol's business (CityPersons: inclusive,
Caltech dbEval.m: exclusive), not the setup's.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from pedcrowd.errors import PedcrowdError

INF = math.inf


@dataclass(frozen=True)
class Setup:
    """A named height x visibility range.

    Attributes:
        name: the official label (``Reasonable``, ``Reasonable_occ=heavy``, ...).
        height: (lo, hi) pixel height range of the non-ignored GT.
        visibility: (lo, hi) visible-fraction range. Caltech uses ``inf`` for
            "no occlusion box" (fully visible), so (inf, inf) means unoccluded only.
    """

    name: str
    height: tuple[float, float]
    visibility: tuple[float, float]

    def contains(self, heights, visibility):
        """[K] bool: inside both ranges, every bound inclusive (CityPersons
        ``eval_MR_multisetup.py``); NaN is outside.

        Args:
            heights: [K] pixel heights; visibility: [K] visible fractions (numpy arrays).
        """
        (h0, h1), (v0, v1) = self.height, self.visibility
        return (heights >= h0) & (heights <= h1) & (visibility >= v0) & (visibility <= v1)


# CityPersons official (eval_MR_multisetup.py) plus the extended rows of the
# CSP copy; the official script uses 1e10 as "no upper bound".
CITYPERSONS_SETUPS: dict[str, Setup] = {
    s.name: s
    for s in (
        Setup("Reasonable", (50, 1e10), (0.65, 1e10)),
        Setup("Reasonable_small", (50, 75), (0.65, 1e10)),
        Setup("Reasonable_occ=heavy", (50, 1e10), (0.2, 0.65)),
        Setup("All", (20, 1e10), (0.2, 1e10)),
        Setup("Bare", (50, 1e10), (0.9, 1e10)),
        Setup("Partial", (50, 1e10), (0.65, 0.9)),
        Setup("Heavy", (50, 1e10), (0.0, 0.65)),
    )
}

# Caltech dbEval.m v3.2.1 `exps` (the rows pedcrowd exposes).
CALTECH_SETUPS: dict[str, Setup] = {
    s.name: s
    for s in (
        Setup("Reasonable", (50, INF), (0.65, INF)),
        Setup("All", (20, INF), (0.2, INF)),
        Setup("Occ=none", (50, INF), (INF, INF)),
        Setup("Occ=partial", (50, INF), (0.65, 1)),
        Setup("Occ=heavy", (50, INF), (0.2, 0.65)),
        Setup("Scale=near", (80, INF), (INF, INF)),
        Setup("Scale=medium", (30, 80), (INF, INF)),
        Setup("Scale=far", (20, 30), (INF, INF)),
        Setup("Scale=large", (100, INF), (INF, INF)),
    )
}

_SETUP_RE = re.compile(
    r"^(?P<name>[^:]+):(?P<h0>[^-:]+)-(?P<h1>[^-:]+):(?P<v0>[^-:]+)-(?P<v1>[^-:]+)$"
)


def parse_setup(text: str, known: dict[str, Setup]) -> Setup:
    """A setup by official name, or a user-defined ``NAME:HMIN-HMAX:VMIN-VMAX``.

    ``inf`` is accepted as a bound. Raises PedcrowdError on anything else.
    """
    if text in known:
        return known[text]
    m = _SETUP_RE.match(text)
    if not m:
        names = ", ".join(known)
        raise PedcrowdError(
            f"--setup {text!r}: not a known setup ({names}) nor NAME:HMIN-HMAX:VMIN-VMAX"
        )
    try:
        h0, h1, v0, v1 = (float(m[k]) for k in ("h0", "h1", "v0", "v1"))
    except ValueError:
        raise PedcrowdError(f"--setup {text!r}: bounds must be numbers or 'inf'") from None
    if any(math.isnan(b) for b in (h0, h1, v0, v1)):
        raise PedcrowdError(f"--setup {text!r}: a bound is NaN; bounds must be numbers or 'inf'")
    if h0 > h1 or v0 > v1:
        raise PedcrowdError(f"--setup {text!r}: lower bound above upper bound")
    return Setup(m["name"], (h0, h1), (v0, v1))
