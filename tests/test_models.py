"""The model registry and the model contract, checked on every registered model (no hand-kept
lists): clear errors for unknown and former field names, the shared vocabulary of models with
stages, validation on construction, the one step-size rule; README's parameter counts."""

import dataclasses

import flax.linen as nn
import pytest

from revjax import models
from revjax.models import registry

NAMES = models.names()
RENAMED = [(name, old) for name in NAMES for old in models.renamed_fields(name)]
WITH_STEP_SIZE = [name for name in NAMES if "h" in models.config_fields(name)]


def test_unknown_override_names_the_valid_fields_with_a_suggestion():
    """`num_class=100` (a typo) is a ValueError listing the fields and suggesting num_classes."""
    with pytest.raises(ValueError, match=r"'num_class' \(did you mean 'num_classes'\?\)") as err:
        models.create("revnet_mini", num_class=100)
    assert "Valid fields: backprop, dtype, name, num_classes, units, widths" in str(err.value)
    assert models.create("revnet_mini", num_classes=100).num_classes == 100


@pytest.mark.parametrize("name", NAMES)
def test_every_model_lists_its_fields(name):
    """config_fields works for every registered model and includes what create accepts."""
    fields = models.config_fields(name)
    assert "name" in fields and "parent" not in fields and len(fields) > 1


def test_revnet_mini_parameter_count():
    """README and configs/default.py: revnet_mini has 37,866 parameters on 8x8x1 inputs."""
    assert models.summary("revnet_mini", (1, 8, 8, 1)).startswith("revnet_mini: 37,866 parameters")


def test_every_model_declares_the_names_it_used_before():
    """The zoo's former field names are declared by the models that used them (a sample)."""
    assert {"filters", "stem_max_pool"} <= set(models.renamed_fields("revnet110"))
    assert {"stage_sizes", "downsample"} <= set(models.renamed_fields("revup20"))
    assert set(models.renamed_fields("lean_hamiltonian")) == {"depth"}
    assert "depth" not in models.renamed_fields("hyperbolic2d")


@pytest.mark.parametrize("name,old", RENAMED, ids=[f"{n}-{o}" for n, o in RENAMED])
def test_former_field_name_is_a_one_line_error_naming_the_new_field(name, old):
    """A field the model had before the shared vocabulary is answered with its replacement."""
    hint = models.renamed_fields(name)[old]
    with pytest.raises(ValueError, match=rf"field '{old}' was renamed to ") as err:
        models.create(name, **{old: 1})
    assert "\n" not in str(err.value) and hint in str(err.value)
    assert hint.split()[0] in models.config_fields(name)  # the hint names a real field


def test_renamed_hints_bind_only_the_model_that_declared_them(monkeypatch):
    """Another model's former name is a plain unknown field, and a new model may use it."""
    with pytest.raises(ValueError, match=r"has no field\(s\) 'filters'"):
        models.create("hyperbolic2d", filters=(8,))

    class Tiny(nn.Module):
        depth: int = 2

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    models.register("tiny_with_depth")(Tiny)
    assert models.create("tiny_with_depth", depth=5).depth == 5
    assert "tiny_with_depth" in models.names(stages=False)
    with pytest.raises(ValueError, match="registered twice"):
        models.register("tiny_with_depth")(Tiny)


@pytest.mark.parametrize("name", models.names(stages=True))
def test_every_model_with_stages_speaks_the_shared_vocabulary(name):
    """No model with stages keeps a former field name (any model's); stage lists are
    `widths`/`units`."""
    fields = set(models.config_fields(name))
    former = {old for n in NAMES for old in models.renamed_fields(n)}
    assert not fields & former, sorted(fields & former)
    assert "units" in fields and ({"widths", "width"} & fields)
    assert {"num_classes", "dtype"} <= fields


@pytest.mark.parametrize("name", NAMES)
def test_every_model_validates_on_construction(name):
    """One convention: a bad field raises ValueError in the module's constructor (the
    `CheckedConfig` mixin runs `check_config`), not at the first call and not only via `create`."""
    model = models.create(name)
    assert isinstance(model, models.CheckedConfig)
    fields = {f.name for f in dataclasses.fields(model)}
    model.clone()  # the registered configuration is valid
    if "num_classes" in fields:
        with pytest.raises(ValueError, match="num_classes"):
            model.clone(num_classes=0)
    if "backprop" in fields:
        with pytest.raises(ValueError, match="backprop"):
            model.clone(backprop="magic")


@pytest.mark.parametrize("name", WITH_STEP_SIZE)
@pytest.mark.parametrize("h", [0.0, -0.1, float("inf")])
def test_one_step_size_rule(name, h):
    """Every model's h obeys the one rule of `integrators.check_step_size`: finite and > 0
    (h = 0 would turn every step into the identity and silently freeze its parameters)."""
    with pytest.raises(ValueError, match=r"step size h must be finite and > 0"):
        models.create(name, h=h)
