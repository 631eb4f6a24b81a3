"""Experiment configs: one module per experiment with ``get_config(arg=None)``.

``arg`` "smoke" (alias "runlocal") shrinks the experiment to a seconds-long run (tiny model,
few steps) with the same code paths. Select one with ``python -m revjax.train
--config=<name>[:smoke]`` or ``load_config(name, arg)``.

``apply_overrides(config, [(dotted path, text), ...])`` applies ``--config.<path>=<text>``
command-line overrides: each parsed as its field's type, any field of the chosen model in
``model_kwargs`` and any option of the chosen dataset in ``dataset_options``, and a one-line
ValueError naming the full dotted path and the nearest valid one otherwise.
``eval_every(value, total_steps)`` resolves ``eval_every_steps`` (-1: about ``AUTO_EVALS``
evaluations in runs of at least ``AUTO_EVAL_MIN_STEPS`` steps).
"""

from __future__ import annotations

import ast
import difflib
import importlib
import pkgutil
from pathlib import Path
from typing import Any

import ml_collections

__all__ = [
    "names",
    "config_path",
    "load_config",
    "is_smoke",
    "apply_overrides",
    "set_field",
    "dataset_option_defaults",
    "eval_every",
]

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


# ----------------------------------------------------------------------------- overrides

# Periodic evaluation when ``config.eval_every_steps < 0`` ("auto", the default): about
# AUTO_EVALS evaluations in a run of at least AUTO_EVAL_MIN_STEPS steps, else the end only.
AUTO_EVALS = 10
AUTO_EVAL_MIN_STEPS = 1000


def eval_every(value: int, total_steps: int) -> int:
    """Steps between periodic evaluations (0: the final one only).

    ``value`` > 0 is kept, 0 means the end only, < 0 is "auto": ``total_steps // AUTO_EVALS``
    when ``total_steps >= AUTO_EVAL_MIN_STEPS``, else 0.
    """
    value = int(value)
    if value >= 0:
        return value
    return total_steps // AUTO_EVALS if total_steps >= AUTO_EVAL_MIN_STEPS else 0


def dataset_option_defaults(dataset: str) -> dict[str, Any]:
    """{option: default} that ``config.dataset_options`` may set for ``dataset``.

    ``{}`` for arrays registered with ``revjax.data.register_arrays`` (no options); a default
    of None takes the type the value has on the command line (``literal_eval``, else str).
    """
    from revjax.data import synthetic_video, tfds_named, tfds_pipeline

    if dataset == "digits":
        return {"canvas": None, "task": "classification"}
    if dataset == "synthetic_video":
        return {**synthetic_video.CLIP_DEFAULTS, **synthetic_video.SPLIT_DEFAULTS}
    if dataset == "pydoc_text":
        from revjax.data import text

        return {"context": text.DEFAULT_CONTEXT}
    if dataset.startswith("folder:"):
        return {"image_size": 64, "augmentation": "standard", "pad": 8, "max_scale": 1.25}
    if tfds_named.is_tfds_name(dataset):
        return dict(tfds_named.OPTIONS)
    if dataset in tfds_pipeline.TFDS_DATASETS:
        return tfds_pipeline.default_options(dataset)
    return {}


def _model_field_defaults(model: str) -> dict[str, Any]:
    from revjax import models

    built = models.create(model)  # ValueError listing the registered names
    return {f: getattr(built, f, None) for f in models.config_fields(model)}


