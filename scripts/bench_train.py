"""Time a pedcrowd training step against a plain torchvision Faster R-CNN step.

Both detectors share the backbone architecture, the heads, the initial weights,
the images and the batch; they differ only in what pedcrowd adds (the
ignore-aware RPN and RoI sampling, the crowd-loss seam, the input transform
that scales ignore boxes, and the engine's step: per-term loss logging, the
non-finite check, gradient clipping, the per-iteration schedule). Steps
alternate between the two (pedcrowd, torchvision, pedcrowd, ...) after a
warm-up, so that machine load hits both alike; the medians are compared.
The learning rate is 0 so that the weights, and so the work per step, stay the
same throughout.

A second phase runs the engine on the real DataLoader (the config's workers)
and reports how long each step waits for its batch.

``--options`` times the sample-imbalance options instead (issue 11): one
detector per option, all with the same weights, stepping in turn on the same
batch (the order rotating every step), each median against the default's
(targets: OHEM <= 1.3x, every other option <= 1.05x).

    python scripts/bench_train.py                      # the CPU demo config
    python scripts/bench_train.py --steps 30 --set train.batch_size=4
    python scripts/bench_train.py --config configs/nms_ped_citypersons.yaml --device cuda
    python scripts/bench_train.py --options all --steps 20   # focal, ghm, qfl, ohem, pisa, ...
    python scripts/bench_train.py --amp-compare --steps 10   # train.amp off vs on (CPU: bfloat16)

``--amp-compare`` times pedcrowd's step with ``train.amp`` off and on (CUDA float16, CPU
bfloat16 autocast where the CPU has it), alternating, on the same weights and batch.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from pedcrowd.model.plain import build_plain_torchvision


def plain_step(model, optimizer, scheduler, images, targets) -> None:
    """torchvision's reference training step (references/detection/engine.py)."""
    loss_dict = model(images, targets)
    losses = sum(loss for loss in loss_dict.values())
    losses.item()
    optimizer.zero_grad()
    losses.backward()
    optimizer.step()
    scheduler.step()


# option -> ``loss.`` fields it sets, and the target ratio of its step time to the default's
OPTIONS: dict[str, tuple[dict[str, object], float]] = {
    "focal": ({"cls": "focal"}, 1.05),
    "ghm": ({"cls": "ghm"}, 1.05),
    "ghm-r": ({"box": "ghm"}, 1.05),
    "qfl": ({"cls": "qfl"}, 1.05),
    "rpn-focal": ({"rpn_cls": "focal"}, 1.05),
    "pisa": ({"sampler": "pisa"}, 1.05),
    "pisa-no-isr-n": ({"sampler": "pisa", "pisa.isr_n": False}, 1.05),  # random negatives
    "ohem": ({"sampler": "ohem"}, 1.3),  # the authors': every proposal scored
    "ohem-pool": ({"sampler": "ohem", "ohem.pool": 256}, 1.3),  # a random 256 per image
}


def bench_options(cfg, names: list[str], images, targets, device, steps: int, warmup: int) -> None:
    """Median step time of each option against the default, in one interleaved run."""
    import dataclasses

    from pedcrowd.engine.loop import train_one_epoch
    from pedcrowd.engine.train import install_crowd_losses
    from pedcrowd.losses.config import set_loss_fields
    from pedcrowd.model import build_model

    torch.manual_seed(cfg.train.seed)
    base = build_model(cfg.model)
    models = {}
    for name in ["default", *names]:
        fields = {} if name == "default" else OPTIONS[name][0]
        option_cfg = dataclasses.replace(cfg, loss=set_loss_fields(cfg.loss, fields))
        model = copy.deepcopy(base)
        install_crowd_losses(model, option_cfg)
        model.to(device).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=cfg.optim.momentum)
        models[name] = (model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 1.0))
    from pedcrowd.engine.loop import amp_dtype

    # as `pedcrowd train`: loss scaling exactly when the step runs in float16 (CUDA AMP)
    scaler = torch.amp.GradScaler(
        device.type, enabled=cfg.train.amp and amp_dtype(device) == torch.float16
    )

    def step(name: str, i: int) -> float:
        model, opt, sched = models[name]
        torch.manual_seed(i)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        train_one_epoch(model, opt, sched, scaler, [(images, targets)], device, 0,
                        amp=cfg.train.amp, grad_clip=cfg.optim.grad_clip)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t

    order = list(models)
    for i in range(warmup):
        for name in order:
            step(name, i)
    times: dict[str, list[float]] = {name: [] for name in order}
    for i in range(steps):
        shift = i % len(order)  # rotate, so that no option always follows the same one
        for name in order[shift:] + order[:shift]:
            times[name].append(step(name, 1000 + i))
    default = statistics.median(times["default"])
    print(f"{'option':10s} {'median ms':>10s} {'ratio':>7s} {'target':>7s}")
    for name in order:
        med = statistics.median(times[name])
        target = "" if name == "default" else f"<= {OPTIONS[name][1]:.2f}"
        print(f"{name:10s} {med * 1000:10.1f} {med / default:7.3f} {target:>7s}")


