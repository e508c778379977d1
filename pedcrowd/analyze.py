"""Error analysis around the final NMS: which misses NMS caused, which false positives it kept.

Given the boxes *before* the final NMS (from a model run with the NMS turned
off, or a file), :func:`analyze` replays the NMS (greedy, IoU > threshold
suppresses, then the per-image cap, as torchvision), evaluates the result with
the protocol's own matching and ignore rules (CityPersons, Caltech, CrowdHuman;
:mod:`pedcrowd.eval`), and at each operating point (a score threshold s*)
attributes every error:

Misses (non-ignored GT that no kept detection with score >= s* matched); the
pre-NMS boxes are matched to the GT one-to-one with the same greedy matching:

* ``nms_other_person``: its matched pre-NMS box (score >= s*) was suppressed by
  a box that matched another person;
* ``nms_false_positive``: ... suppressed by a box that matched no person;
* ``low_score``: no matched pre-NMS box, but one above the match overlap with a
  score below s*;
* ``never_proposed``: no pre-NMS box above the match overlap at all;
* ``other``: it had a pre-NMS box >= s* that NMS kept or the cap removed, or
  that another person took.

False positives (kept, score >= s*, not matched, not in an ignore region):

* ``duplicate``: overlaps (above the match threshold) a person already taken by a
  higher-scored box; flag ``below_nms``: its IoU with that box is <= the NMS
  threshold (always so for a greedy NMS over the same boxes; informative for a
  file produced by another post-processing);
* ``localisation``: best IoU with a person in [0.1, match threshold); flag
  ``crowd``: IoU >= 0.1 with two or more people;
* ``background``: best IoU < 0.1.

Oracles (as TIDE does for AP): MR^-2 and AP of the protocol's matching
(trapezoid over its precision/recall points, CrowdDet's AP for CrowdHuman) with
one error type fixed at s*: NMS misses get their suppressed box back, low-score
misses get their best box at score s*, never-proposed people get their GT box at
score s*, duplicates and background boxes are deleted, localisation errors are
moved onto their person when it was missed (else deleted).

Shapes: D_i pre-NMS boxes of image i (``xywh``), K_i kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from pedcrowd.boxes import box_iou, xywh_to_xyxy
from pedcrowd.errors import PedcrowdError
from pedcrowd.eval.matching import THRESHOLD, MatchDetails

MISSES = ("nms_other_person", "nms_false_positive", "low_score", "never_proposed", "other")
FALSE_POSITIVES = ("duplicate", "localisation", "background")
FIXES = ("nms_other_person", "nms_false_positive", "nms_all", "low_score", "never_proposed",
         "duplicate", "localisation", "background")
LOC_IOU = 0.1
KEPT, CUT = -1, -2  # suppressor codes: kept by NMS; suppressed by nobody but removed by the cap

Detections = dict[int, tuple[np.ndarray, np.ndarray]]


def nms_with_suppressors(boxes: np.ndarray, scores: np.ndarray, thresh: float, max_dets: int):
    """Greedy NMS that also says who suppressed whom.

    Args:
        boxes: [D, 4] ``xywh``; scores: [D]; thresh: a box is suppressed by a kept,
            higher-ranked box with IoU > thresh; max_dets: keep at most this many.

    Returns:
        (keep [K] indices in score order, suppressor [D]: the index of the kept
        box that suppressed each box, :data:`KEPT` or :data:`CUT`).
    """
    n = len(scores)
    order = np.argsort(-np.asarray(scores), kind="stable")
    suppressor = np.full(n, KEPT, dtype=np.int64)
    if n == 0:
        return order, suppressor
    iou = box_iou(xywh_to_xyxy(boxes[order]), xywh_to_xyxy(boxes[order]))
    alive = np.ones(n, bool)
    kept = []
    for i in range(n):
        if not alive[i]:
            continue
        kept.append(i)
        hit = alive & (iou[i] > thresh)
        hit[: i + 1] = False
        suppressor[order[hit]] = order[i]
        alive &= ~hit
    kept = order[np.array(kept, dtype=np.int64)]
    suppressor[kept[max_dets:]] = CUT
    return kept[:max_dets], suppressor


@dataclass
class NmsReplay:
    """The NMS replayed on every image (keys: record ids).

    Attributes:
        post: image id -> (boxes [K, 4] xywh, scores [K]) kept, score order.
        kept: image id -> [K] index of each kept box in the pre-NMS arrays.
        suppressor: image id -> [D] see :func:`nms_with_suppressors`.
    """

    post: Detections
    kept: dict[int, np.ndarray]
    suppressor: dict[int, np.ndarray]


def replay_nms(pre: Detections, thresh: float, max_dets: int) -> NmsReplay:
    """:func:`nms_with_suppressors` on every image of ``pre``."""
    post, kept, sup = {}, {}, {}
    for image_id, (boxes, scores) in pre.items():
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        keep, suppressor = nms_with_suppressors(boxes, scores, thresh, max_dets)
        post[image_id] = (boxes[keep], scores[keep])
        kept[image_id], sup[image_id] = keep, suppressor
    return NmsReplay(post, kept, sup)


@dataclass
class PointAnalysis:
    """The errors at one operating point.

    Attributes:
        name: e.g. ``fppi=0.1``; score: s*; fppi, miss_rate: of the kept boxes at s*.
        misses: category -> count (:data:`MISSES`); false_positives: category -> count.
        flags: ``duplicate_below_nms``, ``localisation_crowd`` counts.
        oracle: fix -> {"mr", "ap"} with that error type fixed.
        examples: NMS-caused misses for ``--vis``: dicts with image id, category and
            the ``xywh`` boxes of the person, its suppressed box and the suppressor.
    """

    name: str
    score: float
    fppi: float
    miss_rate: float
    n_missed: int
    n_fp: int
    misses: dict[str, int]
    false_positives: dict[str, int]
    flags: dict[str, int]
    oracle: dict[str, dict[str, float | None]] = field(default_factory=dict)
    examples: list[dict] = field(default_factory=list)


@dataclass
class AnalysisReport:
    protocol: str
    setup: str
    nms_thresh: float
    max_dets: int
    mr: float | None
    ap: float | None
    n_gt: int
    n_images: int
    points: list[PointAnalysis]


class _Matcher:
    """The protocol's matching of a detection set: :class:`MatchDetails`."""

    def __init__(self, gt, protocol: str, setup: str | None, sizes: dict | None, resize_dets: bool):
        self.gt, self.protocol, self.sizes, self.resize_dets = gt, protocol, sizes, resize_dets
        self.setup = setup or ("All" if protocol == "crowdhuman" else "Reasonable")
        if protocol == "crowdhuman" and setup not in (None, "All"):
            raise PedcrowdError("--setup: the crowdhuman protocol has one setup, All")

    def __call__(self, dets: Detections) -> MatchDetails:
        if self.protocol == "crowdhuman":
            from pedcrowd.eval.crowdhuman_matching import match_details

            return match_details(self.gt, dets, self.sizes)
        from pedcrowd.eval.evaluate import match_details

        return match_details(self.gt, dets, self.setup, protocol=self.protocol, resize_dets=self.resize_dets)


