"""Speed of the crowd losses (issue 5), in one run:

1. NMS-Loss forward + backward on one crowded image of N positive predictions
   (default 1,000): the vectorised ``pedcrowd.losses.nms_loss`` against the plain
   greedy loop of ``pedcrowd.reference.greedy_nms_loss`` (target: >= 20x faster), after
   checking that both give the same values.
2. A full training step (forward, backward, SGD step) of the demo detector
   (``configs/cpu_demo.yaml``'s model) with ``--loss nms`` at the RoI stage over
   every positive proposal (``candidates: all``, the default; target <= +10 %),
   over the sampled RoIs only, at the official RPN stage, and ``--loss nms+rep``,
   each against ``--loss none``: warm-up, then steps in rotating order, medians.

Usage: ``python scripts/bench_losses.py [--predictions 1000] [--steps 10] [--threads 1] [--device cpu]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pedcrowd.engine.config import DEMO_MODEL
from pedcrowd.losses import LossConfig, apply_loss_preset
from pedcrowd.losses.config import set_loss_fields
from pedcrowd.losses.nms_loss import nms_loss
from pedcrowd.model import ModelConfig, build_model, install_criteria
from pedcrowd.reference.greedy_nms_loss import greedy_nms_loss


def crowded_image(num_pred: int, num_people: int, seed: int = 0, device: str = "cpu"):
    """A dense crowd: people overlapping in a 600 x 300 px strip, jittered predictions."""
    gen = torch.Generator().manual_seed(seed)
    heights = 60 + torch.rand(num_people, generator=gen) * 120
    widths = 0.41 * heights
    x1 = torch.rand(num_people, generator=gen) * 600
    y1 = torch.rand(num_people, generator=gen) * 120
    gts = torch.stack([x1, y1, x1 + widths, y1 + heights], 1)
    gt_index = torch.randint(0, num_people, (num_pred,), generator=gen)
    size = gts[gt_index, 2:] - gts[gt_index, :2]
    jitter = torch.randn(num_pred, 4, generator=gen) * 0.15 * size.repeat(1, 2)
    boxes = gts[gt_index] + jitter
    boxes = torch.cat([boxes[:, :2], torch.maximum(boxes[:, 2:], boxes[:, :2] + 4)], 1)
    scores = torch.rand(num_pred, generator=gen)
    return [t.to(device) for t in (boxes, scores, gt_index, gts)]


def time_loss(fn, inputs, repeats: int, device: str) -> tuple[float, tuple[float, float]]:
    """Median seconds of forward + backward, and the (pull, push) values."""
    boxes, scores, gt_index, gts = inputs
    times = []
    for _ in range(repeats):
        b = boxes.clone().requires_grad_()
        s = scores.clone().requires_grad_()
        _sync(device)
        start = time.perf_counter()
        pull, push = fn(b, s, gt_index, gts)
        (pull + push).backward()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), (pull.item(), push.item())


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_nms_loss(num_pred: int, num_people: int, device: str) -> None:
    inputs = crowded_image(num_pred, num_people, device=device)
    time_loss(nms_loss, inputs, 3, device)  # warm-up
    fast, fast_values = time_loss(nms_loss, inputs, 20, device)
    slow, slow_values = time_loss(greedy_nms_loss, inputs, 1, device)
    same = all(
        abs(a - b) <= 1e-4 * max(1.0, abs(b)) for a, b in zip(fast_values, slow_values, strict=True)
    )
    print(f"NMS-Loss fwd+bwd, {num_pred} positives, {num_people} people, {device}:")
    print(
        f"  pull, push: vectorised {fast_values[0]:.6f} {fast_values[1]:.6f}"
        f" | greedy {slow_values[0]:.6f} {slow_values[1]:.6f} | equal: {same}"
    )
    print(
        f"  vectorised {fast * 1e3:.2f} ms | greedy reference {slow * 1e3:.1f} ms"
        f" | {slow / fast:.0f}x faster (target >= 20x)"
    )


def training_batch(batch_size: int, seed: int, device: str):
    """Demo-sized noise images with crowds of 4-12 overlapping pedestrians each."""
    gen = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(batch_size):
        images.append(torch.rand(3, 192, 384, generator=gen).to(device))
        n = int(torch.randint(4, 13, (1,), generator=gen))
        h = 40 + torch.rand(n, generator=gen) * 100
        x1 = 40 + torch.rand(n, generator=gen) * 200
        y1 = torch.rand(n, generator=gen) * (190 - h)
        boxes = torch.stack([x1, y1, x1 + 0.41 * h, y1 + h], 1)
        targets.append(
            {"boxes": boxes.to(device), "labels": torch.ones(n, dtype=torch.int64, device=device)}
        )
    return images, targets


VARIANTS = {  # name -> (preset, extra loss fields)
    "none": ("none", {}),
    "nms roi all": ("nms", {"nms.stage": "roi", "nms.candidates": "all"}),
    "nms roi sampled": ("nms", {"nms.stage": "roi", "nms.candidates": "sampled"}),
    "nms rpn": ("nms", {"nms.stage": "rpn"}),
    "nms+rep": ("nms+rep", {}),
}


def bench_training_step(steps: int, warmup: int, batch_size: int, device: str) -> None:
    model_cfg = ModelConfig(**DEMO_MODEL)
    models = {}
    for name, (preset, fields) in VARIANTS.items():
        torch.manual_seed(0)
        model = build_model(model_cfg).to(device).train()
        install_criteria(model, model_cfg, set_loss_fields(apply_loss_preset(LossConfig(), preset), fields))
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        models[name] = (model, optimizer)
    images, targets = training_batch(batch_size, 0, device)

    def step(name: str) -> tuple[float, set[str]]:
        model, optimizer = models[name]
        _sync(device)
        start = time.perf_counter()
        losses = model(images, targets)
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()
        _sync(device)
        return time.perf_counter() - start, set(losses)

    for _ in range(warmup):
        for name in models:
            step(name)
    times: dict[str, list[float]] = {name: [] for name in models}
    keys = {}
    names = list(models)
    for i in range(steps):
        order = names[i % len(names):] + names[: i % len(names)]  # rotate who goes first
        for name in order:
            elapsed, keys[name] = step(name)
            times[name].append(elapsed)
    base = statistics.median(times["none"])
    print(
        f"Training step, demo model ({model_cfg.backbone}, {model_cfg.box_batch_size_per_image}"
        f" RoIs/image), batch {batch_size}, {device}, {warmup} warm-up + {steps} rotating steps each:"
    )
    for name in names:
        med = statistics.median(times[name])
        extra = sorted(keys[name] - keys["none"])
        print(
            f"  {name:16s} {med * 1e3:8.1f} ms (median)  {100 * (med / base - 1):+6.1f} %  {extra}"
        )
    print("  target: nms roi all <= +10 %")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--predictions", type=int, default=1000, help="positives in the NMS-Loss image"
    )
    parser.add_argument("--people", type=int, default=100, help="GT people in that image")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed training steps per preset")
    parser.add_argument("--batch-size", type=int, default=8, help="images per training step")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (0: torch's default)"
    )
    parser.add_argument("--skip-train", action="store_true", help="only the NMS-Loss part")
    args = parser.parse_args()
    if args.threads > 0:
        # On a loaded machine intra-op threads wait on each other; 1 thread is steadier.
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    bench_nms_loss(args.predictions, args.people, args.device)
    if not args.skip_train:
        bench_training_step(args.steps, args.warmup, args.batch_size, args.device)


if __name__ == "__main__":
    main()
