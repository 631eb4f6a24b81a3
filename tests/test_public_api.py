"""The public surface of `revjax`, `revjax.arithmetic`, `revjax.models` (and its registry) and
`revjax.train` is pinned here.

Adding a public name, or removing one, must be a deliberate change to these lists (and to
README's "Public API"), as in optax/equinox: everything else is internal.
"""

import importlib
import pkgutil
import sys
import types
from pathlib import Path

import flax.linen as nn
import pytest

import revjax
import revjax.arithmetic
import revjax.models
import revjax.models.registry
import revjax.train

REGISTRY = {
    "CheckedConfig",
    "register",
    "preset",
    "create",
    "names",
    "renamed_fields",
    "config_fields",
    "count_params",
    "summary",
}

PUBLIC = {
    revjax: {
        "BACKPROP_MODES",
        "InvertibleStep",
        "Scan",
        "Transition",
        "apply",
        "apply_with_aux",
        "check_backprop",
        "check_reconstruction",
        "invert",
        "reconstruction_error",
    },
    revjax.arithmetic: {
        "ARITHMETICS",
        "DEFAULT_FRAC_BITS",
        "Arithmetic",
        "FLOAT",
        "float_arithmetic",
        "exact_arithmetic",
        "get",
    },
    revjax.models.registry: REGISTRY,
    revjax.models: REGISTRY
    | {
        "model_reconstruction_error",
        "ChangNet",
        "HyperbolicSegmenter",
        "LeanHamiltonian",
        "LeanResNet",
        "ResNet",
        "RevNet",
        "RevNetMini",
        "RevUp",
        "ViT",
        "ByteLM",
    },
    revjax.train: {
        "Checkpointer",
        "IncompatibleCheckpointError",
        "NonFiniteLossError",
        "ReconstructionDriftError",
        "build_model",
        "create_state",
        "evaluate",
        "load",
        "predict",
        "make_eval_step",
        "make_optimizer",
        "make_mesh",
        "make_train_step",
        "maybe_initialize_distributed",
        "train_and_evaluate",
        "train_step_memory",
    },
}
IDS = [module.__name__ for module in PUBLIC]


@pytest.mark.parametrize("module", PUBLIC, ids=IDS)
def test_all_is_the_pinned_public_surface(module):
    """__all__ lists exactly the pinned names, without duplicates, and each one resolves."""
    assert len(module.__all__) == len(set(module.__all__))
    assert set(module.__all__) == PUBLIC[module]
    for name in module.__all__:
        assert getattr(module, name) is not None, name
    namespace: dict = {}
    exec(f"from {module.__name__} import *", namespace)
    assert set(namespace) - {"__builtins__"} == PUBLIC[module]


@pytest.mark.parametrize("module", PUBLIC, ids=IDS)
def test_no_revjax_object_is_exported_by_accident(module):
    """Every revjax function or class reachable under a public name is listed in __all__."""
    leaked = {
        name
        for name in dir(module)
        if not name.startswith("_")
        and not isinstance(getattr(module, name), types.ModuleType)
        and str(getattr(getattr(module, name), "__module__", "")).startswith("revjax")
    }
    assert leaked <= set(module.__all__), sorted(leaked - set(module.__all__))


@pytest.mark.parametrize("name", revjax.models.names())
def test_every_registered_model_is_a_class_its_module_exports(name):
    """create() builds a linen module listed in its model module's __all__ (no hidden class)."""
    cls = type(revjax.models.create(name))
    assert cls.__name__ in sys.modules[cls.__module__].__all__, (name, cls)


def test_the_model_classes_of_the_package_face_are_built_by_registered_models():
    """Every linen class revjax.models exports is what some registered name builds."""
    built = {type(revjax.models.create(name)) for name in revjax.models.names()}
    exported = {getattr(revjax.models, name) for name in revjax.models.__all__}
    exported = {obj for obj in exported if isinstance(obj, type) and issubclass(obj, nn.Module)}
    assert len(exported) >= 10
    assert exported <= built, sorted(c.__name__ for c in exported - built)


