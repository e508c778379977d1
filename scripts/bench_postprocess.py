"""Speed of the second stage's post-processing per image (issue 12).

The RoI heads' ``postprocess_detections`` (box decoding, clipping, score
threshold, then the suppression) on one crowded image of N proposals (100,
1,000, 5,000 by default), for hard NMS (torchvision's path), hard NMS +
variance voting, soft-NMS linear and Gaussian, and Gaussian soft-NMS + voting.
Ratios are against hard NMS + decoding (target: variance voting adds <= 20 %
at 1,000 boxes). Inputs: proposals jittered around people in a 600 x 300 strip,
random class logits (most boxes pass the 0.05 score threshold), random
log-variances; the model is the demo detector with the KL head.

Times are the best of ``--repeats`` runs (robust on a shared machine).

Usage: ``python scripts/bench_postprocess.py [--boxes 100 1000 5000] [--repeats 30] [--threads 1] [--device cpu]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pedcrowd.model import ModelConfig, build_model
from pedcrowd.model.config import PostprocessConfig

METHODS = {
    "hard": PostprocessConfig(),
    "hard+vote": PostprocessConfig(var_voting=True),
    "soft-linear": PostprocessConfig(nms="soft-linear"),
    "soft-gaussian": PostprocessConfig(nms="soft-gaussian"),
    "soft-gaussian+vote": PostprocessConfig(nms="soft-gaussian", var_voting=True),
}


def crowded_inputs(n: int, seed: int = 0, device: str = "cpu"):
    """Head outputs for one 300 x 600 image: proposals [n, 4], logits [n, 2],
    regression [n, 8], log-variances [n, 4]."""
    gen = torch.Generator().manual_seed(seed)
    people = max(4, n // 25)
    heights = 60 + torch.rand(people, generator=gen) * 120
    x1 = torch.rand(people, generator=gen) * 550
    y1 = torch.rand(people, generator=gen) * 120
    gts = torch.stack([x1, y1, x1 + 0.41 * heights, y1 + heights], 1)
    idx = torch.randint(0, people, (n,), generator=gen)
    size = (gts[idx, 2:] - gts[idx, :2]).repeat(1, 2)
    proposals = gts[idx] + torch.randn(n, 4, generator=gen) * 0.1 * size
    proposals = torch.cat([proposals[:, :2], torch.maximum(proposals[:, 2:], proposals[:, :2] + 4)], 1)
    logits = torch.randn(n, 2, generator=gen) + torch.tensor([0.0, 1.0])
    regression = torch.randn(n, 8, generator=gen) * 0.5
    log_var = torch.randn(n, 4, generator=gen) - 2
    return [t.to(device) for t in (proposals, logits, regression, log_var)]


def time_method(heads, cfg, inputs, repeats: int, device: torch.device) -> float:
    """Best (minimum) seconds of one image's ``postprocess_detections`` (the least disturbed
    by other processes on a shared CPU)."""
    proposals, logits, regression, log_var = inputs
    heads.set_postprocess(cfg)
    shapes = [(300, 600)]
    times = []
    for i in range(repeats + 3):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with torch.inference_mode():
            heads.postprocess_detections(logits, regression, [proposals], shapes, box_log_var=log_var)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= 3:  # warm-up
            times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--boxes", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    heads = build_model(ModelConfig(box_std_head=True)).roi_heads.to(device).eval()
    print(f"device {device}, {args.threads} thread(s), best of {args.repeats}; "
          f"ms per image (ratio to hard NMS + decoding)")
    print(f"{'boxes':>6} " + " ".join(f"{m:>22}" for m in METHODS))
    for n in args.boxes:
        inputs = crowded_inputs(n, device=args.device)
        base = None
        cells = []
        for cfg in METHODS.values():
            t = time_method(heads, cfg, inputs, args.repeats, device)
            base = base or t
            cells.append(f"{1e3 * t:9.2f} ms ({t / base:5.2f}x)")
        print(f"{n:>6} " + " ".join(f"{c:>22}" for c in cells))
    # for scale: the whole demo detector on one 384 x 768 image (its own ~300 proposals)
    model = build_model(ModelConfig(box_std_head=True)).to(device).eval()
    image = [torch.rand(3, 384, 768, device=device)]
    times = []
    for i in range(8):
        start = time.perf_counter()
        with torch.inference_mode():
            model(image)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= 2:
            times.append(time.perf_counter() - start)
    print(f"for scale: one forward of the demo detector (384 x 768 image): "
          f"{1e3 * statistics.median(times):.1f} ms")


if __name__ == "__main__":
    main()