def _passes(iou: np.ndarray, strict: bool) -> np.ndarray:
    return iou > THRESHOLD if strict else iou >= THRESHOLD


def _global_index(md: MatchDetails, lengths: dict[int, int]) -> tuple[np.ndarray, dict[int, int]]:
    """[sum K] md index of (image, position) laid out image by image, and each image's offset."""
    offsets, total = {}, 0
    for image_id in md.image_ids.tolist():
        offsets[image_id] = total
        total += lengths.get(image_id, 0)
    table = np.full(total, -1, dtype=np.int64)
    ids = md.image_ids[md.det_img]
    table[np.array([offsets[i] for i in ids.tolist()], dtype=np.int64) + md.det_src] = np.arange(len(ids))
    return table, offsets


def parse_point(spec: str) -> tuple[str, float]:
    """``fppi=X`` / ``score=X`` -> (kind, X); PedcrowdError for anything else, X NaN or
    infinite, or a negative FPPI."""
    kind, _, value = spec.partition("=")
    try:
        x = float(value)
    except ValueError:
        x = None
    if kind not in ("fppi", "score") or x is None:
        raise PedcrowdError(f"--at {spec!r}: expected fppi=NUMBER or score=NUMBER")
    if not math.isfinite(x) or (kind == "fppi" and x < 0):
        bounds = "a finite number >= 0" if kind == "fppi" else "a finite number"
        raise PedcrowdError(f"--at {spec!r}: {kind} must be {bounds}")
    return kind, x


