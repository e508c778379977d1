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

:func:`analyze` is the whole ``pedcrowd analyze``: it runs a model once with its
final NMS off (or reads a file of pre-NMS boxes), analyses, and writes the
``--out`` JSON and the ``--vis`` images; :func:`analyze_detections` is the
analysis of given boxes.

Shapes: D_i pre-NMS boxes of image i (``xywh``), K_i kept.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pedcrowd.box_np import box_iou, xywh_to_xyxy
from pedcrowd.compare import parse_run
from pedcrowd.data.config import build_dataset
from pedcrowd.engine.device import resolve_device
from pedcrowd.errors import PedcrowdError
from pedcrowd.eval.evaluate import GroundTruth
from pedcrowd.eval.matching import THRESHOLD, MatchDetails
from pedcrowd.eval.mr import average_precision
from pedcrowd.eval.protocols import default_protocol, get_protocol
from pedcrowd.fileio import dumps_strict, load_json, write_text_atomic
from pedcrowd.formats.detections import read_detections

MISSES = ("nms_other_person", "nms_false_positive", "low_score", "never_proposed", "other")
FALSE_POSITIVES = ("duplicate", "localisation", "background")
FIXES = ("nms_other_person", "nms_false_positive", "nms_all", "low_score", "never_proposed",
         "duplicate", "localisation", "background")
LOC_IOU = 0.1
KEPT, CUT = -1, -2  # suppressor codes: kept by NMS; suppressed by nobody but removed by the cap
DEFAULT_POINTS = ("fppi=0.1",)

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
    """The analysis (:func:`report_to_json` is its JSON) and, from :func:`analyze`, what it wrote.

    Attributes:
        out_file: where the JSON was written, or None; vis_dir, n_vis: where and how
            many ``--vis`` images were written.
    """

    protocol: str
    setup: str
    nms_thresh: float
    max_dets: int
    mr: float | None
    ap: float | None
    n_gt: int
    n_images: int
    points: list[PointAnalysis]
    out_file: Path | None = None
    vis_dir: Path | None = None
    n_vis: int = 0


# ----------------------------------------------------------------------------- the protocol's parts


def resolve_setup(protocol: str, setup: str | None) -> str:
    """``setup``, or the protocol's default (Reasonable; CrowdHuman: its one setup, All)."""
    p = get_protocol(protocol)
    p.check_setups([setup] if setup else None, "--setup")
    return setup or p.default_setup


def ap_name(protocol: str) -> str:
    """The analysis's AP is the protocol matching's (IoU 0.5, trapezoid over its
    precision/recall points), not the COCO AP 0.5:0.95 of eval and compare."""
    return get_protocol(protocol).ap_label


def load_truth(gt: str | Path, protocol: str, images: str | Path | None = None,
               image_root: str | Path | None = None):
    """(the GT, CrowdHuman image sizes or None, the image folder or None) of a GT file."""
    p = get_protocol(protocol)
    truth = p.load_ground_truth(Path(gt), images=images)
    if p.needs_image_sizes:
        truth = p.add_image_sizes(truth, images=images, image_root=image_root)
        return truth, truth.sizes, image_root or Path(gt).parent / "Images"
    return truth, None, image_root


class _Matcher:
    """The protocol's matching of a detection set: :class:`MatchDetails`."""

    def __init__(self, gt, protocol: str, setup: str | None, sizes: dict | None, resize_dets: bool):
        truth = gt if isinstance(gt, GroundTruth) else GroundTruth(list(gt))
        if sizes is not None:
            truth = dataclasses.replace(truth, sizes=sizes)
        self.gt, self.protocol, self.resize_dets = truth, get_protocol(protocol), resize_dets
        self.setup = resolve_setup(protocol, setup)

    def __call__(self, dets: Detections) -> MatchDetails:
        return self.protocol.match_details(self.gt, dets, self.setup, resize_dets=self.resize_dets)


# ----------------------------------------------------------------------------- the analysis


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


