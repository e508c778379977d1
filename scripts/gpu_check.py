"""One command that checks pedcrowd on one CUDA device (issue 26), in a few minutes.

Trains the paper-sized detector (``configs/nms_ped_citypersons.yaml``: ResNet-50-FPN,
1024 x 2048 inputs; random weights, synthetic images of that size with crowded boxes),
batch 2, for ``--iters`` timed steps after ``--warmup`` with the default losses and
with each crowd technique, AMP off and on (CUDA float16 with a GradScaler), beside a
plain torchvision Faster R-CNN of the same modules, weights and settings in the same
run (torchvision's reference step). Reports images/s, the median step time, peak
memory, the ratio to torchvision's step at the same AMP setting and the AMP speed-up;
then inference images/s (AMP off and on) and one ``torchrun --nproc_per_node 1`` step
under DDP with NCCL. Writes ``OUT/gpu_check.json`` and ``OUT/gpu_check.md`` (the
table in docs/benchmarks.md) and prints the table.

Targets (issue 26): pedcrowd's default step <= 1.05x torchvision's; NMS-Loss (RPN
stage, official settings) <= 1.10x; AMP >= 1.3x faster than float32.

    python scripts/gpu_check.py                   # on a CUDA machine, about 5 minutes
    python scripts/gpu_check.py --dry-run         # CPU-sized: tiny detector, 96 x 160, 2 steps

Without CUDA (and without ``--dry-run``) it says so in one line and exits 2. The dry
run is the same code on the CPU with the CPU demo's tiny backbone (AMP there is CPU
bfloat16 autocast where the CPU has it), DDP on gloo; the test suite runs it.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent

# technique -> (loss: fields, or a config file whose loss section it takes; model fields)
TECHNIQUES: dict[str, tuple[dict[str, object] | str, dict[str, object]]] = {
    "default": ({}, {}),
    "nms-rpn (official)": ("configs/nms_loss_citypersons.yaml", {}),
    "nms-roi": ({"nms.lambda_pull": 1.0, "nms.lambda_push": 1.0}, {}),
    "rep": ({"rep.alpha": 0.5, "rep.beta": 0.5}, {}),
    "focal": ({"cls": "focal"}, {}),
    "rpn-focal": ({"rpn_cls": "focal"}, {}),
    "ghm": ({"cls": "ghm", "box": "ghm"}, {}),
    "qfl": ({"cls": "qfl"}, {}),
    "ohem": ({"sampler": "ohem"}, {}),
    "pisa": ({"sampler": "pisa"}, {}),
    "kl": ({"box": "kl"}, {"box_std_head": True}),
}
BASELINE = "torchvision"
BATCH = 2


def _settings(dry_run: bool):
    """(config, image height, width, device)."""
    from pedcrowd.engine.config import load_config

    if dry_run:
        cfg = load_config(None, ["model.min_size=96", "model.max_size=160",
                                 "model.rpn_pre_nms_top_n_train=200",
                                 "model.rpn_post_nms_top_n_train=100",
                                 "model.box_batch_size_per_image=64"])
        return cfg, 96, 160, torch.device("cpu")
    cfg = load_config(ROOT / "configs" / "nms_ped_citypersons.yaml", ["model.weights=none"])
    return cfg, 1024, 2048, torch.device("cuda")


def synthetic_batch(height: int, width: int, device: torch.device, seed: int = 0):
    """BATCH random images with crowds of pedestrian-shaped boxes (h/w 2.44), some in
    overlapping pairs so that the crowd losses have pairs to work on."""
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(BATCH):
        images.append(torch.rand(3, height, width, generator=g).to(device))
        n = 12
        h = height * (0.1 + 0.3 * torch.rand(n, generator=g))
        w = h / 2.44
        x = (width - w) * torch.rand(n, generator=g)
        y = (height - h) * torch.rand(n, generator=g)
        x[1::2] = (x[0::2] + 0.3 * w[0::2]).clamp(max=width - w[1::2])  # every 2nd overlaps the 1st
        y[1::2] = y[0::2].clamp(max=height - h[1::2])
        boxes = torch.stack([x, y, x + w, y + h], 1)
        targets.append({"boxes": boxes.to(device), "labels": torch.ones(n, dtype=torch.int64, device=device),
                        "ignore_boxes": torch.zeros((0, 4), device=device)})
    return images, targets


def _loss_for(cfg, spec):
    from pedcrowd.engine.config import load_config
    from pedcrowd.losses.config import set_loss_fields

    if isinstance(spec, str):
        return load_config(ROOT / spec).loss
    return set_loss_fields(cfg.loss, spec)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def time_pedcrowd(model, cfg, batch, device, amp: bool, warmup: int, iters: int) -> list[float]:
    """Step times of pedcrowd's engine step (train_one_epoch, as ``pedcrowd train`` runs it)."""
    from pedcrowd.engine.loop import amp_dtype, train_one_epoch

    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)  # lr 0: the same work each step
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 1.0)
    scaler = torch.amp.GradScaler(device.type, enabled=amp and amp_dtype(device) == torch.float16)
    times = []
    for i in range(warmup + iters):
        torch.manual_seed(i)
        _sync(device)
        t = time.perf_counter()
        train_one_epoch(model, opt, sched, scaler, [batch], device, 0, amp=amp,
                        grad_clip=cfg.optim.grad_clip)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return times