def operating_score(md: MatchDetails, spec: str) -> tuple[str, float]:
    """``fppi=X`` (the score of the last kept detection with FPPI <= X) or ``score=X`` -> (name, s*)."""
    kind, x = parse_point(spec)
    if kind == "score":
        return spec, x
    fppi, _ = md.matches.curve()
    idx = np.searchsorted(fppi, x, side="right") - 1
    if idx < 0:
        return spec, float(np.inf)
    return spec, float(md.matches.scores[idx])


def analyze(
    gt,
    pre: Detections,
    *,
    protocol: str,
    nms_thresh: float,
    max_dets: int = 100,
    setup: str | None = None,
    points: tuple[str, ...] = ("fppi=0.1",),
    sizes: dict | None = None,
    resize_dets: bool = True,
) -> AnalysisReport:
    """Replay the NMS on ``pre`` and attribute every error at each operating point.

    Args:
        gt: a :class:`pedcrowd.eval.GroundTruth` or list of records (CrowdHuman: ``.odgt`` records).
        pre: image id -> (boxes [D_i, 4] xywh, scores [D_i]) before the final NMS.
        protocol: ``citypersons``, ``caltech`` or ``crowdhuman``.
        nms_thresh, max_dets: the final NMS to replay (model: ``box_nms_thresh``,
            ``box_detections_per_img``).
        setup: the evaluation setup (default Reasonable; CrowdHuman: All).
        points: operating points, ``fppi=X`` or ``score=X``.
        sizes: CrowdHuman only: record id -> (width, height).
    """
    match = _Matcher(gt, protocol, setup, sizes, resize_dets)
    replay = replay_nms(pre, nms_thresh, max_dets)
    md_post, md_pre = match(replay.post), match(pre)
    from pedcrowd.eval.mr import average_precision

    report = AnalysisReport(
        protocol, match.setup, nms_thresh, max_dets, md_post.matches.mr(), average_precision(md_post.matches),
        int((~md_post.gt_ignore).sum()), len(md_post.image_ids), [],
    )
    for spec in points:
        name, s_star = operating_score(md_post, spec)
        report.points.append(_analyze_point(name, s_star, pre, replay, md_pre, md_post, match, nms_thresh))
    return report


