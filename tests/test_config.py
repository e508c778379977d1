"""The config tree: strict YAML loading, one base level, --set overrides, round trips."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pedcrowd.engine.config import (
    Config,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)
from pedcrowd.errors import PedcrowdError

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_and_empty_file(tmp_path):
    assert load_config(None) == Config()
    assert load_config(write(tmp_path / "empty.yaml", "")) == Config()


def test_cpu_demo_yaml_states_the_defaults():
    assert load_config(REPO / "configs" / "cpu_demo.yaml") == Config()


@pytest.mark.parametrize("name", ["nms_ped_citypersons.yaml", "nms_ped_caltech.yaml"])
def test_paper_configs_load(name):
    cfg = load_config(REPO / "configs" / name)
    assert cfg.model.backbone == "resnet50_fpn"
    assert cfg.model.aspect_ratios == (2.44,)  # w/h = 0.41
    assert cfg.optim.name == "sgd" and cfg.optim.momentum == 0.9
    assert cfg.optim.weight_decay == 1e-4
    assert cfg.schedule.name == "step" and cfg.schedule.steps == [8, 11]
    assert cfg.train.epochs == 12 and cfg.synth is None


def test_paper_config_values():
    city = load_config(REPO / "configs" / "nms_ped_citypersons.yaml")
    assert city.optim.lr == 0.01 and city.optim.grad_clip == 35.0
    assert city.schedule.warmup_iters == 500
    assert (city.data.gt_filter.min_height, city.data.gt_filter.min_visibility) == (30.0, 0.45)
    assert (city.model.min_size, city.model.max_size) == (1024, 2048)
    caltech = load_config(REPO / "configs" / "nms_ped_caltech.yaml")
    assert caltech.optim.lr == 0.005 and caltech.data.format == "caltech"
    assert (caltech.model.min_size, caltech.model.max_size) == (960, 1280)


def test_values_are_read_and_typed(tmp_path):
    cfg = load_config(
        write(
            tmp_path / "c.yaml",
            """
