"""The instruction grammar: wording changes the instruction only, the training sampler never produces a
held-out wording, every held-out sample uses one, and the variation the grammar promises is there."""

import re

import numpy as np
import pytest

from mllm.localize import parse_class_list
from shapesworld import grammar
from shapesworld.constants import COLORS, KINDS
from shapesworld.tasks import TASK_TEMPLATES, TASKS, TEMPLATES, category_slots, make_sample, plural_phrase

N = 24  # samples per task and wording
TEMPLATES_TEXT = [t for ts in TEMPLATES.values() for t in ts]
SLOT_WORDS = {"up", "down", "'s"}  # held-out-only in the grammar's literal text, but slot values or suffixes too


def _samples(task: str, wording: str, n: int = N, offset: int = 0) -> list:
    return [make_sample(task, np.random.default_rng(offset + i), image_size=64, location_bins=32, wording=wording)
            for i in range(n)]


@pytest.fixture(scope="module")
def train_samples() -> dict[str, list]:
    return {t: _samples(t, "train") for t in TASKS}


@pytest.fixture(scope="module")
def heldout_samples() -> dict[str, list]:
    return {t: _samples(t, "heldout") for t in TASKS}


def _text(s) -> str:
    return s.instruction.split("\n", 1)[-1]


def test_wording_changes_only_the_instruction(train_samples, heldout_samples):
    for task in TASKS:
        for i in range(4):
            ref = make_sample(task, np.random.default_rng(i), image_size=64, location_bins=32)
            for other in (train_samples[task][i], heldout_samples[task][i]):
                assert (other.answer, other.classes, len(other.regions)) == (ref.answer, ref.classes, len(ref.regions))
                assert (ref.image is None and other.image is None) or np.array_equal(ref.image, other.image)
                for a, b in zip(ref.targets, other.targets, strict=True):
                    assert a.phrase == b.phrase and np.array_equal(a.boxes, b.boxes)
                assert other.instruction.startswith("<image>\n") == ref.instruction.startswith("<image>\n")
                assert other.instruction.count("<region>") == ref.instruction.count("<region>")
            assert ref.heldout_wording == []


def test_training_sampler_never_produces_a_heldout_wording(train_samples):
    held_words = set(grammar.heldout_words(TEMPLATES)) - SLOT_WORDS
    assert {"spot", "doodle", "snapshot", "favour", "plus"} <= held_words  # verbs, nouns, frames, connectors
    for task, samples in train_samples.items():
        for s in samples:
            text = _text(s)
            assert s.heldout_wording == [], (task, text)
            words = set(re.findall(r"[a-z']+", text.lower()))
            assert not words & held_words, (task, text, words & held_words)
            assert not re.search(r"(\.\.\.|!!|\?\?|\?!)$", text), text  # held-out end marks
            titled = re.findall(r"\b[A-Z][a-z']+\b", text)
            assert len(titled) < 4 or len(titled) < len(re.findall(r"\b[a-z][a-z']*\b", text)) + 2, text  # no Title Case


def test_training_path_draws_from_the_training_grammar(tiny_config):
    from training.train import batch_samples

    samples = [s for step in range(6) for s in batch_samples(tiny_config, step, 0, 0)]
    assert all(s.heldout_wording == [] for s in samples)
    templates = [_template_regex(t) for key in TEMPLATES for t in TEMPLATES[key]]
    assert sum(not any(re.fullmatch(t, _text(s)) for t in templates) for s in samples) >= len(samples) // 3
    assert len({_text(s) for s in samples}) >= 0.7 * len(samples)


@pytest.mark.parametrize("mode", ["noisy", "noisy_mixed"])
def test_noisy_wording_adds_pseudo_word_fillers_and_nothing_held_out(mode):
    held_words = set(grammar.heldout_words(TEMPLATES)) - SLOT_WORDS
    known = grammar.grammar_words()
    assert held_words <= known and {"circle", "circles", "red", "spot", "favour"} <= known
    fillers = 0
    for task in ("detection", "vqa", "compound", "grounding"):
        noisy, train = _samples(task, mode, 60), _samples(task, "train", 60)
        for s, t in zip(noisy, train, strict=True):
            assert (s.answer, s.classes, s.heldout_wording) == (t.answer, t.classes, [])  # the request is the same
            words = set(re.findall(r"[a-z']+", _text(s).lower()))
            assert not words & held_words, (task, _text(s))
            extra = words - set(re.findall(r"[a-z']+", " ".join(TEMPLATES_TEXT).lower())) - known
            extra -= set(re.findall(r"[a-z']+", " ".join(t.classes or []) + " " + s.answer.lower()))
            fillers += bool(extra)
    assert 0.05 * 240 < fillers < 0.45 * 240  # FILLER_RATE of the grammar samples, none of the templates
    rng = np.random.default_rng(0)
    assert all(grammar.pseudo_word(rng) not in known for _ in range(500))


