"""CrowdHuman's evaluation as plain per-image loops, and a CrowdHuman-sized synthetic set.

What it re-implements: the AP, MR^-2 and JI of CrowdDet's ``lib/evaluate``
(``compute_APMR.py``: full-body boxes clipped to the image, each detection
matched in score order to the free GT of highest IoU above 0.5, an unmatched
detection covering an ignore region by more than half of its own area dropped,
AP as the trapezoid over the precision/recall points, MR^-2 at nine FPPI
references; ``compute_JI.py``: per image and per score threshold 0.0 .. 0.9 a
maximum-weight matching of IoU > 0.5 pairs, the ratio matched / (detections +
GT - matched) after dropping unmatched boxes inside ignore regions, averaged
over images and maximised over thresholds).

Independent of ``pedcrowd.eval.crowdhuman``: it parses the files with ``json``,
walks every image, every detection and every GT in Python loops, and solves
JI's matching with one ``linear_sum_assignment`` per image
(``brute_force_matching`` below checks that on small graphs). It is the oracle
of ``tests/test_eval_crowdhuman.py`` and the baseline of
``scripts/bench_crowdhuman.py``, which also writes its data set with
``synthetic_crowdhuman``.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np

REFS = [0.0100, 0.0178, 0.03160, 0.0562, 0.1000, 0.1778, 0.3162, 0.5623, 1.000]


def _clip(box, w, h):
    x1, y1, x2, y2 = box[0], box[1], box[0] + box[2], box[1] + box[3]
    return [min(max(x1, 0), w - 1), min(max(y1, 0), h - 1), max(min(x2, w), 0), max(min(y2, h), 0)]


def _inter(a, b):
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    return max(0.0, iw) * max(0.0, ih)


def _area(a, clamp=False):
    w, h = a[2] - a[0], a[3] - a[1]
    return max(w, 0) * max(h, 0) if clamp else w * h


def _iou(a, b):
    i = _inter(a, b)
    return i / (_area(a) + _area(b) - i + 1e-6)


def _ioa(a, b, clamp=False):
    return _inter(a, b) / (_area(a, clamp) + 1e-6)


def load(gt_path: Path, dets_path: Path, sizes_path: Path) -> list[dict]:
    """Images in .odgt order: {"valid": [xyxy], "ignore": [xyxy], "dets": [(xyxy, score)]}.

    ``dets_path``: results JSON list keyed by ``image_id`` (1-based .odgt line);
    ``sizes_path``: {"images": [{"id", "width", "height"}]}.
    """
    lines = [json.loads(ln) for ln in Path(gt_path).read_text().splitlines() if ln.strip()]
    sizes = {im["id"]: (im["width"], im["height"]) for im in json.loads(Path(sizes_path).read_text())["images"]}
    dets_by_image: dict[int, list] = {}
    for d in json.loads(Path(dets_path).read_text()):
        dets_by_image.setdefault(d["image_id"], []).append((d["bbox"], d["score"]))
    images = []
    for i, line in enumerate(lines, start=1):
        w, h = sizes[i]
        valid, ignore = [], []
        for g in line.get("gtboxes", []):
            ign = g["tag"] != "person" or g.get("extra", {}).get("ignore", 0) != 0
            (ignore if ign else valid).append(_clip(g["fbox"], w, h))
        dets = [(_clip(b, w, h), s) for b, s in dets_by_image.get(i, [])]
        images.append({"valid": valid, "ignore": ignore, "dets": dets})
    return images


def reference_apmr(images: list[dict]) -> tuple[float | None, float | None]:
    """(AP, MR^-2) by CrowdDet's loops; None where there is no valid GT."""
    outcomes = []  # (score, is_tp) in image order, score order within an image
    for im in images:
        dets = sorted(im["dets"], key=lambda d: -d[1])  # stable
        taken = [False] * len(im["valid"])
        for box, score in dets:
            best, best_j = 0.5, -1
            for j, g in enumerate(im["valid"]):
                if not taken[j]:
                    o = _iou(box, g)
                    if o > best:
                        best, best_j = o, j
            if best_j >= 0:
                taken[best_j] = True
                outcomes.append((score, True))
            elif any(_ioa(box, g) > 0.5 for g in im["ignore"]):
                continue
            else:
                outcomes.append((score, False))
    outcomes.sort(key=lambda o: -o[0])  # stable
    n_gt = sum(len(im["valid"]) for im in images)
    if n_gt == 0:
        return None, None
    tp = fp = 0
    rec, prec, fppi, miss = [], [], [], []
    for _, hit in outcomes:
        tp, fp = tp + hit, fp + (not hit)
        rec.append(tp / n_gt)
        prec.append(tp / (tp + fp))
        fppi.append(fp / len(images))
        miss.append(1 - tp / n_gt)
    ap = 0.0
    for i in range(1, len(rec)):
        ap += (rec[i] - rec[i - 1]) * ((prec[i - 1] + prec[i]) / 2)
    if not outcomes:
        return 0.0, 1.0
    logs = []
    for ref in REFS:
        idx = next((i for i, f in enumerate(fppi) if f >= ref), len(fppi) - 1)
        logs.append(math.log(miss[idx]) if miss[idx] > 0 else -math.inf)
    return ap, math.exp(sum(logs) / len(logs))


