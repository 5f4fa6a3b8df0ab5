"""Where the shipped configs (configs/*.yaml) and trained checkpoints (checkpoints/<name>/) are found.

    config_dir()        SUPERLINK_CONFIG_DIR, else the wheel's copy router/_shipped/configs, else the checkout's configs/
    checkpoint_root()   SUPERLINK_CHECKPOINT_DIR, else router/_shipped/checkpoints, else the checkout's checkpoints/

A source checkout (and `pip install -e .`) reads the folders at the repository root. A wheel (`pip install .`)
carries copies of them as package data under router/_shipped/ (setup.py's build step puts them there), so
`load_config("tiny")` and `Pipeline.from_pretrained("shapes")` work from any directory. The environment
variables point a process at other folders (e.g. a shared model store); they are read at each lookup.
"""

from __future__ import annotations

import os
from pathlib import Path

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