def _paths(node: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """Dotted paths of every leaf (and of every empty group) of a nested config."""
    out = []
    for key in sorted(node.keys()):
        if isinstance(node[key], ml_collections.ConfigDict) and len(node[key]):
            out.extend(_paths(node[key], f"{prefix}{key}."))
        else:
            out.append(f"{prefix}{key}")
    return out


def _nearest(path: str, valid: list[str]) -> str:
    """The valid dotted path nearest to ``path``: one ending in the same field name (so
    ``learning_rate`` finds ``optimizer.learning_rate``), else the closest full path, else
    the path whose field name is closest."""
    leaf = path.rsplit(".", 1)[-1]
    same_leaf = [v for v in valid if v.rsplit(".", 1)[-1] == leaf]
    if same_leaf:
        return min(same_leaf, key=len)
    close = difflib.get_close_matches(path, valid, n=1, cutoff=0.6)
    if close:
        return close[0]
    leaves = {v.rsplit(".", 1)[-1]: v for v in sorted(valid, key=len, reverse=True)}
    close = difflib.get_close_matches(leaf, list(leaves), n=1, cutoff=0.0)
    return leaves[close[0]] if close else (valid[0] if valid else "")


def _unknown(path: str, valid: list[str], where: str = "") -> ValueError:
    best = _nearest(path, valid)
    hint = f'; did you mean "{best}" instead of "{path}"?' if best else ""
    return ValueError(f"unknown config field '{path}'{where}{hint}")


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _parse_value(path: str, text: str, like: Any, kind: type | None = None) -> Any:
    """The command-line string ``text`` as a value of ``like``'s type (``kind`` if given).

    bool: true/false/1/0/yes/no; int, float; str as is; tuple: a Python literal ("(8, 16)",
    "8,16" or "8"; one value becomes a 1-tuple); None: a Python literal if ``text`` is one,
    else the string.

    Raises:
      ValueError: naming ``path``, its type and ``text``.
    """
    kind = kind or type(like)
    try:
        if kind is bool:
            if text.lower() in _TRUE + _FALSE:
                return text.lower() in _TRUE
            raise ValueError
        if kind is int:
            number = float(text.replace("_", "")) if "e" in text.lower() else int(text)
            if number != int(number):
                raise ValueError
            return int(number)
        if kind is float:
            return float(text)
        if kind is str:
            return text
        if kind in (tuple, list):
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                value = tuple(t.strip() for t in text.split(",") if t.strip())
            if not isinstance(value, (tuple, list)):
                value = (value,)
            first = like[0] if isinstance(like, (tuple, list)) and like else None
            if first is not None and not isinstance(first, (tuple, list)):
                value = tuple(
                    _parse_value(path, v, first) if isinstance(v, str) else v for v in value
                )
            return tuple(value)
    except ValueError:
        article = "an" if kind is int else "a"
        raise ValueError(
            f"config field '{path}' takes {article} {kind.__name__}, got {text!r}"
        ) from None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _placeholder_type(node: ml_collections.ConfigDict, key: str) -> type | None:
    """The declared type of a None-valued ``placeholder(type)`` field, else None."""
    if node[key] is not None:
        return None
    try:
        return node.get_ref(key).get_type()
    except ValueError:  # a plain None, not a placeholder
        return None


def _set_open_field(
    config: ml_collections.ConfigDict, group: str, key: str, text: str, defaults: dict, where
) -> None:
    """Sets ``config.<group>.<key>`` (model_kwargs / dataset_options), adding the key if the
    config did not predefine it; ``defaults`` are the keys the model/dataset accepts."""
    path = f"{group}.{key}"
    node = config[group]
    if key not in defaults and key not in node:
        raise _unknown(path, [f"{group}.{k}" for k in sorted(defaults)], where)
    like, kind = (node[key], _placeholder_type(node, key)) if key in node else (defaults[key], None)
    if like is not None:
        kind = type(like) if type(like) in (bool, int, float, str, tuple, list) else str
    value = _parse_value(path, text, like, kind)
    with node.unlocked():
        if key in node:
            del node[key]
        node[key] = value


def set_field(config: ml_collections.ConfigDict, path: str, text: str) -> None:
    """``config.<path> = text`` parsed as that field's type (``--config.<path>=<text>``).

    Fields of ``model_kwargs`` may be any field of ``config.model``
    (``revjax.models.config_fields``) and fields of ``dataset_options`` any option of
    ``config.dataset``, predefined by the config or not; every other field must exist.

    Raises:
      ValueError: one line naming the full dotted path and the nearest valid one, or the
        field's type and the bad value.
    """
    parts = path.split(".")
    if len(parts) == 2 and parts[0] == "model_kwargs" and "model_kwargs" in config:
        defaults = _model_field_defaults(config.model)
        _set_open_field(config, *parts, text, defaults, f" (model {config.model!r})")
        return
    if len(parts) == 2 and parts[0] == "dataset_options" and "dataset_options" in config:
        defaults = dataset_option_defaults(config.dataset)
        _set_open_field(config, *parts, text, defaults, f" (dataset {config.dataset!r})")
        return
    node = config
    for i, key in enumerate(parts):
        if not isinstance(node, ml_collections.ConfigDict) or key not in node:
            raise _unknown(path, _paths(config))
        if i < len(parts) - 1:
            node = node[key]
    key = parts[-1]
    like = node[key]
    if isinstance(like, ml_collections.ConfigDict):
        fields = ", ".join(f"{path}.{k}" for k in sorted(like.keys())) or "none"
        raise ValueError(f"config field '{path}' is a group; set its fields ({fields})")
    value = _parse_value(path, text, like, _placeholder_type(node, key))
    try:
        node[key] = value
    except TypeError as error:
        raise ValueError(f"config field '{path}': {error}") from None


def apply_overrides(
    config: ml_collections.ConfigDict, overrides: list[tuple[str, str]]
) -> ml_collections.ConfigDict:
    """Applies ``[(dotted path, text), ...]`` (``--config.<path>=<text>``) in order, after
    those of ``model`` and ``dataset`` (which decide the fields of ``model_kwargs`` and
    ``dataset_options``); see ``set_field``."""
    first = [o for o in overrides if o[0] in ("model", "dataset")]
    for path, text in first + [o for o in overrides if o[0] not in ("model", "dataset")]:
        set_field(config, path, text)
    return config
