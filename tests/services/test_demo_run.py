"""`superlink demo`, `superlink run` and the shared drawing code, on the random-weight tiny preset."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from router.schemas import RLE, Detection, GeneratedImage, Keypoints, Response
from services import demo, runner
from services.draw import GAP, PALETTE, annotate


@pytest.fixture(scope="module")
def tiny_pipe():
    from router.pipeline import Pipeline

    return Pipeline.from_pretrained("tiny")


@pytest.fixture
def cached_pipeline(monkeypatch, tiny_pipe):
    """Pipeline.from_pretrained("tiny") once per module: building it is the slow part, not what is tested."""
    from router.pipeline import Pipeline

    def load(name, *args, **kwargs):
        assert name == "tiny", f"unexpected model {name!r}"
        return tiny_pipe

    monkeypatch.setattr(Pipeline, "from_pretrained", staticmethod(load))
    monkeypatch.setattr(runner, "load_pipeline", load)
    return tiny_pipe


# ---- drawing ----------------------------------------------------------------------------------
def _png_b64(image: np.ndarray) -> str:
    import base64

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_annotate_draws_box_mask_keypoints_and_places_generated_image_beside():
    from evaluation.coco import mask_to_rle

    image = np.full((128, 128, 3), 255, np.uint8)
    mask = np.zeros((128, 128), bool)
    mask[40:60, 40:60] = True
    rle = mask_to_rle(mask)
    response = Response(
        text="", raw_text="",
        detections=[Detection(route="SEG", phrase="red circle", label="red circle", box=(40, 40, 60, 60), score=0.9,
                              mask=RLE(size=tuple(rle["size"]), counts=rle["counts"]))],
        keypoints=[Keypoints(route="POSE", phrase="star", label="star", box=(80, 80, 100, 100), score=0.8,
                             keypoints=[(90.0, 90.0, 0.9), (10.0, 10.0, 0.1)])],
        images=[GeneratedImage(route="EDIT", phrase="edited image", png_base64=_png_b64(np.zeros((32, 32, 3), np.uint8)),
                               width=32, height=32, source_image=0)],
    )  # fmt: skip
    out = np.asarray(annotate(image, response))
    scale = 3  # 128 px scenes are drawn at 384 px
    assert out.shape == (384, 384 + GAP + 384, 3)
    assert tuple(out[50 * scale, 40 * scale]) == PALETTE[0]  # box outline in the phrase's colour
    inside = out[50 * scale, 50 * scale].astype(int)
    assert (inside < 250).any() and inside[0] > inside[1]  # mask blended with red-ish PALETTE[0]
    assert tuple(out[90 * scale, 90 * scale]) == PALETTE[1]  # a visible keypoint
    assert (out[10 * scale, 10 * scale] == 255).all()  # an invisible keypoint is not drawn
    assert (out[:, 384 + GAP + 10] == 0).all()  # the edited image sits to the right


def test_annotate_without_anything_to_draw_refuses():
    with pytest.raises(ValueError, match="nothing to draw"):
        annotate(None, Response(text="", raw_text=""))


# ---- demo -------------------------------------------------------------------------------------
def test_demo_falls_back_to_tiny_says_so_and_writes_pictures(tmp_path, capsys, cached_pipeline):
    tasks = ("detection", "region", "generation", "compound")
    summary = demo.run_demo(tmp_path, model="no-such-model", tasks=tasks)
    printed = capsys.readouterr().out
    assert printed.startswith("NOTE: no trained checkpoint for 'no-such-model'")
    assert "RANDOM-WEIGHT 'tiny'" in printed and "TEACHER-FORCED" in printed
    assert summary["teacher_forced"] and not summary["trained"] and summary["scenes"] == len(tasks)
    pngs = sorted(tmp_path.glob("*.png"))
    assert [p.stem.split("_", 1)[1] for p in pngs] == list(tasks)
    records = {p.stem.split("_", 1)[1]: json.loads(p.with_suffix(".json").read_text()) for p in pngs}
    # Teacher-forced reference answers fire their routing tokens, and the decoders answer from the link states.
    assert records["detection"]["response"]["routes"] == ["DET"] * records["detection"]["reference_answer"].count("[DET]")
    assert records["generation"]["response"]["routes"] == ["GEN"]
    assert len(records["generation"]["response"]["images"]) == 1
    assert records["region"]["response"]["routes"] == []
    assert records["region"]["response"]["text"] == records["region"]["reference_answer"]
    assert len(records["compound"]["response"]["routes"]) >= 2
    gen = Image.open(tmp_path / "02_generation.png")
    assert gen.size[1] >= 384  # a generated-only picture is drawn at a legible size


def test_demo_rejects_unknown_task():
    with pytest.raises(ValueError, match="unknown demo tasks"):
        demo.demo_samples(128, 32, tasks=("juggling",))


# ---- run --------------------------------------------------------------------------------------
def _photo_files(tmp_path):
    rng = np.random.default_rng(0)
    rgba = tmp_path / "photo_rgba.png"
    Image.fromarray(rng.integers(0, 256, (211, 317, 4), dtype=np.uint8), "RGBA").save(rgba)
    grey16 = tmp_path / "grey16.png"
    Image.fromarray(rng.integers(0, 65535, (90, 160), dtype=np.uint16)).save(grey16)
    cmyk = tmp_path / "print.jpg"
    Image.fromarray(rng.integers(0, 256, (300, 120, 3), dtype=np.uint8)).convert("CMYK").save(cmyk)
    return [rgba, grey16, cmyk]


def test_run_answers_on_photographs_of_any_size_and_mode(tmp_path, capsys, cached_pipeline):
    for k, path in enumerate(_photo_files(tmp_path)):
        out = tmp_path / f"out{k}"
        code = runner.run_once("detect the red circles", [path], "tiny", out, as_json=False, max_new_tokens=6, seed=0)
        printed = capsys.readouterr()
        assert code == 0, printed.err
        assert printed.out.startswith("answer: ")
        response = Response.model_validate_json((out / "response.json").read_text())
        assert response.raw_text is not None
        w, h = Image.open(path).size
        drawn = Image.open(out / "annotated.png")
        assert abs(drawn.width / drawn.height - w / h) < 0.02  # the input drawn at its own aspect ratio


def test_run_json_prints_one_object_on_the_last_line(tmp_path, capsys, cached_pipeline):
    path = _photo_files(tmp_path)[0]
    code = runner.run_once("What is in the image?", [path], "tiny", None, as_json=True, max_new_tokens=4, seed=1)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert code == 0
    assert set(json.loads(last)) >= {"text", "raw_text", "routes", "detections", "images", "errors"}


@pytest.mark.parametrize("kind", ["corrupt", "missing", "oversize", "empty_instruction"])
def test_run_refuses_clearly_without_traceback(tmp_path, capsys, cached_pipeline, kind):
    path = tmp_path / "img.png"
    instruction = "detect circles"
    if kind == "corrupt":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    elif kind == "oversize":  # 4100 x 4100 > tiny's 4096 x 4096 pixel limit; refused before decoding
        Image.new("L", (4100, 4100)).save(path)
    elif kind == "empty_instruction":
        Image.new("RGB", (8, 8)).save(path)
        instruction = "   "
    code = runner.run_once(instruction, [path], "tiny", None, as_json=False, max_new_tokens=4, seed=None)
    err = capsys.readouterr().err
    assert code == runner.EXIT_REFUSED
    assert err.startswith("superlink run: refused: ") and "Traceback" not in err
    expected = {"corrupt": "corrupt", "missing": "does not exist", "oversize": "limit", "empty_instruction": "instruction"}
    assert expected[kind] in err


def test_run_refuses_unknown_model(tmp_path, capsys):
    code = runner.run_once("hello", [], "no-such-model", None, as_json=False, max_new_tokens=4, seed=None)
    err = capsys.readouterr().err
    assert code == runner.EXIT_REFUSED and "no-such-model" in err and "Traceback" not in err


def test_run_with_a_scribble_region(tmp_path, capsys, cached_pipeline):
    path = tmp_path / "scene.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(path)
    code = runner.run_once("What is in <region>?", [path], "tiny", tmp_path / "out", as_json=False, max_new_tokens=4,
                           seed=0, scribble=["5,5 30,20 40,40", "50,10"], scribble_width=6)
    assert code == 0, capsys.readouterr().err
    saved = Response.model_validate_json((tmp_path / "out" / "response.json").read_text())
    assert saved.raw_text is not None
    drawn = np.asarray(Image.open(tmp_path / "out" / "annotated.png"))
    assert (drawn == 255).all(-1).any()  # the scribble is drawn in white on the red picture


@pytest.mark.parametrize(
    ("instruction", "scribble", "message"),
    [
        ("What is in <region>?", ["5,5 30"], "--scribble expects pixel points"),
        ("What is in <region>?", ["5,5 a,b"], "--scribble expects pixel points"),
        ("What is in <region>?", ["5,5 300,20"], "outside the 64x48 image"),
        ("What is here?", ["5,5 30,20"], "needs a <region> placeholder"),
    ],
)
def test_run_refuses_bad_scribbles_in_one_line(tmp_path, capsys, cached_pipeline, instruction, scribble, message):
    path = tmp_path / "scene.png"
    Image.new("RGB", (64, 48)).save(path)
    code = runner.run_once(instruction, [path], "tiny", None, as_json=False, max_new_tokens=4, seed=0, scribble=scribble)
    err = capsys.readouterr().err
    assert code == runner.EXIT_REFUSED and message in err and len(err.strip().splitlines()) == 1, err


def test_demo_has_polygon_and_scribble_scenes(tmp_path, cached_pipeline):
    demo.run_demo(tmp_path, model="no-such-model", tasks=("polygon", "scribble"))
    poly = json.loads((tmp_path / "00_polygon.json").read_text())
    scribble = json.loads((tmp_path / "01_scribble.json").read_text())
    assert poly["response"]["polygons"] and all(p["mask"] for p in poly["response"]["polygons"])
    assert scribble["regions"][0]["scribble"]["lines"]
    assert scribble["response"]["text"] == scribble["reference_answer"]