def bench_amp(cfg, images, targets, device, steps: int, warmup: int) -> None:
    """Median step time of pedcrowd's engine step, train.amp off against on."""
    from pedcrowd.engine.loop import amp_dtype, train_one_epoch
    from pedcrowd.engine.train import build_training_model

    torch.manual_seed(cfg.train.seed)
    model = build_training_model(cfg)
    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=cfg.optim.momentum)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 1.0)
    dtype = amp_dtype(device)
    scalers = {amp: torch.amp.GradScaler(device.type, enabled=amp and dtype == torch.float16)
               for amp in (False, True)}

    def step(amp: bool, i: int) -> float:
        torch.manual_seed(i)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        train_one_epoch(model, opt, sched, scalers[amp], [(images, targets)], device, 0,
                        amp=amp, grad_clip=cfg.optim.grad_clip)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t

    print(f"backbone {cfg.model.backbone}, batch {len(images)}, input {cfg.model.min_size}x"
          f"{cfg.model.max_size}, device {device}, torch threads {torch.get_num_threads()}, "
          f"amp dtype {dtype}")
    for i in range(warmup):
        step(False, i)
        step(True, i)
    times: dict[bool, list[float]] = {False: [], True: []}
    for i in range(steps):
        for amp in ((False, True) if i % 2 == 0 else (True, False)):
            times[amp].append(step(amp, 1000 + i))
    off, on = statistics.median(times[False]), statistics.median(times[True])
    print(f"float32 step median {off * 1000:8.1f} ms  (all {[round(t * 1000) for t in times[False]]})")
    print(f"amp step     median {on * 1000:8.1f} ms  (all {[round(t * 1000) for t in times[True]]})")
    print(f"amp speed-up: {off / on:.3f}x (target >= 1.3x on a GPU)")


def bench_plain(cfg, label: str, images, targets, device, steps: int, warmup: int):
    """Median step time of pedcrowd's engine step against torchvision's reference step on the
    same weights and batch, alternating; returns pedcrowd's model, optimiser, scheduler and
    scaler (the loader phase goes on with them)."""
    from pedcrowd.engine.loop import train_one_epoch
    from pedcrowd.engine.train import build_training_model

    torch.manual_seed(cfg.train.seed)
    ped = build_training_model(cfg)
    plain = build_plain_torchvision(ped, cfg)
    ped.to(device).train()
    plain.to(device).train()

    def sgd(model):
        opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=cfg.optim.momentum,
                              weight_decay=cfg.optim.weight_decay)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 1.0)

    ped_opt, ped_sched = sgd(ped)
    plain_opt, plain_sched = sgd(plain)
    scaler = torch.amp.GradScaler(device.type, enabled=False)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def time_ped(i: int) -> float:
        torch.manual_seed(i)  # the samplers draw the same numbers in both detectors' step i
        sync()
        t = time.perf_counter()
        # pedcrowd's engine step exactly as `pedcrowd train` runs it
        train_one_epoch(ped, ped_opt, ped_sched, scaler, [(images, targets)], device, 0,
                        amp=cfg.train.amp, grad_clip=cfg.optim.grad_clip)
        sync()
        return time.perf_counter() - t

    def time_plain(i: int) -> float:
        torch.manual_seed(i)
        sync()
        t = time.perf_counter()
        plain_step(plain, plain_opt, plain_sched, images,
                   [{k: v for k, v in tt.items() if k in ("boxes", "labels")} for tt in targets])
        sync()
        return time.perf_counter() - t

    print(f"config: {label}, backbone {cfg.model.backbone}, batch {len(images)}, "
          f"input {cfg.model.min_size}x{cfg.model.max_size}, device {device}, "
          f"torch threads {torch.get_num_threads()}")
    for i in range(warmup):
        time_ped(i)
        time_plain(i)
    ped_times, plain_times = [], []
    for i in range(steps):
        # alternate which one goes first, so that neither always follows the other
        if i % 2 == 0:
            ped_times.append(time_ped(1000 + i))
            plain_times.append(time_plain(1000 + i))
        else:
            plain_times.append(time_plain(1000 + i))
            ped_times.append(time_ped(1000 + i))
    ped_med, plain_med = statistics.median(ped_times), statistics.median(plain_times)
    print(f"pedcrowd step    median {ped_med * 1000:8.1f} ms  (min {min(ped_times) * 1000:.1f})")
    print(f"torchvision step median {plain_med * 1000:8.1f} ms  (min {min(plain_times) * 1000:.1f})")
    print(f"ratio pedcrowd / torchvision: {ped_med / plain_med:.3f} "
          f"(overhead {100 * (ped_med / plain_med - 1):+.1f} %, target <= +5 %)")
    return ped, ped_opt, ped_sched, scaler


