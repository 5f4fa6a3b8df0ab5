"""Build step for the wheel (everything else is in pyproject.toml): a non-editable install carries the
preset configs (configs/*.yaml) and the shipped trained model (checkpoints/shapes/, ~26 MB) as package
data under router/_shipped/, where router/assets.py finds them. Nothing is downloaded."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
# What a wheel needs at run time: the presets, and per shipped checkpoint its config, weights and README
# (not its training logs or demo picture).
SHIPPED = ["configs/*.yaml", "checkpoints/*/superlink.yaml", "checkpoints/*/heads.safetensors",
           "checkpoints/*/README.md", "checkpoints/*/mllm/*",
           "checkpoints/*/decoders/**/*"]  # decoders saved whole in their own format (router/system.py DECODERS_DIR)


class BuildPyWithShippedData(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the checkout's folders directly
        dest = Path(self.build_lib) / "router" / "_shipped"
        for pattern in SHIPPED:
            for src in sorted(ROOT.glob(pattern)):
                if src.is_file():
                    target = dest / src.relative_to(ROOT)
                    self.mkpath(str(target.parent))
                    self.copy_file(str(src), str(target))


setup(cmdclass={"build_py": BuildPyWithShippedData})
