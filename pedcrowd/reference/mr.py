"""MR^-2 of the CityPersons and Caltech protocols as plain loops: the test oracle.

What it re-implements: the log-average miss rate over nine FPPI points of
CityPersons' official ``eval_MR_multisetup.py`` (``evaluateImg`` matches each
image's detections greedily in score order, ignore regions last and matched by
intersection over the detection's own area; ``accumulate`` sorts all outcomes by
score and reads recall at the FPPI references) and of the Caltech toolbox
(``bbGt.m``: ``evalRes`` for the matching, ``compRoc`` for the curve; detections
resized to the 0.41 aspect ratio as ``dbEval.m`` does). The structure follows
those functions one image, one detection and one GT at a time; it shares no code
with ``pedcrowd.eval``, whose vectorised evaluator must give the same numbers.

``tests/test_eval_oracle.py`` checks this oracle itself against the official
numbers; ``tests/test_eval_properties.py`` compares ``pedcrowd.eval`` with it on
random scenes; ``scripts/bench_eval.py`` times pedcrowd against it.
"""

from __future__ import annotations

import json
import math

CP_REFS = [0.0100, 0.0178, 0.0316, 0.0562, 0.1000, 0.1778, 0.3162, 0.5623, 1.0000]
CALTECH_REFS = [10.0 ** (-2 + 0.25 * k) for k in range(9)]


def _overlap(d, g, ignored):
    iw = min(d[0] + d[2], g[0] + g[2]) - max(d[0], g[0])
    if iw <= 0:
        return 0.0
    ih = min(d[1] + d[3], g[1] + g[3]) - max(d[1], g[1])
    if ih <= 0:
        return 0.0
    inter = iw * ih
    d_area = d[2] * d[3]
    union = d_area if ignored else d_area + g[2] * g[3] - inter
    return inter / union


def _match_image(gts, dts):
    """gts: list of (box, ignored); dts: list of (box, score) in score order.

    Returns a list of (score, outcome) with outcome 1 TP, 0 FP, -1 ignored.
    """
    gts = sorted(gts, key=lambda g: g[1])  # stable: regular GT first
    matched = [False] * len(gts)
    out = []
    for box, score in dts:
        best_ov, best_g, best_m = 0.5, -1, 0
        for j, (gbox, gign) in enumerate(gts):
            if matched[j]:
                continue
            if best_m != 0 and gign:
                break
            ov = _overlap(box, gbox, gign)
            if ov < best_ov:
                continue
            best_ov, best_g, best_m = ov, j, (-1 if gign else 1)
        if best_m == 1:
            matched[best_g] = True
        out.append((score, best_m if best_g >= 0 else 0))
    return out


def reference_mr(images, dets, setup, protocol="citypersons", resize_dets=True, prefiltered=False):
    """MR^-2 of one setup.

    Args:
        images: list of dicts {id, boxes [[x,y,w,h]], ignore [bool], heights [h], vis [v]} in order.
        dets: dict image id -> list of ([x,y,w,h], score) in file order.
        setup: (name, (hlo, hhi), (vlo, vhi)).
        protocol: 'citypersons' or 'caltech' (caltech with prefiltered caches only).
    Returns:
        (mr or None, [9] recall at the references).
    """
    _, (hlo, hhi), (vlo, vhi) = setup
    if protocol == "citypersons":
        images = sorted(images, key=lambda im: im["id"])
    scored = []  # (score, outcome) in image order
    n_gt = 0
    for im in images:
        gts = []
        for box, ign, h, v in zip(im["boxes"], im["ignore"], im["heights"], im["vis"], strict=True):
            if not prefiltered:
                ign = ign or h < hlo or h > hhi or v < vlo or v > vhi
            gts.append((list(box), bool(ign)))
            n_gt += not ign
        dts = list(dets.get(im["id"], []))
        order = sorted(range(len(dts)), key=lambda i: -dts[i][1])  # Python's sort is stable
        dts = [dts[i] for i in order]
        if protocol == "citypersons":
            dts = dts[:1000]
        elif resize_dets:
            resized = []
            for (x, y, w, h), s in dts:
                d = h * 0.41 - w
                resized.append(([x - d / 2, y, w + d, h], s))
            dts = resized
        dts = [(b, s) for b, s in dts if hlo / 1.25 <= b[3] < hhi * 1.25]
        scored.extend(_match_image(gts, dts))
    if n_gt == 0:
        return None, [0.0] * 9
    order = sorted(range(len(scored)), key=lambda i: -scored[i][0])
    kept = [scored[i][1] for i in order if scored[i][1] != -1]
    tp = fp = 0
    fppi, recall = [], []
    for outcome in kept:
        tp += outcome == 1
        fp += outcome == 0
        fppi.append(fp / len(images))
        recall.append(tp / n_gt)
    refs = CP_REFS if protocol == "citypersons" else CALTECH_REFS
    at = []
    for ref in refs:
        if not kept:
            at.append(0.0)
            continue
        idx = max((i for i, f in enumerate(fppi) if f <= ref), default=-1)
        if idx == -1:
            at.append(recall[-1] if protocol == "citypersons" else 0.0)
        else:
            at.append(recall[idx])
    logs = [math.log(1 - r) if r < 1 else -math.inf for r in at]
    return math.exp(sum(logs) / 9), at


def images_from_records(records):
    """Oracle input from :class:`ImageRecord` lists (the only pedcrowd code the oracle touches)."""
    return [
        {
            "id": r.id,
            "boxes": r.boxes.tolist(),
            "ignore": r.ignore.tolist(),
            "heights": r.heights.tolist(),
            "vis": [1.0 if math.isnan(v) else v for v in r.vis_ratios.tolist()],
        }
        for r in records
    ]


def dets_from_json(path):
    dets: dict[int, list] = {}
    for d in json.load(open(path)):
        if d.get("category_id", 1) == 1:
            dets.setdefault(d["image_id"], []).append((d["bbox"], d["score"]))
    return dets


CP_SETUPS = [
    ("Reasonable", (50, 1e10), (0.65, 1e10)),
    ("Reasonable_small", (50, 75), (0.65, 1e10)),
    ("Reasonable_occ=heavy", (50, 1e10), (0.2, 0.65)),
    ("All", (20, 1e10), (0.2, 1e10)),
    ("Bare", (50, 1e10), (0.9, 1e10)),
    ("Partial", (50, 1e10), (0.65, 0.9)),
    ("Heavy", (50, 1e10), (0.0, 0.65)),
]
