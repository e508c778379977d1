"""Ready for a GPU without one (issue 26): every tensor on its model's device, one host
read per training step, the GradScaler path, ``train.amp`` on the CPU.

Device: a torch function mode sends every tensor factory that pedcrowd's own code calls
without ``device=`` to the ``meta`` device and records where; the training forward of
every technique, the inference forward (soft-NMS, variance voting) and the training
loop run under it on the CPU. torchvision's own host-side factories (its random resize
choice) are left alone: the mode looks only at calls made from pedcrowd's files.

Host reads: on CUDA a tensor reaches the host through ``item``/``tolist``/
``__float__``/``__int__``/``__bool__``/``__index__``/``numpy``; counting those calls by
their caller's file counts the syncs a step asks for explicitly (data-dependent ops such
as boolean-mask indexing sync too, inside torchvision's RPN and RoI heads; these are not
counted here).
"""

from __future__ import annotations

import collections
import math
import os
import sys
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

import pedcrowd
from pedcrowd.engine import loop
from pedcrowd.engine.loop import amp_dtype, train_one_epoch
from pedcrowd.model.config import PostprocessConfig
from pedcrowd.reference.tiny import TECHNIQUES
from pedcrowd.reference.tiny import crowd_batch as batch
from pedcrowd.reference.tiny import technique_model as model_for

PEDCROWD = str(Path(pedcrowd.__file__).parent) + "/"
TORCH = str(Path(torch.__file__).parent) + "/"  # not torchvision
FACTORIES = {
    torch.empty, torch.zeros, torch.ones, torch.full, torch.arange, torch.rand, torch.randn,
    torch.randint, torch.randperm, torch.linspace, torch.logspace, torch.eye, torch.tensor,
    torch.as_tensor, torch.scalar_tensor, torch.empty_strided,
}


def _caller(skip: str = TORCH) -> tuple[str, int]:
    """File and line of the first frame outside torch above the hook that calls this."""
    frame = sys._getframe(2)
    while frame.f_code.co_filename.startswith(skip):
        frame = frame.f_back
    return frame.f_code.co_filename, frame.f_lineno


class UndevicedFactoriesToMeta(TorchFunctionMode):
    """Factories called from files under ``root`` without ``device=`` make meta tensors."""

    def __init__(self, root: str = PEDCROWD) -> None:
        super().__init__()
        self.root = root
        self.caught: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        wraps_a_tensor = func in (torch.tensor, torch.as_tensor) and torch.is_tensor(args[0])
        if func in FACTORIES and kwargs.get("device") is None and not wraps_a_tensor:
            file, line = _caller()
            if file.startswith(self.root):
                kwargs["device"] = "meta"
                self.caught.append(f"{file}:{line}")
        return func(*args, **kwargs)


def test_the_mode_catches_a_factory_without_device():
    here = str(Path(__file__).parent)
    with UndevicedFactoriesToMeta(root=here) as mode:
        a = torch.zeros(3)
        b = torch.zeros(3, device="cpu")
        c = torch.as_tensor(b)
    assert a.device.type == "meta" and b.device.type == "cpu" and c.device.type == "cpu"
    assert len(mode.caught) == 1 and mode.caught[0].startswith(__file__)
    with pytest.raises(RuntimeError), UndevicedFactoriesToMeta(root=here):
        b + torch.ones(3)  # noqa: B018 - the next operation fails


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TECHNIQUES))
def test_training_forward_makes_every_tensor_on_the_model_device(name):
    model = model_for(name)
    images, targets = batch()
    with UndevicedFactoriesToMeta() as mode:
        losses = model(images, targets)
        sum(losses.values()).backward()
    assert mode.caught == []
    assert all(v.device.type == "cpu" and math.isfinite(v.item()) for v in losses.values())


@pytest.mark.parametrize("nms", ["hard", "soft-gaussian"])
def test_inference_forward_makes_every_tensor_on_the_model_device(nms):
    model = model_for("kl").eval()
    model.roi_heads.set_postprocess(PostprocessConfig(nms=nms, var_voting=True))
    model.roi_heads.score_thresh = 0.0
    with torch.no_grad(), UndevicedFactoriesToMeta() as mode:
        outs = model(batch()[0])
    assert mode.caught == []
    assert outs[0]["boxes"].shape[0] > 0 and outs[0]["boxes"].device.type == "cpu"