def analyze_detections(
    gt,
    pre: Detections,
    *,
    protocol: str,
    nms_thresh: float,
    max_dets: int = 100,
    setup: str | None = None,
    points: Sequence[str] = DEFAULT_POINTS,
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
    report = AnalysisReport(
        protocol, match.setup, nms_thresh, max_dets, md_post.matches.mr(), average_precision(md_post.matches),
        int((~md_post.gt_ignore).sum()), len(md_post.image_ids), [],
    )
    for spec in points:
        name, s_star = operating_score(md_post, spec)
        report.points.append(_analyze_point(name, s_star, pre, replay, md_pre, md_post, match, nms_thresh))
    return report


def _analyze_point(name, s_star, pre, replay, md_pre, md_post, match, nms_thresh) -> PointAnalysis:
    """Every miss and false positive at score threshold ``s_star``, attributed, and the
    MR^-2 / AP with each kind of error fixed (the oracles)."""
    sel = md_post.valid & (md_post.det_scores >= s_star)
    tp = sel & md_post.tp
    fp = sel & ~md_post.tp & ~md_post.ignored
    taker = np.full(len(md_post.gt_ignore), -1, dtype=np.int64)  # GT -> the kept detection that took it
    taker[md_post.taken[tp]] = np.flatnonzero(tp)
    missed = np.flatnonzero(~md_post.gt_ignore & (taker < 0))
    misses, fixes_of_misses, examples = _attribute_misses(missed, s_star, pre, replay, md_pre, md_post, tp)
    fps, flags, drop, move = _attribute_false_positives(fp, taker, md_post, nms_thresh)
    point = PointAnalysis(
        name=name, score=s_star,
        fppi=float(fp.sum() / max(len(md_post.image_ids), 1)),
        miss_rate=float(len(missed) / max(int((~md_post.gt_ignore).sum()), 1)),
        n_missed=len(missed), n_fp=int(fp.sum()), misses=misses, false_positives=fps, flags=flags,
        examples=examples,
    )

    def oracle(add=(), remove=(), replace=()) -> dict[str, float | None]:
        m = match(_edited(replay.post, add, remove, replace)).matches
        return {"mr": m.mr(), "ap": average_precision(m)}

    restore, add_low, add_gt = fixes_of_misses

    def restored(cat):
        return [(i, pre[i][0][s], float(pre[i][1][s])) for i, s in restore[cat]]

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


def _attribute_misses(missed, s_star, pre, replay, md_pre, md_post, tp):
    """Why each missed person was missed: (counts per kind, the fix of each kind (NMS-removed
    boxes to restore, low-score boxes and unproposed people to add), NMS examples)."""
    post_table, post_off = _global_index(md_post, {k: len(v[1]) for k, v in replay.post.items()})
    pre_sel = md_pre.valid & md_pre.tp & (md_pre.det_scores >= s_star)
    pre_of_gt = np.full(len(md_post.gt_ignore), -1, dtype=np.int64)
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
    return misses, (restore, add_low, add_gt), examples


def _attribute_false_positives(fp, taker, md_post, nms_thresh):
    """What each false positive is: (counts per kind, flags, the detections whose removal
    fixes each kind, the poorly localised ones to move onto their unclaimed person)."""
    ids_post = md_post.image_ids[md_post.det_img]
    post_xyxy, gt_xyxy = xywh_to_xyxy(md_post.det_boxes), xywh_to_xyxy(md_post.gt_boxes)
    fps = dict.fromkeys(FALSE_POSITIVES, 0)
    flags = {"duplicate_below_nms": 0, "localisation_crowd": 0}
    drop: dict[str, list[tuple[int, int]]] = {k: [] for k in FALSE_POSITIVES}
    move: list[tuple[int, int, np.ndarray]] = []
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
    return fps, flags, drop, move


def _edited(post: Detections, add=(), remove=(), replace=()) -> Detections:
    """A copy of the detections ``post`` with boxes added ``(image, box, score)``, removed
    ``(image, index)`` and moved ``(image, index, box)``."""
    dets = {k: (v[0].copy(), v[1].copy()) for k, v in post.items()}
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
    return dets


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


# ----------------------------------------------------------------------------- the whole command


def analyze(
    source: str | Path,
    *,
    gt: str | Path | None = None,
    protocol: str | None = None,
    setup: str | None = None,
    points: Sequence[str] = DEFAULT_POINTS,
    nms_thresh: float | None = None,
    max_dets: int | None = None,
    image_root: str | Path | None = None,
    images: str | Path | None = None,
    device: str = "auto",
    out_file: str | Path | None = None,
    vis_dir: str | Path | None = None,
    vis_max: int = 50,
    on_model_start: Callable[[int], None] | None = None,
) -> AnalysisReport:
    """``pedcrowd analyze``: the boxes before the final NMS, analysed (:func:`analyze_detections`).

    Args:
        source: a run directory or checkpoint (the model runs once over the val split,
            or the images of ``gt``, with its final NMS off), or a results JSON of boxes
            before the final NMS (needs ``gt``).
        gt: ground truth (as for ``pedcrowd eval``); default: the run's val split.
        protocol: ``citypersons``, ``caltech`` or ``crowdhuman``; default from the GT
            file or the run's data format (:func:`default_protocol`).
        setup: default: the protocol's (:func:`resolve_setup`).
        points: operating points, ``fppi=X`` or ``score=X``.
        nms_thresh, max_dets: the final NMS to replay; default: the model's
            ``box_nms_thresh`` and ``box_detections_per_img``, 0.5 and 100 for a file.
        image_root: the images of ``gt`` (to run a model on ``gt``, for ``vis_dir`` and
            CrowdHuman sizes); default: a run's own image folder.
        images: CrowdHuman: an image sizes file (as ``pedcrowd eval --images``).
        device: ``auto``, ``cpu`` or ``cuda``.
        out_file: write the JSON (:func:`report_to_json`) here.
        vis_dir: write up to ``vis_max`` images of NMS-caused misses at the first point here.
        on_model_start: called with the number of images before the model runs.

    Raises:
        PedcrowdError: an operating point, file or threshold it cannot use (before the
            model runs where it can tell).
    """
    points = tuple(points)
    for point in points:  # before the model runs
        parse_point(point)
    path = Path(source)
    if path.is_file() and _first_byte(path) == b"{":
        raise PedcrowdError(
            f"{path}: a JSON-lines file (a CrowdDet dump or .odgt), not pre-NMS detections; "
            "analyze reads a results JSON list made with the final NMS off, or a run directory / checkpoint"
        )
    if path.is_file() and (path.suffix.lower() == ".json" or _first_byte(path) == b"["):
        if gt is None:
            raise PedcrowdError(f"{path}: a pre-NMS detection file needs --gt")
        protocol = protocol or default_protocol(gt_path=gt)
        truth, sizes, root = load_truth(gt, protocol, images, image_root)
        pre = read_detections(path, _records(truth))
        nms, cap = (0.5 if nms_thresh is None else nms_thresh), (100 if max_dets is None else max_dets)
    else:
        pre, truth, sizes, root, protocol, nms, cap = _pre_nms_from_model(
            path, gt, protocol, images, image_root, device, on_model_start
        )
        nms = nms if nms_thresh is None else nms_thresh
        cap = cap if max_dets is None else max_dets
    if not 0.0 <= nms <= 1.0:
        raise PedcrowdError(f"--nms-thresh {nms}: must be in [0, 1]")
    if cap < 1:
        raise PedcrowdError(f"--max-dets {cap}: must be at least 1")
    report = analyze_detections(truth, pre, protocol=protocol, nms_thresh=nms, max_dets=cap, setup=setup,
                                points=points, sizes=sizes)
    if out_file is not None:
        report.out_file = write_text_atomic(out_file, dumps_strict(report_to_json(report), indent=1) + "\n")
    if vis_dir is not None:
        report.n_vis = _write_vis(report, truth, root, Path(vis_dir), vis_max)
        report.vis_dir = Path(vis_dir)
    return report


def _records(truth) -> list:
    """The image records of a GT (a :class:`pedcrowd.eval.GroundTruth` or a list of records)."""
    return truth if isinstance(truth, list) else truth.records


def _first_byte(path: Path) -> bytes:
    """The first non-blank byte of a file (``[`` a JSON list, ``{`` JSON lines; a checkpoint is a zip)."""
    with open(path, "rb") as f:
        return f.read(4096).lstrip()[:1]


def _pre_nms_from_model(path, gt, protocol, images, image_root, device, on_model_start):
    """Run the model once with its final NMS off: (the boxes, the GT, CrowdHuman sizes or None,
    the image folder, the protocol, the model's NMS threshold and detection cap)."""
    # torch comes in here only: analysing a file stays numpy
    from pedcrowd.data.datasets import DetectionDataset
    from pedcrowd.engine.predict import final_nms_off, load_detector, predict

    dev = resolve_device(device)
    model, cfg = load_detector(path, device=dev)
    protocol = protocol or default_protocol(format_name=cfg.data.format)
    if gt is None:
        dataset = build_dataset(cfg.data, "val", train=False)
        truth, root = list(dataset.records), getattr(dataset, "image_root", None)
        sizes = _image_sizes(dataset) if get_protocol(protocol).needs_image_sizes else None
    else:
        if image_root is None:
            raise PedcrowdError("--gt with a model needs --image-root (the images to run the model on)")
        truth, sizes, root = load_truth(gt, protocol, images, image_root)
        dataset = DetectionDataset(_records(truth), image_root)
    if cfg.postprocess.nms != "hard" or cfg.postprocess.var_voting:
        raise PedcrowdError(
            f"{path}: analyze replays a hard NMS; this run post-processes with {cfg.postprocess.describe()}"
        )
    with final_nms_off(model) as (nms, cap):  # Faster R-CNN: in roi_heads; FCOS: the model itself
        if on_model_start is not None:
            on_model_start(len(dataset))
        pre = predict(model, dataset, dev)
    return pre, truth, sizes, root, protocol, nms, cap


def _image_sizes(dataset) -> dict[int, tuple[int, int]]:
    from PIL import Image

    sizes = {}
    for i, rec in enumerate(dataset.records):
        with Image.open(dataset.image_path(i)) as im:
            sizes[rec.id] = im.size
    return sizes


PERSON, SUPPRESSED, SUPPRESSOR = (0, 200, 0), (0, 165, 255), (0, 0, 255)  # BGR


def _with_legend(image, point, font: float):
    """``image`` with a band below naming the operating point and the three box colours."""
    import cv2

    score = "" if point is None or not point.score < float("inf") else f", score >= {point.score:.3f}"
    lines = [
        (f"NMS-caused misses at {point.name if point else '?'}{score}", (255, 255, 255)),
        ("green: the missed person", PERSON),
        ("orange: its box, removed by NMS (label: its score < the suppressor's)", SUPPRESSED),
        ("red: the box that suppressed it", SUPPRESSOR),
    ]
    (_, th), base = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, font, 1)
    step = th + base + 4
    band = np.full((step * len(lines) + 4, image.shape[1], 3), 30, np.uint8)
    for k, (text, color) in enumerate(lines):
        cv2.putText(band, text, (4, 2 + th + k * step), cv2.FONT_HERSHEY_SIMPLEX, font,
                    tuple(min(255, c + 60) for c in color), 1, cv2.LINE_AA)
    return np.vstack([image, band])  # below: the image keeps its pixel coordinates


