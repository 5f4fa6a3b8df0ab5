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
