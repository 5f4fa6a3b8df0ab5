"""`superlink run --image PATH "instruction"`: one request on any image, answered or refused clearly.

Exit codes: 0 answered; 2 refused (missing or unreadable file, image too large or corrupt, bad
request, unknown model); 1 an unexpected internal failure (reported in one line, no traceback).
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

from PIL import Image
from pydantic import ValidationError

from mllm.config import ConfigError
from router.pipeline import Pipeline
from router.schemas import LEGACY_LISTS, Options, Request, Response
from router.stages import RequestError
from services.draw import annotate, generated_images

EXIT_OK, EXIT_INTERNAL, EXIT_REFUSED = 0, 1, 2


class Refusal(Exception):
    """A request SuperLink will not run; the message is shown to the user as is."""


def read_images(paths: list[Path]) -> list[bytes]:
    """Raw bytes of each file (decoding and size checks happen in the pipeline's image loader)."""
    out = []
    for p in paths:
        if not p.is_file():
            raise Refusal(f"image {str(p)!r} does not exist or is not a file")
        try:
            out.append(p.read_bytes())
        except OSError as err:
            raise Refusal(f"cannot read image {str(p)!r}: {err.strerror or err}") from None
    return out


def parse_scribble(lines: list[str], width: float) -> dict | None:
    """--scribble "x,y x,y ..." (repeatable, one polyline each) and --scribble-width -> a scribble region, or None."""
    if not lines:
        return None
    polylines = []
    for text in lines:
        try:
            line = [[float(v) for v in pair.split(",")] for pair in text.split()]
        except ValueError:
            line = []
        if not line or any(len(p) != 2 for p in line):
            raise Refusal(f"--scribble expects pixel points 'x,y x,y ...' (one polyline per --scribble), got {text!r}")
        polylines.append(line)
    return {"scribble": {"lines": polylines, "width": width}}


def build_request(instruction: str, images: list[bytes], max_new_tokens: int, seed: int | None,
                  regions: list[dict] | None = None) -> Request:
    regions = regions or []
    if regions and "<region>" not in instruction:
        raise Refusal("the instruction needs a <region> placeholder where the scribble goes, "
                      "e.g. 'What is in <region>?'")
    try:
        return Request(images=images, instruction=instruction, regions=regions,
                       options=Options(max_new_tokens=max_new_tokens, seed=seed))
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'request'}: {e['msg']}" for e in err.errors())
        raise Refusal(f"bad request: {problems}") from None


def load_pipeline(model: str):
    try:
        return Pipeline.from_pretrained(model)
    except (ConfigError, FileNotFoundError) as err:
        raise Refusal(f"cannot load model {model!r}: {err}") from None


def summary(response: Response) -> str:
    """A few readable lines: the answer, the routes, what each decoder returned, and any errors."""
    lines = [f"answer: {response.text}"]
    if response.routes:
        lines.append("routes: " + " ".join(f"[{r}]" for r in response.routes))
    for d in response.detections:
        src = f"[{d.route}]" if d.route else "native"
        box = ", ".join(f"{v:.1f}" for v in d.box)
        lines.append(f"  {src} {d.label}: box ({box}) score {d.score:.2f}{' +mask' if d.mask else ''}")
    for p in response.polygons:
        lines.append(f"  native polygon {p.label}: {len(p.points)} points{' +mask' if p.mask else ''}")
    for p in response.points:
        lines.append(f"  native point {p.label}: ({p.point[0]:.1f}, {p.point[1]:.1f})")
    for k in response.keypoints:
        lines.append(f"  [POSE] {k.label}: {sum(v >= 0.5 for *_, v in k.keypoints)} keypoints, score {k.score:.2f}")
    for g in response.images:
        lines.append(f"  [{g.route}] image {g.width}x{g.height}")
    for p in (p for p in response.parts if type(p) not in LEGACY_LISTS):  # kinds a route module declares
        fields = p.model_dump(exclude={"kind", "route", "phrase", "image"})
        lines.append(f"  [{p.route}] {p.kind} {p.phrase}: " + ", ".join(f"{k} {v}" for k, v in fields.items()))
    for e in response.errors:
        lines.append(f"  error ({e.kind}) {e.route or ''} {e.phrase}: {e.message}")
    if response.timings_ms:
        lines.append("timings ms: " + ", ".join(f"{k} {v:.0f}" for k, v in response.timings_ms.items()))
    return "\n".join(lines)


def write_outputs(out: Path, response: Response, images: list[bytes], regions: list | None = None) -> list[Path]:
    """response.json, annotated.png (input with results, generated/edited images beside) and each generated PNG."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "response.json"]
    written[0].write_text(response.model_dump_json(indent=2))
    first = Image.open(io.BytesIO(images[0])).convert("RGB") if images else None
    if first is not None or response.images:
        annotate(first, response, regions or []).save(out / "annotated.png")
        written.append(out / "annotated.png")
    for k, im in enumerate(generated_images(response)):
        im.save(out / f"{response.images[k].route.lower()}_{k}.png")
        written.append(out / f"{response.images[k].route.lower()}_{k}.png")
    return written


def run_once(instruction: str, images: list[Path], model: str, out: Path | None, as_json: bool,
             max_new_tokens: int, seed: int | None, scribble: list[str] | None = None,
             scribble_width: float = 4.0) -> int:
    """Run one instruction on `images` with `model`; print the answer (or JSON); return the exit code.

    `scribble` (polylines "x,y x,y ...") is one scribble region prompt on the first image, filling <region>.
    """
    try:
        region = parse_scribble(list(scribble or []), scribble_width)
        request = build_request(instruction, read_images(list(images)), max_new_tokens, seed,
                                [region] if region else None)
        response = load_pipeline(model)(request)
        if out is not None:
            write_outputs(out, response, request.images, request.regions)
    except (Refusal, RequestError) as err:
        print(f"superlink run: refused: {err}", file=sys.stderr)
        return EXIT_REFUSED
    except Exception as err:  # the CLI must answer in one line, never with a traceback
        print(f"superlink run: internal error: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_INTERNAL
    if as_json:
        print(json.dumps(response.model_dump(mode="json")))
    else:
        print(summary(response))
        if out is not None:
            print(f"wrote {out}/response.json and annotated PNGs")
    return EXIT_OK