def _write_vis(report: AnalysisReport, truth, image_root, out_dir: Path, limit: int) -> int:
    """Draw the NMS-caused misses of the first operating point; the number of images written."""
    if image_root is None:
        raise PedcrowdError("--vis needs the images: pass --image-root")
    # cv2 comes in here only (pedcrowd.vis draws with it): the analysis itself stays numpy
    import cv2

    from pedcrowd.vis import place_label

    names = {r.id: r.file_name for r in _records(truth)}
    by_image: dict[int, list[dict]] = {}
    point = report.points[0] if report.points else None
    for p in report.points[:1]:
        for ex in p.examples:
            by_image.setdefault(ex["image_id"], []).append(ex)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = 0
    for image_id, examples in by_image.items():
        if written >= limit:
            break
        path = Path(image_root) / names[image_id]
        image = cv2.imread(str(path))
        if image is None:
            continue
        thick = max(1, round(max(image.shape[:2]) / 600))
        font = 0.45 * thick
        taken: list[tuple[int, int, int, int]] = []
        for ex in examples:
            for key, color in (("person", PERSON), ("suppressed", SUPPRESSED), ("suppressor", SUPPRESSOR)):
                x, y, w, h = ex[key]
                cv2.rectangle(image, (round(x), round(y)), (round(x + w), round(y + h)), color, thick + 1)
        for ex in examples:  # labels after the boxes, placed so that they do not cover each other
            text = f"{ex['score']:.2f} < {ex['suppressor_score']:.2f}"
            (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font, 1)
            x, y, w, h = ex["suppressed"]
            lx, ly = place_label(taken, (x, y, x + w, y + h), tw + 2, th + base + 1,
                                 image.shape[1], image.shape[0])
            cv2.rectangle(image, (lx, ly), (lx + tw + 2, ly + th + base + 1), SUPPRESSED, -1)
            cv2.putText(image, text, (lx + 1, ly + th), cv2.FONT_HERSHEY_SIMPLEX, font, (0, 0, 0), 1,
                        cv2.LINE_AA)
        image = _with_legend(image, point, font)
        target = out_dir / f"{Path(names[image_id]).stem}_nms.jpg"
        if not cv2.imwrite(str(target), image):
            raise PedcrowdError(f"{target}: cannot write the image")
        written += 1
    return written


