"""Experiment configs: one module per experiment with ``get_config(arg=None)``.

``arg`` "smoke" (alias "runlocal") shrinks the experiment to a seconds-long run (tiny model,
few steps) with the same code paths. Select one with ``python -m revjax.train
--config=<name>[:smoke]`` or ``load_config(name, arg)``.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

__all__ = ["names", "config_path", "load_config", "is_smoke"]

SMOKE_ARGS = ("smoke", "runlocal")


def names() -> list[str]:
    """Sorted names of the configs in this package."""
    return sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]))


def is_smoke(arg: str | None) -> bool:
    """Whether a ``get_config`` argument asks for the shrunken smoke run."""
    if arg in (None, ""):
        return False
    if arg not in SMOKE_ARGS:
        raise ValueError(f"unknown config argument {arg!r}; valid: {SMOKE_ARGS} or none")
    return True


def config_path(name: str) -> Path:
    """File of the config ``name``; ValueError listing the valid names if there is none."""
    if name not in names():
        raise ValueError(
            f"unknown config {name!r}; valid names: {', '.join(names())} "
            "(or pass a path to a .py file defining get_config)"
        )
    return Path(__file__).parent / f"{name}.py"


def load_config(name: str, arg: str | None = None):
    """``revjax.configs.<name>.get_config(arg)``."""
    config_path(name)
    module = importlib.import_module(f"revjax.configs.{name}")
    return module.get_config(arg) if arg else module.get_config()
