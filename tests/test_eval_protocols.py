"""The protocol registry (pedcrowd.eval.protocols): choices, defaults, and that it agrees
with what the matching builds."""

from __future__ import annotations

import numpy as np
import pytest

from pedcrowd.errors import PedcrowdError
from pedcrowd.eval.mr import FPPI_REFS_CALTECH, FPPI_REFS_CITYPERSONS, SetupMatches
from pedcrowd.eval.protocols import PROTOCOLS, default_protocol, get_protocol
from pedcrowd.eval.setups import CALTECH_SETUPS, CITYPERSONS_SETUPS


def test_the_three_protocols_and_their_defaults():
    assert list(PROTOCOLS) == ["citypersons", "caltech", "crowdhuman"]
    cp, ct, ch = (get_protocol(n) for n in PROTOCOLS)
    assert cp.setups is CITYPERSONS_SETUPS and ct.setups is CALTECH_SETUPS and list(ch.setups) == ["All"]
    assert (cp.default_setup, ct.default_setup, ch.default_setup) == ("Reasonable", "Reasonable", "All")
    assert [p.reports_ji for p in (cp, ct, ch)] == [False, False, True]
    assert [p.needs_image_sizes for p in (cp, ct, ch)] == [False, False, True]
    assert cp.ap_label == ct.ap_label == "AP50 (trapezoid, not COCO AP)" and ch.ap_label == "CrowdDet AP"
    for p in PROTOCOLS.values():
        assert p.default_setup in p.setups


def test_default_protocol_from_path_or_format():
    assert default_protocol("val/annotation_val.odgt") == "crowdhuman"
    assert default_protocol("A.ODGT") == "crowdhuman"
    assert default_protocol("val_gt.json") == "citypersons"
    assert default_protocol("caltech/gt") == "citypersons"  # a path alone never means Caltech
    assert default_protocol(format_name="caltech") == "caltech"
    assert default_protocol(format_name="crowdhuman") == "crowdhuman"
    assert default_protocol(format_name="mot") == default_protocol() == "citypersons"


def test_unknown_protocol_lists_the_choices():
    with pytest.raises(PedcrowdError, match=r"--protocol 'voc': expected one of citypersons, caltech, crowdhuman"):
        get_protocol("voc")


def test_one_setup_protocol_refuses_others():
    get_protocol("crowdhuman").check_setups(["All"])
    get_protocol("crowdhuman").check_setups(None)
    with pytest.raises(PedcrowdError, match="--setups: the crowdhuman protocol has one setup, All"):
        get_protocol("crowdhuman").check_setups(["Reasonable"])
    get_protocol("citypersons").check_setups(["Tall:100-inf:0.5-1"])  # custom setups are matched later


def test_registry_reading_is_the_matchings():
    """The FPPI references and sentinel the registry shows are those SetupMatches uses."""
    for name, p in PROTOCOLS.items():
        m = SetupMatches("All", name, np.zeros(0), np.zeros(0, bool), np.zeros(0, np.int64), np.ones(3, np.int64))
        assert m.refs is p.fppi_refs and m.sentinel_final == p.sentinel_final
    assert get_protocol("citypersons").fppi_refs is FPPI_REFS_CITYPERSONS
    assert get_protocol("caltech").fppi_refs is FPPI_REFS_CALTECH
    # CrowdDet's "first point with FPPI >= ref": the CityPersons references one ulp down.
    np.testing.assert_array_equal(get_protocol("crowdhuman").fppi_refs, np.nextafter(FPPI_REFS_CITYPERSONS, -np.inf))
