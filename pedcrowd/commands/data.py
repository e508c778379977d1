"""``pedcrowd data``: make the synthetic crowd set and look at any data set."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from pedcrowd.formats.registry import FORMATS

data_app = typer.Typer(
    help="Data sets: generate synthetic crowds, print statistics, draw samples.",
    short_help="Synthetic crowds, data set statistics and samples.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
err = Console(stderr=True)


@data_app.command("synth", short_help="Generate a synthetic crowded-street data set.")
def synth(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output directory (CityPersons layout).")
    ],
    images: Annotated[
        int, typer.Option("--images", "-n", min=0, help="Number of training images.")
    ] = 1000,
    val_images: Annotated[
        int | None,
        typer.Option("--val-images", min=0, help="Number of val images [default: --images / 5]."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed and generator version give the same pixels and boxes.")] = 0,
    preset: Annotated[
        str,
        typer.Option(
            help="Generator preset: default, or crowded (denser, tighter groups, more "
            "occlusion); --density/--occlusion/--overlap override it."
        ),
    ] = "default",
    density: Annotated[
        str | None,
        typer.Option(
            help="Pedestrians per image: low (4), medium (8), high (14) or a number "
            "[default: the preset's, medium]."
        ),
    ] = None,
    occlusion: Annotated[
        str | None,
        typer.Option(
            help="Share of people in overlapping groups and occluder rate: "
            "low (0.25), medium (0.55), high (0.8) or a number in [0, 1] [default: the preset's]."
        ),
    ] = None,
    overlap: Annotated[
        float | None,
        typer.Option(
            help="How tightly group members overlap, 0..1 (0.5: 0.25-0.75 box widths apart) "
            "[default: the preset's]."
        ),
    ] = None,
    height: Annotated[int, typer.Option(help="Image height in pixels.")] = 384,
    width: Annotated[int, typer.Option(help="Image width in pixels.")] = 768,
    force: Annotated[
        bool, typer.Option(help="Regenerate even if OUT holds a set made with the same parameters.")
    ] = False,
) -> None:
    """Generate a synthetic crowded-street data set in the CityPersons layout.

    Writes OUT/leftImg8bit/{train,val}/CITY/*.png, OUT/annotations/anno_{train,val}.mat,
    OUT/annotations/val_gt.json and OUT/synth.json; prints a JSON summary on stdout.
    The images are drawn with numpy only: the same seed and version give the same
    pixels on every machine and with any opencv version (numpy < 3, as pinned).

    \b
    Example:
      pedcrowd data synth --out data/crowded --preset crowded --images 500
    """
    from pedcrowd.data.config import synth_preset
    from pedcrowd.data.synth import DENSITY_PRESETS, OCCLUSION_PRESETS, parse_level
    from pedcrowd.progress import synth_with_progress

    chosen = {}
    if density is not None:
        chosen["density"] = parse_level(density, DENSITY_PRESETS, "density")
    if occlusion is not None:
        chosen["occlusion"] = parse_level(occlusion, OCCLUSION_PRESETS, "occlusion")
    if overlap is not None:
        chosen["overlap"] = overlap
    cfg = synth_preset(
        preset,
        train_images=images,
        val_images=images // 5 if val_images is None else val_images,
        height=height,
        width=width,
        seed=seed,
        **chosen,
    )
    summary = synth_with_progress(out, cfg, err, "drawing crowds", force=force)
    if summary.reused:
        err.print(f"[yellow]{out}: reusing the set already there (same version and parameters)")
    else:
        err.print(
            f"wrote {sum(summary.images.values())} images to {out} in {summary.seconds:.1f} s"
        )
    typer.echo(
        json.dumps(
            {
                "out": str(out),
                "images": summary.images,
                "pedestrians": summary.pedestrians,
                "seconds": round(summary.seconds, 2),
                "reused": summary.reused,
            }
        )
    )


@data_app.command("stats", short_help="Statistics and sample pictures of a data set.")
def stats(
    root: Annotated[
        Path, typer.Argument(help="Data set root in the format's layout.", metavar="ROOT")
    ],
    split: Annotated[str, typer.Option(help="Split to inspect: train or val.")] = "val",
    fmt: Annotated[
        str, typer.Option("--format", help="The data set's format: " + " | ".join(FORMATS) + ".")
    ] = "citypersons",
    samples: Annotated[
        int, typer.Option(min=0, help="Number of sample images to draw boxes on (0: none).")
    ] = 6,
    samples_out: Annotated[
        Path | None,
        typer.Option(help="Where to write the samples [default: ROOT/samples]."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the numbers as JSON.")] = False,
) -> None:
    """Print images, people, per-setup counts, boxes per image and overlaps of a split.

    Sample images show full boxes in green, visible boxes in blue, ignore regions
    in magenta and group boxes in red.

    \b
    Example:
      pedcrowd data stats data/synth --split train --samples 4
    """
    from pedcrowd.data.stats import dataset_stats, write_samples

    numbers = dataset_stats(root, split, fmt)
    if as_json:
        from pedcrowd.fileio import dumps_strict

        typer.echo(dumps_strict(numbers))
    else:
        table = Table(title=f"{root} [{split}]")
        table.add_column("quantity")
        table.add_column("value", justify="right")
        rows = [
            ("images", numbers["images"]),
            ("empty images (no annotation)", numbers["empty_images"]),
            ("images without pedestrians", numbers["images_without_pedestrians"]),
            ("pedestrians", numbers["pedestrians"]),
            *((f"  {name}", n) for name, n in numbers["setups"].items()),
            ("  occ=heavy / Reasonable", f"{numbers['heavy_to_reasonable']:.3f}"),
            (
                "pedestrians per image (mean / max)",
                f"{numbers['boxes_per_image']:.2f} / {numbers['max_boxes_per_image']}",
            ),
            ("pairs with IoU > 0.5", numbers["overlap_pairs"]),
            (
                "height min / median / max",
                "{min:.0f} / {median:.0f} / {max:.0f}".format(**numbers["height"]),
            ),
            ("mean visible ratio", f"{numbers['mean_visibility']:.3f}"),
            ("ignore regions", numbers["ignore_regions"]),
            ("group boxes", numbers["groups"]),
            ("other ignored (riders, sitting, flagged ignore, ...)", numbers["other_ignored"]),
        ]
        for name, value in rows:
            table.add_row(name, str(value))
        Console().print(table)
    if samples:
        written = write_samples(root, split, samples_out or Path(root) / "samples", samples, fmt)
        err.print(f"wrote {len(written)} sample images to {samples_out or Path(root) / 'samples'}")


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
