"""CrowdHuman evaluation as CrowdDet computes it: AP, MR^-2 and JI, pure numpy, vectorised.

The reference is CrowdDet's ``lib/evaluate`` (``APMRToolkits``, ``compute_JI.py``);
docs/evaluation.md section "CrowdHuman" lists the rules. In short:

* GT: the full-body ``fbox``; ``tag != person`` or a non-zero ``extra.ignore``
  is an ignore region; no height or visibility filter. Detections and GT are
  clipped to the image (x1 to [0, W-1], y1 to [0, H-1], x2 to [0, W], y2 to [0, H]).
* Overlaps on clipped ``xyxy`` boxes with ``+1e-6`` in the denominators:
  IoU ``inter / (a_d + a_g - inter + 1e-6)``, IoA ``inter / (a_d + 1e-6)``.
* Matching (AP, MR): per image, detections by score (stable); each takes the
  unmatched valid GT of highest IoU **> 0.5** (ties: the earlier GT), else is
  dropped if its IoA with an ignore region is > 0.5, else is a false positive.
* MR^-2: FPPI = FP / images; at each of the 9 references the miss rate at the
  first point with FPPI >= ref (the last point if none); no floor.
* AP: trapezoids between consecutive (recall, precision) points from the first
  detection on; no envelope, no anchor at recall 0.
* JI: for t in 0.0, 0.1, ..., 0.9 (``1e-1 * i``) the detections with score > t;
  per image a maximum-weight matching over IoU > 0.5 pairs (weight = IoU),
  k matches; n = detections less unmatched ones with IoA (own area) > 0.5 on
  an ignore region; m = valid GT less unmatched ones with IoA (over the GT's
  own area) > 0.5; ratio k / (m + n - k + 1e-6) averaged over images with
  m or n non-zero; JI = the largest of the 10 averages.

Where CrowdDet crashes or returns NaN, pedcrowd returns what the definitions
imply: an image with an empty ``gtboxes`` list (CrowdDet: unpacking error)
counts as an image whose detections are all false positives; an image with no
detection record (CrowdDet: ``None.shape``) has no detections (JI: its valid
GT all count in m); no non-ignored detection at all (CrowdDet: MR NaN) gives
MR 1 and AP 0; no valid GT (CrowdDet: division by zero) gives MR and AP None;
no image with m or n non-zero gives JI None. CrowdDet's JI reads the GT from
the detection dump (rounded to 0.1 px); pedcrowd reads it from the ``.odgt``.
Among maximum-weight matchings of equal weight (exact IoU ties) the one chosen
may differ from CrowdDet's blossom code.

Shapes: D detections, M GT boxes (both over all images, image-major), I images.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pedcrowd.errors import PedcrowdError
from pedcrowd.eval import crowdhuman_matching
from pedcrowd.eval.crowdhuman_matching import Detections, prepare, setup_matches
from pedcrowd.eval.evaluate import GroundTruth
from pedcrowd.eval.ji import JI_THRESHOLDS, jaccard_index
from pedcrowd.eval.matching import MatchDetails
from pedcrowd.eval.mr import SetupMatches, average_precision
from pedcrowd.fileio import existing_path, gc_paused
from pedcrowd.formats.coco import read_image_list
from pedcrowd.formats.crowdhuman import read_crowddet_detections, read_odgt
from pedcrowd.formats.detections import file_name_index, read_detections_json
from pedcrowd.formats.records import ImageRecord

METRICS = ("MR-2", "AP", "JI")


@dataclass
class CrowdHumanResult:
    """The three numbers (fractions) and what they came from.

    Attributes:
        mr, ap, ji: None where not computed or undefined (see the module docs).
        n_gt: valid (non-ignored) GT; n_images: images.
        recall_at_fppi: [9]; fppi, miss_rate: [T] the MR-FPPI curve.
        ji_per_threshold: [10] the mean ratio at each score threshold (None entries: undefined).
    """

    mr: float | None
    ap: float | None
    ji: float | None
    n_gt: int
    n_images: int
    recall_at_fppi: np.ndarray
    fppi: np.ndarray
    miss_rate: np.ndarray
    ji_per_threshold: list[float | None]


def evaluate_crowdhuman(
    records: list[ImageRecord],
    dets: Detections,
    sizes: dict[int, tuple[int, int]],
    metrics: tuple[str, ...] = METRICS,
) -> CrowdHumanResult:
    """AP, MR^-2 and JI of detections on CrowdHuman GT, as CrowdDet computes them.

    Args:
        records: GT images from :func:`pedcrowd.formats.crowdhuman.read_odgt`.
        dets: record id -> (boxes [D_i, 4] xywh, scores [D_i]); absent: no detections.
        sizes: record id -> (width, height) of every image.
        metrics: any of ``MR-2``, ``AP``, ``JI``; the others come back as None.
    """
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise PedcrowdError(f"--metric {unknown[0]!r}: expected one of {', '.join(METRICS)} or all")
    prep = prepare(records, dets, sizes)
    sm = setup_matches(prep)
    fppi, miss = sm.curve()
    if "JI" in metrics:
        ji, per_t = jaccard_index(prep)
    else:
        ji, per_t = None, [None] * len(JI_THRESHOLDS)
    return CrowdHumanResult(
        mr=sm.mr() if "MR-2" in metrics else None,
        ap=average_precision(sm) if "AP" in metrics else None,
        ji=ji,
        n_gt=int(sm.gt_per_image.sum()),
        n_images=prep.n_images,
        recall_at_fppi=sm.recall_at_fppi(),
        fppi=fppi,
        miss_rate=miss,
        ji_per_threshold=per_t,
    )


def result_to_json(result: CrowdHumanResult, metric: str) -> dict:
    """The ``pedcrowd eval --protocol crowdhuman --json`` document (same top level as the other protocols)."""
    return {
        "protocol": "crowdhuman",
        "metric": metric,
        "results": {
            "All": {
                "mr": result.mr,
                "ap": result.ap,
                "ji": result.ji,
                "n_gt": result.n_gt,
                "n_images": result.n_images,
                "recall_at_fppi": [float(x) for x in result.recall_at_fppi],
                "ji_per_threshold": result.ji_per_threshold,
            }
        },
        "ap": None,
    }


# The protocol's entries in the registry (pedcrowd.eval.protocols): the same
# arguments as pedcrowd.eval.evaluate's, ground truth as a GroundTruth with sizes.


def load_ground_truth(path: str | Path, images: str | Path | None = None) -> GroundTruth:
    """The ``.odgt`` as a :class:`GroundTruth` of kind ``crowdhuman``.

    ``images`` is accepted for the registry's common signature; the sizes it
    gives are read with the detections (:func:`detections_for`), after the
    sizes a CrowdDet dump carries.
    """
    path = existing_path(path)
    return GroundTruth(read_odgt(path), "crowdhuman", path)


def detections_for(
    gt: GroundTruth, dets_path: str | Path, *, images: str | Path | None = None, image_root: str | Path | None = None
) -> tuple[Detections, GroundTruth]:
    """A results JSON list or a CrowdDet dump, and ``gt`` with every image's size
    (:func:`add_image_sizes`, the dump's sizes after the ``.odgt``'s)."""
    dets, det_sizes = load_detections(dets_path, gt.records)
    return dets, add_image_sizes(gt, det_sizes, images=images, image_root=image_root)


def add_image_sizes(
    gt: GroundTruth,
    sizes: dict[int, tuple[int, int]] | None = None,
    *,
    images: str | Path | None = None,
    image_root: str | Path | None = None,
) -> GroundTruth:
    """``gt`` with every image's (width, height), from the first of: the ``.odgt``
    line, ``sizes`` (a CrowdDet dump's, a data set's), the ``images`` file, the
    image files (:func:`load_sizes`); PedcrowdError when an image has none."""
    return replace(gt, sizes=load_sizes(gt.records, gt.source, sizes or {}, images, image_root))


def _check_setup(setups: list[str] | None) -> None:
    if setups and list(setups) != ["All"]:
        raise PedcrowdError("--setups: the crowdhuman protocol has one setup, All")


def match_setups(
    gt: GroundTruth, dets: Detections, *, setups: list[str] | None = None, resize_dets: bool = True
) -> dict[str, SetupMatches]:
    """{"All": the matching outcome}; ``resize_dets`` is not used (CrowdDet never resizes)."""
    _check_setup(setups)
    return {"All": setup_matches(prepare(gt.records, dets, gt.sizes))}


def match_details(gt: GroundTruth, dets: Detections, setup: str = "All", *, resize_dets: bool = True) -> MatchDetails:
    """Every detection's outcome (``pedcrowd analyze``); ``resize_dets`` is not used."""
    if setup != "All":
        raise PedcrowdError("--setup: the crowdhuman protocol has one setup, All")
    return crowdhuman_matching.match_details(gt.records, dets, gt.sizes)


