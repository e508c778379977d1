"""MR^-2 evaluation: ground-truth loading, per-setup matching, the report.

Protocols (docs/evaluation.md):

* ``citypersons``: the official ``eval_MR_multisetup.py``, quirks included. GT
  is ignored outside the setup's height/visibility range (bounds inclusive);
  per image the detections are score-sorted (stable), capped at 1000, then
  filtered to heights in [lo/1.25, hi*1.25); IoU for regular GT, IoA for
  ignored GT; 4-decimal FPPI references with the Python ``recall[-1]`` sentinel.
* ``caltech``: dbEval.m v3.2.1. From raw annotations a GT is regular iff its
  label is ``person``, not flagged ``ign``, lo <= h < hi, vlo <= vf <= vhi
  (vf = inf without an occlusion box) and it lies inside [5 5 635 475];
  regular GT, and with ``resize_dets`` every detection, are resized to aspect
  0.41 around the centre; no 1000 cap; ``[-inf; 0]`` ROC start, exact refs.
  Ground-truth caches ``gt-<Setup>.mat`` are already filtered and resized
  and are used as they are.

Images are the GT's records (CityPersons: sorted by id; Caltech: in the given
order); N_img counts all of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pedcrowd.errors import PedcrowdError
from pedcrowd.eval.matching import MatchDetails, greedy_match, overlap_pairs, source_positions
from pedcrowd.eval.mr import SetupMatches
from pedcrowd.eval.setups import CALTECH_SETUPS, CITYPERSONS_SETUPS, Setup, parse_setup
from pedcrowd.fileio import existing_path, regular_file
from pedcrowd.formats.caltech import read_caltech_gt_cache
from pedcrowd.formats.coco import read_image_list
from pedcrowd.formats.detections import read_detections
from pedcrowd.formats.records import PEDESTRIAN, ImageRecord
from pedcrowd.formats.registry import ground_truth_format

HANDLED = ("citypersons", "caltech")  # the protocols matched here (CrowdHuman: pedcrowd.eval.crowdhuman)
MAX_DETS = 1000  # CityPersons maxDets
EXPAND = 1.25  # detection height filter expansion (expFilter / exp.filter)
CALTECH_BOUNDS = (5.0, 5.0, 635.0, 475.0)
CALTECH_ASPECT = 0.41

Detections = dict[int, tuple[np.ndarray, np.ndarray]]


@dataclass
class GroundTruth:
    """Ground truth as loaded from a file.

    Attributes:
        records: the evaluation's images with their annotations.
        kind: the dataset format's name (``citypersons``, ``caltech``, ``crowdhuman``,
            ``coco``, ...), ``caltech-cache`` or ``records``.
        source: the file or folder it came from.
        caches: Caltech only: setup name -> records of ``gt-<Setup>.mat``
            (already filtered for that setup and resized).
        sizes: CrowdHuman only: record id -> (width, height), every box is
            clipped to its image (:func:`pedcrowd.eval.crowdhuman.add_image_sizes`).
    """

    records: list[ImageRecord]
    kind: str = "records"
    source: Path | None = None
    caches: dict[str, list[ImageRecord]] = field(default_factory=dict)
    sizes: dict[int, tuple[int, int]] = field(default_factory=dict)


@dataclass
class SetupResult:
    """MR^-2 of one setup.

    Attributes:
        mr: log-average miss rate (fraction); None when the setup has no non-ignored GT.
        n_gt: non-ignored GT; n_images: images evaluated.
        recall_at_fppi: [9] recall at the FPPI references.
        fppi, miss_rate: [T] the curve, one point per non-ignored detection.
    """

    name: str
    mr: float | None
    n_gt: int
    n_images: int
    recall_at_fppi: np.ndarray
    fppi: np.ndarray
    miss_rate: np.ndarray


@dataclass
class EvalReport:
    """Results of :func:`evaluate`: setup name -> :class:`SetupResult`, in evaluation order."""

    protocol: str
    results: dict[str, SetupResult]
    resize_dets: bool = True


def _check_protocol(protocol: str) -> None:
    if protocol not in HANDLED:
        raise PedcrowdError(f"--protocol {protocol!r}: expected one of {', '.join(HANDLED)}")


def load_ground_truth(path: str | Path, protocol: str = "citypersons", images: str | Path | None = None) -> GroundTruth:
    """Load ground truth in any dataset format (:mod:`pedcrowd.formats.registry`), or Caltech caches.

    Args:
        path: a folder of Caltech ``gt-<Setup>.mat`` caches or one such cache, or
            a file / folder of a registered format: ``.json`` (CityPersons
            evaluation JSON or COCO-style), ``.mat`` (CityPersons ``anno_*.mat``),
            a folder of / one bbGt ``.txt`` file (Caltech), ``.odgt`` (CrowdHuman).
        protocol: ``citypersons`` or ``caltech`` (only checked here).
        images: the ``{"images": [...]}`` list naming the frames of Caltech caches.
    """
    _check_protocol(protocol)
    path = existing_path(path, "file or folder")
    if not path.is_dir():
        regular_file(path, "ground-truth file")  # a FIFO would block the reader forever
    if path.is_dir():
        caches = sorted(path.glob("gt-*.mat"))
        if caches:
            return _load_caches(caches, images, path)
    elif path.suffix.lower() == ".mat":
        import scipy.io

        try:
            variables = {name for name, _, _ in scipy.io.whosmat(path)}
        except Exception as e:
            raise PedcrowdError(f"{path}: not a readable .mat file ({e})") from None
        if "gt" in variables:
            return _load_caches([path], images, path)
    fmt = ground_truth_format(path)
    records = fmt.read(path, **fmt.eval_options)
    if not records:
        raise PedcrowdError(f"{path}: the ground truth lists no images; nothing to evaluate")
    return GroundTruth(records, fmt.name, path)


def _load_caches(files: list[Path], images: str | Path | None, source: Path) -> GroundTruth:
    if images is None:
        raise PedcrowdError(f"{source}: Caltech ground-truth caches hold no frame names; pass --images FILE")
    image_list = read_image_list(images)
    caches = {f.stem[len("gt-"):]: read_caltech_gt_cache(f, image_list) for f in files}
    # Order the caches as dbEval.m lists its setups.
    order = list(CALTECH_SETUPS)
    caches = dict(sorted(caches.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))
    return GroundTruth(next(iter(caches.values())), "caltech-cache", source, caches)


def _as_ground_truth(gt: GroundTruth | list[ImageRecord]) -> GroundTruth:
    return gt if isinstance(gt, GroundTruth) else GroundTruth(list(gt))


def resolve_setups(gt: GroundTruth, protocol: str, setups) -> list[Setup]:
    """The setups to evaluate: names (official or ``NAME:HMIN-HMAX:VMIN-VMAX``) or
    :class:`Setup` objects; None = the protocol's table (Caltech caches: the setups
    that have a cache). Raises PedcrowdError for an unknown setup or a missing cache."""
    _check_protocol(protocol)
    known = CITYPERSONS_SETUPS if protocol == "citypersons" else CALTECH_SETUPS
    if setups is None:
        if gt.kind == "caltech-cache":
            unknown = [name for name in gt.caches if name not in known]
            if unknown:
                # The detection height filter needs the setup's range, which a cache does not store.
                raise PedcrowdError(
                    f"{gt.source}: cache gt-{unknown[0]}.mat is not a known setup; name its range with "
                    f"--setup '{unknown[0]}:HMIN-HMAX:VMIN-VMAX'"
                )
            return [known[name] for name in gt.caches]
        return list(known.values())
    out = [s if isinstance(s, Setup) else parse_setup(s, known) for s in setups]
    if gt.kind == "caltech-cache":
        missing = [s.name for s in out if s.name not in gt.caches]
        if missing:
            raise PedcrowdError(
                f"{gt.source}: no ground-truth cache gt-{missing[0]}.mat (have: {', '.join(gt.caches)})"
            )
    return out


def resize_to_aspect(boxes: np.ndarray, aspect: float = CALTECH_ASPECT) -> np.ndarray:
    """bbApply('resize', bb, 1, 0, aspect): keep height and centre, set w = aspect * h.

    Written as the toolbox writes it (``d = h*ar - w; x -= d/2; w += d``) so
    that results match to the last bit. Args: boxes [K, 4] xywh.
    """
    out = np.array(boxes, dtype=np.float64, copy=True).reshape(-1, 4)
    d = out[:, 3] * aspect - out[:, 2]
    out[:, 0] = out[:, 0] - d / 2
    out[:, 2] = out[:, 2] + d
    return out


class _Prepared:
    """Setup-independent arrays: detections sorted per image, GT concatenated, overlaps."""

    def __init__(self, records: list[ImageRecord], dets: Detections, protocol: str, resize_dets: bool):
        self.records = records
        n = len(records)
        self.n_images = n
        boxes, scores, img = [], [], []
        for i, rec in enumerate(records):
            entry = dets.get(rec.id)
            if entry is not None and len(entry[1]):
                boxes.append(np.asarray(entry[0], dtype=np.float64).reshape(-1, 4))
                scores.append(np.asarray(entry[1], dtype=np.float64))
                img.append(np.full(len(entry[1]), i))
        det_boxes = np.concatenate(boxes) if boxes else np.zeros((0, 4))
        det_scores = np.concatenate(scores) if scores else np.zeros(0)
        det_img = np.concatenate(img) if img else np.zeros(0, dtype=np.int64)
        # Per image: score descending, stable (ties keep file order).
        order = np.lexsort((-det_scores, det_img))
        self.det_order = order  # sorted position -> position in the concatenation (pedcrowd analyze)
        det_boxes, self.det_scores, self.det_img = det_boxes[order], det_scores[order], det_img[order]
        if protocol == "caltech" and resize_dets:
            det_boxes = resize_to_aspect(det_boxes)
        self.det_boxes = det_boxes
        self.det_h = det_boxes[:, 3]
        starts = np.searchsorted(self.det_img, np.arange(n))
        self.det_rank = np.arange(len(self.det_img)) - starts[self.det_img] if n else np.zeros(0, dtype=np.int64)
        # The official global order: stable sort on -score of the image-major list.
        self.global_order = np.argsort(-self.det_scores, kind="stable")
        self.gt_img = np.repeat(np.arange(n), [len(r) for r in records])
        self.gt_boxes = _concat(records, "boxes", (4,))
        self.gt_heights = _concat(records, "heights", ())
        self.gt_vis_ratios = _concat(records, "vis_ratios", ())
        self.gt_flag = _concat(records, "ignore", (), bool)
        # Annotation id 0 (possible in COCO-style files): see greedy_match.
        self.gt_id_zero = np.concatenate(
            [np.asarray(r.ann_ids) == 0 if len(r.ann_ids) == len(r) else np.zeros(len(r), bool) for r in records]
        ) if records else np.zeros(0, dtype=bool)
        self._pairs = {}

    def pairs(self, gt_boxes: np.ndarray, key: object):
        if key not in self._pairs:
            self._pairs[key] = overlap_pairs(self.det_boxes, self.det_img, gt_boxes, self.gt_img, self.n_images)
        return self._pairs[key]


def _concat(records: list[ImageRecord], attr: str, shape: tuple[int, ...], dtype=np.float64) -> np.ndarray:
    arrays = [np.asarray(getattr(r, attr), dtype=dtype).reshape((-1, *shape)) for r in records]
    return np.concatenate(arrays) if arrays else np.zeros((0, *shape), dtype=dtype)


def _citypersons_gt(prep: _Prepared, setup: Setup) -> np.ndarray:
    """[M] ignore flags: the record's flag, or height / visibility outside the (inclusive) range."""
    v = np.where(np.isnan(prep.gt_vis_ratios), 1.0, prep.gt_vis_ratios)  # unknown: fully visible
    return prep.gt_flag | ~setup.contains(prep.gt_heights, v)


