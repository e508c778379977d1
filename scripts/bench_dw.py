"""Per-step training cost of DW against FCOS's own assignment (issue 13; target <= 1.15x).

Times a full training step (forward, backward, SGD step) of the FCOS demo
detector (``configs/fcos_cpu_demo.yaml``'s model) with ``model.assigner`` fcos,
dw without the box refinement, and dw with it (the official default): the
same initial weights and batch, warm-up, then steps in alternating order,
medians. Also times the loss alone (assignment + loss, forward + backward) on
fixed head outputs, which the step's noise on a shared CPU can hide.

Usage: ``python scripts/bench_dw.py [--steps 10] [--warmup 2] [--batch-size 8] [--threads 1] [--device cpu]``
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

import torch

from pedcrowd.engine.config import load_config
from pedcrowd.model import build_model

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {
    "fcos": {"assigner": "fcos"},
    "dw": {"assigner": "dw", "dw_refine": False},
    "dw+refine": {"assigner": "dw", "dw_refine": True},
}


def crowd_batch(batch_size: int, seed: int, device: str, height: int = 192, width: int = 384):
    """Demo-sized noise images with 4-12 overlapping pedestrians each (and one ignore box)."""
    gen = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(batch_size):
        images.append(torch.rand(3, height, width, generator=gen).to(device))
        n = int(torch.randint(4, 13, (1,), generator=gen))
        h = 40 + torch.rand(n, generator=gen) * 100
        x1 = 40 + torch.rand(n, generator=gen) * 200
        y1 = torch.rand(n, generator=gen) * (height - 2 - h)
        boxes = torch.stack([x1, y1, x1 + 0.41 * h, y1 + h], 1)
        targets.append({
            "boxes": boxes.to(device), "labels": torch.ones(n, dtype=torch.int64, device=device),
            "ignore_boxes": torch.tensor([[300.0, 20.0, 380.0, 120.0]], device=device),
        })
    return images, targets


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    base_cfg = load_config(REPO / "configs" / "fcos_cpu_demo.yaml").model
    models = {}
    for name, change in VARIANTS.items():
        torch.manual_seed(0)
        model = build_model(dataclasses.replace(base_cfg, **change)).to(args.device).train()
        models[name] = (model, torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9))
    images, targets = crowd_batch(args.batch_size, 0, args.device)

    def step(name: str) -> float:
        model, optimizer = models[name]
        _sync(args.device)
        start = time.perf_counter()
        losses = model(images, [dict(t) for t in targets])
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()
        _sync(args.device)
        return time.perf_counter() - start

    for _ in range(args.warmup):
        for name in models:
            step(name)
    times: dict[str, list[float]] = {name: [] for name in models}
    for i in range(args.steps):
        for name in list(models) if i % 2 == 0 else list(models)[::-1]:
            times[name].append(step(name))
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"Training step, FCOS demo model ({base_cfg.backbone}, {base_cfg.fcos_num_convs} head convs), "
          f"batch {args.batch_size}, {args.device}, {args.warmup} warm-up + {args.steps} alternating steps:")
    for name in models:
        print(f"  {name:10s} {med[name] * 1e3:8.1f} ms  {med[name] / med['fcos']:.3f}x FCOS"
              + ("  (target <= 1.15x)" if name == "dw" else ""))

    # the assignment + loss alone, on the head outputs of one forward pass
    model = models["fcos"][0]
    seen = {}

    def grab(targets, head_outputs, anchors, num_anchors_per_level):
        seen.update(t=targets, o=head_outputs, a=anchors, n=num_anchors_per_level)
        return {"x": head_outputs["cls_logits"].sum()}

    model.compute_loss = grab
    with torch.no_grad():
        model(images, [dict(t) for t in targets])
    del model.compute_loss
    loss_times: dict[str, list[float]] = {"fcos": [], "dw": []}
    for _ in range(args.steps):
        for name in loss_times:
            model.assigner = name
            outputs = {k: v.detach().requires_grad_() for k, v in seen["o"].items()}
            _sync(args.device)
            start = time.perf_counter()
            losses = model.compute_loss(seen["t"], outputs, seen["a"], seen["n"])
            sum(losses.values()).backward()
            _sync(args.device)
            loss_times[name].append(time.perf_counter() - start)
    lf, ld = (statistics.median(loss_times[k]) for k in ("fcos", "dw"))
    print(f"  loss alone (assignment + loss, fwd + bwd): fcos {lf * 1e3:.2f} ms | dw {ld * 1e3:.2f} ms"
          f" = {100 * (ld - lf) / med['fcos']:+.2f} % of the FCOS step")


if __name__ == "__main__":
    main()
