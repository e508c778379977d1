"""Synthetic crowd generator: visibility from masks, determinism, file formats, self-evaluation."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from pedcrowd.data.synth import (
    SynthConfig,
    ensure_synth,
    generate,
    generator_digest,
    read_synth_meta,
)
from pedcrowd.data.synth_draw import Sprite
from pedcrowd.data.synth_scene import Placed, compose, layout_scene, render_scene
from pedcrowd.formats.citypersons import read_citypersons_json, read_citypersons_mat
from pedcrowd.formats.citypersons_write import write_citypersons_json, write_citypersons_mat
from pedcrowd.formats.records import GROUP, IGNORE_REGION, PEDESTRIAN, RIDER, ImageRecord

TINY = SynthConfig(train_images=3, val_images=4, height=128, width=256, seed=7)


def _rect(x0, y0, w, h, value=255):
    return Sprite(x0, y0, np.full((h, w, 3), value, np.uint8), np.ones((h, w), bool))


# ------------------------------------------------------------- visibility


def test_visible_box_hand_worked_occlusions():
    bg = np.zeros((100, 100, 3), np.uint8)
    person = Placed(_rect(20, 10, 16, 40, 200), depth=50, box=(20, 10, 16, 40))
    # A car in front (nearer: larger depth) hides rows 35..49 of the person: 25 of 40 rows show.
    car = Placed(_rect(10, 35, 50, 20, 90), depth=60)
    comp = compose(bg, [person, car])
    assert comp.vis_boxes[0] == (20, 10, 16, 25)
    assert comp.visible_pixels[0] == pytest.approx(25 / 40)
    # Behind the person (smaller depth) the same car hides nothing.
    comp = compose(bg, [person, Placed(car.sprite, depth=40)])
    assert comp.vis_boxes[0] == (20, 10, 16, 40)
    assert comp.visible_pixels[0] == 1.0
    # A pole through the middle hides 4 of 16 columns but neither side: box unchanged.
    comp = compose(bg, [person, Placed(_rect(26, 0, 4, 100), depth=70)])
    assert comp.vis_boxes[0] == (20, 10, 16, 40)
    assert comp.visible_pixels[0] == pytest.approx(12 / 16)
    # Hidden on the left by a wall: columns 20..27 covered, 8 of 16 remain.
    comp = compose(bg, [person, Placed(_rect(0, 0, 28, 100), depth=70)])
    assert comp.vis_boxes[0] == (28, 10, 8, 40)
    # Fully hidden: no visible box.
    comp = compose(bg, [person, Placed(_rect(0, 0, 100, 100), depth=70)])
    assert comp.vis_boxes[0] is None and comp.visible_pixels[0] == 0.0


def test_visible_pixels_match_the_drawn_image():
    """Removing a person changes exactly the pixels the owner map says it shows."""
    cfg = SynthConfig(height=192, width=384, density=10, occlusion=0.9)
    scene = layout_scene(np.random.default_rng(3), 192, 384, cfg)
    comp = compose(scene.background, scene.placed)
    people = [i for i, p in enumerate(scene.placed) if p.box is not None]
    assert len(people) >= 5
    occluded = 0
    for i in people:
        sp = scene.placed[i].sprite
        blank = Sprite(sp.x0, sp.y0, sp.color, np.zeros_like(sp.mask))
        without = compose(
            scene.background, [*scene.placed[:i], Placed(blank, 0.0), *scene.placed[i + 1 :]]
        )
        changed = (comp.image != without.image).any(-1)
        visible = comp.owner == i
        # A pixel can keep its value by chance when colours coincide; nearly all must agree.
        assert (changed & ~visible).sum() == 0
        assert visible.sum() - changed.sum() <= 0.01 * max(visible.sum(), 1)
        assert comp.visible_pixels[i] == pytest.approx(visible.sum() / sp.mask.sum())
        occluded += comp.visible_pixels[i] < 0.9
        # The visible box lies in the full box and contains every visible pixel inside it.
        bx, by, bw, bh = scene.placed[i].box
        vb = comp.vis_boxes[i]
        if vb is None:
            continue
        vx, vy, vw, vh = vb
        assert bx <= vx and by <= vy and vx + vw <= bx + bw and vy + vh <= by + bh
        rows, cols = np.nonzero(visible[by : by + bh, bx : bx + bw])
        assert rows.min() + by >= vy and rows.max() + by < vy + vh
        assert cols.min() + bx >= vx and cols.max() + bx < vx + vw
        if comp.visible_pixels[i] == 1.0:
            assert vb == scene.placed[i].box
    assert occluded >= 2  # the scene does contain occlusion


def test_record_vis_ratio_is_box_area_ratio():
    image, rec = render_scene(np.random.default_rng(11), 192, 384, SynthConfig(), 1, "c/c_0_0.png")
    assert image.shape == (192, 384, 3) and image.dtype == np.uint8
    ped = rec.categories == PEDESTRIAN
    assert ped.sum() > 0
    area = lambda b: b[:, 2] * b[:, 3]  # noqa: E731
    np.testing.assert_allclose(rec.vis_ratios[ped], area(rec.vis_boxes[ped]) / area(rec.boxes[ped]))
    np.testing.assert_array_equal(rec.heights, rec.boxes[:, 3])
    assert np.all(rec.ignore == ~ped)
    # Full boxes have the CityPersons aspect 0.41 (to integer rounding) and stay in the image.
    np.testing.assert_allclose(rec.boxes[ped, 2], 0.41 * rec.boxes[ped, 3], atol=0.51)
    assert np.all(rec.boxes[ped, 0] >= 0) and np.all(rec.boxes[ped, 0] + rec.boxes[ped, 2] <= 384)


# --------------------------------------------------------------- writers


def _hand_record() -> ImageRecord:
    return ImageRecord(
        id=1,
        file_name="town/town_000000_000001_leftImg8bit.png",
        boxes=np.array(
            [[10, 20, 41, 100], [50, 60, 8, 20], [70, 5, 30, 40], [100, 10, 20, 49]], float
        ),
        vis_boxes=np.array(
            [[10, 20, 41, 50], [50, 60, 8, 20], [0, 0, 0, 0], [100, 10, 20, 40]], float
        ),
        categories=np.array([PEDESTRIAN, IGNORE_REGION, GROUP, RIDER], dtype=object),
        width=256,
        height=128,
    )


def test_writers_hand_written_rows(tmp_path):
    empty = ImageRecord(
        id=2, file_name="town/town_000000_000002_leftImg8bit.png", width=256, height=128
    )
    write_citypersons_mat(tmp_path / "a.mat", [_hand_record(), empty], "val")
    m = scipy.io.loadmat(tmp_path / "a.mat")
    cells = m["anno_val_aligned"]
    assert cells.shape == (1, 2)
    entry = cells[0, 0][0, 0]
    assert (
        entry["cityname"][0] == "town"
        and entry["im_name"][0] == "town_000000_000001_leftImg8bit.png"
    )
    assert entry["bbs"].dtype == np.uint16
    np.testing.assert_array_equal(
        entry["bbs"],
        [
            [1, 10, 20, 41, 100, 24000, 10, 20, 41, 50],
            [0, 50, 60, 8, 20, 0, 50, 60, 8, 20],
            [5, 70, 5, 30, 40, 24, 0, 0, 0, 0],
            [2, 100, 10, 20, 49, 25000, 100, 10, 20, 40],
        ],
    )
    assert cells[0, 1][0, 0]["bbs"].shape == (0, 10)

    write_citypersons_json(tmp_path / "gt.json", [_hand_record(), empty])
    gt = json.loads((tmp_path / "gt.json").read_text())
    assert [c["id"] for c in gt["categories"]] == [1, 2, 3, 4, 5, 0]
    assert gt["images"] == [
        {"id": 1, "im_name": "town_000000_000001_leftImg8bit.png", "height": 128, "width": 256},
        {"id": 2, "im_name": "town_000000_000002_leftImg8bit.png", "height": 128, "width": 256},
    ]
    a = gt["annotations"]
    assert [x["id"] for x in a] == [1, 2, 3, 4] and {x["category_id"] for x in a} == {1}
    assert [x["ignore"] for x in a] == [0, 1, 1, 1] and [x["iscrowd"] for x in a] == [0, 0, 1, 0]
    assert a[0]["vis_ratio"] == 0.5 and a[1]["vis_ratio"] == 1 and a[2]["vis_ratio"] == 0
    assert a[3]["vis_ratio"] == float(f"{800 / 980:.12g}")
    assert a[2]["vis_bbox"] == [0, 0, 0, 0] and a[3]["height"] == 49


def test_mat_structure_matches_the_official_file(tmp_path, shared_data):
    real = scipy.io.loadmat(shared_data / "citypersons" / "anno_val.mat")["anno_val_aligned"]
    write_citypersons_mat(tmp_path / "a.mat", [_hand_record()], "val")
    ours = scipy.io.loadmat(tmp_path / "a.mat")["anno_val_aligned"]
    assert ours.dtype == real.dtype and ours.ndim == real.ndim
    r, o = real[0, 0], ours[0, 0]
    assert o.shape == r.shape and o.dtype.names == r.dtype.names
    for name in r.dtype.names:
        assert o[0, 0][name].dtype.kind == r[0, 0][name].dtype.kind
        assert o[0, 0][name].ndim == r[0, 0][name].ndim


# --------------------------------------------------------- generated sets


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "set"
    generate(out, TINY)
    return out


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_layout_and_meta(tiny_set):
    files = sorted(str(p.relative_to(tiny_set)) for p in tiny_set.rglob("*") if p.is_file())
    pngs = [f for f in files if f.endswith("_leftImg8bit.png")]
    assert len([f for f in pngs if f.startswith("leftImg8bit/train/")]) == 3
    assert len([f for f in pngs if f.startswith("leftImg8bit/val/")]) == 4
    for f in (
        "annotations/anno_train.mat",
        "annotations/anno_val.mat",
        "annotations/val_gt.json",
        "synth.json",
    ):
        assert f in files
    meta = read_synth_meta(tiny_set)
    assert meta["params"] == TINY.params() and meta["images"] == {"train": 3, "val": 4}


def test_same_seed_same_bytes_other_seed_other_images(tiny_set, tmp_path):
    generate(tmp_path / "again", TINY)
    assert _hashes(tmp_path / "again") == _hashes(tiny_set)
    other = SynthConfig(**{**TINY.params(), "seed": 8})
    generate(tmp_path / "other", other)
    a, b = _hashes(tmp_path / "other"), _hashes(tiny_set)
    assert sum(a[k] != b[k] for k in a if k.endswith(".png")) == 7


def test_round_trip_through_the_readers(tiny_set):
    for split, n in (("train", 3), ("val", 4)):
        recs = read_citypersons_mat(tiny_set / "annotations" / f"anno_{split}.mat")
        assert len(recs) == n
        # The records the generator made (same rng stream) come back unchanged.
        for i, rec in enumerate(recs):
            rng = np.random.default_rng([TINY.seed, 0 if split == "train" else 1, i])
            _, made = render_scene(rng, TINY.height, TINY.width, TINY, i + 1, rec.file_name)
            np.testing.assert_array_equal(rec.boxes, made.boxes)
            np.testing.assert_array_equal(rec.categories, made.categories)
            np.testing.assert_array_equal(rec.ignore, made.ignore)
            np.testing.assert_array_equal(rec.vis_ratios, made.vis_ratios)
            ped = made.categories == PEDESTRIAN
            np.testing.assert_array_equal(rec.vis_boxes[ped], made.vis_boxes[ped])
            assert (tiny_set / "leftImg8bit" / split / rec.file_name).is_file()
    from_json = read_citypersons_json(tiny_set / "annotations" / "val_gt.json")
    from_mat = read_citypersons_mat(tiny_set / "annotations" / "anno_val.mat")
    for a, b in zip(from_json, from_mat, strict=True):
        assert a.file_name == b.file_name and a.id == b.id
        for name in ("boxes", "vis_boxes", "ignore", "heights", "vis_ratios", "ann_ids", "crowd"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
        # The JSON gives every object category_id 1, so only the ignore flag and
        # iscrowd tell classes apart there; the pedestrians must agree.
        np.testing.assert_array_equal(a.categories[~a.ignore], b.categories[~b.ignore])
        assert (a.width, a.height) == (TINY.width, TINY.height)


def test_ensure_synth_reuses_only_a_matching_set(tiny_set, tmp_path):
    assert ensure_synth(tiny_set, TINY).reused
    cfg = SynthConfig(train_images=1, val_images=1, height=96, width=128)
    first = ensure_synth(tmp_path / "s", cfg)
    assert not first.reused and first.images == {"train": 1, "val": 1}
    assert ensure_synth(tmp_path / "s", cfg).reused
    changed = SynthConfig(**{**cfg.params(), "seed": 1})
    assert not ensure_synth(tmp_path / "s", changed).reused
    # a set written by another generator (same version string) is not reused
    meta_path = tmp_path / "s" / "synth.json"
    meta = json.loads(meta_path.read_text())
    assert meta["code"] == generator_digest()
    meta_path.write_text(json.dumps({**meta, "code": "0" * 16}))
    assert not ensure_synth(tmp_path / "s", changed).reused
    # A smaller set over a larger one leaves no stale images behind.
    generate(tmp_path / "s", SynthConfig(**{**cfg.params(), "train_images": 3}))
    generate(tmp_path / "s", cfg)
    assert len(list((tmp_path / "s" / "leftImg8bit" / "train").rglob("*.png"))) == 1


def test_bad_parameters_are_pedcrowd_errors():
    from pedcrowd.errors import PedcrowdError

    with pytest.raises(PedcrowdError, match="occlusion"):
        SynthConfig(occlusion=1.5)
    with pytest.raises(PedcrowdError, match=r"'height' must be in \[64, 16384\], got 10"):  # declared range
        SynthConfig(height=10)
    with pytest.raises(PedcrowdError, match="'density' must be in .0, 1000., got nan"):
        SynthConfig(density=float("nan"))


def test_self_detections_give_mr_zero(tmp_path):
    from pedcrowd.eval import evaluate

    cfg = SynthConfig(train_images=0, val_images=30, height=192, width=384, seed=3)
    generate(tmp_path, cfg)
    gt = read_citypersons_json(tmp_path / "annotations" / "val_gt.json")
    dets = {}
    for rec in gt:
        ped = rec.categories == PEDESTRIAN
        dets[rec.id] = (rec.boxes[ped], np.linspace(1.0, 0.5, int(ped.sum())))
    report = evaluate(gt, dets, protocol="citypersons")
    populated = [name for name, r in report.results.items() if r.n_gt > 0]
    assert {"Reasonable", "Reasonable_occ=heavy", "All"} <= set(populated)
    for name in populated:
        assert report.results[name].mr == 0.0, name


@pytest.mark.slow
def test_default_val_set_has_enough_heavy_occlusion():
    """The first 60 default val images (the same images generate() writes) have
    >= 15 % as many Reasonable_occ=heavy pedestrians as Reasonable ones."""
    from pedcrowd.eval.setups import CITYPERSONS_SETUPS

    cfg = SynthConfig()
    reasonable = heavy = 0
    for i in range(60):
        _, rec = render_scene(
            np.random.default_rng([cfg.seed, 1, i]), cfg.height, cfg.width, cfg, i + 1, "x/x.png"
        )
        ped = rec.categories == PEDESTRIAN
        h, v = rec.heights[ped], rec.vis_ratios[ped]
        reasonable += CITYPERSONS_SETUPS["Reasonable"].contains(h, v).sum()
        heavy += CITYPERSONS_SETUPS["Reasonable_occ=heavy"].contains(h, v).sum()
    assert reasonable > 100
    assert heavy >= 0.15 * reasonable


@pytest.mark.slow
def test_default_set_full_size(tmp_path):
    """The whole default set: generation time and the heavy-occlusion ratio on all 200 val images."""
    from pedcrowd.data.stats import dataset_stats

    summary = generate(tmp_path, SynthConfig(train_images=0))
    assert summary.images == {"train": 0, "val": 200}
    stats = dataset_stats(tmp_path, "val")
    assert stats["heavy_to_reasonable"] >= 0.15
    assert stats["overlap_pairs"] > 50 and stats["empty_images"] > 0


def test_a_set_another_process_generates_meanwhile_is_waited_for_and_reused(tmp_path, monkeypatch):
    """Two processes that find the set missing at once both hold it shared, so this one's
    exclusive lock fails: it lets go, waits, and reuses the set the other one made."""
    from pedcrowd.data import synth

    out = tmp_path / "set"
    calls = []
    real_exclusive, real_shared = synth.SetLock.exclusive, synth.SetLock.shared

    def busy_once(self):
        if not calls:
            calls.append("busy")
            raise synth.SetBusy(f"{self.root}: another process is using this synthetic set")
        return real_exclusive(self)

    def shared(self, should_stop=None):
        real_shared(self, should_stop)
        if calls == ["busy"]:  # "the other process" finished its set meanwhile
            calls.append("other generated")
            monkeypatch.setattr(synth.SetLock, "exclusive", real_exclusive)
            synth._generate(out, TINY, None, None)

    monkeypatch.setattr(synth.SetLock, "exclusive", busy_once)
    monkeypatch.setattr(synth.SetLock, "shared", shared)
    monkeypatch.setattr(synth.time, "sleep", lambda s: None)
    summary = synth.ensure_synth(out, TINY)
    assert calls == ["busy", "other generated"] and summary.reused
    # a set kept busy by a process training on other parameters: the error stands
    monkeypatch.setattr(synth.SetLock, "exclusive", lambda self: (_ for _ in ()).throw(
        synth.SetBusy("busy")))
    with pytest.raises(synth.SetBusy):
        synth.ensure_synth(tmp_path / "other", TINY)