def _caltech_gt(records: list[ImageRecord], setup: Setup) -> tuple[np.ndarray, np.ndarray]:
    """dbEval.m filterGtFun + squarify: ([M] ignore flags, [M, 4] boxes with regular ones resized)."""
    boxes = _concat(records, "boxes", (4,))
    vis = _concat(records, "vis_boxes", (4,))
    cats = np.concatenate([np.asarray(r.categories, dtype=object) for r in records]) if records else np.zeros(0, object)
    no_vis = np.isnan(vis).any(axis=1) | (vis == 0).all(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        vf = np.where(no_vis, np.inf, vis[:, 2] * vis[:, 3] / (boxes[:, 2] * boxes[:, 3]))
    h = boxes[:, 3]
    (h0, h1), (v0, v1) = setup.height, setup.visibility
    x0, y0, x1, y1 = CALTECH_BOUNDS
    regular = (
        (cats == PEDESTRIAN)
        & ~_concat(records, "ignore", (), bool)
        & (h >= h0) & (h < h1)
        & (vf >= v0) & (vf <= v1)
        & (boxes[:, 0] >= x0) & (boxes[:, 0] + boxes[:, 2] <= x1)
        & (boxes[:, 1] >= y0) & (boxes[:, 1] + boxes[:, 3] <= y1)
    )
    boxes[regular] = resize_to_aspect(boxes[regular])
    return ~regular, boxes


def _match_prepared(prep: _Prepared, gt: GroundTruth, setup: Setup, protocol: str) -> SetupMatches:
    valid, tp, ignored, _, gt_ignore, _ = _match_arrays(prep, gt, setup, protocol)
    return _as_setup_matches(prep, setup, protocol, valid, tp, ignored, gt_ignore)


def _as_setup_matches(prep: _Prepared, setup: Setup, protocol: str, valid, tp, ignored, gt_ignore) -> SetupMatches:
    keep = (valid & ~ignored)[prep.global_order]
    order = prep.global_order[keep]
    gt_per_image = np.bincount(prep.gt_img[~gt_ignore], minlength=prep.n_images)
    return SetupMatches(setup.name, protocol, prep.det_scores[order], tp[order], prep.det_img[order], gt_per_image)


def _match_arrays(prep: _Prepared, gt: GroundTruth, setup: Setup, protocol: str):
    """(valid [D], tp [D], ignored [D], taken [D], gt_ignore [M], gt_boxes [M, 4] xywh as matched)."""
    records = prep.records
    if gt.kind == "caltech-cache":
        cache = gt.caches[setup.name]
        gt_boxes = _concat(cache, "boxes", (4,))
        gt_ignore = _concat(cache, "ignore", (), bool)
        pairs = prep.pairs(gt_boxes, ("cache", setup.name))
    elif protocol == "caltech":
        gt_ignore, gt_boxes = _caltech_gt(records, setup)
        pairs = prep.pairs(gt_boxes, ("caltech", setup.height, setup.visibility))
    else:
        gt_ignore = _citypersons_gt(prep, setup)
        pairs = prep.pairs(prep.gt_boxes, "raw")
    h0, h1 = setup.height
    valid = (prep.det_h >= h0 / EXPAND) & (prep.det_h < h1 * EXPAND)
    if protocol == "citypersons":
        valid &= prep.det_rank < MAX_DETS  # the cap comes before the height filter
    id_zero = prep.gt_id_zero if protocol == "citypersons" and gt.kind != "caltech-cache" else None
    tp, ignored, taken = greedy_match(pairs, valid, gt_ignore, id_zero, return_gt=True)
    return valid, tp, ignored, taken, gt_ignore, gt_boxes if protocol == "caltech" or gt.kind == "caltech-cache" else prep.gt_boxes


def _prepare(gt: GroundTruth, dets: Detections, protocol: str, resize_dets: bool) -> _Prepared:
    records = gt.records
    if protocol == "citypersons":
        records = sorted(records, key=lambda r: r.id)
        if gt.kind == "caltech-cache":
            raise PedcrowdError(f"{gt.source}: Caltech ground-truth caches need --protocol caltech")
    return _Prepared(records, dets, protocol, resize_dets)


def match_setups(
    gt: GroundTruth | list[ImageRecord],
    dets: Detections,
    *,
    protocol: str = "citypersons",
    setups: list[Setup | str] | None = None,
    resize_dets: bool = True,
) -> dict[str, SetupMatches]:
    """Match every setup and keep the per-image outcome (arguments as :func:`evaluate`).

    Returns:
        setup name -> :class:`SetupMatches`, in evaluation order; its ``mr()`` is
        :func:`evaluate`'s MR^-2 and ``mr(image_counts)`` that of a bootstrap resample.
    """
    gt = _as_ground_truth(gt)
    chosen = resolve_setups(gt, protocol, setups)
    prep = _prepare(gt, dets, protocol, resize_dets)
    return {setup.name: _match_prepared(prep, gt, setup, protocol) for setup in chosen}


def match_details(
    gt: GroundTruth | list[ImageRecord],
    dets: Detections,
    setup: Setup | str,
    *,
    protocol: str = "citypersons",
    resize_dets: bool = True,
) -> MatchDetails:
    """Every detection's outcome for one setup (``pedcrowd analyze``); arguments as :func:`match_setup`."""
    gt = _as_ground_truth(gt)
    (setup,) = resolve_setups(gt, protocol, [setup])
    prep = _prepare(gt, dets, protocol, resize_dets)
    valid, tp, ignored, taken, gt_ignore, gt_boxes = _match_arrays(prep, gt, setup, protocol)
    return MatchDetails(
        image_ids=np.array([r.id for r in prep.records], dtype=np.int64),
        det_img=prep.det_img, det_src=source_positions(prep.det_img, prep.det_order),
        det_scores=prep.det_scores, det_boxes=prep.det_boxes, valid=valid, tp=tp, ignored=ignored,
        taken=taken, gt_img=prep.gt_img, gt_boxes=gt_boxes, gt_ignore=gt_ignore, strict=False,
        matches=_as_setup_matches(prep, setup, protocol, valid, tp, ignored, gt_ignore),
    )


def match_setup(
    gt: GroundTruth | list[ImageRecord],
    dets: Detections,
    setup: Setup | str,
    *,
    protocol: str = "citypersons",
    resize_dets: bool = True,
) -> SetupMatches:
    """:func:`match_setups` for one setup."""
    (matches,) = match_setups(gt, dets, protocol=protocol, setups=[setup], resize_dets=resize_dets).values()
    return matches


def evaluate(
    gt: GroundTruth | list[ImageRecord],
    dets: Detections,
    *,
    protocol: str = "citypersons",
    setups: list[Setup | str] | None = None,
    resize_dets: bool = True,
) -> EvalReport:
    """MR^-2 of detections against ground truth, for several setups.

    Args:
        gt: from :func:`load_ground_truth`, or a list of records.
        dets: image id -> (boxes [D, 4] xywh, scores [D]) as from
            :func:`pedcrowd.formats.detections.read_detections`; missing images
            have no detections.
        protocol: ``citypersons`` (official Python script) or ``caltech`` (dbEval.m).
        setups: names or :class:`Setup` objects; None = the protocol's table
            (for Caltech caches: the setups that have a cache).
        resize_dets: Caltech only: resize detections to aspect 0.41 (toolbox
            v3.2.1); False reproduces the Pedestron/CSP copies.
    """
    matches = match_setups(gt, dets, protocol=protocol, setups=setups, resize_dets=resize_dets)
    results = {}
    for name, m in matches.items():
        fppi, miss = m.curve()
        results[name] = SetupResult(
            name=name,
            mr=m.mr(),
            n_gt=int(m.gt_per_image.sum()),
            n_images=m.n_images,
            recall_at_fppi=m.recall_at_fppi(),
            fppi=fppi,
            miss_rate=miss,
        )
    return EvalReport(protocol, results, resize_dets)


def detections_for(
    gt: GroundTruth, dets_path: str | Path, *, images: str | Path | None = None, image_root: str | Path | None = None
) -> tuple[Detections, GroundTruth]:
    """The detections of ``gt``'s images (:func:`pedcrowd.formats.detections.read_detections`)
    and ``gt`` itself; ``images`` and ``image_root`` are CrowdHuman's (the registry's
    common signature)."""
    return read_detections(dets_path, gt.records), gt


def report_to_json(report: EvalReport, metric: str = "MR-2", ap: dict | None = None) -> dict:
    """The ``pedcrowd eval --json`` document (MR as a fraction, null where no GT)."""
    doc: dict = {
        "protocol": report.protocol,
        "metric": metric,
        "results": {
            name: {
                "mr": r.mr,
                "n_gt": r.n_gt,
                "n_images": r.n_images,
                "recall_at_fppi": [float(x) for x in r.recall_at_fppi],
            }
            for name, r in report.results.items()
        },
    }
    doc["ap"] = ap
    return doc
