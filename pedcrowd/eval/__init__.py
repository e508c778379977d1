"""MR^-2 (CityPersons / Caltech protocols) and COCO AP evaluation, pure numpy.

The protocols (CityPersons, Caltech, CrowdHuman) are one registry,
:mod:`pedcrowd.eval.protocols` (:func:`get_protocol`, :func:`default_protocol`).
"""

from pedcrowd.eval.ap import coco_ap  # pycocotools loads only when AP is asked for
from pedcrowd.eval.evaluate import (
    EvalReport,
    GroundTruth,
    SetupResult,
    evaluate,
    load_ground_truth,
    match_setup,
    match_setups,
    report_to_json,
)
from pedcrowd.eval.mr import SetupMatches
from pedcrowd.eval.protocols import PROTOCOLS, Protocol, default_protocol, get_protocol

__all__ = [
    "PROTOCOLS",
    "EvalReport",
    "GroundTruth",
    "Protocol",
    "SetupMatches",
    "SetupResult",
    "coco_ap",
    "default_protocol",
    "evaluate",
    "get_protocol",
    "load_ground_truth",
    "match_setup",
    "match_setups",
    "report_to_json",
]