def test_fcos_inference_makes_every_tensor_on_the_model_device():
    model = model_for("dw").eval()
    with torch.no_grad(), UndevicedFactoriesToMeta() as mode:
        model(batch()[0])
    assert mode.caught == []


# ----------------------------------------------------------------------------- host reads

READS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__", "numpy")


@pytest.fixture
def host_reads(monkeypatch):
    """Counter of explicit host reads: (pedcrowd file relative path or 'other') -> calls."""
    counts: collections.Counter = collections.Counter()
    for name in READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            file, _ = _caller()
            counts[Path(file).relative_to(PEDCROWD).as_posix() if file.startswith(PEDCROWD)
                   else "other"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return counts


def _train(model, steps: int, **kwargs):
    opt = torch.optim.SGD(model.parameters(), lr=0.001)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 1.0)
    return train_one_epoch(model, opt, sched, torch.amp.GradScaler("cpu", enabled=False),
                           [batch()] * steps, torch.device("cpu"), 0, grad_clip=10.0,
                           **kwargs).records


# technique -> pedcrowd's reads per step besides the loop's one: the pairwise crowd losses
# split their positives per image (sizes read once per group), FCOS its positives count
LOSS_READS = {
    "nms-roi": {"losses/positives.py": 1, "losses/nms_loss.py": 1},
    "nms-rpn": {"losses/positives.py": 1, "losses/nms_loss.py": 3},
    "rep": {"losses/positives.py": 1},
    "fcos": {"losses/fcos.py": 1},
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TECHNIQUES))
def test_a_training_step_reads_the_host_once(name, host_reads):
    model = model_for(name)
    host_reads.clear()
    records = _train(model, steps=2)
    assert len(records) == 2 and not any(r["skipped"] for r in records)
    ours = {k: v for k, v in host_reads.items() if k != "other"}
    want = {"engine/loop.py": 2, **{k: 2 * v for k, v in LOSS_READS.get(name, {}).items()}}
    assert ours == want


class _Signals:
    """A StopOnSignal whose ``signum`` is read from ``stops``, one value per read."""

    def __init__(self, stops):
        self.stops = iter(stops)

    @property
    def signum(self):
        return 15 if next(self.stops) else None


def test_flags_are_reduced_once_per_step_with_the_stop_flag(monkeypatch):
    calls = []

    def reduce_flags(flags):
        calls.append(flags.clone())
        return flags

    monkeypatch.setattr(loop, "max_over_ranks", reduce_flags)
    records = _train(model_for("default"), steps=3, signals=_Signals([False, True, False]))
    assert len(records) == 2  # stopped after the second step
    assert [c.tolist() for c in calls] == [[0.0, 0.0], [0.0, 1.0]]


def test_another_rank_nonfinite_flag_skips_the_step_here(monkeypatch):
    model = model_for("default")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 1.0)
    # [bad, stop]
    monkeypatch.setattr(loop, "max_over_ranks", lambda flags: flags.copy_(torch.tensor([1.0, 0.0])))
    result = train_one_epoch(model, opt, sched, torch.amp.GradScaler("cpu", enabled=False), [batch()],
                             torch.device("cpu"), 0)
    records, warnings = result.records, result.warnings
    assert records[0]["skipped"] and len(warnings) == 1
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ----------------------------------------------------------------------------- amp


