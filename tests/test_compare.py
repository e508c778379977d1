"""``pedcrowd compare``: the resampling kernel against brute force, and the command on real data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pedcrowd.cli import app
from pedcrowd.eval.bootstrap import bootstrap_mr, percentile_ci, resample_counts
from pedcrowd.eval.mr import FPPI_REFS_CALTECH as CALTECH_REFS
from pedcrowd.eval.mr import FPPI_REFS_CITYPERSONS as CITYPERSONS_REFS
from pedcrowd.eval.mr import SetupMatches


def matches(image, tp, n_gt, refs) -> SetupMatches:
    """The matching outcome with these arrays; the references name the protocol."""
    protocol = "citypersons" if refs is CITYPERSONS_REFS else "caltech"
    image, tp = np.asarray(image, dtype=np.int64), np.asarray(tp, dtype=bool)
    return SetupMatches("test", protocol, -np.arange(len(image), dtype=float), tp, image, np.asarray(n_gt))

runner = CliRunner()


# --- an independent oracle: expand the resample into real image copies ---------------------


def random_matched_images(rng: np.random.Generator, n_images: int, max_dets: int) -> list[dict]:
    """Per image: score-sorted detections labelled 'tp', 'fp' or 'ign', and a GT count."""
    images = []
    for _ in range(n_images):
        n_gt = int(rng.integers(0, 4))
        n_det = int(rng.integers(0, max_dets + 1))
        scores = np.sort(rng.random(n_det))[::-1]
        labels = rng.choice(["tp", "fp", "fp", "ign"], size=n_det)
        # An image cannot have more TPs than GT boxes.
        n_tp = 0
        for k in range(n_det):
            if labels[k] == "tp":
                if n_tp == n_gt:
                    labels[k] = "fp"
                n_tp += labels[k] == "tp"
        images.append({"n_gt": n_gt, "scores": scores, "labels": labels})
    return images


def official_mr(images: list[dict], refs: np.ndarray, sentinel_final: bool) -> float:
    """docs/evaluation.md section "CityPersons: matching and the miss rate", step by step, on a list of images."""
    scores = np.concatenate([im["scores"] for im in images] + [np.zeros(0)])
    labels = np.concatenate([im["labels"] for im in images] + [np.zeros(0, dtype="<U3")])
    order = np.argsort(-scores, kind="mergesort")
    labels = labels[order]
    labels = labels[labels != "ign"]
    n_gt = sum(im["n_gt"] for im in images)
    if n_gt == 0:
        return float("nan")
    tp = np.cumsum(labels == "tp")
    fp = np.cumsum(labels == "fp")
    recall = tp / n_gt
    fppi = fp / len(images)
    got = []
    for ref in refs:
        if len(recall) == 0:
            got.append(0.0)
            continue
        i = np.searchsorted(fppi, ref, side="right") - 1
        if i < 0:
            got.append(recall[-1] if sentinel_final else 0.0)
        else:
            got.append(recall[i])
    with np.errstate(divide="ignore"):
        return float(np.exp(np.mean(np.log(1 - np.array(got)))))


def to_matched(images: list[dict], refs: np.ndarray, sentinel_final: bool) -> SetupMatches:
    img = np.concatenate([np.full(len(im["scores"]), i) for i, im in enumerate(images)])
    scores = np.concatenate([im["scores"] for im in images])
    labels = np.concatenate([im["labels"] for im in images])
    order = np.argsort(-scores, kind="mergesort")
    img, labels = img[order], labels[order]
    keep = labels != "ign"
    m = matches(img[keep], labels[keep] == "tp", [im["n_gt"] for im in images], refs)
    assert m.sentinel_final == sentinel_final and m.refs is refs
    return m


@pytest.mark.parametrize(
    ("n_images", "max_dets", "refs", "sentinel_final"),
    [
        (30, 5, CITYPERSONS_REFS, True),  # N < 100: the sentinel quirk shows up
        (30, 5, CALTECH_REFS, False),
        # ~3000 FPs: only the head of the ranking is accumulated (FPPI <= 1).
        (100, 60, CITYPERSONS_REFS, True),
    ],
)
def test_bootstrap_kernel_equals_expanded_resamples(n_images, max_dets, refs, sentinel_final):
    rng = np.random.default_rng(n_images)
    images = random_matched_images(rng, n_images, max_dets)
    matched = to_matched(images, refs, sentinel_final)
    counts = resample_counts(n_images, 40, seed=3)
    # A tiny chunk size exercises the chunking too.
    got = bootstrap_mr(matched, counts, chunk_elems=50)
    ones = bootstrap_mr(matched, np.ones((1, n_images), np.int32))[0]
    np.testing.assert_allclose(ones, official_mr(images, refs, sentinel_final), rtol=1e-12)
    for b in range(len(counts)):
        expanded = [images[i] for i in range(n_images) for _ in range(counts[b, i])]
        want = official_mr(expanded, refs, sentinel_final)
        np.testing.assert_allclose(got[b], want, rtol=1e-12, equal_nan=True)


def test_bootstrap_kernel_sentinel_example():
    # docs/evaluation.md section "Quirks kept on purpose": 50 images, 2 GT, an FP at 0.9 then a TP:
    # Python 0.5, Matlab 0.5 ** (7 / 9).
    images = [{"n_gt": 2, "scores": np.array([0.9, 0.8]), "labels": np.array(["fp", "tp"])}]
    images += [{"n_gt": 0, "scores": np.zeros(0), "labels": np.zeros(0, "<U3")}] * 49
    ones = np.ones((1, 50), np.int32)
    py = bootstrap_mr(to_matched(images, CITYPERSONS_REFS, True), ones)[0]
    ml = bootstrap_mr(to_matched(images, CALTECH_REFS, False), ones)[0]
    assert py == pytest.approx(0.5, abs=1e-12)
    assert ml == pytest.approx(0.5 ** (7 / 9), abs=1e-12)


def test_bootstrap_kernel_edge_cases():
    empty = matches(np.zeros(0, np.int64), np.zeros(0, bool), np.array([1, 0]), CITYPERSONS_REFS)
    # No detections: MR 1; a resample without GT: NaN (excluded from intervals).
    got = bootstrap_mr(empty, np.array([[2, 0], [1, 1], [0, 2]], np.int32))
    assert got[0] == 1.0 and got[1] == 1.0 and np.isnan(got[2])
    # All GT found before any FP: miss 0 at every ref, MR exactly 0 (no clamp).
    perfect = matches(np.array([0, 1]), np.array([True, False]), np.array([1, 0]), CITYPERSONS_REFS)
    assert bootstrap_mr(perfect, np.ones((1, 2), np.int32))[0] == 0.0


def test_resample_counts_deterministic_and_sized():
    a, b = resample_counts(7, 100, seed=5), resample_counts(7, 100, seed=5)
    assert (a == b).all() and (a.sum(axis=1) == 7).all()
    assert not (a == resample_counts(7, 100, seed=6)).all()
    # Each image is drawn N * B / N = B times on average.
    assert abs(a.sum(axis=0).mean() - 100) < 1e-9
    assert percentile_ci(np.array([np.nan, 1.0, 2.0, 3.0])) == pytest.approx((1.05, 2.95))


# --- the command on the NMS-Ped CityPersons detections ---------------------------------------


@pytest.fixture(scope="module")
def cp(shared_data: Path, tmp_path_factory) -> dict[str, Path]:
    """GT, the NMS-Ped detections, and a copy with scores shuffled within each image."""
    dets_path = shared_data / "nmsped" / "citypersons_val_dets.json"
    dets = json.loads(dets_path.read_text())
    rng = np.random.default_rng(0)
    by_image: dict[int, list[int]] = {}
    for i, d in enumerate(dets):
        by_image.setdefault(d["image_id"], []).append(i)
    for idx in by_image.values():
        scores = [dets[i]["score"] for i in idx]
        rng.shuffle(scores)
        for i, s in zip(idx, scores, strict=True):
            dets[i]["score"] = s
    out = tmp_path_factory.mktemp("cmp")
    (out / "shuffled.json").write_text(json.dumps(dets))
    return {
        "gt": shared_data / "citypersons" / "val_gt.json",
        "dets": dets_path,
        "shuffled": out / "shuffled.json",
        "expected": shared_data / "nmsped" / "EXPECTED.json",
        "tmp": out,
    }


def test_bootstrap_of_all_ones_is_the_official_mr(cp):
    from pedcrowd.eval import load_ground_truth, match_setup
    from pedcrowd.formats.detections import read_detections

    expected = json.loads(cp["expected"].read_text())["mr"]
    gt = load_ground_truth(cp["gt"])
    dets = read_detections(cp["dets"], gt.records)
    for name, want in expected.items():
        m = match_setup(gt, dets, name)
        got = bootstrap_mr(m, np.ones((1, len(gt.records)), np.int32))[0]
        assert got == pytest.approx(want, abs=1e-12), name


def test_compare_degraded_run_is_clearly_worse(cp):
    result = runner.invoke(
        app,
        [
            "compare",
            f"nmsped={cp['dets']}",
            f"shuffled={cp['shuffled']}",
            "--gt",
            str(cp["gt"]),
            "--format",
            "json",
            "--setups",
            "Reasonable",
            "--setups",
            "Heavy",
            "--bootstrap",
            "1000",
            "--seed",
            "1",
            "--no-ap",
        ],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    expected = json.loads(cp["expected"].read_text())["mr"]
    assert doc["protocol"] == "citypersons"
    assert [r["name"] for r in doc["runs"]] == ["nmsped", "shuffled"]
    base, worse = doc["runs"]
    for setup in ("Reasonable", "Heavy"):
        assert set(base["results"][setup]) == {"mr", "ci"}
        assert base["results"][setup]["mr"] == pytest.approx(expected[setup], abs=1e-12)
        lo, hi = base["results"][setup]["ci"]
        assert lo < expected[setup] < hi and hi - lo < 0.15
        assert base["diff_vs_first"][setup] == {"delta": 0.0, "ci": [0.0, 0.0]}
        d = worse["diff_vs_first"][setup]
        assert d["delta"] == pytest.approx(
            worse["results"][setup]["mr"] - expected[setup], abs=1e-12
        )
        # Shuffling scores inside images ruins the ranking: far worse, interval above 0.
        assert d["delta"] > 0.3 and d["ci"][0] > 0.2 and d["ci"][0] <= d["delta"] <= d["ci"][1]


def test_compare_identical_inputs_differ_by_exactly_zero(cp):
    from pedcrowd.compare import compare

    c = compare(
        [("a", cp["dets"]), ("b", cp["dets"])],
        cp["gt"],
        setups=["Reasonable_small"],
        bootstrap=300,
        seed=3,
        with_ap=False,
    )
    b = c.runs[1]
    assert b.delta == {"Reasonable_small": 0.0}
    assert b.delta_ci == {"Reasonable_small": (0.0, 0.0)}
    assert b.ci == c.runs[0].ci
    # Same seed, same intervals; another seed, other intervals.
    again = compare(
        [("a", cp["dets"])],
        cp["gt"],
        setups=["Reasonable_small"],
        bootstrap=300,
        seed=3,
        with_ap=False,
    )
    other = compare(
        [("a", cp["dets"])],
        cp["gt"],
        setups=["Reasonable_small"],
        bootstrap=300,
        seed=4,
        with_ap=False,
    )
    assert again.runs[0].ci == c.runs[0].ci != other.runs[0].ci


def test_compare_formats_run_dir_and_plot(cp):
    import csv
    import io
    import shutil

    run_dir = cp["tmp"] / "run_a"
    run_dir.mkdir(exist_ok=True)
    shutil.copy(cp["dets"], run_dir / "val_dets.json")
    args = [
        str(run_dir),
        f"shuf={cp['shuffled']}",
        "--gt",
        str(cp["gt"]),
        "--setups",
        "Reasonable",
        "--setups",
        "Bare",
        "--bootstrap",
        "200",
        "--no-ap",
    ]
    plot = cp["tmp"] / "cmp.png"
    as_json = json.loads(runner.invoke(app, ["compare", *args, "--format", "json"]).stdout)
    table = runner.invoke(app, ["compare", *args, "--plot", str(plot)])
    md = runner.invoke(app, ["compare", *args, "--format", "markdown"])
    as_csv = runner.invoke(app, ["compare", *args, "--format", "csv"])
    for r in (table, md, as_csv):
        assert r.exit_code == 0, r.output
    # The run directory is named after its folder and read through val_dets.json.
    assert [r["name"] for r in as_json["runs"]] == ["run_a", "shuf"]
    rea = 100 * as_json["runs"][0]["results"]["Reasonable"]["mr"]
    assert f"{rea:.2f}" in table.stdout and f"**{rea:.2f}" in md.stdout
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [(r["run"], r["setup"]) for r in rows] == [
        ("run_a", "Reasonable"),
        ("run_a", "Bare"),
        ("shuf", "Reasonable"),
        ("shuf", "Bare"),
    ]
    for row in rows:
        run = next(r for r in as_json["runs"] if r["name"] == row["run"])
        assert float(row["mr"]) == run["results"][row["setup"]]["mr"]
        assert float(row["delta_lo"]) == run["diff_vs_first"][row["setup"]]["ci"][0]
    assert plot.stat().st_size > 20_000
    # --json is --format json; the document also says what was compared.
    alias = json.loads(runner.invoke(app, ["compare", *args, "--json"]).stdout)
    assert alias == as_json
    assert as_json["setups"] == ["Reasonable", "Bare"] and as_json["n_images"] == 500
    assert (as_json["bootstrap"], as_json["seed"]) == (200, 0)
    assert [r["ap"] for r in as_json["runs"]] == [None, None]  # --no-ap
    # An unwritable plot is one line and exit 2, not a traceback.
    bad = runner.invoke(app, ["compare", *args, "--plot", str(cp["dets"] / "x.png")])
    assert bad.exit_code == 2 and "cannot write the plot" in bad.stderr


def test_compare_ap_column(cp):
    from pedcrowd.compare import compare
    from pedcrowd.compare_render import to_markdown
    from pedcrowd.eval import coco_ap, load_ground_truth
    from pedcrowd.formats.detections import read_detections

    # pycocotools takes ~15 s on the whole val set here: use its first 40 images.
    full = json.loads(cp["gt"].read_text())
    keep = {im["id"] for im in full["images"][:40]}
    small = dict(full, images=full["images"][:40],
                 annotations=[a for a in full["annotations"] if a["image_id"] in keep])
    gt_path = cp["tmp"] / "gt40.json"
    gt_path.write_text(json.dumps(small))
    paths = {}
    for key in ("dets", "shuffled"):
        dets = [d for d in json.loads(cp[key].read_text()) if d["image_id"] in keep]
        paths[key] = cp["tmp"] / f"{key}40.json"
        paths[key].write_text(json.dumps(dets))
    c = compare([("base", paths["dets"]), ("shuf", paths["shuffled"])], gt_path,
                setups=["Reasonable"], bootstrap=0)
    gt = load_ground_truth(gt_path)
    want = coco_ap(gt.records, read_detections(paths["dets"], gt.records))["AP"]
    assert c.runs[0].ap == want and 0.2 < want < 0.8
    # Shuffled scores also ruin AP; no bootstrap: no intervals anywhere.
    assert c.runs[1].ap < want - 0.1
    assert c.runs[0].ci == {"Reasonable": None} and c.runs[1].delta_ci == {"Reasonable": None}
    assert f"| {100 * want:.2f} |" in to_markdown(c)


def test_compare_bad_input(cp, tmp_path: Path):
    result = runner.invoke(app, ["compare", str(tmp_path), "--gt", str(cp["gt"])])
    assert result.exit_code == 2 and "has no val_dets.json" in result.output
    result = runner.invoke(app, ["compare", str(cp["dets"]), "--gt", str(cp["gt"]), "-f", "xml"])
    assert result.exit_code == 2 and "--format xml" in result.output


def test_compare_caltech_resize_switch_matches_eval(shared_data: Path):
    from pedcrowd.compare import compare

    # the Pedestron cache of the new annotations: the two variants differ there
    expected = json.loads((shared_data / "caltech" / "EXPECTED.json").read_text())["mr"]["new-pedestron"]
    kwargs = dict(protocol="caltech", images=shared_data / "caltech" / "test_images.json",
                  bootstrap=0, with_ap=False)
    runs = [("nmsped", shared_data / "caltech" / "nmsped")]
    gt = shared_data / "caltech" / "gt" / "new-pedestron" / "gt-Reasonable.mat"
    resized = compare(runs, gt, **kwargs)
    plain = compare(runs, gt, resize_dets=False, **kwargs)
    assert abs(resized.runs[0].mr["Reasonable"] - expected["dt_resize"]["Reasonable"]) < 1e-9
    assert abs(plain.runs[0].mr["Reasonable"] - expected["no_dt_resize"]["Reasonable"]) < 1e-9
    assert expected["dt_resize"]["Reasonable"] != expected["no_dt_resize"]["Reasonable"]
