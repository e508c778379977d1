"""Time and peak memory of pedcrowd's CrowdHuman evaluation against the plain per-image loops.

A CrowdHuman-sized synthetic set (default 4,370 images, 100k GT boxes, 500k
detections; ``pedcrowd.reference.crowdhuman`` writes it) is evaluated for AP,
MR^-2 and JI by pedcrowd (``pedcrowd.eval.crowdhuman``) and by the reference
loops (``pedcrowd.reference.crowdhuman``), each in its own fresh process,
JSON loading included. Peak memory is the child's maximum resident set size.

    python scripts/bench_crowdhuman.py [--images 4370 --gt 100000 --dets 500000] [--repeat 3] [--ref-repeat 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_one(impl: str, data: Path) -> dict:
    """Evaluate once in this process; the numbers and timings as a dict."""
    gt, dets, images = data / "gt.odgt", data / "dets.json", data / "images.json"
    if impl == "pedcrowd":
        import scipy.optimize  # noqa: F401  (imports are not timed, for either side)
        import scipy.sparse.csgraph  # noqa: F401

        from pedcrowd.eval.crowdhuman import evaluate_crowdhuman, load_crowdhuman

        start, start_cpu = time.perf_counter(), time.process_time()
        loaded = load_crowdhuman(gt, dets, images)
        load_cpu = time.process_time() - start_cpu
        r = evaluate_crowdhuman(*loaded)
        ap, mr, ji = r.ap, r.mr, r.ji
    else:
        import scipy.optimize  # noqa: F401

        from pedcrowd.reference.crowdhuman import load, reference_apmr, reference_ji

        start, start_cpu = time.perf_counter(), time.process_time()
        loaded = load(gt, dets, images)
        load_cpu = time.process_time() - start_cpu
        ap, mr = reference_apmr(loaded)
        ji, _ = reference_ji(loaded)
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"ap": ap, "mr": mr, "ji": ji, "wall": wall, "cpu": cpu, "load_cpu": load_cpu, "rss_mib": rss}


def child(impl: str, data: Path) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", impl, "--data", str(data)],
        check=True, capture_output=True, text=True, env=None,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4370)
    parser.add_argument("--gt", type=int, default=100_000)
    parser.add_argument("--dets", type=int, default=500_000)
    parser.add_argument("--repeat", type=int, default=3, help="pedcrowd runs (the best counts)")
    parser.add_argument("--ref-repeat", type=int, default=1, help="reference runs (the best counts; ~17 s each)")
    parser.add_argument("--data", type=Path, default=None, help="reuse / write the synthetic set here")
    parser.add_argument("--child", choices=["pedcrowd", "reference"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(args.child, args.data)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or Path(tmp)
        if not (data / "dets.json").exists():
            from pedcrowd.reference.crowdhuman import synthetic_crowdhuman

            synthetic_crowdhuman(data, args.images, args.gt, args.dets, seed=0)
        size = (data / "dets.json").stat().st_size / 2**20
        ours = [child("pedcrowd", data) for _ in range(args.repeat)]
        ref = min((child("reference", data) for _ in range(args.ref_repeat)), key=lambda r: r["wall"])
    best = min(ours, key=lambda r: r["wall"])
    diff = max(abs(best[k] - ref[k]) for k in ("ap", "mr", "ji"))
    print(f"set      : {args.images} images, {args.gt} GT, {args.dets} detections ({size:.0f} MiB of JSON)")
    print(f"pedcrowd : best {best['wall']:.2f} s wall, {min(r['cpu'] for r in ours):.2f} s CPU over {args.repeat} "
          f"runs; peak RSS {best['rss_mib']:.0f} MiB (AP, MR^-2, JI; JSON loading included)")
    print(f"reference: best {ref['wall']:.2f} s wall, {ref['cpu']:.2f} s CPU over {args.ref_repeat} runs; "
          f"peak RSS {ref['rss_mib']:.0f} MiB (plain per-image loops)")
    cpu = min(r["cpu"] for r in ours)
    print(f"ratio    : {ref['wall'] / best['wall']:.1f}x faster (wall), {ref['cpu'] / cpu:.1f}x (CPU); "
          f"peak memory ours / reference = {best['rss_mib'] / ref['rss_mib']:.2f}; "
          f"max |difference| of AP, MR, JI = {diff:.1e}")
    ours_eval = min(r["cpu"] - r["load_cpu"] for r in ours)
    print(f"stages   : reading the files {min(r['load_cpu'] for r in ours):.2f} s CPU (reference "
          f"{ref['load_cpu']:.2f} s), evaluating {ours_eval:.2f} s CPU (reference {ref['cpu'] - ref['load_cpu']:.2f} s: "
          f"{(ref['cpu'] - ref['load_cpu']) / ours_eval:.1f}x)")
    print(f"values   : AP {100 * best['ap']:.2f} %, MR^-2 {100 * best['mr']:.2f} %, JI {100 * best['ji']:.2f} %")


if __name__ == "__main__":
    main()
