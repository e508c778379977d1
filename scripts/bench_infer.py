"""Time ``pedcrowd infer`` against a bare forward loop of the same model, in one run.

The tool's time includes everything ``pedcrowd infer`` does after loading the
model: finding the files, decoding them in background threads, batching, the
forward passes, converting boxes to the results format and writing the JSON.
The bare loop runs only the forward passes, on tensors decoded beforehand, with
the same batch size. Overhead = tool / bare - 1 (target: at most 10 %). Both are
run alternately ``--repeats`` times and the fastest of each is kept, because
the machine is shared. Then frames/s on a short generated video.

    python scripts/bench_infer.py                      # CPU demo detector, synthetic images
    python scripts/bench_infer.py --weights runs/demo --device cuda --images 64
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import torch


def make_images(root: Path, n: int, height: int, width: int) -> Path:
    """n synthetic street scenes (the built-in data generator) as PNGs."""
    from pedcrowd.data.synth import SynthConfig, generate

    generate(root, SynthConfig(train_images=0, val_images=n, height=height, width=width))
    return root / "leftImg8bit" / "val"


def make_video(path: Path, frames: list[Path], n: int, fps: float = 10.0) -> Path:
    """An mp4 cycling through the given images."""
    first = cv2.imread(str(frames[0]))
    h, w = first.shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for i in range(n):
        writer.write(cv2.imread(str(frames[i % len(frames)])))
    writer.release()
    return path


def make_run(root: Path, min_size: int, max_size: int) -> Path:
    """A checkpoint of the CPU demo detector (random weights: speed does not depend on them)."""
    from pedcrowd.engine.checkpoint import save_checkpoint
    from pedcrowd.engine.config import Config, config_to_dict
    from pedcrowd.model import build_model

    cfg = Config()
    cfg.model.min_size, cfg.model.max_size = min_size, max_size
    torch.manual_seed(0)
    model = build_model(cfg.model)
    save_checkpoint(root / "run" / "best.pt", model=model.state_dict(), config=config_to_dict(cfg))
    return root / "run"


def bare_loop(model: torch.nn.Module, tensors: list[torch.Tensor], batch_size: int,
              device: torch.device) -> float:
    """Seconds for the forward passes alone (inputs already decoded; moved per batch)."""
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(tensors), batch_size):
            model([t.to(device) for t in tensors[i : i + batch_size]])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _fmt(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.3f}" for v in values) + "]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", help="run directory or checkpoint (default: the CPU demo detector)")
    ap.add_argument("--images", type=int, default=24, help="number of images")
    ap.add_argument("--height", type=int, default=384)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--video-frames", type=int, default=40)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads for both (default: torch's); on a loaded shared "
                    "machine use 1: spin-waiting OpenMP workers make multi-thread timings erratic")
    ap.add_argument("--workers", type=int, default=None,
                    help="pedcrowd infer's decoding threads (default: its own choice, "
                    "pedcrowd.media.decode.decode_workers)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from pedcrowd.data.datasets import bgr_to_tensor
    from pedcrowd.infer import infer, load_model, resolve_device

    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = make_images(tmp / "data", args.images, args.height, args.width)
        weights = args.weights or make_run(tmp, args.height // 2, args.width // 2)
        model = load_model(weights, device)
        files = sorted(folder.rglob("*.png"))
        tensors = [bgr_to_tensor(cv2.imread(str(p))) for p in files]
        from pedcrowd.media.decode import decode_workers

        workers = decode_workers(device.type) if args.workers is None else args.workers
        print(f"device {device}, {len(files)} images {args.height}x{args.width}, "
              f"batch {args.batch_size}, torch threads {torch.get_num_threads()}, "
              f"decode threads {workers} (0: between batches)")

        bare_loop(model, tensors[: args.batch_size], args.batch_size, device)  # warm-up
        # Time the forward passes inside the tool too (hooks, no wrapper): what the
        # tool adds around them is measured directly, whatever the machine's noise.
        model_time = [0.0]
        model.register_forward_pre_hook(lambda *_: model_time.__setitem__(0, model_time[0] - _now(device)))
        model.register_forward_hook(lambda *_: model_time.__setitem__(0, model_time[0] + _now(device)))
        tool_times, bare_times, outside = [], [], []
        for _ in range(args.repeats):
            bare_times.append(bare_loop(model, tensors, args.batch_size, device))
            model_time[0] = 0.0
            res = infer([folder], model=model, out_file=tmp / "dets.json",
                        batch_size=args.batch_size, device=str(device), workers=workers)
            tool_times.append(res.seconds)
            outside.append(res.seconds - model_time[0])
        bare, tool = min(bare_times), min(tool_times)
        n = len(files)
        print(f"bare forward loop : {bare:7.3f} s  {n / bare:7.2f} images/s  (all {_fmt(bare_times)})")
        print(f"pedcrowd infer    : {tool:7.3f} s  {n / tool:7.2f} images/s  (all {_fmt(tool_times)})")
        print(f"overhead          : {100 * (tool / bare - 1):+.1f} %  (fastest vs fastest; target <= 10 %)")
        print(f"ratio             : {tool / bare:.3f}x the bare loop")
        print(f"time outside the forward passes in infer: {_fmt(outside)} s, "
              f"{100 * min(outside) / bare:.1f} % of the bare loop")

        video = make_video(tmp / "clip.mp4", files, args.video_frames)
        res = infer([video], model=model, out_file=tmp / "video.json",
                    batch_size=args.batch_size, device=str(device), workers=workers)
        print(f"video             : {res.n_images} frames in {res.seconds:.3f} s, "
              f"{res.images_per_s:.2f} frames/s")


if __name__ == "__main__":
    main()