# ----------------------------------------------------------------------------- --out files, side by side
SIDE_BY_SIDE_FIXES = ("nms_all", "duplicate", "low_score", "never_proposed")  # compare --analysis's rows


def read_analyses(runs: Sequence[str]) -> list[tuple[str, dict]]:
    """(name, document) of several ``pedcrowd analyze --out`` files (``name=path`` or ``path``),
    checked for what ``pedcrowd compare --analysis`` shows."""
    docs = []
    for text in runs:
        name, path = parse_run(text)
        doc = load_json(path)
        if not isinstance(doc, dict) or not isinstance(doc.get("points"), list):
            raise PedcrowdError(f"{path}: not a pedcrowd analyze --out file (no 'points')")
        _check_analysis(doc, path)
        docs.append((name, doc))
    return docs


def _check_analysis(doc: dict, path) -> None:
    """PedcrowdError naming the file and the entry when an ``analyze --out`` document lacks
    what the side-by-side table shows (an edited or truncated file)."""

    def number(value, where: str, optional: bool = False, integer: bool = False) -> None:
        ok = (value is None and optional) or (
            not isinstance(value, bool) and isinstance(value, int if integer else int | float)
            and (integer or math.isfinite(value)) and value >= 0
        )
        if not ok:
            kind = "a count" if integer else "a rate"
            raise PedcrowdError(f"{path}: {where} must be {kind}, got {str(value)[:60]}")

    number(doc.get("mr"), "'mr'", optional=True)
    for i, p in enumerate(doc["points"]):
        where = f"points[{i}]"
        if not isinstance(p, dict) or not isinstance(p.get("name"), str):
            raise PedcrowdError(f"{path}: {where} is not an operating point with a 'name'")
        score = p.get("score")
        if score is not None and (isinstance(score, bool) or not isinstance(score, int | float)):
            raise PedcrowdError(f"{path}: {where}.score must be a number or null")
        number(p.get("n_missed"), f"{where}.n_missed", integer=True)
        number(p.get("n_fp"), f"{where}.n_fp", integer=True)
        for section, keys in (("misses", MISSES), ("false_positives", FALSE_POSITIVES)):
            part = p.get(section)
            if not isinstance(part, dict):
                raise PedcrowdError(f"{path}: {where}.{section} must be an object")
            for key in keys:
                number(part.get(key), f"{where}.{section}.{key}", integer=True)
        oracle = p.get("oracle")
        for fix in SIDE_BY_SIDE_FIXES:
            entry = oracle.get(fix) if isinstance(oracle, dict) else None
            if not isinstance(entry, dict):
                raise PedcrowdError(f"{path}: {where}.oracle.{fix} must be an object")
            number(entry.get("mr"), f"{where}.oracle.{fix}.mr", optional=True)
