"""``pedcrowd compare``'s table at 80 columns and through a pipe: every name whole, no cut numbers."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from pedcrowd.commands.compare import _rich_table
from pedcrowd.compare import Comparison, RunResult

SETUPS = ["Reasonable", "Reasonable_small", "Reasonable_occ=heavy", "All", "Bare", "Partial", "Heavy"]


def _comparison(names: list[str], setups: list[str] = SETUPS) -> Comparison:
    runs = []
    for i, name in enumerate(names):
        mr = {s: 0.2611 + 0.01 * i + 0.001 * k for k, s in enumerate(setups)}
        runs.append(RunResult(
            name=name, path=Path(f"{name}.json"), mr=mr,
            ci={s: (v - 0.0234, v + 0.0312) for s, v in mr.items()},
            delta={s: 0.01 * i for s in setups} if i else {},
            delta_ci={s: (0.01 * i - 0.0151, 0.01 * i + 0.0149) for s in setups} if i else {},
            ap=0.4182 - 0.01 * i,
        ))
    return Comparison("citypersons", setups, runs, n_images=500, bootstrap=1000, seed=0)


def _render(c: Comparison, width: int = 80) -> str:
    buf = io.StringIO()
    console = Console(file=buf, width=width, force_terminal=False)  # a pipe, as `| less` sees it
    console.print(_rich_table(c, console.width))
    return buf.getvalue()


def test_three_runs_at_80_columns_show_every_run_and_setup_and_number_whole():
    c = _comparison(["baseline", "nms_loss_long_name", "repulsion"])
    text = _render(c)
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines), max(map(len, lines))
    assert "…" not in text
    for name in ["baseline", "nms_loss_long_name", "repulsion", *SETUPS, "AP %"]:
        assert name in text, name
    # one row per setup: the run's MR and its interval, then the difference and its interval
    row = next(i for i, line in enumerate(lines) if line.startswith("│ Reasonable "))
    assert lines[row].split("│")[1:4] == [" Reasonable           ", "        26.11 ", "              27.11 "]
    assert "[23.8, 29.2]" in lines[row + 1] and "Δ +1.00" in lines[row + 2]
    assert "[-0.5, +2.5]" in lines[row + 3]


def test_few_setups_keep_one_row_per_run():
    text = _render(_comparison(["a", "b"], ["Reasonable", "Heavy"]))
    assert "┃ run " in text and "Reasonable" in text and "Heavy" in text
    assert all(len(line) <= 80 for line in text.splitlines())


def test_wide_terminal_keeps_one_row_per_run():
    text = _render(_comparison(["baseline", "nms"]), width=250)
    assert "┃ run " in text
    assert "26.11 [23.8, 29.2]" in text