def time_torchvision(model, batch, device, amp: bool, warmup: int, iters: int) -> list[float]:
    """Step times of torchvision's reference step (references/detection/engine.py)."""
    from pedcrowd.engine.loop import amp_dtype

    dtype = amp_dtype(device) if amp else None
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    images, targets = batch
    targets = [{k: v for k, v in t.items() if k in ("boxes", "labels")} for t in targets]
    times = []
    for i in range(warmup + iters):
        torch.manual_seed(i)
        _sync(device)
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss_dict = model(images, targets)
        losses = sum(loss_dict.values())
        losses.item()  # the reference logs the reduced loss every step
        opt.zero_grad()
        scaler.scale(losses).backward()
        scaler.step(opt)
        scaler.update()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return times


def time_inference(model, images, device, amp: bool, iters: int) -> float:
    """Images per second of the eval-mode detector (batches of BATCH)."""
    from pedcrowd.engine.loop import amp_dtype

    dtype = amp_dtype(device) if amp else None
    model.eval()
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        model(images)  # warm-up
        _sync(device)
        t = time.perf_counter()
        for _ in range(iters):
            model(images)
        _sync(device)
    model.train()
    return len(images) * iters / (time.perf_counter() - t)


def run_checks(dry_run: bool, warmup: int, iters: int, techniques: list[str]) -> dict:

    from pedcrowd.engine.loop import amp_dtype
    from pedcrowd.engine.train import install_crowd_losses
    from pedcrowd.model import build_model
    from pedcrowd.model.plain import build_plain_torchvision

    cfg, height, width, device = _settings(dry_run)
    batch = synthetic_batch(height, width, device)
    torch.manual_seed(cfg.train.seed)
    base = build_model(cfg.model)
    plain = build_plain_torchvision(base, cfg).to(device).train()
    rows = []
    for amp in (False, True):
        _peak_reset(device)
        tv = statistics.median(time_torchvision(plain, batch, device, amp, warmup, iters))
        rows.append({"name": BASELINE, "amp": amp, "step_s": tv, "images_per_s": BATCH / tv,
                     "peak_gib": _peak_gib(device), "ratio": 1.0})
        for name in techniques:
            loss_spec, model_fields = TECHNIQUES[name]
            tcfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **model_fields),
                                       loss=_loss_for(cfg, loss_spec))
            if model_fields:
                torch.manual_seed(cfg.train.seed)
                model = build_model(tcfg.model)
            else:
                model = copy.deepcopy(base)
            install_crowd_losses(model, tcfg)
            model.to(device).train()
            _peak_reset(device)
            step = statistics.median(time_pedcrowd(model, tcfg, batch, device, amp, warmup, iters))
            rows.append({"name": name, "amp": amp, "step_s": step, "images_per_s": BATCH / step,
                         "peak_gib": _peak_gib(device), "ratio": step / tv})
            del model
    float32 = {r["name"]: r["step_s"] for r in rows if not r["amp"]}
    for r in rows:
        r["amp_speedup"] = float32[r["name"]] / r["step_s"] if r["amp"] else None
    base.to(device)
    inference = {f"amp_{'on' if amp else 'off'}": time_inference(base, batch[0], device, amp, iters)
                 for amp in (False, True)}
    import torchvision

    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
        or "cpu",
        "dry_run": dry_run, "torch": torch.__version__, "torchvision": torchvision.__version__,
        "settings": {"backbone": cfg.model.backbone, "input": [height, width], "batch": BATCH,
                     "warmup": warmup, "iters": iters,
                     "amp_dtype": str(amp_dtype(device)).replace("torch.", "")},
        "training": rows, "inference_images_per_s": inference,
    }