def _analyze_point(name, s_star, pre, replay, md_pre, md_post, match, nms_thresh) -> PointAnalysis:
    post_table, post_off = _global_index(md_post, {k: len(v[1]) for k, v in replay.post.items()})
    ids_post = md_post.image_ids[md_post.det_img]
    sel = md_post.valid & (md_post.det_scores >= s_star)
    tp = sel & md_post.tp
    fp = sel & ~md_post.tp & ~md_post.ignored
    n_gt_total = len(md_post.gt_ignore)
    taker = np.full(n_gt_total, -1, dtype=np.int64)  # GT -> the kept detection that took it
    taker[md_post.taken[tp]] = np.flatnonzero(tp)
    missed = np.flatnonzero(~md_post.gt_ignore & (taker < 0))
    pre_sel = md_pre.valid & md_pre.tp & (md_pre.det_scores >= s_star)
    pre_of_gt = np.full(n_gt_total, -1, dtype=np.int64)
    pre_of_gt[md_pre.taken[pre_sel]] = np.flatnonzero(pre_sel)
    ids_pre = md_pre.image_ids[md_pre.det_img]
    pre_xyxy, gt_xyxy = xywh_to_xyxy(md_pre.det_boxes), xywh_to_xyxy(md_post.gt_boxes)

    misses = dict.fromkeys(MISSES, 0)
    restore: dict[str, list[tuple[int, int]]] = {"nms_other_person": [], "nms_false_positive": []}
    add_low: list[tuple[int, np.ndarray]] = []
    add_gt: list[tuple[int, np.ndarray]] = []
    examples = []
    for g in missed.tolist():
        b = pre_of_gt[g]
        if b >= 0:
            image_id, src = int(ids_pre[b]), int(md_pre.det_src[b])
            sup = int(replay.suppressor[image_id][src])
            if sup >= 0:
                pos = np.flatnonzero(replay.kept[image_id] == sup)  # empty: the cap removed the suppressor
                s = post_table[post_off[image_id] + int(pos[0])] if len(pos) else -1
                cat = "nms_other_person" if s >= 0 and tp[s] and md_post.taken[s] != g else "nms_false_positive"
                misses[cat] += 1
                restore[cat].append((image_id, src))
                boxes = pre[image_id][0]
                examples.append({"image_id": image_id, "category": cat, "person": md_post.gt_boxes[g].tolist(),
                                 "suppressed": np.asarray(boxes[src]).tolist(), "suppressor": np.asarray(boxes[sup]).tolist(),
                                 "score": float(pre[image_id][1][src]), "suppressor_score": float(pre[image_id][1][sup])})
            else:
                misses["other"] += 1
            continue
        same = np.flatnonzero((md_pre.det_img == md_post.gt_img[g]) & md_pre.valid)
        ious = box_iou(pre_xyxy[same], gt_xyxy[g : g + 1])[:, 0]
        near = _passes(ious, md_pre.strict)
        low = near & (md_pre.det_scores[same] < s_star)
        image_id = int(md_post.image_ids[md_post.gt_img[g]])
        if low.any():
            misses["low_score"] += 1
            best = same[low][np.argmax(ious[low])]
            add_low.append((image_id, np.asarray(pre[image_id][0][md_pre.det_src[best]], dtype=np.float64)))
        elif near.any():
            misses["other"] += 1
        else:
            misses["never_proposed"] += 1
            add_gt.append((image_id, md_post.gt_boxes[g]))

    fps = dict.fromkeys(FALSE_POSITIVES, 0)
    flags = {"duplicate_below_nms": 0, "localisation_crowd": 0}
    drop: dict[str, list[tuple[int, int]]] = {k: [] for k in FALSE_POSITIVES}
    move: list[tuple[int, int, np.ndarray]] = []
    post_xyxy = xywh_to_xyxy(md_post.det_boxes)
    claimed = set()
    for f in np.flatnonzero(fp).tolist():
        image_id, src = int(ids_post[f]), int(md_post.det_src[f])
        people = np.flatnonzero((md_post.gt_img == md_post.det_img[f]) & ~md_post.gt_ignore)
        ious = box_iou(post_xyxy[f : f + 1], gt_xyxy[people])[0] if len(people) else np.zeros(0)
        best = float(ious.max()) if len(ious) else 0.0
        if len(ious) and _passes(np.array([best]), md_post.strict)[0]:
            fps["duplicate"] += 1
            drop["duplicate"].append((image_id, src))
            t = taker[people[np.argmax(ious)]]
            if t >= 0 and box_iou(post_xyxy[f : f + 1], post_xyxy[t : t + 1])[0, 0] <= nms_thresh:
                flags["duplicate_below_nms"] += 1
        elif best >= LOC_IOU:
            fps["localisation"] += 1
            flags["localisation_crowd"] += int((ious >= LOC_IOU).sum() >= 2)
            g = int(people[np.argmax(ious)])
            if taker[g] < 0 and g not in claimed:
                claimed.add(g)
                move.append((image_id, src, md_post.gt_boxes[g]))
            else:
                drop["localisation"].append((image_id, src))
        else:
            fps["background"] += 1
            drop["background"].append((image_id, src))

    def oracle(add=(), remove=(), replace=()) -> dict[str, float | None]:
        from pedcrowd.eval.mr import average_precision

        dets = {k: (v[0].copy(), v[1].copy()) for k, v in replay.post.items()}
        gone: dict[int, set[int]] = {}
        for image_id, src in remove:
            gone.setdefault(image_id, set()).add(src)
        for image_id, src, box in replace:
            dets[image_id][0][src] = box
        extra: dict[int, list[tuple[np.ndarray, float]]] = {}
        for image_id, box, score in add:
            extra.setdefault(image_id, []).append((np.asarray(box, dtype=np.float64), score))
        for image_id in set(gone) | set(extra):
            boxes, scores = dets.get(image_id, (np.zeros((0, 4)), np.zeros(0)))
            keep = np.array([i not in gone.get(image_id, ()) for i in range(len(scores))], dtype=bool)
            more = extra.get(image_id, [])
            boxes = np.concatenate([boxes[keep], np.array([b for b, _ in more]).reshape(-1, 4)])
            scores = np.concatenate([scores[keep], np.array([s for _, s in more])])
            dets[image_id] = (boxes, scores)
        m = match(dets).matches
        return {"mr": m.mr(), "ap": average_precision(m)}

    def restored(cat):
        return [(i, pre[i][0][s], float(pre[i][1][s])) for i, s in restore[cat]]

    point = PointAnalysis(
        name=name, score=s_star,
        fppi=float(fp.sum() / max(len(md_post.image_ids), 1)),
        miss_rate=float(len(missed) / max(int((~md_post.gt_ignore).sum()), 1)),
        n_missed=len(missed), n_fp=int(fp.sum()), misses=misses, false_positives=fps, flags=flags,
        examples=examples,
    )
    s_add = s_star if np.isfinite(s_star) else 1.0
    point.oracle = {
        "nms_other_person": oracle(add=restored("nms_other_person")),
        "nms_false_positive": oracle(add=restored("nms_false_positive")),
        "nms_all": oracle(add=restored("nms_other_person") + restored("nms_false_positive")),
        "low_score": oracle(add=[(i, b, s_add) for i, b in add_low]),
        "never_proposed": oracle(add=[(i, b, s_add) for i, b in add_gt]),
        "duplicate": oracle(remove=drop["duplicate"]),
        "localisation": oracle(remove=drop["localisation"], replace=move),
        "background": oracle(remove=drop["background"]),
    }
    return point


def report_to_json(report: AnalysisReport) -> dict:
    """The ``pedcrowd analyze --json`` document (rates as fractions)."""
    return {
        "protocol": report.protocol, "setup": report.setup, "nms_thresh": report.nms_thresh,
        "max_dets": report.max_dets, "mr": report.mr, "ap": report.ap, "n_gt": report.n_gt,
        "n_images": report.n_images,
        "points": [
            {"name": p.name, "score": p.score if np.isfinite(p.score) else None, "fppi": p.fppi,
             "miss_rate": p.miss_rate, "n_missed": p.n_missed, "n_fp": p.n_fp, "misses": p.misses,
             "false_positives": p.false_positives, "flags": p.flags, "oracle": p.oracle}
            for p in report.points
        ],
    }