def test_mixed_fillers_use_neutral_training_words_only():
    held_words = set(grammar.heldout_words(TEMPLATES)) - SLOT_WORDS
    neutral = set(grammar.NEUTRAL_WORDS)
    assert neutral <= grammar.grammar_words() and not neutral & held_words  # training-part words, none held out
    assert not neutral & {"and", "then", "also", "plus", "left", "right", "top", "bottom", "next", "near"}
    rng = np.random.default_rng(0)
    fillers = [grammar._with_filler("find the stars", rng, mixed=True) for _ in range(400)]
    per_filler = [[w for w in re.findall(r"[a-z']+", f.replace("find the stars", " ")) if w != "and"] for f in fillers]
    words = [w for ws in per_filler for w in ws]
    share = sum(w in neutral for w in words) / len(words)
    assert 0.3 < share < 0.5 and {len(ws) for ws in per_filler} == {1, 2, 3, 4, 5}


def test_every_heldout_sample_uses_a_heldout_choice(heldout_samples):
    axes = set()
    for task, samples in heldout_samples.items():
        for s in samples:
            assert s.heldout_wording, (task, s.instruction)
            axes |= {h.split("=")[0] for h in s.heldout_wording}
    assert {"pattern", "det_verb", "pre", "post", "end", "casing", "typo", "then"} <= axes


def test_grammar_varies_every_family_with_templates_still_common(train_samples):
    for task, samples in train_samples.items():
        texts = [_text(s) for s in samples]
        assert len(set(texts)) >= 0.6 * len(texts), task
        verbatim = sum(any(re.fullmatch(_template_regex(t), x) for key in TASK_TEMPLATES[task] for t in TEMPLATES[key])
                       for x in texts)
        assert 0.15 <= verbatim / len(texts) <= 0.75, (task, verbatim)
    everything = [_text(s) for samples in train_samples.values() for s in samples]
    assert any(t == t.lower() and re.search("[a-z]", t) for t in everything)  # lower case
    assert any(t == t.upper() and re.search("[A-Z]{4}", t) for t in everything)  # upper case
    assert any(t.endswith("!") for t in everything) and any(re.search(r"[a-z]$", t) for t in everything)
    assert any(re.match(r"(please|could you|can you|i'd like you to)\b", t, re.I) for t in everything)
    # multi-word politeness on both sides, so an unseen frame reads as politeness, not as one more task
    assert any(re.match(r"(go ahead and|would you please|could you please|kindly)\b", t, re.I) for t in everything)
    assert any(re.search(r"(right away|if possible|if you can|as soon as possible|thank you)[.!]?$", t, re.I)
               for t in everything)
    compounds = [_text(s) for s in train_samples["compound"]]
    assert any(re.search(r", then |; | and then |\. also ", t, re.I) for t in compounds)


def _template_regex(template: str) -> str:
    return re.escape(template).replace(r"\{", "{").replace(r"\}", "}").format_map(_Any()) if "{" in template \
        else re.escape(template)


class _Any(dict):
    def __missing__(self, key: str) -> str:
        return ".+"


def test_typos_are_light_and_leave_slot_values_alone():
    rng = np.random.default_rng(0)
    for _ in range(200):
        w = grammar.render("detection", rng, "heldout", cats="red circle and blue star", cats_pl="red circles and blue stars")
        assert "red circle and blue star" in w.text.lower() or "red circles and blue stars" in w.text.lower()
        assert "<" not in w.text


def test_special_tokens_keep_their_case():
    rng = np.random.default_rng(1)
    texts = [grammar.render("region_what", rng, m, region="<region>").text for m in ("train", "heldout") * 40]
    assert all(t.count("<region>") == 1 for t in texts)
    assert any(t.isupper() or t.istitle() for t in (x.replace("<region>", "") for x in texts))