class SqrtModel(torch.nn.Module):
    """loss = sum sqrt(w) (on an all-zero image) + sum (w - 1)^2: finite, with an infinite
    gradient at w = 0."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(3))
        self.autocast = []

    def forward(self, images, targets):
        self.autocast.append(
            torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
        )
        x = images[0].sum()
        root = self.w.sqrt().sum() if x == 0 else self.w.sum() * 0
        return {"loss_a": root + (self.w - 1.0).pow(2).sum() + 0.0 * x}  # NaN for a NaN image


def test_grad_scaler_skips_the_step_of_an_infinite_gradient_and_lowers_the_scale():
    model = SqrtModel()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=1000)
    inf_grad = ([torch.zeros(3, 2, 2)], [{}])
    plain = ([torch.ones(3, 2, 2)], [{}])
    records = train_one_epoch(model, opt, sched, scaler, [inf_grad], torch.device("cpu"), 0).records
    assert torch.equal(model.w.detach(), torch.zeros(3))  # the scaler skipped the update
    assert scaler.get_scale() == 512.0  # and halved the scale
    assert records[0]["loss_a"] == 3.0 and not records[0]["skipped"]  # the loss was finite
    train_one_epoch(model, opt, sched, scaler, [plain], torch.device("cpu"), 0)
    # the next step is an ordinary SGD step: w -= 0.1 * 2 (w - 1)
    assert torch.allclose(model.w.detach(), torch.full((3,), 0.2))
    assert scaler.get_scale() == 512.0


def test_grad_scaler_with_clipping_and_a_nonfinite_loss_keeps_working():
    """A skipped non-finite step ends the scaler's step (update) so the next unscale_ works."""
    model = SqrtModel()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=1000)
    nan_loss = ([torch.full((3, 2, 2), float("nan"))], [{}])
    plain = ([torch.ones(3, 2, 2)], [{}])
    records = train_one_epoch(model, opt, sched, scaler, [nan_loss, plain], torch.device("cpu"), 0,
                              grad_clip=100.0).records
    assert [r["skipped"] for r in records] == [True, False]
    assert torch.allclose(model.w.detach(), torch.full((3,), 0.2))
    # without clipping too: unscale_ must run before the gradients are cleared, or the
    # scaler records no inf check and update() raises (the loss is NaN, its gradients
    # finite, so the scale stays)
    model = SqrtModel()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=1000)
    records = train_one_epoch(model, opt, sched, scaler, [nan_loss, plain], torch.device("cpu"),
                              0).records
    assert [r["skipped"] for r in records] == [True, False]
    assert scaler.get_scale() == 1024.0
    assert torch.allclose(model.w.detach(), torch.full((3,), 0.2))


def test_train_amp_on_the_cpu_is_bfloat16_autocast_where_the_cpu_has_it(monkeypatch):
    monkeypatch.setattr(loop, "_cpu_has_bf16", lambda: True)
    assert amp_dtype(torch.device("cpu")) == torch.bfloat16
    assert amp_dtype(torch.device("cuda")) == torch.float16
    model = SqrtModel()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 1.0)
    batch_ = ([torch.ones(3, 2, 2)], [{}])
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    train_one_epoch(model, opt, sched, scaler, [batch_], torch.device("cpu"), 0, amp=True)
    train_one_epoch(model, opt, sched, scaler, [batch_], torch.device("cpu"), 0, amp=False)
    monkeypatch.setattr(loop, "_cpu_has_bf16", lambda: False)  # float32 where it lacks bf16
    assert amp_dtype(torch.device("cpu")) is None
    train_one_epoch(model, opt, sched, scaler, [batch_], torch.device("cpu"), 0, amp=True)
    assert model.autocast == [torch.bfloat16, None, None]


# ----------------------------------------------------------------------------- inference threads


def test_background_decode_threads_run_at_the_lowest_priority(tmp_path):
    import threading

    import cv2
    import numpy as np

    from pedcrowd.media import decode
    from pedcrowd.media.sources import collect_sources

    if not hasattr(os, "getpriority"):
        pytest.skip("no per-thread priorities here")
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((8, 8, 3), np.uint8))
    seen = []
    original = decode.decode_image

    def spy(source, keep_image):
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return original(source, keep_image)

    decode.decode_image = spy
    try:
        list(decode.iter_items(collect_sources([tmp_path]), False, workers=1, background=True))
        list(decode.iter_items(collect_sources([tmp_path]), False, workers=1, background=False))
    finally:
        decode.decode_image = original
    assert seen[0] == 19 and seen[1] == os.getpriority(os.PRIO_PROCESS, 0)


