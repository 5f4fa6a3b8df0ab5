"""`superlink` command line. Each subcommand is a thin call into a typed function."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="SuperLink: one multimodal LLM routing link states to task decoders.", no_args_is_help=True)
world_app = typer.Typer(help="ShapesWorld: export data sets, check the oracle.", no_args_is_help=True)
app.add_typer(world_app, name="world")


def _print_json_last(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k}: {v}")


@world_app.command("export")
def world_export(
    out: Annotated[Path, typer.Option(help="output folder")],
    split: Annotated[str, typer.Option(help="train, val or test")] = "val",
    n: Annotated[int, typer.Option(help="number of scenes")] = 100,
    seed: Annotated[int, typer.Option(help="base seed")] = 0,
    image_size: Annotated[int, typer.Option(help="scene side in pixels")] = 128,
) -> None:
    """Write images, COCO instances JSON and a JSONL of task samples."""
    from shapesworld.export import export_split

    summary = export_split(split=split, n=n, seed=seed, out=out, image_size=image_size)
    _print_json_last(summary, as_json=False)


@world_app.command("check")
def world_check(
    n: Annotated[int, typer.Option(help="number of scenes to render")] = 200,
    seed: Annotated[int, typer.Option()] = 0,
    image_size: Annotated[int, typer.Option()] = 128,
    as_json: Annotated[bool, typer.Option("--json", help="last line is one JSON object")] = False,
) -> None:
    """Render scenes, read them back with the oracle, print the agreement with ground truth."""
    from shapesworld.oracle import check_agreement

    _print_json_last(check_agreement(n=n, seed=seed, image_size=image_size), as_json)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
