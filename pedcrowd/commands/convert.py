"""``pedcrowd convert-checkpoint OLD NEW --trust``: make a trusted old checkpoint safe to load.

pedcrowd loads every ``.pt`` file with ``weights_only=True`` and refuses files
holding other objects (an older pedcrowd's numpy RNG state, a pickled config
object, or a payload that would run code). This command loads OLD with the
full unpickler, which can run code in it, so it insists on ``--trust``; it
writes NEW holding only tensors, containers, numbers and strings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pedcrowd.errors import PedcrowdError


def convert_command(
    old: Annotated[
        Path,
        typer.Argument(help="The checkpoint to convert (loading it can run code in it).", metavar="OLD"),
    ],
    new: Annotated[Path, typer.Argument(help="Where to write the safe copy.", metavar="NEW")],
    trust: Annotated[
        bool,
        typer.Option("--trust", help="Confirm that you trust OLD: it is unpickled in full."),
    ] = False,
) -> None:
    """Rewrite a trusted old checkpoint into the safe format pedcrowd loads.

    \b
    Example:
      pedcrowd convert-checkpoint old_run/last.pt runs/converted.pt --trust
    """
    if not trust:
        raise PedcrowdError(
            f"{old}: converting unpickles the file in full, which runs any code in it; "
            "pass --trust only if you made it or trust its source"
        )
    from pedcrowd.engine.checkpoint import convert_trusted

    state = convert_trusted(old, new)
    typer.echo(f"wrote {new} ({len(state)} entries; loads with weights_only=True)")


def register(app: typer.Typer) -> None:
    app.command("convert-checkpoint", short_help="Make a trusted old checkpoint safe to load.")(
        convert_command
    )