def ddp_step(dry_run: bool) -> None:
    """Under torchrun: one pedcrowd training step in DDP (NCCL on CUDA, gloo on the CPU)."""
    import torch.distributed as dist

    from pedcrowd.engine import distributed as ddp
    from pedcrowd.engine.loop import train_one_epoch
    from pedcrowd.engine.train import build_training_model

    cfg, height, width, device = _settings(dry_run)
    if dry_run:
        torch.set_num_threads(1)
    if device.type == "cuda":
        device = torch.device("cuda", ddp.local_rank_from_env())
    info = ddp.init_distributed(device)
    if not dist.is_initialized():  # a world of one: pedcrowd trains without DDP; the check uses it
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=ddp.backend_for(device), init_method="env://")
    try:
        model = build_training_model(cfg)
        model = torch.nn.parallel.DistributedDataParallel(
            model.to(device), device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=False,
        )
        opt = torch.optim.SGD(model.parameters(), lr=0.001)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 1.0)
        # under the process group the step reduces its flags over the ranks itself
        records = train_one_epoch(model, opt, sched, torch.amp.GradScaler(device.type, enabled=False),
                                  [synthetic_batch(height, width, device)], device, 0).records
        print("DDP_RESULT " + json.dumps({
            "backend": str(dist.get_backend()) if dist.is_initialized() else "none",
            "world_size": info.world_size, "loss": records[0]["loss"],
            "skipped": records[0]["skipped"],
        }), flush=True)
    finally:
        dist.destroy_process_group()


def run_torchrun(dry_run: bool, timeout: float = 300.0) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
           str(Path(__file__).resolve()), "--ddp-step", *(["--dry-run"] if dry_run else [])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    lines = [x for x in out.stdout.splitlines() if x.startswith("DDP_RESULT ")]
    if out.returncode != 0 or not lines:
        return {"ok": False, "returncode": out.returncode, "tail": (out.stdout + out.stderr)[-2000:]}
    return {"ok": True, "seconds": time.perf_counter() - t, **json.loads(lines[-1][len("DDP_RESULT "):])}


def markdown(result: dict) -> str:
    """The table of docs/benchmarks.md."""
    s = result["settings"]
    lines = [
        f"{result['device']}, torch {result['torch']}, torchvision {result['torchvision']}: "
        f"{s['backbone']} at {s['input'][0]} x {s['input'][1]}, batch {s['batch']}, median of "
        f"{s['iters']} steps after {s['warmup']}; AMP = {s['amp_dtype']}.",
        "",
        "| training | AMP | images/s | step (ms) | peak memory (GiB) | vs torchvision | AMP speed-up |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["training"]:
        peak = "" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}"
        speed = "" if r["amp_speedup"] is None else f"{r['amp_speedup']:.2f}x"
        lines.append(f"| {r['name']} | {'on' if r['amp'] else 'off'} | {r['images_per_s']:.2f} | "
                     f"{1000 * r['step_s']:.1f} | {peak} | {r['ratio']:.3f}x | {speed} |")
    inf = result["inference_images_per_s"]
    lines += ["", f"Inference (pedcrowd default, batch {s['batch']}): {inf['amp_off']:.2f} images/s "
              f"float32, {inf['amp_on']:.2f} images/s AMP."]
    d = result.get("ddp")
    if d is not None:
        lines.append(f"torchrun --nproc_per_node 1: {'ok' if d['ok'] else 'FAILED'}"
                     + (f", backend {d['backend']}, loss {d['loss']:.4f}" if d["ok"] else ""))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU-sized: tiny detector, 96 x 160")
    ap.add_argument("--iters", type=int, default=None, help="timed steps per run (30; dry run 2)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (5; dry run 1)")
    ap.add_argument("--techniques", default="all", help=f"comma-separated, or all: {', '.join(TECHNIQUES)}")
    ap.add_argument("--out", default="gpu_check", help="folder for gpu_check.json and gpu_check.md")
    ap.add_argument("--no-ddp", action="store_true", help="skip the torchrun step")
    ap.add_argument("--ddp-step", action="store_true", help=argparse.SUPPRESS)  # torchrun's child
    args = ap.parse_args(argv)
    if args.ddp_step:
        ddp_step(args.dry_run)
        return 0
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False); "
              "run it on a GPU machine, or --dry-run for the CPU-sized check", file=sys.stderr)
        return 2
    names = list(TECHNIQUES) if args.techniques == "all" else args.techniques.split(",")
    unknown = [n for n in names if n not in TECHNIQUES]
    if unknown:
        print(f"gpu_check: --techniques: unknown {', '.join(unknown)} (known: {', '.join(TECHNIQUES)})",
              file=sys.stderr)
        return 2
    if args.dry_run:
        torch.set_num_threads(1)  # a CPU-sized smoke run, on machines shared with others
    iters = args.iters or (2 if args.dry_run else 30)
    warmup = args.warmup if args.warmup is not None else (1 if args.dry_run else 5)
    start = time.perf_counter()
    result = run_checks(args.dry_run, warmup, iters, names)
    if not args.no_ddp:
        result["ddp"] = run_torchrun(args.dry_run)
    result["seconds"] = time.perf_counter() - start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(result, indent=1))
    table = markdown(result)
    (out / "gpu_check.md").write_text(table)
    print(table, end="")
    print(f"({result['seconds']:.0f} s; {out / 'gpu_check.json'}, {out / 'gpu_check.md'})")
    return 0 if result.get("ddp", {"ok": True})["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
