"""The tiny detector and synthetic set the end-to-end tests run: a configuration for a laptop.

Small enough that a training step takes a fraction of a second on one CPU core,
so a whole run (data, training, evaluation, checkpoints) finishes in seconds;
far too small to learn anything. The tests build every end-to-end case from
these; use them the same way to smoke-test a change before a real run:

    from pedcrowd.engine.config import Config, apply_overrides
    cfg = apply_overrides(Config(), tiny_overrides(Path("tiny_synth")))

* :data:`TINY_SYNTH` and :func:`tiny_overrides`: a 96 x 160 synthetic crowd set
  of 4 training and 2 validation images and the ``--set`` overrides of a
  ``tiny_fpn`` detector trained on it for one epoch on the CPU, batch 2.
* :data:`SMALL`: the small two-stage detector of the model and loss tests
  (96 x 192 inputs, few proposals).
* :data:`TECHNIQUES`: every training technique as loss fields and a model
  config; :func:`technique_model` builds one, :func:`crowd_batch` is a fixed
  two-image batch of a crowded scene to train it on.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from pedcrowd.data.config import SynthConfig
from pedcrowd.losses import LossConfig
from pedcrowd.losses.config import set_loss_fields
from pedcrowd.losses.focal import init_classifier_priors
from pedcrowd.model import build_model
from pedcrowd.model.backbones import NUM_LEVELS
from pedcrowd.model.config import ModelConfig

SMALL = ModelConfig(
    min_size=96,
    max_size=192,
    rpn_pre_nms_top_n_train=200,
    rpn_post_nms_top_n_train=100,
    rpn_pre_nms_top_n_test=100,
    rpn_post_nms_top_n_test=50,
    box_batch_size_per_image=64,
    representation_size=64,
)
TINY_SYNTH = SynthConfig(train_images=4, val_images=2, height=96, width=160, seed=3)


def tiny_overrides(root: Path) -> list[str]:
    """``--set`` overrides of a one-epoch CPU run of the tiny detector on :data:`TINY_SYNTH`
    written to ``root`` (``pedcrowd.data.synth.ensure_synth(root, TINY_SYNTH)``)."""
    s = TINY_SYNTH
    return [
        "model.backbone=tiny_fpn",
        "model.min_size=96",
        "model.max_size=160",
        f"model.anchor_sizes={[8, 16, 32, 64, 128][: NUM_LEVELS['tiny_fpn']]}",
        "model.rpn_pre_nms_top_n_train=100",
        "model.rpn_post_nms_top_n_train=50",
        "model.rpn_pre_nms_top_n_test=50",
        "model.rpn_post_nms_top_n_test=30",
        "model.rpn_batch_size_per_image=32",
        "model.box_batch_size_per_image=32",
        "model.representation_size=32",
        f"data.root={root}",
        "data.num_workers=0",
        "optim.lr=0.01",
        "schedule.name=step",
        "schedule.warmup_iters=1",
        "train.batch_size=2",
        "train.epochs=1",
        "train.eval_every=1",
        "train.log_every=1",
        "train.device=cpu",
        f"synth.train_images={s.train_images}",
        f"synth.val_images={s.val_images}",
        f"synth.height={s.height}",
        f"synth.width={s.width}",
        f"synth.seed={s.seed}",
    ]


FCOS = ModelConfig(arch="fcos", min_size=96, max_size=160, fcos_num_convs=1)

# technique -> (loss fields, model config)
TECHNIQUES: dict[str, tuple[dict[str, Any], ModelConfig]] = {
    "default": ({}, SMALL),
    "nms-roi": ({"nms.lambda_pull": 1.0, "nms.lambda_push": 1.0}, SMALL),
    "nms-rpn": ({"nms.lambda_pull": 1.0, "nms.lambda_push": 1.0, "nms.stage": "rpn",
                 "nms.rpn_min_height": 10.0}, SMALL),
    "rep": ({"rep.alpha": 0.5, "rep.beta": 0.5}, SMALL),
    "focal": ({"cls": "focal"}, SMALL),
    "rpn-focal": ({"rpn_cls": "focal"}, SMALL),
    "ghm": ({"cls": "ghm", "box": "ghm"}, SMALL),
    "qfl": ({"cls": "qfl"}, SMALL),
    "ohem": ({"sampler": "ohem"}, SMALL),
    "pisa": ({"sampler": "pisa"}, SMALL),
    "kl": ({"box": "kl"}, dataclasses.replace(SMALL, box_std_head=True)),
    "fcos": ({}, FCOS),
    "dw": ({}, dataclasses.replace(FCOS, assigner="dw")),
}

# five people in two overlapping groups, xyxy on a 96 x 160 image
CROWD = [[20.0, 20.0, 40.0, 70.0], [30.0, 22.0, 50.0, 72.0], [36.0, 18.0, 56.0, 70.0],
         [100.0, 10.0, 125.0, 80.0], [112.0, 12.0, 138.0, 84.0]]


def crowd_batch(device: str | torch.device = "cpu") -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """(images, targets) of two random 96 x 160 images, each with the :data:`CROWD` people.

    The pixels are drawn on the CPU (seed 1), so every device gets the same batch."""
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 96, 160, generator=g, device="cpu").to(device) for _ in range(2)]
    targets = [{"boxes": torch.tensor(CROWD, device=device),
                "labels": torch.ones(len(CROWD), dtype=torch.int64, device=device)}
               for _ in range(2)]
    return images, targets


def technique_model(name: str) -> torch.nn.Module:
    """The model of one of :data:`TECHNIQUES` in training mode, its losses installed (seed 0)."""
    fields, mcfg = TECHNIQUES[name]
    loss = set_loss_fields(LossConfig(), fields)
    torch.manual_seed(0)
    if mcfg.arch != "faster_rcnn":  # FCOS: its loss is model.assigner's
        return build_model(mcfg).train()
    model = build_model(mcfg, loss=loss).train()
    init_classifier_priors(model, mcfg.weights, loss)
    return model
