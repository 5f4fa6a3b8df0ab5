"""Where configs and checkpoints are found: environment override, a wheel's packaged copy, the checkout."""

from __future__ import annotations

from router import assets
from router.assets import CHECKPOINT_ROOT
from router.config import CONFIG_DIR, load_config


def test_checkout_folders_are_used_in_a_source_tree():
    assert not assets.PACKAGED.exists()  # a checkout has no router/_shipped/ (the wheel build adds it)
    assert CONFIG_DIR == assets.CHECKOUT / "configs" and (CONFIG_DIR / "tiny.yaml").is_file()
    assert CHECKPOINT_ROOT == assets.CHECKOUT / "checkpoints" and (CHECKPOINT_ROOT / "shapes" / "superlink.yaml").is_file()


def test_packaged_copy_wins_over_the_checkout(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    (tmp_path / "checkpoints").mkdir()
    monkeypatch.setattr(assets, "PACKAGED", tmp_path)
    assert assets.config_dir() == tmp_path / "configs"
    assert assets.checkpoint_root() == tmp_path / "checkpoints"


def test_environment_variables_override(tmp_path, monkeypatch):
    (tmp_path / "mine.yaml").write_text((CONFIG_DIR / "tiny.yaml").read_text().replace("name: tiny", "name: mine"))
    monkeypatch.setenv(assets.CONFIG_ENV, str(tmp_path))
    monkeypatch.setenv(assets.CHECKPOINT_ENV, str(tmp_path / "models"))
    assert assets.config_dir() == tmp_path and assets.checkpoint_root() == tmp_path / "models"
    assert load_config("mine").name == "mine"  # a preset name is looked up in the overriding folder

    from router.assets import shipped_checkpoint

    assert shipped_checkpoint("shapes") is None  # not in the overriding checkpoint folder