def lsa_matching(weights: np.ndarray) -> list[tuple[int, int]]:
    """Maximum-weight matching of a [D, G] matrix (0 = no edge) by linear_sum_assignment."""
    from scipy.optimize import linear_sum_assignment

    if weights.size == 0:
        return []
    r, c = linear_sum_assignment(weights, maximize=True)
    return [(i, j) for i, j in zip(r, c, strict=True) if weights[i, j] > 0]


def brute_force_matching(weights: np.ndarray) -> float:
    """The weight of a maximum-weight matching by enumerating every matching (tiny graphs only)."""
    d, g = weights.shape
    best = 0.0
    for k in range(min(d, g) + 1):
        for rows in itertools.combinations(range(d), k):
            for cols in itertools.permutations(range(g), k):
                if all(weights[r, c] > 0 for r, c in zip(rows, cols, strict=True)):
                    best = max(best, sum(weights[r, c] for r, c in zip(rows, cols, strict=True)))
    return best


def reference_ji(images: list[dict]) -> tuple[float | None, list[float | None]]:
    """CrowdDet's JI by loops: (max over thresholds, [10] mean ratios).

    Per image the IoU matrix and the ignore tests are computed once; each
    threshold then keeps the rows of its detections and solves the matching.
    """
    per_image = []
    for im in images:
        w = np.zeros((len(im["dets"]), len(im["valid"])))
        for a, (db, _) in enumerate(im["dets"]):
            for b, g in enumerate(im["valid"]):
                o = _iou(db, g)
                if o > 0.5:
                    w[a, b] = o
        det_cov = [any(_ioa(db, r, True) > 0.5 for r in im["ignore"]) for db, _ in im["dets"]]
        gt_cov = [any(_ioa(g, r, True) > 0.5 for r in im["ignore"]) for g in im["valid"]]
        per_image.append((w, [s for _, s in im["dets"]], det_cov, gt_cov))
    means = []
    for i in range(10):
        t = 1e-1 * i
        total, counted = 0.0, 0
        for w, scores, det_cov, gt_cov in per_image:
            rows = [a for a, s in enumerate(scores) if s > t]
            pairs = lsa_matching(w[rows])
            md, mg = {rows[p[0]] for p in pairs}, {p[1] for p in pairs}
            k = len(pairs)
            n = len(rows) - sum(1 for a in rows if a not in md and det_cov[a])
            m = len(gt_cov) - sum(1 for b, c in enumerate(gt_cov) if b not in mg and c)
            total += k / (m + n - k + 1e-6)
            counted += (m != 0) or (n != 0)
        means.append(total / counted if counted else None)
    defined = [v for v in means if v is not None]
    return (max(defined) if defined else None), means