optim: {lr: 1e-3, name: adamw, grad_clip: null}
model: {anchor_sizes: [8, 16, 32, 64], min_size: 96}
schedule: {name: step, steps: [3, 5]}
train: {epochs: 2, amp: true}
synth: null
""",
        )
    )
    assert cfg.optim.lr == 0.001  # YAML 1.1 reads "1e-3" as a string: accepted as a float
    assert isinstance(cfg.optim.lr, float)
    assert cfg.optim.name == "adamw" and cfg.optim.grad_clip is None
    assert cfg.model.anchor_sizes == (8, 16, 32, 64)  # list in YAML, tuple in the schema
    assert cfg.model.min_size == 96 and cfg.model.max_size == Config().model.max_size
    # the rest of the model section is the demo's (Config().model), not ModelConfig()'s
    assert (cfg.model.box_batch_size_per_image, cfg.model.box_positive_fraction) == (64, 0.5)
    assert cfg.model == dataclasses.replace(Config().model, min_size=96, anchor_sizes=(8, 16, 32, 64))
    assert cfg.schedule.steps == [3, 5]
    assert cfg.train.epochs == 2 and cfg.train.amp is True
    assert cfg.synth is None
    assert cfg.data == Config().data  # untouched sections keep their defaults


def test_unknown_key_names_file_dotted_key_and_suggestion(tmp_path):
    path = write(tmp_path / "typo.yaml", "optim:\n  lerning_rate: 0.1\n  lrr: 0.1\n")
    with pytest.raises(PedcrowdError) as e:
        load_config(path)
    msg = str(e.value)
    assert str(path) in msg and "'optim.lerning_rate'" in msg
    path = write(tmp_path / "typo2.yaml", "data:\n  gt_filter:\n    min_heigth: 30\n")
    with pytest.raises(
        PedcrowdError, match=r"'data\.gt_filter\.min_heigth'.*did you mean 'data\.gt_filter\.min_height'"
    ):
        load_config(path)
    with pytest.raises(PedcrowdError, match=r"unknown key 'trian'.*did you mean 'train'"):
        load_config(write(tmp_path / "top.yaml", "trian: {epochs: 1}\n"))


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("train: {epochs: 2.5}", r"'train\.epochs' must be an integer"),
        ("train: {epochs: true}", r"'train\.epochs' must be an integer"),  # bool is not int
        ("train: {amp: 1}", r"'train\.amp' must be true or false"),
        ("optim: {lr: fast}", r"'optim\.lr' must be a number"),
        ("optim: {name: adam}", r"'optim\.name' must be one of 'sgd', 'adamw'"),
        ("model: {anchor_sizes: 16}", r"'model\.anchor_sizes' must be a list"),
        ("model: {anchor_sizes: [16, big]}", r"'model\.anchor_sizes\[1\]' must be an integer"),
        (
            "data: {augment: {scale_range: [0.5, 1, 2]}}",
            r"'data\.augment\.scale_range' must be a list of 2",
        ),
        ("model: {backbone: 3}", r"'model\.backbone' must be a string"),
        ("optim: 0.1", r"optim must be a mapping"),
        ("- 1\n- 2", r"top level must be a mapping"),
    ],
)
def test_wrong_types(tmp_path, text, pattern):
    path = write(tmp_path / "bad.yaml", text)
    with pytest.raises(PedcrowdError, match=pattern) as e:
        load_config(path)
    assert str(path) in str(e.value)


def test_section_validation_is_reported_with_the_file(tmp_path):
    path = write(tmp_path / "s.yaml", "synth: {occlusion: 2.0}\n")
    # a declared range now: named like every other range error
    with pytest.raises(PedcrowdError, match=r"s\.yaml: .synth\.occlusion. must be in \[0, 1\], got 2\.0"):
        load_config(path)


def test_one_base_level(tmp_path):
    write(tmp_path / "base.yaml", "optim: {lr: 0.5, momentum: 0.8}\ntrain: {epochs: 3}\n")
    child = write(tmp_path / "child.yaml", "base: base.yaml\noptim: {lr: 0.25}\n")
    cfg = load_config(child)
    # the child wins key by key; the base fills the rest of the same section
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.train.epochs) == (0.25, 0.8, 3)

    grandchild = write(tmp_path / "grand.yaml", "base: child.yaml\n")
    with pytest.raises(PedcrowdError, match="only one base level"):
        load_config(grandchild)
    with pytest.raises(PedcrowdError, match="config file not found"):
        load_config(write(tmp_path / "orphan.yaml", "base: missing.yaml\n"))
    # unknown keys in the base are reported against the base file
    write(tmp_path / "badbase.yaml", "optim: {lrate: 1}\n")
    with pytest.raises(PedcrowdError, match=r"'optim\.lrate'"):
        load_config(write(tmp_path / "c2.yaml", "base: badbase.yaml\n"))


def test_overrides():
    base = Config()
    cfg = apply_overrides(
        base,
        [
            "optim.lr=1e-3",
            "train.epochs=3",
            "train.amp=true",
            "model.anchor_sizes=[8, 16, 32, 64]",
            "optim.grad_clip=null",
            "data.root=some/where",
            "schedule.steps=[2]",
            "data.gt_filter.min_height=30",
        ],
    )
    assert cfg.optim.lr == 0.001 and cfg.train.epochs == 3 and cfg.train.amp is True
    assert cfg.model.anchor_sizes == (8, 16, 32, 64) and cfg.optim.grad_clip is None
    assert cfg.data.root == "some/where" and cfg.schedule.steps == [2]
    assert cfg.data.gt_filter.min_height == 30.0
    assert base == Config()  # the input is not mutated

    # a switched-off optional section comes back from its defaults
    off = apply_overrides(Config(), ["synth=null"])
    assert off.synth is None
    on = apply_overrides(off, ["synth.train_images=10"])
    assert on.synth.train_images == 10 and on.synth.val_images == Config().synth.val_images


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        (
            "optim.lrr=0.1",
            r"--set optim\.lrr=0\.1: unknown key 'optim\.lrr' \(did you mean 'optim\.lr'\?\)",
        ),
        ("train.epochs=two", r"'train\.epochs' must be an integer"),
        ("optim.lr", r"expected KEY=VALUE"),
        ("optim.lr.x=1", r"'optim\.lr' is not a section"),
        ("optim.name=rmsprop", r"one of 'sgd', 'adamw'"),
    ],
)
def test_bad_overrides(override, pattern):
    with pytest.raises(PedcrowdError, match=pattern):
        apply_overrides(Config(), [override])


def test_load_config_applies_overrides_after_file(tmp_path):
    path = write(tmp_path / "c.yaml", "optim: {lr: 0.5}\n")
    assert load_config(path, ["optim.lr=0.125"]).optim.lr == 0.125


def test_round_trip(tmp_path):
    cfg = apply_overrides(
        Config(), ["optim.lr=0.003", "synth=null", "data.augment.crop_size=[64, 96]"]
    )
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == cfg
    assert config_from_dict(config_to_dict(cfg)) == cfg
    assert config_to_dict(cfg)["data"]["augment"]["crop_size"] == [64, 96]
    assert dataclasses.is_dataclass(cfg.model)


def test_a_config_saved_before_the_authors_ohem_settings_still_loads():
    """Checkpoints of the previous release saved ``loss.ohem: {num: null, pool: null}`` and a
    Faster R-CNN ``model.assigner: fcos``; they load (inference, --resume) as they ran."""
    from pedcrowd.engine.config import config_from_dict, config_to_dict

    old = config_to_dict(Config())
    old["loss"]["ohem"].update(num=None, pool=None)
    old["model"]["assigner"] = "fcos"
    cfg = config_from_dict(old)
    assert (cfg.loss.ohem.num, cfg.loss.ohem.pool) == (None, None)
