"""The public surface of `revjax`, `revjax.models` and `revjax.train` is pinned here.

Adding a public name, or removing one, must be a deliberate change to these lists (and to
README's "Public API"), as in optax/equinox: everything else is internal.
"""

import types

import pytest

import revjax
import revjax.models
import revjax.train

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
    revjax.models: {
        "RENAMED_FIELDS",
        "register",
        "create",
        "names",
        "config_fields",
        "count_params",
        "summary",
        "reconstruction_error",
        "ChangNet",
        "HyperbolicSegmenter",
        "LeanHamiltonian",
        "LeanResNet",
        "ResNet",
        "RevNet",
        "RevNetMini",
        "RevUp",
    },
    revjax.train: {
        "Checkpointer",
        "IncompatibleCheckpointError",
        "NonFiniteLossError",
        "ReconstructionDriftError",
        "build_model",
        "create_state",
        "load",
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


def test_registered_models_are_instances_of_the_exported_modules():
    """create() builds one of the linen modules revjax.models exports (no hidden model class)."""
    classes = tuple(
        getattr(revjax.models, name)
        for name in PUBLIC[revjax.models]
        if name[0].isupper() and isinstance(getattr(revjax.models, name), type)
    )
    for name in revjax.models.names():
        assert isinstance(revjax.models.create(name), classes), name
