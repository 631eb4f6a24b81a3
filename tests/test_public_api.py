"""The public surface of `revjax`, `revjax.arithmetic`, `revjax.models` (and its registry) and
`revjax.train` is pinned here.

Adding a public name, or removing one, must be a deliberate change to these lists (and to
README's "Public API"), as in optax/equinox: everything else is internal.
"""

import sys
import types

import pytest

import revjax
import revjax.arithmetic
import revjax.models
import revjax.models.registry
import revjax.train

REGISTRY = {
    "register",
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
        "reconstruction_error",
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
    exported = {getattr(revjax.models, name) for name in revjax.models.__all__ if name[0].isupper()}
    assert exported <= built, sorted(c.__name__ for c in exported - built)