@pytest.mark.parametrize("wording", [w for w in grammar.WORDINGS if not w.startswith("noisy")])
def test_class_list_parses_from_every_generated_phrasing(wording, monkeypatch):
    """parse_class_list binds <cls_k> at inference: every typo-free phrasing must give the requested list;
    with typos (anywhere but in the names) it may miss a few. The polygon task's own phrasings are not
    covered here ("... with 8 points" is read by the polygon work in mllm/localize.py). "noisy" is left out:
    pseudo-words after a list ("find stars and squares, lenuk retromis") read as one more name to any reader,
    as they could be one; that wording exists to teach a closed-vocabulary model they are not."""
    tasks = ("detection", "segmentation", "native_detection", "keypoints")
    with monkeypatch.context() as m:
        m.setattr(grammar, "TYPO_RATE", 0.0)
        m.setattr(grammar, "HELDOUT_TYPO_RATE", 0.0)
        for task in tasks:
            for s in _samples(task, wording, 40):
                assert _listed(s) in (s.classes, [plural_phrase(c) for c in s.classes]), s.instruction
    typo = [s for task in tasks for s in _samples(task, wording, 60, offset=1000)]
    ok = sum(_listed(s) in (s.classes, [plural_phrase(c) for c in s.classes]) for s in typo)
    assert ok >= 0.93 * len(typo)


def _listed(sample) -> list[str]:
    """The categories parse_class_list reads, as written: "find the red circles" lists "red circles"."""
    return [c.lower() for c in parse_class_list(sample.instruction)]


def test_unknown_wording_is_rejected():
    with pytest.raises(ValueError, match="accepted"):
        make_sample("caption", np.random.default_rng(0), wording="pirate")
    with pytest.raises(ValueError, match="train"):
        grammar.render("caption", np.random.default_rng(0), "template")


def test_tokenizer_round_trips_heldout_wordings():
    """The small presets' BPE is trained on training wordings only; held-out words must still encode and
    decode exactly (byte level), with no unknown token."""
    from mllm.tokenizer import build_tokenizer
    from mllm.vocab import Vocabulary
    from router.config import load_config
    from shapesworld.tasks import corpus

    cfg = load_config("tiny").model
    tok = build_tokenizer(corpus(64, image_size=64, location_bins=32), Vocabulary.from_config(cfg), 400)
    texts = [s.instruction for t in TASKS for s in _samples(t, "heldout", 5)] + ["Zero In On The Fuchsia Dodecagon ÄÖ 😀"]
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.unk_token_id is None or tok.unk_token_id not in ids
        assert tok.decode(ids) == text


def test_training_only_patterns_never_reach_held_out_requests():
    """Patterns marked "+" (added after the held-out set was fixed) are training wordings only: "heldout" mode
    leaves them out, so the held-out requests stay what earlier checkpoints were scored on."""
    plus = [p for c in grammar.CORES.values() for p in (*c.imperative, *c.question) if p.startswith("+")]
    assert plus, "no training-only pattern to check"
    for key in grammar.CORES:
        train = {p for p, _, _ in grammar._cores(key, mode="train")}
        held = {p for p, _, _ in grammar._cores(key, mode="heldout")}
        extra = {p.lstrip("+~^") for p in (*grammar.CORES[key].imperative, *grammar.CORES[key].question) if p.startswith("+")}
        assert held == train - extra and extra <= train, key
    slots = category_slots(["red circle", "star"])
    assert slots["the_cats_pl"] == "the red circles and the stars"
    assert slots["cats_every"] == "every red circle and every star"
    rng = np.random.default_rng(3)
    texts = [grammar.render("detection", rng, "train", **slots).text.lower() for _ in range(600)]
    assert any("the red circles and the stars" in t for t in texts)
    assert any("every red circle and every star" in t for t in texts)
    assert any("put boxes on" in t or "put bounding boxes on" in t for t in texts)
    rng = np.random.default_rng(4)
    held = [grammar.render("detection", rng, "heldout", **slots).text.lower() for _ in range(600)]
    assert not any("every red circle and every star" in t or "the red circles and the stars" in t for t in held)


def test_training_wordings_name_an_edited_object_by_its_kind_when_it_is_unique():
    """Training edits sometimes say "remove the circle" (the kind unique in the scene); template and held-out edits
    keep colour and kind, and the draw comes from a derived generator, so the edited scenes stay the same."""
    kinds = "|".join(KINDS)
    bare = re.compile(rf"\bthe ({kinds})\b", re.I)
    colored = re.compile(rf"\bthe ({'|'.join(COLORS)}) ({kinds})\b", re.I)
    found = 0
    for i in range(300):
        train = make_sample("editing", np.random.default_rng([21, i]), wording="train")
        template = make_sample("editing", np.random.default_rng([21, i]), wording="template")
        assert np.array_equal(train.targets[0].image, template.targets[0].image)
        if "the " in template.instruction.lower() and not colored.search(template.instruction):
            assert not bare.search(template.instruction), template.instruction
        kind = bare.search(train.instruction)
        if kind and not colored.search(train.instruction):
            found += 1
            assert sum(o.kind == kind.group(1).lower() for o in train.scene.objects) == 1, train.instruction
    assert found > 10
