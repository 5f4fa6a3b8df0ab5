"""Batched routed generation: equals per-row generation, and agrees with the teacher-forced forward."""

import pytest
import torch

from mllm.generation import GenerationInputError, generate
from mllm.modeling import SuperLinkModel
from mllm.tokenizer import build_tokenizer
from mllm.vocab import Vocabulary

CORPUS = [
    "detect the red circle and the blue square",
    "where is the green star? draw a yellow triangle",
    "edit the image: make the purple hexagon bigger",
] * 5
PROMPTS = [
    "detect the red circle",
    "draw a star",
    "where is the blue square and the green star on the left?",
    "edit it",
]
MAX_NEW = 10


@pytest.fixture(scope="module")
def model(tiny_config):
    cfg = tiny_config.model
    tok = build_tokenizer(CORPUS, Vocabulary.from_config(cfg), cfg.text.tokenizer_vocab_size)
    torch.manual_seed(0)
    return SuperLinkModel(cfg, tok).eval()


def prompt_batch(model, rows: list[int]) -> dict:
    texts = ["<image>" * 16 + " " + PROMPTS[r] for r in rows]
    batch = model.tokenizer(texts, return_tensors="pt", padding=True)
    pixels = torch.randn(len(PROMPTS), 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return {**batch, "pixel_values": pixels[rows]}


def script_hook(model, scripts: list[dict[int, int]]):
    """Force scripted tokens per row and step; on other steps forbid routes and eos, so the script decides."""
    never = torch.tensor([*model.token_ids.route.values(), model.token_ids.eos])

    def hook(step: int, logits: torch.Tensor) -> torch.Tensor:
        out = logits.clone()
        for r, script in enumerate(scripts):
            if step in script:
                out[r] = float("-inf")
                out[r, script[step]] = 0.0
            else:
                out[r, never] = float("-inf")
        return out

    return hook


@pytest.fixture(scope="module")
def scripts(model):
    ids, tok = model.token_ids, model.tokenizer
    red_circle = tok.encode(" red circles", add_special_tokens=False)
    row0 = {i: t for i, t in enumerate(red_circle)} | {len(red_circle): ids.route["DET"]}
    return [
        row0,  # text, then [DET] with the phrase "red circles"
        {0: ids.route["GEN"], 5: ids.route["DET"]},  # route at the first step, and again later
        {2: ids.route["DET"], 3: ids.route["SEG"]},  # two routes back to back
        {5: ids.route["EDIT"], 7: ids.eos},  # 8 queries in the same chunk as row 1's 4; then stops
    ]


@pytest.fixture(scope="module")
def batched(model, scripts):
    return generate(model, prompt_batch(model, [0, 1, 2, 3]), max_new_tokens=MAX_NEW,
                    logits_hook=script_hook(model, scripts))  # fmt: skip


def test_scripted_routes_fire_as_link_events(model, scripts, batched):
    n_text = len(scripts[0]) - 1
    assert [(e.route, e.position) for e in batched[0].links] == [("DET", n_text)]
    assert batched[0].links[0].phrase == "red circles"
    assert [(e.route, e.position) for e in batched[1].links] == [("GEN", 0), ("DET", 5)]
    assert [(e.route, e.position) for e in batched[2].links] == [("DET", 2), ("SEG", 3)]
    assert [(e.route, e.position) for e in batched[3].links] == [("EDIT", 5)]
    assert [e.states.shape for e in batched[1].links] == [(8, 64), (4, 64)]
    assert all(e.row == r for r, g in enumerate(batched) for e in g.links)
    assert [g.finished for g in batched] == [False, False, False, True]
    assert [len(g.token_ids) for g in batched] == [MAX_NEW, MAX_NEW, MAX_NEW, 8]
    assert "[GEN]" in batched[1].text and "[DET]" in batched[1].text
    assert "_Q]" not in batched[1].text and "</s>" not in batched[3].text


def test_batched_equals_one_row_at_a_time(model, scripts, batched):
    for r in range(len(PROMPTS)):
        alone = generate(model, prompt_batch(model, [r]), max_new_tokens=MAX_NEW,
                         logits_hook=script_hook(model, [scripts[r]]))[0]  # fmt: skip
        assert alone.token_ids == batched[r].token_ids
        assert alone.text == batched[r].text and alone.finished == batched[r].finished
        assert [(e.route, e.position, e.phrase) for e in alone.links] == [
            (e.route, e.position, e.phrase) for e in batched[r].links
        ]
        for a, b in zip(alone.links, batched[r].links, strict=True):
            assert torch.allclose(a.states, b.states, atol=1e-4)


def test_link_states_equal_teacher_forced_forward(model, batched):
    """Feeding prompt + answer with placeholders through forward gives the same states as generation."""
    for r in (1, 2):
        prompt = prompt_batch(model, [r])
        answer = []
        route_of = {v: k for k, v in model.token_ids.route.items()}
        for tid in batched[r].token_ids:
            answer.append(tid)
            route = route_of.get(tid)
            if route is not None:
                answer += [model.token_ids.placeholder[route]] * model.config.routes[route]
        ids = torch.cat([prompt["input_ids"], torch.tensor([answer])], dim=1)
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=prompt["pixel_values"])
        forced = sorted(
            (int(ls.index[i, 1]), route, ls.states[i])
            for route, ls in out.link_states.items()
            for i in range(len(ls.states))
        )
        assert [route for _, route, _ in forced] == [e.route for e in batched[r].links]
        for (_, _, states), event in zip(forced, batched[r].links, strict=True):
            assert torch.allclose(event.states, states, atol=1e-4)