def synthetic_crowdhuman(
    out: Path, n_images: int, n_gt: int, n_dets: int, seed: int = 0, ignore_fraction: float = 0.05
) -> tuple[Path, Path, Path]:
    """Write a CrowdHuman-like set: ``gt.odgt``, ``dets.json`` (results list), ``images.json`` (sizes).

    Crowds of people (overlapping boxes, some reaching past the border), a few
    ignore regions, and per person a cluster of jittered detections (scores
    higher for better boxes) plus background detections.
    """
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    per_image = rng.multinomial(n_gt, np.ones(n_images) / n_images)
    widths = rng.integers(600, 1400, n_images)
    heights = rng.integers(400, 1000, n_images)
    gt_lines, dets, images = [], [], []
    det_budget = rng.multinomial(n_dets, np.ones(n_images) / n_images)
    for i in range(n_images):
        w, h = int(widths[i]), int(heights[i])
        images.append({"id": i + 1, "file_name": f"img{i:05d}.jpg", "width": w, "height": h})
        k = int(per_image[i])
        bh = rng.uniform(40, 0.8 * h, k)
        bw = bh * rng.uniform(0.3, 0.5, k)
        cx = rng.uniform(-0.05 * w, 1.05 * w, k)
        cy = rng.uniform(0.3 * h, 0.8 * h, k)
        boxes = np.column_stack([cx - bw / 2, cy - bh / 2, bw, bh]).round(1)
        ign = rng.random(k) < ignore_fraction
        gtboxes = [
            {"tag": "mask" if ig and j % 2 else "person", "fbox": b.tolist(), "vbox": b.tolist(), "hbox": b.tolist(),
             "extra": {"ignore": int(ig)}}
            for j, (b, ig) in enumerate(zip(boxes, ign, strict=True))
        ]
        gt_lines.append(json.dumps({"ID": f"img{i:05d}", "gtboxes": gtboxes}))
        nd = int(det_budget[i])
        # One good box per person first (high score), then loose duplicates and background (low scores).
        primary = min(k, nd)
        src = np.concatenate([rng.permutation(k)[:primary], rng.integers(0, max(k, 1), nd - primary)]) if k else np.zeros(nd, int)
        spread = np.where(np.arange(nd) < primary, 0.05, 0.15)[:, None]
        jitter = rng.normal(0, 1, (nd, 4)) * spread
        base = boxes[src] if k else np.ones((nd, 4))
        d = np.column_stack([
            base[:, 0] + jitter[:, 0] * base[:, 2], base[:, 1] + jitter[:, 1] * base[:, 3],
            base[:, 2] * np.exp(jitter[:, 2]), base[:, 3] * np.exp(jitter[:, 3]),
        ])
        bg = (rng.random(nd) < 0.3) & (np.arange(nd) >= primary) | (k == 0)
        rb = rng.uniform(30, 0.6 * h, nd)
        d[bg] = np.column_stack([rng.uniform(0, w, nd), rng.uniform(0, h - 30, nd), rb * 0.4, rb])[bg]
        score = np.where(np.arange(nd) < primary, rng.uniform(0.3, 1.0, nd), rng.uniform(0, 0.6, nd) ** 2)
        dets.extend(
            {"image_id": i + 1, "category_id": 1, "bbox": [round(v, 2) for v in b], "score": round(float(s), 6)}
            for b, s in zip(d.tolist(), score.tolist(), strict=True)
        )
    gt, dt, im = out / "gt.odgt", out / "dets.json", out / "images.json"
    gt.write_text("\n".join(gt_lines) + "\n")
    dt.write_text(json.dumps(dets))
    im.write_text(json.dumps({"images": images}))
    return gt, dt, im
