"""The tiny training run the engine, CLI, DDP, safe-load and crash-safety tests share:
a tiny detector on 96 x 160 synthetic crowds, 4 training images, batch 2."""

from __future__ import annotations

from pathlib import Path

from pedcrowd.data.config import SynthConfig
from pedcrowd.model.backbones import NUM_LEVELS
from pedcrowd.model.config import ModelConfig

# the small two-stage detector of the model and loss tests: 96 x 192 inputs, few proposals
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
