"""Property tests of the config loader (issue 23): every field of every section.

For each leaf field of the config tree, hypothesis draws a value that its type or
declared range forbids (below / above a bound, NaN, +-inf, a wrong type, an unknown
name); given in a YAML file or with ``--set``, it must be a :class:`PedcrowdError`
naming the file and the key: never a traceback, never a config that loads (a
silent run). The relations between fields have their own cases.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import typing

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from pedcrowd.cli import app
from pedcrowd.config_check import RANGE_SPEC, check_config
from pedcrowd.engine.config import Config, load_config
from pedcrowd.errors import PedcrowdError

# Fields without a declared range and why (none: loss.focal.alpha declares "[0, 1] or -1").
NO_RANGE: set[str] = set()
# Free strings, checked where they are used (a path, a file name, a backbone name that
# build_model refuses before training starts): only a wrong type is invalid here.
FREE_STRINGS = {
    "model.backbone", "model.weights", "data.root", "data.train_split", "data.val_split",
    "data.train_annotations", "data.val_annotations", "data.train_images", "data.val_images",
    "data.coco_category", "train.out_dir",
}


@dataclasses.dataclass(frozen=True)
class Leaf:
    key: str  # dotted
    tp: typing.Any  # the annotation, Optional removed
    optional: bool
    range: str | None


def _leaves(cls: type, prefix: str = "") -> list[Leaf]:
    hints = typing.get_type_hints(cls)
    out: list[Leaf] = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = typing.get_origin(tp) in (typing.Union, __import__("types").UnionType) and len(args) == 1
        inner = args[0] if optional else tp
        if dataclasses.is_dataclass(inner):
            out.extend(_leaves(inner, f"{prefix}{f.name}."))
        else:
            out.append(Leaf(f"{prefix}{f.name}", inner, optional, f.metadata.get("range")))
    return out


LEAVES = _leaves(Config)


def _numeric(tp) -> type | None:
    """int / float of a number field or of the items of a list/tuple field."""
    if tp in (int, float):
        return tp
    items = [a for a in typing.get_args(tp) if a is not Ellipsis]
    if typing.get_origin(tp) in (list, tuple) and items and items[0] in (int, float):
        return items[0]
    return None


def test_every_number_of_the_config_declares_a_range():
    missing = [leaf.key for leaf in LEAVES if _numeric(leaf.tp) and leaf.range is None]
    assert sorted(missing) == sorted(NO_RANGE)
    assert len([leaf for leaf in LEAVES if _numeric(leaf.tp)]) > 90  # the walk sees every section


def test_every_default_is_inside_its_range_and_relations():
    check_config(Config())  # raises otherwise


# ----------------------------------------------------------------------------- invalid values


def _outside(spec: str, kind: type) -> st.SearchStrategy:
    """Numbers of ``kind`` outside the range ``spec`` (NaN and infinities included for floats);
    a spec with alternatives (``"[0, 1] or -1"``) never gives the values it allows."""
    spec, *alternatives = spec.split(" or ")
    allowed = {float(a) for a in alternatives}
    return _outside_one(spec, kind).filter(lambda v: v not in allowed)


def _outside_one(spec: str, kind: type) -> st.SearchStrategy:
    m = RANGE_SPEC.match(spec)
    assert m is not None
    if m["op"]:
        bound = float(m["bound"])
        lo, lo_closed, hi, hi_closed = (
            (bound, m["op"] == ">=", math.inf, False) if m["op"][0] == ">" else (-math.inf, False, bound, m["op"] == "<=")
        )
    else:
        lo, hi = float(m["lo"]), float(m["hi"])
        lo_closed, hi_closed = m["lo_b"] == "[", m["hi_b"] == "]"
    parts = []
    if kind is int:
        if math.isfinite(lo):
            parts.append(st.integers(max_value=int(math.ceil(lo)) - 1 if lo_closed else int(math.floor(lo))))
        if math.isfinite(hi):
            parts.append(st.integers(min_value=int(math.floor(hi)) + 1 if hi_closed else int(math.ceil(hi))))
        parts.append(st.sampled_from([float("nan"), float("inf"), 1.5]))  # not integers
    else:
        if math.isfinite(lo):
            parts.append(st.floats(max_value=lo, exclude_max=lo_closed, allow_nan=False, allow_infinity=False))
        if math.isfinite(hi):
            parts.append(st.floats(min_value=hi, exclude_min=hi_closed, allow_nan=False, allow_infinity=False))
        parts.append(st.sampled_from([float("nan"), float("inf"), float("-inf")]))
    return st.one_of(parts)


WRONG_TYPES = st.sampled_from(["not-a-number", True, [1, "x"], {"a": 1}])


def _invalid_value(leaf: Leaf) -> st.SearchStrategy:
    tp, origin = leaf.tp, typing.get_origin(leaf.tp)
    kind = _numeric(tp)
    if tp in (int, float):
        return st.one_of(_outside(leaf.range, kind), WRONG_TYPES) if leaf.range else WRONG_TYPES
    if origin in (list, tuple) and kind is not None:
        n = len(typing.get_args(tp)) if origin is tuple and typing.get_args(tp)[-1] is not Ellipsis else None
        bad_item = _outside(leaf.range, kind) if leaf.range else WRONG_TYPES

        def list_with(bad, at):
            good = [1] * (n or 3)
            good[min(at, len(good) - 1)] = bad
            return good

        wrong_length = st.just([1, 2, 3]) if n else st.nothing()
        return st.one_of(
            st.builds(list_with, bad_item, st.integers(0, 2)), wrong_length,
            st.sampled_from(["abc", 3.0, {"a": 1}]),
        )
    if origin is typing.Literal:
        choices = set(typing.get_args(tp))
        return st.one_of(
            st.text(min_size=1, max_size=12).filter(lambda t: t not in choices and t.strip() == t),
            st.sampled_from([1, True, [1]]),
        )
    if tp is bool:
        return st.sampled_from([1, 0, "maybe", [True], 2.5])
    if tp is str:
        if leaf.key in FREE_STRINGS:
            return st.sampled_from([1, 2.5, True, ["a"], {"a": 1}])
        return st.one_of(  # a closed set of names (loss terms, data.format)
            st.sampled_from([1, True, ["a"]]),
            st.text(alphabet="abcxyz_", min_size=1, max_size=10).filter(
                lambda t: t not in {"ce", "bce", "focal", "ghm", "qfl", "smooth_l1", "kl",
                                    "random", "ohem", "pisa", "citypersons", "caltech", "coco",
                                    "crowdhuman"}
            ),
        )
    if origin is list:  # list[str]: gt_filter.promote
        return st.one_of(st.just(["no_such_category"]), st.sampled_from(["rider", 3, {"a": 1}]))
    raise AssertionError(f"no invalid values for {leaf.key}: {tp}")


def _nested(key: str, value) -> dict:
    out = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def _yaml_scalar(value) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return ".nan" if math.isnan(value) else (".inf" if value > 0 else "-.inf")
    return json.dumps(value).replace("NaN", ".nan").replace("-Infinity", "-.inf").replace("Infinity", ".inf")


def _assert_config_error(excinfo, key: str, source: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message and len(message) < 400, message
    assert message.startswith(source), message
    last = key.split(".")[-1]
    assert last in message, message  # the key is named


CASES = st.sampled_from(LEAVES).flatmap(lambda leaf: st.tuples(st.just(leaf), _invalid_value(leaf)))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=CASES)
def test_an_invalid_value_in_a_file_is_a_config_error(tmp_path, case):
    leaf, value = case
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_nested(leaf.key, value)))
    with pytest.raises(PedcrowdError) as excinfo:
        load_config(path)
    _assert_config_error(excinfo, leaf.key, str(path))


@settings(max_examples=400, deadline=None)
@given(case=CASES)
def test_an_invalid_value_given_with_set_is_a_config_error(case):
    leaf, value = case
    with pytest.raises(PedcrowdError) as excinfo:
        load_config(None, [f"{leaf.key}={_yaml_scalar(value)}"])
    _assert_config_error(excinfo, leaf.key, "--set")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=CASES)
def test_train_with_an_invalid_value_exits_2_before_anything_runs(tmp_path, case):
    leaf, value = case
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--set", f"{leaf.key}={_yaml_scalar(value)}", "--out", str(run)])
    assert result.exit_code == 2, (leaf.key, value, result.output[-500:])
    err = result.stderr.strip()
    assert "\n" not in err and err.startswith("pedcrowd: error: --set") and "Traceback" not in result.output
    assert not run.exists()  # never a silent run


def test_the_cli_reports_a_range_error_as_one_line(tmp_path):
    result = CliRunner().invoke(app, ["train", "--set", "loss.ghm.mu=-1", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert result.stderr.strip() == "pedcrowd: error: --set loss.ghm.mu=-1: 'loss.ghm.mu' must be > 0, got -1.0"
    assert not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------- the cases


@pytest.mark.parametrize(("override", "message"), [
    ("optim.lr=.inf", "'optim.lr' must be > 0, got inf"),
    ("loss.focal.gamma=-1", "'loss.focal.gamma' must be >= 0, got -1.0"),
    ("loss.ghm.mu=-0.1", "'loss.ghm.mu' must be > 0, got -0.1"),
    ("loss.ghm.momentum=2", "'loss.ghm.momentum' must be in [0, 1), got 2.0"),
    ("loss.ghm.bins=0", "'loss.ghm.bins' must be >= 1, got 0"),
    ("loss.ohem.num=0", "'loss.ohem.num' must be >= 1, got 0"),
    ("loss.ohem.nms_thresh=.nan", "'loss.ohem.nms_thresh' must be > 0, got nan"),
    ("loss.pisa.k=.nan", "'loss.pisa.k' must be >= 0, got nan"),
    ("loss.pisa.carl_bias=.inf", "'loss.pisa.carl_bias' must be in [0, 1], got inf"),
    ("loss.rep.alpha=.inf", "'loss.rep.alpha' must be >= 0, got inf"),
    ("loss.rep.sigma_gt=.nan", "'loss.rep.sigma_gt' must be in [0, 1], got nan"),
    ("loss.nms.rpn_top_n=0", "'loss.nms.rpn_top_n' must be >= 1, got 0"),
    ("loss.nms.rpn_min_score=.nan", "'loss.nms.rpn_min_score' must be in [0, 1), got nan"),
    ("synth.density=.nan", "'synth.density' must be in [0, 1000], got nan"),
    ("model.aspect_ratios=[.inf]", "'model.aspect_ratios[0]' must be > 0, got inf"),
])
def test_the_catalogue_values_are_refused(override, message):
    with pytest.raises(PedcrowdError) as excinfo:
        load_config(None, [override])
    assert str(excinfo.value) == f"--set {override}: {message}"


@pytest.mark.parametrize(("sets", "message"), [
    (["model.rpn_fg_iou_thresh=0.2"],
     "--set: model: 'rpn_fg_iou_thresh' 0.2 must be >= 'rpn_bg_iou_thresh' 0.3"),
    (["model.box_bg_iou_thresh=0.6"],
     "--set: model: 'box_fg_iou_thresh' 0.5 must be >= 'box_bg_iou_thresh' 0.6"),
    (["model.aspect_ratios=[]"], "--set: model: 'aspect_ratios' must not be empty"),
    (["model.anchor_sizes=[]"], "--set: model: 'anchor_sizes' must not be empty"),
    (["data.augment.scale_range=[1.5, 0.5]"],
     "--set: data.augment: 'scale_range' [1.5, 0.5] must be ordered low, high"),
    (["data.format=kitti"], "--set: data: 'format' 'kitti' is not one of"),
])
def test_relations_are_checked_once_every_value_is_set(sets, message):
    with pytest.raises(PedcrowdError) as excinfo:
        load_config(None, sets)
    assert str(excinfo.value).startswith(message), excinfo.value


def test_relations_do_not_depend_on_the_order_of_set(tmp_path):
    # raising both thresholds above the old fg: valid together, whichever comes first
    cfg = load_config(None, ["model.rpn_bg_iou_thresh=0.8", "model.rpn_fg_iou_thresh=0.9"])
    assert (cfg.model.rpn_fg_iou_thresh, cfg.model.rpn_bg_iou_thresh) == (0.9, 0.8)
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  rpn_fg_iou_thresh: 0.2\n")
    with pytest.raises(PedcrowdError, match=re.escape(f"{path}: model: 'rpn_fg_iou_thresh' 0.2 must be >=")):
        load_config(path)


def test_a_relation_broken_in_python_is_refused_by_fit(tmp_path):
    from pedcrowd.engine.train import fit

    cfg = Config()
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, aspect_ratios=()))
    with pytest.raises(PedcrowdError, match="config: model: 'aspect_ratios' must not be empty"):
        fit(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_the_train_command_checks_relations_after_every_option(tmp_path):
    result = CliRunner().invoke(app, [
        "train", "--set", "model.box_bg_iou_thresh=0.7", "--out", str(tmp_path / "r"),
    ])
    assert result.exit_code == 2
    assert result.stderr.strip().startswith(
        "pedcrowd: error: --set: model: 'box_fg_iou_thresh' 0.5 must be >= 'box_bg_iou_thresh' 0.7"
    )


# ----------------------------------------------------------------------------- YAML


def test_a_key_given_twice_is_an_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 0.1\n  momentum: 0.9\n  lr: 0.2\n")
    with pytest.raises(PedcrowdError) as excinfo:
        load_config(path)
    assert str(excinfo.value) == (
        f"{path}: not valid YAML (key 'lr' given twice (first at line 2) at line 4, column 3)"
    )
    path.write_text("train: {epochs: 1, epochs: 2}\n")
    with pytest.raises(PedcrowdError, match="key 'epochs' given twice"):
        load_config(path)


def test_an_alias_bomb_is_refused_before_type_checking(tmp_path):
    # 313 bytes that expand to 10^9 values; the old error line repeated them all
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\noptim:\n  lr: *a8\n")
    with pytest.raises(PedcrowdError) as excinfo:
        load_config(path)
    assert str(excinfo.value) == f"{path}: refused: its aliases expand to more than 100000 values"


def test_a_long_wrong_value_is_cut_in_the_message(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: [" + ", ".join(["1"] * 5000) + "]\n")
    with pytest.raises(PedcrowdError) as excinfo:
        load_config(path)
    message = str(excinfo.value)
    assert message.startswith(f"{path}: 'optim.lr' must be a number, got [1, 1, ")
    assert message.endswith("... (15000 characters)") and len(message) < 250


def test_a_latin1_byte_is_one_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"# caf\xe9\noptim:\n  lr: 0.1\n")
    result = CliRunner().invoke(app, ["train", "-c", str(path), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"pedcrowd: error: {path}: not valid YAML (byte 0xe9 at offset 5 is not UTF-8)"
    )