def bench_loader(cfg, dataset, ped, ped_opt, ped_sched, scaler, device, loader_steps: int) -> None:
    """How long each engine step waits for its batch on the real DataLoader (the config's workers)."""
    from pedcrowd.engine.distributed import DistInfo
    from pedcrowd.engine.loop import make_loader, train_one_epoch

    loader = make_loader(dataset, cfg.train.batch_size, cfg.data.num_workers, cfg.train.seed, 0,
                         DistInfo())
    limited = (b for _, b in zip(range(loader_steps), loader, strict=False))
    records = train_one_epoch(ped, ped_opt, ped_sched, scaler, limited, device, 0,
                              grad_clip=cfg.optim.grad_clip).records
    waits = [r["data_wait_s"] for r in records]
    steps = [r["step_s"] for r in records]
    steady = waits[1:] or waits  # the first batch includes the workers' start-up
    print(f"data wait per step ({cfg.data.num_workers} workers, {len(waits)} steps): "
          f"median {statistics.median(steady) * 1000:.1f} ms, mean {statistics.mean(steady) * 1000:.1f} ms, "
          f"first {waits[0] * 1000:.0f} ms; {100 * sum(steady) / sum(steps[1:] or steps):.1f} % "
          f"of the step time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=None, help="YAML config (default: the CPU demo)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="config override KEY=VALUE (repeatable)")
    parser.add_argument("--loss", default=None, help="crowd-loss preset for the pedcrowd model")
    parser.add_argument("--steps", type=int, default=15, help="timed steps per detector")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per detector first")
    parser.add_argument("--loader-steps", type=int, default=20,
                        help="engine steps on the real DataLoader for the data-wait figure")
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--amp-compare", action="store_true",
                        help="time pedcrowd's step with train.amp off and on instead")
    parser.add_argument("--options", default=None,
                        help="time these sample-imbalance options against the default instead "
                        f"(comma-separated, or all: {', '.join(OPTIONS)})")
    args = parser.parse_args()

    from pedcrowd.data.config import build_dataset
    from pedcrowd.data.synth import ensure_synth
    from pedcrowd.engine.config import resolve_config

    # as `pedcrowd train` resolves its options (the --loss preset first, then each --set)
    cfg = resolve_config(args.config, loss=args.loss, overrides=args.overrides)
    if cfg.synth is not None:
        ensure_synth(cfg.data.root, cfg.synth)
    device = torch.device(args.device)
    bs = cfg.train.batch_size
    dataset = build_dataset(cfg.data, "train", train=True)
    batch = [dataset[i] for i in range(bs)]
    images = [img.to(device) for img, _ in batch]
    targets = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()}
               for _, t in batch]
    if args.options is not None:
        names = list(OPTIONS) if args.options == "all" else args.options.split(",")
        unknown = [n for n in names if n not in OPTIONS]
        if unknown:
            parser.error(f"--options: unknown {', '.join(unknown)} (known: {', '.join(OPTIONS)})")
        print(f"config: {args.config or 'CPU demo'}, batch {bs}, input {cfg.model.min_size}x"
              f"{cfg.model.max_size}, device {device}, torch threads {torch.get_num_threads()}")
        bench_options(cfg, names, images, targets, device, args.steps, args.warmup)
        return

    if args.amp_compare:
        bench_amp(cfg, images, targets, device, args.steps, args.warmup)
        return

    label = args.config or "CPU demo"
    ped, ped_opt, ped_sched, scaler = bench_plain(cfg, label, images, targets, device, args.steps,
                                                  args.warmup)
    if args.loader_steps > 0:
        bench_loader(cfg, dataset, ped, ped_opt, ped_sched, scaler, device, args.loader_steps)

if __name__ == "__main__":
    main()
