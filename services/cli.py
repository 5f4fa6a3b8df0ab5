"""`superlink` command line. Each subcommand is a thin call into a typed function.

Each subcommand imports what it runs when it runs (the one place imports stay inside functions on purpose):
`superlink --help` and a typo answer at once instead of first loading torch, transformers, training and Ray.
"""

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
    wording: Annotated[str, typer.Option(help="instruction wording: template, train or heldout (the grammar's "
                                         "held-out part, never trained on)")] = "template",
) -> None:
    """Write images, COCO instances JSON and a JSONL of task samples."""
    from shapesworld.export import export_split

    try:
        summary = export_split(split=split, n=n, seed=seed, out=out, image_size=image_size, wording=wording)
    except ValueError as err:
        typer.echo(f"superlink world export: {err}", err=True)
        raise typer.Exit(2) from None
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


ModelOpt = Annotated[str, typer.Option("--model", help="preset name (tiny, shapes) or a saved SuperLink folder")]


@app.command()
def run(
    instruction: Annotated[str, typer.Argument(help="what to do, e.g. 'detect the red circles'")],
    image: Annotated[list[Path] | None, typer.Option("--image", help="input image (repeatable)")] = None,
    model: ModelOpt = "shapes",
    out: Annotated[Path | None, typer.Option(help="folder for annotated PNGs and the JSON response")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the response as JSON")] = False,
    max_new_tokens: Annotated[int, typer.Option()] = 128,
    seed: Annotated[int | None, typer.Option()] = None,
    scribble: Annotated[list[str] | None, typer.Option(
        "--scribble", help="a scribble region prompt on the first image: pixel points 'x,y x,y ...' "
        "(repeat for more polylines); the instruction marks it with <region>")] = None,
    scribble_width: Annotated[float, typer.Option(help="scribble pen width in pixels")] = 4.0,
) -> None:
    """Run one instruction on images; answers, or refuses with a clear message.

    Polygons on request: "Outline each star with a 12-point polygon." Scribbles:
    superlink run --image scene.png --scribble "10,12 30,40 52,41" "What is in <region>?"
    """
    from services.runner import run_once

    code = run_once(instruction, images=list(image or []), model=model, out=out, as_json=as_json,
                    max_new_tokens=max_new_tokens, seed=seed, scribble=list(scribble or []),
                    scribble_width=scribble_width)
    raise typer.Exit(code)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="folder for annotated PNGs and JSON responses")] = Path("out/demo"),
    model: ModelOpt = "shapes",
) -> None:
    """Run the model on a handful of ShapesWorld scenes and instructions; write pictures and JSON."""
    from services.demo import run_demo

    run_demo(out=out, model=model)


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="training preset YAML, e.g. configs/tiny.yaml")],
    out: Annotated[Path, typer.Option(help="output folder for checkpoints and logs")] = Path("runs/train"),
    resume: Annotated[bool, typer.Option(help="continue from the last checkpoint in --out")] = False,
    init: Annotated[Path | None, typer.Option(help="warm-start from a saved model folder, e.g. checkpoints/shapes")] = None,
    max_minutes: Annotated[
        float | None, typer.Option(help="stop (with a checkpoint to --resume from) after this many minutes")
    ] = None,
    export: Annotated[
        Path | None, typer.Option(help="do not train: write --out's latest checkpoint as a model folder here "
                                       "(for `superlink eval --model DIR` mid-run)")
    ] = None,
) -> None:
    """Joint end-to-end training: LM loss + weighted decoder losses through the super links.

    The config's training.data section names the sources (ShapesWorld, COCO, RefCOCO, LLaVA JSONL)."""
    from mllm.config import ConfigError
    from router.sources import DataSourceError
    from training.train import export_checkpoint
    from training.train import train as train_fn

    if export is not None:
        _print_json_last(export_checkpoint(config, out, export), as_json=True)
        return
    try:
        result = train_fn(config, out, resume=resume, init=init, max_minutes=max_minutes)
    except (ConfigError, DataSourceError) as err:
        typer.echo(f"superlink train: {err}", err=True)
        raise typer.Exit(2) from None
    _print_json_last(result, as_json=True)


@app.command("eval")
def evaluate(
    model: ModelOpt = "shapes",
    split: Annotated[str, typer.Option(help="ShapesWorld split")] = "val",
    n: Annotated[int, typer.Option(help="number of scenes")] = 50,
    wording: Annotated[str, typer.Option(
        help="instruction wordings: template (the keys as before), heldout (*_heldout_wording keys: the same "
        "scenes worded as training never words them) or both")] = "both",
    families: Annotated[str | None, typer.Option(
        help="comma-separated task families to score (default: all); n is then dealt over these alone")] = None,
    teacher_force: Annotated[bool, typer.Option(
        "--teacher-force", help="the model writes the reference answers (its link states then come from the right "
        "phrases): decoder metrics without the LLM's wording or phrase errors")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="last line is one JSON object")] = False,
) -> None:
    """Score a model on ShapesWorld with every task metric."""
    try:
        from evaluation.suite import evaluate_model
    except ImportError:
        typer.echo("superlink eval: the ShapesWorld evaluation suite is not built yet (needs the embedded model, issue 7).", err=True)
        raise typer.Exit(2) from None
    if wording not in ("template", "heldout", "both"):
        typer.echo(f"superlink eval: unknown --wording {wording!r}; accepted: template, heldout, both", err=True)
        raise typer.Exit(2)
    chosen = {} if families is None else {"families": [f.strip() for f in families.split(",") if f.strip()]}
    try:
        result = evaluate_model(model=model, split=split, n=n, wording=wording, teacher_force=teacher_force, **chosen)
    except ValueError as err:
        typer.echo(f"superlink eval: {err}", err=True)
        raise typer.Exit(2) from None
    _print_json_last(result, as_json)


@app.command()
def serve(
    config: Annotated[Path | None, typer.Option(help="serving config (defaults to configs/serve.yaml)")] = None,
    no_ray: Annotated[bool, typer.Option("--no-ray", help="same HTTP API over one in-process pipeline (uvicorn)")] = False,
) -> None:
    """Start the Ray Serve application (ingress + MLLM + one deployment per decoder)."""
    from services.app import serve as serve_fn
    from services.app import serve_local

    (serve_local if no_ray else serve_fn)(config)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