def crowddet_ap(gt: GroundTruth, dets: Detections, matches: dict[str, SetupMatches]) -> float | None:
    """CrowdDet's AP of the matching (``pedcrowd compare``'s AP column)."""
    return average_precision(matches["All"])


def crowddet_ji(gt: GroundTruth, dets: Detections) -> float | None:
    """CrowdDet's JI of a detection set (``pedcrowd compare``'s JI row)."""
    return jaccard_index(prepare(gt.records, dets, gt.sizes))[0]


def load_crowdhuman(
    gt_path: str | Path,
    dets_path: str | Path,
    images: str | Path | None = None,
    image_root: str | Path | None = None,
) -> tuple[list[ImageRecord], Detections, dict[int, tuple[int, int]]]:
    """Read the ``.odgt`` GT, the detections and every image's size.

    Detections: a results JSON list (``image_id`` = the record's 1-based line
    position in the ``.odgt``, or ``file_name`` = ``{ID}.jpg``), or CrowdDet's
    per-line ``dtboxes`` dump. Sizes, per image, from the first of: the
    ``.odgt`` line's ``width``/``height``, the CrowdDet record, the ``--images``
    file (matched by file name), the image file ``image_root/{ID}.jpg|.png``
    (default ``Images/`` beside the ``.odgt``).
    """
    gt_path = existing_path(gt_path)
    with gc_paused():  # the JSON-lines files too (see gc_paused)
        records = read_odgt(gt_path)
        dets, det_sizes = load_detections(dets_path, records)
    return records, dets, load_sizes(records, gt_path, det_sizes, images, image_root)


