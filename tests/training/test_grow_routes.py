"""Growing a trained model: the shipped checkpoint gains a route declared outside the package ([COUNT]),
fine-tunes it, and its old routes still answer exactly as before."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from router.assets import CHECKPOINT_ROOT, SYSTEM_CONFIG

CKPT = CHECKPOINT_ROOT / "shapes"

pytestmark = pytest.mark.skipif(not (CKPT / SYSTEM_CONFIG).is_file(), reason="checkpoints/shapes/ is absent")


def _answers(pipe, requests) -> list[dict]:
    out = pipe(list(requests))
    return [r.model_dump(mode="json", exclude={"timings_ms"}) for r in out]


def test_shipped_model_grows_a_route(tmp_path):
    from evaluation.suite import eval_samples, to_request
    from router.pipeline import Pipeline, forced_answer_hook
    from router.schemas import Request
    from tests.plugins.count_route import Count, count_sample
    from tests.router.test_route_plugin import count_config

    pipe = Pipeline.from_pretrained("shapes")
    pairs = eval_samples("val", 4, 0, pipe.config.training.image_size, pipe.config.model.vocab.location_bins,
                         ["detection", "segmentation", "grounding", "vqa"])  # fmt: skip
    requests = [to_request(f, s, i) for i, (f, s) in enumerate(pairs)]
    before = _answers(pipe, requests)
    assert any(r["detections"] for r in before) and {"DET", "SEG", "GRD"} <= {x for r in before for x in r["routes"]}
    model = pipe.system.model
    emb = model.llava.get_input_embeddings().weight
    old_rows, old_ids = emb.detach().clone(), dict(model.tokenizer.get_vocab())

    assert pipe.add_routes(count_config(pipe.config)) == ["COUNT"]
    emb = model.llava.get_input_embeddings().weight
    new_ids = {t: i for t, i in model.tokenizer.get_vocab().items() if t not in old_ids}
    assert set(new_ids) == {"[COUNT]", "[COUNT_Q]"} and min(new_ids.values()) >= len(old_ids)
    assert all(model.tokenizer.get_vocab()[t] == i for t, i in old_ids.items())  # every old id kept
    assert torch.equal(emb[: len(old_rows)], old_rows)
    grown = emb[len(old_rows) :]
    assert grown.shape[0] == 2 and torch.allclose(grown, old_rows.mean(0).expand_as(grown), atol=1e-6)
    assert model.queries["COUNT"].weight.shape == (2, model.config.text.hidden_size)

    # Fine-tune the new route's own parts (query table, projector, decoder); everything else stays frozen.
    from router.loss import collate, joint_loss

    system = pipe.system
    new = [p for n, p in system.named_parameters() if n.startswith(("model.queries.COUNT", "projectors.COUNT", "decoders.counter"))]
    for p in system.parameters():
        p.requires_grad_(False)
    for p in new:
        p.requires_grad_(True)
    rng = np.random.default_rng(0)
    batch = collate(pipe.processor, [count_sample(rng, 128) for _ in range(4)])
    opt = torch.optim.AdamW(new, lr=1e-2)
    system.train()
    losses = []
    for _ in range(10):
        out = joint_loss(system, batch)
        opt.zero_grad()
        out.parts["COUNT"].backward()
        opt.step()
        losses.append(out.parts["COUNT"].item())
    system.eval()
    assert losses[-1] < 0.7 * losses[0], losses

    assert _answers(pipe, requests) == before  # the old routes answer exactly as before

    saved = pipe.save_pretrained(tmp_path / "grown")
    again = Pipeline.from_pretrained(saved)
    assert _answers(again, requests) == before
    scene = count_sample(np.random.default_rng(5), 128)
    again.logits_hook = forced_answer_hook(again.processor.tokenizer, ["the circles [COUNT]."])
    resp = again(Request(images=[Image.fromarray(scene.image)], instruction="How many circles?"))
    assert resp.errors == [] and isinstance(resp.parts[0], Count)


def test_train_init_grows_the_shipped_model(tmp_path):
    """`superlink train CONFIG --init checkpoints/shapes` where CONFIG declares a route the checkpoint lacks."""
    from safetensors.torch import load_file

    from router.config import load_config
    from tests.router.test_route_plugin import count_config
    from training.train import build_run

    cfg = count_config(load_config(CKPT / SYSTEM_CONFIG))
    run = build_run(cfg, tmp_path / "run", init=CKPT)
    saved = load_file(str(CKPT / "mllm" / "model.safetensors"))
    key = next(k for k in saved if k.endswith(("embed_tokens.weight", "lm_head.weight")))  # tied: stored once
    old = saved[key]
    emb = run.system.model.llava.get_input_embeddings().weight.detach()
    assert emb.shape[0] == old.shape[0] + 2  # [COUNT] and [COUNT_Q] appended
    assert torch.equal(emb[: len(old)], old) and torch.allclose(emb[len(old) :], old.mean(0).expand(2, -1), atol=1e-6)
    assert run.system.model.tokenizer.convert_tokens_to_ids("[COUNT]") == len(old)
    heads = load_file(str(CKPT / "heads.safetensors"))
    own = run.system.state_dict()
    assert all(torch.equal(own[k], v) for k, v in heads.items())  # every saved head kept