def test_decode_threads_use_the_cores_torch_leaves_free(monkeypatch):
    from pedcrowd.media import decode

    monkeypatch.setattr(decode.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert decode.decode_workers("cpu") == 1  # every core computes: one low-priority thread
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert decode.decode_workers("cpu") == 3
    assert decode.decode_workers("cuda") == 4  # on a GPU: overlap, one thread per core


def test_decoding_between_batches_gives_the_threads_items(tmp_path):
    import cv2
    import numpy as np

    from pedcrowd.media.decode import iter_items
    from pedcrowd.media.sources import collect_sources

    rng = np.random.default_rng(0)
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"im{i}.png"), rng.integers(0, 255, (20, 30, 3), dtype=np.uint8))
    (tmp_path / "bad.png").write_bytes(b"not a png")
    writer = cv2.VideoWriter(str(tmp_path / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 5, (30, 20))
    for _ in range(3):
        writer.write(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8))
    writer.release()
    sources = collect_sources([tmp_path])
    inline = list(iter_items(sources, keep_image=False, workers=0))
    threaded = list(iter_items(sources, keep_image=False, workers=2))
    background = list(iter_items(sources, keep_image=False, workers=1, background=True))
    assert [i.name for i in background] == [i.name for i in inline]
    assert [i.name for i in inline] == [i.name for i in threaded] and len(inline) == 7
    assert [i.error for i in inline] == [i.error for i in threaded]
    assert sum(i.tensor is None for i in inline) == 1
    for a, b in zip(inline, threaded, strict=True):
        assert (a.tensor is None and b.tensor is None) or torch.equal(a.tensor, b.tensor)


def test_bgr_to_tensor_equals_torch_float_division_for_every_byte():
    """The numpy conversion (no torch threads in the decode threads) keeps the bits."""
    import numpy as np

    from pedcrowd.data.datasets import bgr_to_tensor

    bgr = np.arange(256 * 3, dtype=np.int64).reshape(16, 16, 3).__mod__(256).astype(np.uint8)
    want = torch.from_numpy(bgr[:, :, ::-1].copy()).permute(2, 0, 1).contiguous().float().div_(255.0)
    got = bgr_to_tensor(bgr)
    assert got.dtype == torch.float32 and got.is_contiguous() and torch.equal(got, want)


@pytest.mark.slow
@pytest.mark.parametrize("has_bf16", [True, False])
def test_fit_with_train_amp_on_the_cpu(tmp_path, monkeypatch, has_bf16):
    """A tiny run with train.amp: bfloat16 autocast where the CPU has it; elsewhere a
    warning and float32 (the loop sees amp=True but autocasts nothing)."""
    from pedcrowd.data.synth import ensure_synth
    from pedcrowd.engine.config import Config, apply_overrides
    from pedcrowd.engine.reporter import Reporter
    from pedcrowd.engine.train import fit
    from pedcrowd.reference.tiny import TINY_SYNTH, tiny_overrides

    monkeypatch.setattr(loop, "_cpu_has_bf16", lambda: has_bf16)
    ensure_synth(tmp_path / "synth", TINY_SYNTH)
    cfg = apply_overrides(Config(), [*tiny_overrides(tmp_path / "synth"), "train.amp=true",
                                     "train.eval_every=0"])
    conv_dtypes = []

    class Warnings(Reporter):
        messages: list[str] = []

        def warning(self, message):
            self.messages.append(message)

    from pedcrowd.engine import train as train_module

    real_build = train_module.build_model

    def build_and_watch(mcfg, **kwargs):
        model = real_build(mcfg, **kwargs)
        first = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d))
        first.register_forward_hook(lambda m, i, o: conv_dtypes.append(o.dtype) if m.training else None)
        return model

    monkeypatch.setattr(train_module, "build_model", build_and_watch)
    rep = Warnings()
    _, summary = fit(cfg, tmp_path / "run", reporter=rep)
    assert summary["iterations"] == 2 and summary["final_mr"] is not None
    amp_warnings = [m for m in rep.messages if m.startswith("train.amp")]
    if has_bf16:
        assert amp_warnings == [] and set(conv_dtypes) == {torch.bfloat16}
    else:
        assert amp_warnings == [
            "train.amp: this CPU has no bfloat16 instructions (AVX512-BF16 or AMX); training in float32"
        ]
        assert set(conv_dtypes) == {torch.float32}
