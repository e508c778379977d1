"""Checking a dataclass config tree: declared value ranges and each section's relations.

Value ranges are declared on the fields themselves, as dataclass metadata:
``lr: float = field(default=0.08, metadata={"range": "> 0"})``; the forms are
``"> a"``, ``">= a"``, ``"< a"``, ``"<= a"`` and intervals ``"(a, b]"``,
``"[a, b)"``, ... (``inf`` allowed), alternatives joined by ``or`` with a bare
number for one allowed value (``"[0, 1] or -1"``). Infinity is outside every
range that does not name ``inf`` as a bound; NaN is outside every range.

Relations between values (an ordered ``scale_range``, ``rpn_fg_iou_thresh >=
rpn_bg_iou_thresh``) are a section's ``validate()`` method, raising ``ValueError``.

This is the base of the config tree: the sections (``pedcrowd.data.config``,
``pedcrowd.model.config``, ...) and the loader (:mod:`pedcrowd.engine.config`)
use it; it imports only the standard library.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

from pedcrowd.errors import PedcrowdError

# one range without alternatives: "op bound" or "[lo, hi)" with either bracket
RANGE_SPEC = re.compile(
    r"^\s*(?:(?P<op>>=|<=|>|<)\s*(?P<bound>\S+)|(?P<lo_b>[\[(])\s*(?P<lo>[^,]+),\s*(?P<hi>[^\])]+)(?P<hi_b>[\])]))\s*$"
)


def short_repr(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters (a huge list must not become a huge error line)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def in_range(spec: str, value: float) -> bool:
    """Whether ``value`` lies in the range ``spec`` (``"> 0"``, ``"(0, 1]"``, ``"[0, 1] or -1"``:
    a bare number is that value exactly; ``or`` joins alternatives); NaN never does, and
    infinity only when the spec names ``inf`` as a bound (``"[0, inf]"``)."""
    return any(_in_one_range(part, value) for part in spec.split(" or "))


def _in_one_range(spec: str, value: float) -> bool:
    try:
        return value == float(spec)
    except ValueError:
        pass
    m = RANGE_SPEC.match(spec)
    if m is None:
        raise ValueError(f"bad range spec {spec!r}")
    if not math.isfinite(value) and "inf" not in spec:
        return False
    if m["op"]:
        b = float(m["bound"])
        return {">": value > b, ">=": value >= b, "<": value < b, "<=": value <= b}[m["op"]]
    lo, hi = float(m["lo"]), float(m["hi"])
    above = value > lo if m["lo_b"] == "(" else value >= lo
    below = value < hi if m["hi_b"] == ")" else value <= hi
    return above and below


def check_range(f: dataclasses.Field, value: Any, source: str, key: str) -> None:
    """PedcrowdError when ``value`` (or a number inside it) is outside ``f``'s declared range."""
    spec = f.metadata.get("range")
    if spec is None or value is None:
        return
    items = value if isinstance(value, list | tuple) else [value]
    for i, v in enumerate(items):
        if isinstance(v, int | float) and not isinstance(v, bool) and not in_range(spec, v):
            where = key if items is not value else f"{key}[{i}]"
            spec = spec.strip()
            raise PedcrowdError(
                f"{source}: '{where}' must be {'in ' if spec[0] in '([' else ''}{spec}, got {v!r}"
            )


def check_config(cfg: Any, source: str = "config", prefix: str = "") -> None:
    """Every declared range and relation of the dataclass tree ``cfg``; PedcrowdError
    naming ``source`` and the dotted key.

    The loader checks each value as it reads it; this checks the finished tree
    (a config built in Python, ``--set`` values that only together break a relation).
    """
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_config(value, source, prefix=f"{key}.")
        elif isinstance(value, list | tuple) and any(dataclasses.is_dataclass(v) for v in value):
            for i, item in enumerate(value):  # data.train: one section per training set
                check_config(item, source, prefix=f"{key}[{i}].")
        else:
            check_range(f, value, source, key)
    validate = getattr(cfg, "validate", None)
    if validate is not None:
        try:
            validate()
        except (ValueError, PedcrowdError) as e:
            where = f"{prefix.rstrip('.')}: " if prefix else ""
            raise PedcrowdError(f"{source}: {where}{e}") from None
