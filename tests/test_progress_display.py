"""What a user sees while training, at 80 columns, on a terminal and in a log."""

from __future__ import annotations

import io
import re
from types import SimpleNamespace

from rich.console import Console

from pedcrowd.engine.reporter import (
    ProgressState,
    RichReporter,
    _ProgressView,
    duration_text,
    progress_lines,
    short_loss_text,
)

RECORD = {
    "epoch": 3, "iter": 412, "lr": 0.0613, "loss": 0.7123, "loss_classifier": 0.148,
    "loss_box_reg": 0.409, "loss_objectness": 0.014, "loss_rpn_box_reg": 0.041,
    "loss_nms": 0.1, "images_per_s": 15.2, "data_wait_s": 0.003, "log": True,
}
CFG = SimpleNamespace(
    model=SimpleNamespace(backbone="tiny_fpn"), train=SimpleNamespace(epochs=8, batch_size=8)
)


def test_duration_text():
    assert duration_text(372) == "6:12"
    assert duration_text(3 * 3600 + 62) == "3:01:02"
    assert duration_text(None) == "--:--"


def test_progress_lines_at_80_columns_lead_with_epoch_iteration_eta_and_speed():
    state = ProgressState(
        epoch=3, epochs=8, done=412, total=1200, images_per_s=15.2, step_s=0.53, eta_s=372,
        lr=0.0613, losses=short_loss_text(RECORD),
    )
    first, second = progress_lines(state, 80)
    assert first.startswith("epoch 3/8  iter 412/1200  34%  ETA 6:12  15.2 img/s 0.53 s/it")
    assert len(first) == 80  # the bar fills what is left
    assert second.startswith("lr 6.13e-02  loss 0.712 (cls 0.148 box 0.409 obj 0.014")
    assert len(second) <= 80
    # narrower still: the counts and ETA come first and survive, the bar goes
    first, second = progress_lines(state, 62)
    assert first == "epoch 3/8  iter 412/1200  34%  ETA 6:12  15.2 img/s 0.53 s/it"
    assert len(second) == 62 and second.endswith("\u2026")


def test_progress_view_renders_within_80_columns_on_a_terminal():
    buf = io.StringIO()
    console = Console(file=buf, width=80, force_terminal=True, color_system=None)
    state = ProgressState(epoch=1, epochs=8, done=5, total=1200, eta_s=None, losses="x " * 60)
    console.print(_ProgressView(state))
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("epoch 1/8  iter 5/1200   0%  ETA --:--")
    assert all(len(line) <= 80 for line in lines)


def test_reporter_off_a_terminal_writes_plain_log_lines_without_source_locations():
    buf = io.StringIO()
    rep = RichReporter(Console(file=buf, width=80, force_terminal=False))
    rep.start("runs/x", CFG, total_iters=1200, done_iters=411, epoch=2)
    rep.epoch(3, 8)
    rep.step(RECORD)
    rep.step({**RECORD, "iter": 413, "log": False})  # not a log step: nothing printed
    rep.warning("something [odd]")
    rep.close()
    lines = buf.getvalue().splitlines()
    assert len(lines) == 3, lines  # start, one step, the warning: one record per line, unwrapped
    stamp = r"\d\d:\d\d:\d\d "
    assert re.fullmatch(stamp + r"training into runs/x \(tiny_fpn, 8 epochs\)", lines[0])
    assert re.match(stamp + r"epoch 3/8  iter 412/1200  34%  ETA \d+:\d\d  [\d.]+ img/s", lines[1])
    assert "classifier" not in lines[1] and "cls 0.148" in lines[1] and "nms 0.100" in lines[1]
    assert re.fullmatch(stamp + r"warning: something \[odd\]", lines[2])
    assert ".py:" not in buf.getvalue()  # no rich source locations


def test_synth_progress_draws_nothing_for_a_reused_set(tmp_path):
    from pedcrowd.data.config import SynthConfig
    from pedcrowd.progress import synth_with_progress

    cfg = SynthConfig(train_images=2, val_images=1, height=64, width=96)
    first, second = io.StringIO(), io.StringIO()
    synth_with_progress(tmp_path, cfg, Console(file=first, width=80), "drawing")
    assert first.getvalue() == "drawing: 3 images\n"
    summary = synth_with_progress(tmp_path, cfg, Console(file=second, width=80), "drawing")
    assert summary.reused and second.getvalue() == ""


def test_final_table_and_summary_line_fit_80_columns():
    import io

    from rich.console import Console

    from pedcrowd.commands.train import mr_table, run_summary_line

    summary = {"run_dir": "runs/demo", "final_mr": {"Reasonable": 0.2628, "Reasonable_occ=heavy": 0.6303},
               "best_mr": 0.2628, "iterations": 1000, "wall_s": 468.0}
    buf = io.StringIO()
    Console(file=buf, width=80).print(mr_table(summary))
    assert all(len(line) <= 80 for line in buf.getvalue().splitlines())
    assert "26.28" in buf.getvalue() and "63.03" in buf.getvalue()
    assert run_summary_line(summary) == "best Reasonable 26.28% (best.pt); 1000 iterations in 7.8 min"