def load_detections(dets_path: str | Path, records: list[ImageRecord]) -> tuple[Detections, dict[int, tuple[int, int]]]:
    """A results JSON list or a CrowdDet dump (sniffed from the first character) -> (dets, sizes it gives)."""
    dets_path = existing_path(dets_path)
    with open(dets_path, "rb") as f:
        head = f.read(4096).lstrip()
    if head[:1] == b"{":
        return read_crowddet_detections(dets_path, records)

    return read_detections_json(dets_path, records), {}


def load_sizes(
    records: list[ImageRecord],
    gt_path: Path | None,
    det_sizes: dict[int, tuple[int, int]],
    images: str | Path | None = None,
    image_root: str | Path | None = None,
) -> dict[int, tuple[int, int]]:
    """Every record's (width, height): the ``.odgt`` line, ``det_sizes``, the
    ``images`` file, then the image files (see :func:`load_crowdhuman`; without
    ``gt_path`` or ``image_root``, no image files)."""
    sizes = {r.id: (r.width, r.height) for r in records if r.width and r.height}
    for rid, wh in det_sizes.items():
        sizes.setdefault(rid, wh)
    if images is not None and len(sizes) < len(records):
        index = file_name_index(records)
        for im in read_image_list(images):
            rec = index.find(im.file_name)
            if rec is not None and im.width and im.height:
                sizes.setdefault(rec.id, (im.width, im.height))
    if len(sizes) < len(records) and (image_root is not None or gt_path is not None):
        root = Path(image_root) if image_root is not None else Path(gt_path).parent / "Images"
        _sizes_from_files(records, sizes, root)
    missing = [r for r in records if r.id not in sizes]
    if missing:
        raise PedcrowdError(
            f"{gt_path or 'ground truth'}: no size for image {missing[0].file_name!r} ({len(missing)} of {len(records)} images): "
            "give CrowdDet records with height/width, --images FILE or --image-root DIR"
        )
    return sizes


def _sizes_from_files(records: list[ImageRecord], sizes: dict[int, tuple[int, int]], root: Path) -> None:
    if not root.is_dir():
        return
    from PIL import Image

    for rec in records:
        if rec.id in sizes:
            continue
        stem = rec.file_name.rsplit(".", 1)[0]
        for ext in (".jpg", ".png", ".jpeg"):
            path = root / f"{stem}{ext}"
            if path.is_file():
                try:
                    with Image.open(path) as im:
                        sizes[rec.id] = im.size
                except OSError as e:
                    raise PedcrowdError(f"{path}: cannot read the image size ({e})") from None
                break
