"""Time pedcrowd's MR^-2 against the plain-loop reference implementation
(``pedcrowd.reference.mr``).

Both evaluate the seven CityPersons setups of the NMS-Ped val detections
(500 images, 34k detections), JSON loading included, in this one process.

    python scripts/bench_eval.py [--data ../shared/data] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_pedcrowd(gt_path: Path, dets_path: Path) -> dict[str, float | None]:
    from pedcrowd.eval import evaluate, load_ground_truth
    from pedcrowd.formats.detections import read_detections

    gt = load_ground_truth(gt_path)
    dets = read_detections(dets_path, gt.records)
    return {name: r.mr for name, r in evaluate(gt, dets).results.items()}


def run_reference(gt_path: Path, dets_path: Path) -> dict[str, float | None]:
    import json

    from pedcrowd.reference.mr import CP_SETUPS, dets_from_json, reference_mr

    doc = json.loads(gt_path.read_text())
    by_image: dict[int, list] = {im["id"]: [] for im in doc["images"]}
    for a in doc["annotations"]:
        if a["category_id"] == 1:
            by_image[a["image_id"]].append(a)
    images = [
        {"id": i, "boxes": [a["bbox"] for a in anns], "ignore": [a.get("ignore", 0) for a in anns],
         "heights": [a["height"] for a in anns], "vis": [a["vis_ratio"] for a in anns]}
        for i, anns in by_image.items()
    ]
    dets = dets_from_json(dets_path)
    return {setup[0]: reference_mr(images, dets, setup)[0] for setup in CP_SETUPS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--repeat", type=int, default=5, help="pedcrowd runs (the reference runs once)")
    args = parser.parse_args()
    gt_path = args.data / "citypersons" / "val_gt.json"
    dets_path = args.data / "nmsped" / "citypersons_val_dets.json"

    run_pedcrowd(gt_path, dets_path)  # warm-up: imports, page cache
    times, cpu = [], []
    for _ in range(args.repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        ours = run_pedcrowd(gt_path, dets_path)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    start, start_cpu = time.perf_counter(), time.process_time()
    ref = run_reference(gt_path, dets_path)
    t_ref, cpu_ref = time.perf_counter() - start, time.process_time() - start_cpu

    diff = max(abs(ours[k] - ref[k]) for k in ref)
    best, median = min(times), statistics.median(times)
    # CPU time is reported too: on a shared machine wall-clock includes waiting for a core.
    print(f"pedcrowd : best {best:.3f} s, median {median:.3f} s wall; best {min(cpu):.3f} s CPU"
          f" over {args.repeat} runs (7 setups, JSON loading included)")
    print(f"reference: {t_ref:.3f} s wall, {cpu_ref:.3f} s CPU (plain per-image, per-detection loops)")
    print(f"ratio    : {t_ref / best:.1f}x faster (wall, best), {t_ref / median:.1f}x (wall, median), "
          f"{cpu_ref / min(cpu):.1f}x (CPU); max |MR difference| = {diff:.2e}")
    for name in ref:
        print(f"  {name:22s} {100 * ours[name]:6.2f} %")


if __name__ == "__main__":
    main()
