"""The evaluation protocols in one registry: CityPersons, Caltech, CrowdHuman.

A :class:`Protocol` is what ``pedcrowd eval``, ``compare`` and ``analyze`` need
to know of a protocol: its setups, how its ground truth and detections are read
and matched (the functions of :mod:`pedcrowd.eval.evaluate` and
:mod:`pedcrowd.eval.crowdhuman`, with the same arguments), which AP it reports,
whether it reports the Jaccard index, and which protocol a ground truth gets by
default. Code that depends on the protocol asks the registry
(``get_protocol(name).reports_ji``) instead of comparing names.

How MR^-2 is read off the curve (FPPI references, the CityPersons sentinel) is
:mod:`pedcrowd.eval.mr`'s, which sits below the matching that builds
:class:`~pedcrowd.eval.mr.SetupMatches`; :attr:`Protocol.fppi_refs` and
:attr:`Protocol.sentinel_final` show it.

Adding a protocol: its matching functions and one entry in :data:`PROTOCOLS`
(and its MR reading in :mod:`pedcrowd.eval.mr`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from pedcrowd.errors import PedcrowdError
from pedcrowd.eval import crowdhuman
from pedcrowd.eval.ap import coco_ap_value
from pedcrowd.eval.evaluate import (
    GroundTruth,
    detections_for,
    load_ground_truth,
    match_details,
    match_setups,
)
from pedcrowd.eval.matching import MatchDetails
from pedcrowd.eval.mr import FPPI_REFS, SENTINEL_FINAL, SetupMatches
from pedcrowd.eval.setups import CALTECH_SETUPS, CITYPERSONS_SETUPS, INF, Setup

Detections = dict[int, tuple[np.ndarray, np.ndarray]]

# CrowdHuman (CrowdDet) filters nothing by height or visibility: one setup, every box.
CROWDHUMAN_SETUPS: dict[str, Setup] = {"All": Setup("All", (-INF, INF), (-INF, INF))}


@dataclass(frozen=True, eq=False)
class Protocol:
    """One evaluation protocol.

    Attributes:
        name: the ``--protocol`` value.
        reference: the official code it reproduces (for help texts).
        setups: the official setups, in evaluation order.
        default_setup: the setup of a one-setup view (``pedcrowd analyze``).
        custom_setups: takes ``NAME:HMIN-HMAX:VMIN-VMAX`` setups besides its own.
        reports_ji: reports CrowdDet's Jaccard index beside MR^-2 and AP.
        ap_label: what the AP of its matching is (trapezoid over its own
            precision/recall points, IoU 0.5), as ``pedcrowd analyze`` reports it.
        load_ground_truth: ``(path, images=None) -> GroundTruth``.
        detections_for: ``(gt, path, *, images=None, image_root=None) -> (dets, gt)``:
            the detections of ``gt``'s images and ``gt`` with what they add (CrowdHuman: image sizes).
        match_setups: ``(gt, dets, *, setups=None, resize_dets=True) -> {setup: SetupMatches}``.
        match_details: ``(gt, dets, setup, *, resize_dets=True) -> MatchDetails``.
        headline_ap: ``(gt, dets, matches) -> float | None``, the AP ``pedcrowd compare``
            shows (COCO AP 0.5:0.95; CrowdHuman: CrowdDet's AP).
        jaccard_index: ``(gt, dets) -> float | None``, None where not reported.
        add_image_sizes: ``(gt, sizes=None, *, images=None, image_root=None) -> GroundTruth``
            for a protocol that clips boxes to the image (CrowdHuman), else None.
    """

    name: str
    reference: str
    setups: Mapping[str, Setup]
    default_setup: str
    custom_setups: bool
    reports_ji: bool
    ap_label: str
    load_ground_truth: Callable[..., GroundTruth]
    detections_for: Callable[..., tuple[Detections, GroundTruth]]
    match_setups: Callable[..., dict[str, SetupMatches]]
    match_details: Callable[..., MatchDetails]
    headline_ap: Callable[[GroundTruth, Detections, dict[str, SetupMatches]], float | None]
    jaccard_index: Callable[[GroundTruth, Detections], float | None] | None = None
    add_image_sizes: Callable[..., GroundTruth] | None = None

    @property
    def needs_image_sizes(self) -> bool:
        """Its matching clips the boxes to the image: the ground truth needs every image's size."""
        return self.add_image_sizes is not None

    @property
    def fppi_refs(self) -> np.ndarray:
        """[9] the FPPI references as limits of "the last point with FPPI <= ref" (:mod:`pedcrowd.eval.mr`)."""
        return FPPI_REFS[self.name]

    @property
    def sentinel_final(self) -> bool:
        """A reference before the first point reads the final recall (CityPersons' quirk 1)."""
        return self.name in SENTINEL_FINAL

    def check_setups(self, names: Sequence[str] | None, option: str = "--setups") -> None:
        """PedcrowdError when ``names`` asks a protocol without custom setups for another setup."""
        if names and not self.custom_setups and any(n not in self.setups for n in names):
            raise PedcrowdError(
                f"{option}: the {self.name} protocol has one setup, {self.default_setup}"
                if len(self.setups) == 1
                else f"{option}: the {self.name} protocol's setups are {', '.join(self.setups)}"
            )


def _mr_protocol(name: str, reference: str, setups: Mapping[str, Setup]) -> Protocol:
    """CityPersons and Caltech: :mod:`pedcrowd.eval.evaluate` with ``protocol=name``."""
    return Protocol(
        name=name,
        reference=reference,
        setups=setups,
        default_setup="Reasonable",
        custom_setups=True,
        reports_ji=False,
        ap_label="AP50 (trapezoid, not COCO AP)",
        load_ground_truth=partial(load_ground_truth, protocol=name),
        detections_for=detections_for,
        match_setups=partial(match_setups, protocol=name),
        match_details=partial(match_details, protocol=name),
        headline_ap=coco_ap_value,
    )


PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        _mr_protocol("citypersons", "official eval_MR_multisetup.py", CITYPERSONS_SETUPS),
        _mr_protocol("caltech", "dbEval.m v3.2.1", CALTECH_SETUPS),
        Protocol(
            name="crowdhuman",
            reference="CrowdDet's lib/evaluate: AP, MR^-2, JI",
            setups=CROWDHUMAN_SETUPS,
            default_setup="All",
            custom_setups=False,
            reports_ji=True,
            ap_label="CrowdDet AP",
            load_ground_truth=crowdhuman.load_ground_truth,
            detections_for=crowdhuman.detections_for,
            match_setups=crowdhuman.match_setups,
            match_details=crowdhuman.match_details,
            headline_ap=crowdhuman.crowddet_ap,
            jaccard_index=crowdhuman.crowddet_ji,
            add_image_sizes=crowdhuman.add_image_sizes,
        ),
    )
}


def get_protocol(name: str) -> Protocol:
    """The registered protocol ``name``; PedcrowdError listing the choices otherwise."""
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise PedcrowdError(f"--protocol {name!r}: expected one of {', '.join(PROTOCOLS)}") from None


def default_protocol(gt_path: str | Path | None = None, format_name: str | None = None) -> str:
    """The protocol a ground truth is evaluated with when none is asked for.

    A ``.odgt`` file: ``crowdhuman``; a dataset format with a protocol of its own
    (``caltech``, ``crowdhuman``): that one; anything else (a Caltech folder
    given by path included): ``citypersons``.

    Args:
        gt_path: the ground-truth file or folder, if known.
        format_name: the dataset format's name (``data.format`` of a run), if known.
    """
    if gt_path is not None and Path(gt_path).suffix.lower() == ".odgt":
        return "crowdhuman"
    return format_name if format_name in PROTOCOLS else "citypersons"
