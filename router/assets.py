"""Where the shipped configs (configs/*.yaml) and trained checkpoints (checkpoints/<name>/) are found.

    config_dir()        SUPERLINK_CONFIG_DIR, else the wheel's copy router/_shipped/configs, else the checkout's configs/
    checkpoint_root()   SUPERLINK_CHECKPOINT_DIR, else router/_shipped/checkpoints, else the checkout's checkpoints/
    shipped_checkpoint("shapes")  checkpoints/shapes/ when a trained model of that name is shipped, else None

A source checkout (and `pip install -e .`) reads the folders at the repository root. A wheel (`pip install .`)
carries copies of them as package data under router/_shipped/ (setup.py's build step puts them there), so
`load_config("tiny")` and `Pipeline.from_pretrained("shapes")` work from any directory. The environment
variables point a process at other folders (e.g. a shared model store); they are read at each lookup.
"""

from __future__ import annotations

import os
from pathlib import Path

SYSTEM_CONFIG = "superlink.yaml"  # the system config inside a saved model folder (router/system.py)
CONFIG_ENV = "SUPERLINK_CONFIG_DIR"
CHECKPOINT_ENV = "SUPERLINK_CHECKPOINT_DIR"
PACKAGED = Path(__file__).resolve().parent / "_shipped"  # present in an installed wheel only
CHECKOUT = Path(__file__).resolve().parent.parent  # the repository root, in a source checkout


def _find(env: str, name: str) -> Path:
    given = os.environ.get(env)
    if given:
        return Path(given).expanduser().resolve()
    packaged = PACKAGED / name
    return packaged if packaged.is_dir() else CHECKOUT / name


def config_dir() -> Path:
    """The folder of preset YAML files (tiny.yaml, shapes.yaml, serve.yaml, ...)."""
    return _find(CONFIG_ENV, "configs")


def checkpoint_root() -> Path:
    """The folder holding trained presets, one subfolder each (shapes/)."""
    return _find(CHECKPOINT_ENV, "checkpoints")


CHECKPOINT_ROOT = checkpoint_root()  # trained presets shipped with the repo (or the wheel's copy)


def shipped_checkpoint(name: str) -> Path | None:
    """checkpoints/<name>/ when a trained model of that preset name is shipped there, else None."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        return None
    path = checkpoint_root() / name
    return path if (path / SYSTEM_CONFIG).is_file() else None