# --------------------------------------------------------------------------- the whole surface

SURFACE_FILE = Path(__file__).with_name("public_surface.txt")

# Names that sibling modules share on purpose because each module implements the same
# protocol: a dataset module's `load` / `info_fields` / `split_source` / `load_split`, a
# registry's `names`, a family's `make_config` / `check_input`. They are always called through
# their module (`hyperbolic.make_config`, `digits.info_fields`), never star-imported together.
PROTOCOL_NAMES = {
    "names",
    "load",
    "load_split",
    "info_fields",
    "split_source",
    "make_config",
    "check_input",
}


def public_modules() -> list[str]:
    """Every revjax module a user may import: no underscore segment, no config file (a
    config module's one public name is `get_config`, the config-as-code protocol)."""
    out = []
    for info in pkgutil.walk_packages(revjax.__path__, "revjax."):
        parts = info.name.split(".")
        if any(p.startswith("_") for p in parts) or parts[:2] == ["revjax", "configs"]:
            continue
        out.append(info.name)
    return sorted(out + ["revjax", "revjax.configs"])


def public_surface() -> dict[str, list[str]]:
    """{module: sorted __all__} over `public_modules()`."""
    return {name: sorted(importlib.import_module(name).__all__) for name in public_modules()}


def format_surface(surface: dict[str, list[str]]) -> str:
    return "".join(f"{module}: {' '.join(names)}\n" for module, names in surface.items())


def test_every_public_module_declares_all():
    """A module without __all__ would make every name it defines public by default."""
    missing = [m for m in public_modules() if not hasattr(importlib.import_module(m), "__all__")]
    assert not missing, missing


def test_every_function_and_class_is_exported_or_underscored():
    """Implementation is private by name: each module-level function or class a module
    defines is either in its __all__ or starts with an underscore, so `dir(module)` and the
    API reference show no helper as if it were API."""
    unmarked = []
    for name in public_modules():
        module = importlib.import_module(name)
        exported = set(module.__all__)
        for attr, value in vars(module).items():
            defined_here = getattr(value, "__module__", None) == name
            if (
                isinstance(value, (type, types.FunctionType))
                and defined_here
                and not attr.startswith("_")
                and attr not in exported
            ):
                unmarked.append(f"{name}.{attr}")
    assert not unmarked, unmarked


def test_the_whole_public_surface_is_pinned():
    """Every public module's __all__ equals its line in tests/public_surface.txt: adding or
    removing a public name anywhere is a deliberate edit of that file
    (`python tests/test_public_api.py` rewrites it from the code)."""
    pinned = {}
    for line in SURFACE_FILE.read_text().splitlines():
        module, _, names = line.partition(":")
        pinned[module] = names.split()
    actual = public_surface()
    changes = [
        f"{m}: +{sorted(set(actual.get(m, [])) - set(pinned.get(m, [])))} "
        f"-{sorted(set(pinned.get(m, [])) - set(actual.get(m, [])))}"
        for m in sorted(set(pinned) | set(actual))
        if actual.get(m) != pinned.get(m)
    ]
    assert not changes, "public surface changed:\n" + "\n".join(changes)


def test_no_two_public_functions_share_a_name():
    """One public name, one function or class across the whole surface (a re-export is the
    same object), except the protocol names above."""
    owners: dict[str, set] = {}
    for module, names in public_surface().items():
        for name in names:
            obj = getattr(importlib.import_module(module), name)
            if callable(obj) and name not in PROTOCOL_NAMES:
                owners.setdefault(name, set()).add((obj.__module__, obj.__qualname__))
    shared = {name: sorted(objs) for name, objs in owners.items() if len(objs) > 1}
    assert not shared, shared


if __name__ == "__main__":
    SURFACE_FILE.write_text(format_surface(public_surface()))
    print(f"wrote {SURFACE_FILE}")
