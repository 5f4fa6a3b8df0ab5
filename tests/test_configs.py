from pathlib import Path

import pytest

from mllm.config import ConfigError, load_yaml
from router.config import CONFIG_DIR, SuperLinkConfig, load_config

MODEL_PRESETS = sorted(p for p in CONFIG_DIR.glob("*.yaml") if p.name != "serve.yaml")


@pytest.mark.parametrize("path", MODEL_PRESETS, ids=lambda p: p.name)
def test_every_preset_loads(path: Path):
    cfg = load_yaml(path, SuperLinkConfig)
    assert cfg.name == path.stem
    assert set(cfg.model.routes) >= {"DET", "SEG", "GRD", "POSE", "GEN", "EDIT"}


def test_unknown_key_is_named_with_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: bad\nmodel:\n  text:\n    hidden_sise: 64\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "bad.yaml" in str(e.value) and "model.text.hidden_sise" in str(e.value)


def test_wrong_type_is_named(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: bad\nmodel:\n  vocab: {location_bins: many}\n")
    with pytest.raises(ConfigError, match="model.vocab.location_bins"):
        load_config(p)


def test_bad_route_rejected(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: bad\nmodel:\n  routes: {DET: 0}\n")
    with pytest.raises(ConfigError, match="at least one query"):
        load_config(p)


def test_missing_file_is_clear():
    with pytest.raises(ConfigError, match="not found"):
        load_config("no_such_preset")


def test_overrides_set_dotted_keys_and_are_validated():
    from pydantic import ValidationError

    from router.config import with_overrides

    base = load_config("shapes")
    cfg = with_overrides(base, ["decoders.generator.block_out_channels=[64, 128]", "training.batch_size=16",
                                "decoders.generator.loss_weighting=min_snr"])
    assert cfg.decoders.generator.block_out_channels == [64, 128] and cfg.training.batch_size == 16
    assert cfg.decoders.generator.loss_weighting == "min_snr"
    assert cfg.decoders.editor.block_out_channels == base.decoders.editor.block_out_channels  # nothing else moved
    assert with_overrides(base, []).model_dump() == base.model_dump()
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        with_overrides(base, ["training.batch_size"])
    with pytest.raises(ValueError, match="unknown key 'batch_sise'; accepted here: .*batch_size"):
        with_overrides(base, ["training.batch_sise=4"])
    with pytest.raises(ValueError, match="training.batch_size is not a section"):
        with_overrides(base, ["training.batch_size.x=4"])
    with pytest.raises(ValidationError, match="batch_size"):
        with_overrides(base, ["training.batch_size=0"])