def test_sampling_is_per_row_reproducible(model):
    batch = prompt_batch(model, [0, 1, 2, 3])
    opts = {"max_new_tokens": 6, "do_sample": True, "temperature": 1.5, "top_p": 0.9}
    seeds = [11, 12, 13, 14]
    together = generate(model, batch, seeds=seeds, **opts)
    again = generate(model, batch, seeds=seeds, **opts)
    assert [g.token_ids for g in together] == [g.token_ids for g in again]
    for r in range(4):
        alone = generate(model, prompt_batch(model, [r]), seeds=[seeds[r]], **opts)[0]
        assert alone.token_ids == together[r].token_ids
    other = generate(model, batch, seeds=[21, 22, 23, 24], **opts)
    assert [g.token_ids for g in other] != [g.token_ids for g in together]
    greedy = generate(model, batch, max_new_tokens=6)
    assert [g.token_ids for g in greedy] != [g.token_ids for g in together]


def test_routes_outside_allowed_routes_are_never_emitted(model):
    route_ids = torch.tensor(list(model.token_ids.route.values()))

    def favour_routes(step: int, logits: torch.Tensor) -> torch.Tensor:
        return logits + torch.zeros_like(logits).index_fill(1, route_ids, 100.0)

    gens = generate(model, prompt_batch(model, [0, 3]), max_new_tokens=3, allowed_routes={"GEN"},
                    logits_hook=favour_routes)  # fmt: skip
    assert [[e.route for e in g.links] for g in gens] == [["GEN"] * 3, ["GEN"] * 3]
    with pytest.raises(GenerationInputError, match="unknown routes"):
        generate(model, prompt_batch(model, [0]), max_new_tokens=2, allowed_routes={"FLY"})


def test_route_on_the_last_step_still_gets_its_link_states(model):
    det = model.token_ids.route["DET"]
    gen = generate(
        model, prompt_batch(model, [0]), max_new_tokens=3, logits_hook=script_hook(model, [{2: det}])
    )[0]
    assert gen.token_ids[-1] == det and not gen.finished
    assert [(e.route, e.position) for e in gen.links] == [("DET", 2)]


def test_right_padded_prompts_are_refused(model):
    batch = prompt_batch(model, [0, 2])
    batch["attention_mask"] = batch["attention_mask"].flip(1)
    with pytest.raises(GenerationInputError, match="left-padded"):
        generate(model, batch, max_new_tokens=2)


def test_processor_batches_drive_training_forward_and_generation(model):
    """End to end with mllm.processor: a training batch gives a loss and link states, a prompt batch
    with images and a region generates the same rows batched and alone."""
    from PIL import Image

    from mllm.processor import SuperLinkProcessor

    proc = SuperLinkProcessor(model.tokenizer, model.config)
    pics = [Image.new("RGB", (40, 30), c) for c in ("red", "blue")]
    keys = ("input_ids", "attention_mask", "pixel_values", "region_masks", "region_image_index", "labels")
    train = proc(["detect circles", "what is <region>?"], images=[[pics[0]], [pics[1]]],
                 answers=["the red circle [DET], the star [DET]", "a star [SEG]"],
                 regions=[[], [{"box": [5, 5, 20, 20]}]])  # fmt: skip
    out = model(**{k: train[k] for k in keys})
    assert torch.isfinite(out.loss)
    assert out.link_states["DET"].index[:, 0].tolist() == [0, 0]
    assert out.link_states["SEG"].index[:, 0].tolist() == [1]
    instructions = ["detect circles", "what is <region>?", "describe"]
    regions = [[], [{"point": [10, 10]}], []]
    prompt = proc(instructions, images=[[pics[0]], [pics[1]], [pics[0]]], regions=regions)
    together = generate(model, prompt, max_new_tokens=4)
    for r in range(3):
        alone = proc([instructions[r]], images=[[pics[r % 2]]], regions=[regions[r]])
        assert generate(model, alone, max_new_tokens=4)[0].token_ids == together[r].token_ids
