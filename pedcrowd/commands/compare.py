"""``pedcrowd compare``: runs side by side with bootstrap intervals and curves.

Three views of several runs, each a library call and its rendering here: the
comparison table (:func:`pedcrowd.compare.compare`), training curves
(``--curves``, :func:`pedcrowd.compare.read_run_curves`) and ``pedcrowd analyze``
outputs side by side (``--analysis``, :func:`pedcrowd.analyze.read_analyses`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

FORMATS = ("table", "markdown", "csv", "json")


def compare_command(
    runs: Annotated[
        list[str],
        typer.Argument(
            help="Run directories (their val_dets.json) or detection files, optionally named "
            "NAME=PATH. The first is the baseline of every difference.",
            metavar="RUN_OR_DETS",
            show_default=False,
        ),
    ],
    gt: Annotated[
        Path | None,
        typer.Option("--gt", help="Ground-truth file (as for pedcrowd eval); needed for the "
                     "table, not for --curves or --analysis [default: none].", show_default=False),
    ] = None,
    protocol: Annotated[
        str,
        typer.Option(help="citypersons (official eval_MR_multisetup.py), caltech (dbEval.m) or crowdhuman "
                     "(CrowdDet: MR^-2, AP and JI)."),
    ] = "citypersons",
    analysis: Annotated[
        bool,
        typer.Option("--analysis", help="The runs are `pedcrowd analyze --out` files: show their error "
                     "analyses side by side (NMS-caused misses, duplicates, oracle MR^-2)."),
    ] = False,
    setups: Annotated[
        list[str] | None,
        typer.Option(
            "--setups", "--setup",
            help="Setups to compare (repeatable or comma-separated): official names or "
            "NAME:HMIN-HMAX:VMIN-VMAX [default: all of the protocol].",
            show_default=False,
        ),
    ] = None,
    images: Annotated[
        Path | None,
        typer.Option(help="Image list for Caltech GT caches (as pedcrowd eval --images) "
                     "[default: none].",
                     show_default=False),
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option(help="Write MR vs FPPI curves here (PNG, one panel per setup) "
                     "[default: none].",
                     show_default=False),
    ] = None,
    curves: Annotated[
        Path | None,
        typer.Option(help="Overlay the training curves (every loss term, val MR^-2) of the "
                     "run directories in this PNG (their metrics.jsonl) [default: none].",
                     show_default=False),
    ] = None,
    fmt: Annotated[
        str, typer.Option("--format", "-f", help="table, markdown, csv or json (JSON only on stdout).")
    ] = "table",
    as_json: Annotated[
        bool, typer.Option("--json", help="Same as --format json (as in pedcrowd eval).")
    ] = False,
    resize_dets: Annotated[
        bool,
        typer.Option(
            "--resize-dets/--no-resize-dets",
            help="Caltech: resize detections to aspect 0.41 (toolbox v3.2.1); "
            "--no-resize-dets gives the Pedestron/CSP numbers.",
        ),
    ] = True,
    bootstrap: Annotated[
        int,
        typer.Option(help="Bootstrap resamples over images for the 95 % intervals (0: none)."),
    ] = 1000,
    seed: Annotated[int, typer.Option(help="Resampling seed: same seed, same intervals.")] = 0,
    ap: Annotated[bool, typer.Option("--ap/--no-ap", help="Also compute COCO AP.")] = True,
) -> None:
    """Compare runs: MR^-2 per setup (lower is better) and AP, each run's difference to the
    first, with 95 % bootstrap intervals (paired for the differences).

    \b
    Example:
      pedcrowd compare base=runs/baseline nms=runs/nmsloss --gt val_gt.json \\
          --plot cmp.png
    """
    from pedcrowd.compare import compare
    from pedcrowd.errors import PedcrowdError

    if as_json:
        fmt = "json"
    if analysis:
        if fmt not in ("table", "json"):
            raise PedcrowdError(f"--format {fmt}: --analysis prints a table or JSON")
        _print_analyses(runs, as_json=fmt == "json")
        return
    if fmt not in FORMATS:
        raise PedcrowdError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    if bootstrap < 0:
        raise PedcrowdError(f"--bootstrap {bootstrap}: must be 0 or more")
    if setups:
        setups = [name for item in setups for name in item.split(",") if name]
    if plot is not None and plot.is_dir():
        raise PedcrowdError(f"--plot {plot}: is a folder; give the PNG file to write")
    console = Console(stderr=True)
    if gt is None and curves is None:
        raise PedcrowdError("compare: --gt is required (or --curves to draw training curves only, "
                            "or --analysis for pedcrowd analyze outputs)")
    if curves is not None:
        console.print(f"curves: {_overlay_curves(runs, curves)}")
        if gt is None:
            return
    with console.status(f"evaluating {len(runs)} runs, {bootstrap} bootstrap resamples"):
        result = compare(
            runs, gt, protocol=protocol, setups=setups, images=images, bootstrap=bootstrap,
            seed=seed, with_ap=ap, resize_dets=resize_dets,
        )
    _print_comparison(result, fmt, plot, console)


def _print_comparison(result, fmt: str, plot: Path | None, console: Console) -> None:
    """The comparison in ``fmt`` on stdout, and its curves in ``plot``."""
    from pedcrowd.compare_render import dumps_json, plot_comparison, to_csv, to_markdown
    from pedcrowd.errors import PedcrowdError

    if plot is not None:
        try:
            console.print(f"plot: {plot_comparison(result, plot)}")
        except OSError as e:
            raise PedcrowdError(f"{plot}: cannot write the plot ({e.strerror or e})") from None
    if fmt == "json":
        typer.echo(dumps_json(result))
    elif fmt == "markdown":
        typer.echo(to_markdown(result), nl=False)
    elif fmt == "csv":
        typer.echo(to_csv(result), nl=False)
    else:
        out = Console()
        out.print(_rich_table(result, out.width))


def _overlay_curves(runs: list[str], path: Path) -> Path:
    """Draw the training curves of the run directories ``runs`` (NAME=DIR or DIR) into ``path``."""
    from pedcrowd.compare import read_run_curves
    from pedcrowd.engine.curves import plot_curves
    from pedcrowd.errors import PedcrowdError

    series = read_run_curves(runs)
    try:
        return plot_curves(series, path)
    except OSError as e:
        raise PedcrowdError(f"{path}: cannot write the curves ({e.strerror or e})") from None


def _print_analyses(runs: list[str], as_json: bool) -> None:
    """Several ``pedcrowd analyze --out`` files, one column per run and operating point:
    the error counts and the oracle MR^-2 (or the documents as one JSON)."""
    from rich.table import Table

    from pedcrowd.analyze import SIDE_BY_SIDE_FIXES, read_analyses
    from pedcrowd.compare_render import FIX_LABELS, FP_LABELS, MISS_LABELS, share

    docs = read_analyses(runs)
    if as_json:
        from pedcrowd.fileio import dumps_strict

        typer.echo(dumps_strict({"runs": [{"name": n, **d} for n, d in docs]}, indent=1))
        return
    table = Table(title="pedcrowd analyze, side by side")
    table.add_column("")
    columns = []
    for name, doc in docs:
        for p in doc["points"]:
            score = "-" if p["score"] is None else f"{p['score']:.3f}"
            table.add_column(f"{name}\n{p['name']} ({score})", justify="right")
            columns.append((doc, p))
    pct = lambda v: "n/a" if v is None else f"{100 * v:.2f}"  # noqa: E731
    table.add_row("MR^-2 % (all points)", *[pct(d["mr"]) for d, _ in columns])
    table.add_row("missed people", *[str(p["n_missed"]) for _, p in columns])
    for key, label in MISS_LABELS.items():
        table.add_row(f"  {label}", *[share(p["misses"][key], p["n_missed"]) for _, p in columns])
    table.add_row("false positives", *[str(p["n_fp"]) for _, p in columns])
    for key, label in FP_LABELS.items():
        table.add_row(f"  {label}", *[share(p["false_positives"][key], p["n_fp"]) for _, p in columns])
    for fix in SIDE_BY_SIDE_FIXES:
        table.add_row(f"MR^-2 % w/o {FIX_LABELS[fix]}", *[pct(p["oracle"][fix]["mr"]) for _, p in columns])
    Console().print(table)


def _cells(result, narrow: bool) -> dict[str, list[str]]:
    """Per row label (each setup, ``AP %``, ``JI %``): one rich-markup cell per run.

    ``narrow``: intervals on a line of their own, so that a column is about 13
    characters wide.
    """
    from pedcrowd.compare_render import best_per_setup, format_cell
    from pedcrowd.eval.protocols import get_protocol

    best = best_per_setup(result)
    sep = "\n" if narrow else " "
    rows: dict[str, list[str]] = {}
    for s in result.setups:
        rows[s] = []
        for i, r in enumerate(result.runs):
            mr, diff = format_cell(r, s, i == 0, ci_digits=1)
            mr = mr.replace(" [", f"{sep}[", 1)
            if r.mr[s] is not None and r.mr[s] == best[s] and len(result.runs) > 1:
                mr = f"[bold green]{mr}[/]"
            if diff:
                ci = r.delta_ci.get(s)
                # Colour a difference only when its interval excludes 0.
                style = "" if ci is None or ci[0] <= 0 <= ci[1] else ("red" if ci[0] > 0 else "green")
                diff = "Δ " + diff.replace(" [", f"{sep}[", 1)
                mr = f"{mr}\n[{style}]{diff}[/]" if style else f"{mr}\n{diff}"
            rows[s].append(mr)  # "[24.1, 28.3]" is not markup: rich tags start with a letter
    rows["AP %"] = []
    for i, r in enumerate(result.runs):
        ap = "-" if r.ap is None else f"{100 * r.ap:.2f}"
        if i > 0 and r.ap is not None and result.runs[0].ap is not None:
            ap += f"\nΔ {100 * (r.ap - result.runs[0].ap):+.2f}"
        rows["AP %"].append(ap)
    if get_protocol(result.protocol).reports_ji:
        rows["JI %"] = ["-" if r.ji is None else f"{100 * r.ji:.2f}" for r in result.runs]
    return rows


def _rich_table(result, width: int = 80):
    """The comparison as a rich table: one row per run and a column per setup when that
    fits ``width``, else one row per setup and a column per run (nothing is cut: a long
    name wraps)."""
    from rich.console import Console
    from rich.table import Table

    caption = (
        f"MR⁻² %, lower is better, best in bold green; [95 % bootstrap interval over "
        f"{result.n_images} images, {result.bootstrap} resamples, seed {result.seed}]; "
        f"Δ vs {result.runs[0].name}, paired interval; red/green: interval excludes 0."
        if result.bootstrap
        else "MR⁻² %, lower is better, best in bold green; Δ vs the first run."
    )
    title = f"pedcrowd compare ({result.protocol})"

    wide = Table(title=title, caption=caption)
    wide.add_column("run", style="bold", overflow="fold")
    rows = _cells(result, narrow=False)
    for label in rows:
        wide.add_column(label, justify="right", overflow="fold")
    for i, r in enumerate(result.runs):
        wide.add_row(r.name, *(cells[i] for cells in rows.values()))
    measure = Console(width=10**4).measure(wide)
    if measure.maximum <= width:
        return wide

    tall = Table(title=title, caption=caption)
    tall.add_column("setup", style="bold", overflow="fold")
    for r in result.runs:
        tall.add_column(r.name, justify="right", overflow="fold")
    for label, cells in _cells(result, narrow=True).items():
        tall.add_row(label, *cells)
    return tall


def register(app: typer.Typer) -> None:
    app.command("compare", short_help="Compare runs: MR^-2 and AP with intervals.")(
        compare_command
    )
