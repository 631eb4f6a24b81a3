"""The model registry: clear errors for unknown overrides; the parameter counts README states."""

import importlib

import pytest

from revjax import models


def test_unknown_override_names_the_valid_fields_with_a_suggestion():
    """`num_class=100` (a typo) is a ValueError listing the fields and suggesting num_classes."""
    with pytest.raises(ValueError, match=r"'num_class' \(did you mean 'num_classes'\?\)") as err:
        models.create("revnet_mini", num_class=100)
    assert "Valid fields: backprop, dtype, name, num_classes, units, widths" in str(err.value)
    assert models.create("revnet_mini", num_classes=100).num_classes == 100


@pytest.mark.parametrize("name", models.names())
def test_every_model_lists_its_fields(name):
    """config_fields works for every registered model and includes what create accepts."""
    fields = models.config_fields(name)
    assert "name" in fields and "parent" not in fields and len(fields) > 1


def test_revnet_mini_parameter_count():
    """README and configs/default.py: revnet_mini has 37,866 parameters on 8x8x1 inputs."""
    assert models.summary("revnet_mini", (1, 8, 8, 1)).startswith("revnet_mini: 37,866 parameters")


RENAMED = [
    ("revnet110", "filters", (32, 32, 64, 128), "widths"),
    ("resnet32", "filters", (16, 16, 32, 64), "widths"),
    ("hamiltonian74", "filters", (32, 32, 64, 112), "widths"),
    ("resnet101", "stem_max_pool", True, "stem_pool"),
    ("revup20", "stage_sizes", (1, 1, 1), "units"),
    ("revup20", "downsample", "reversible", "transition"),
    ("revup20", "stem_stride", 2, "stem_strides"),
    ("hyperbolic2d", "layers_per_level", 1, "units"),
    ("hyperbolic2d", "coarsening", "stored", "transition"),
    ("lean_b_explicit_rd", "features", 8, "width"),
    ("lean_b_explicit_rd", "num_blocks", 1, "units"),
    ("lean_b_explicit_rd", "steps_per_block", 1, "units"),
    ("lean_b_explicit_rd", "stem_kernel_size", 3, "stem_kernel"),
    ("lean_hamiltonian", "depth", 2, "units"),
    ("revnet_mini", "channels", 8, "widths"),
    ("revnet_mini", "depth", 2, "units"),
]


@pytest.mark.parametrize("name,old,value,new", RENAMED, ids=[f"{n}-{o}" for n, o, _, _ in RENAMED])
def test_former_field_name_is_a_one_line_error_naming_the_new_field(name, old, value, new):
    """A field from before the shared vocabulary is answered with the field that replaced it."""
    with pytest.raises(ValueError, match=rf"field '{old}' was renamed to {new}\b") as err:
        models.create(name, **{old: value})
    assert "\n" not in str(err.value)
    assert new in models.config_fields(name)


@pytest.mark.parametrize("name", models.names())
def test_every_model_speaks_the_shared_vocabulary(name):
    """No registered model keeps a former field name; stage lists are `widths`/`units`."""
    fields = set(models.config_fields(name))
    assert not fields & set(models.RENAMED_FIELDS), sorted(fields & set(models.RENAMED_FIELDS))
    assert "units" in fields and ({"widths", "width"} & fields)
    assert {"num_classes", "dtype"} <= fields


@pytest.mark.parametrize(
    "module,cls_name,fields",
    [
        ("revnet", "RevNet", {}),
        ("resnet", "ResNet", {}),
        ("chang", "ChangNet", {}),
        ("revup", "RevUp", {}),
        ("hyperbolic", "HyperbolicSegmenter", {}),
        ("lean", "LeanResNet", {"step": "explicit_rd"}),
        ("lean", "LeanHamiltonian", {}),
        ("mini", "RevNetMini", {}),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_every_model_validates_on_construction(module, cls_name, fields):
    """One convention: a bad field raises ValueError in the module's constructor (its
    `__post_init__` calls `check_config`), not at the first call and not only via `create`."""
    cls = getattr(importlib.import_module(f"revjax.models.{module}"), cls_name)
    cls(**fields)  # the defaults are valid
    with pytest.raises(ValueError, match="num_classes"):
        cls(**fields, num_classes=0)
    if "backprop" in {f for f in cls.__dataclass_fields__}:
        with pytest.raises(ValueError, match="backprop"):
            cls(**fields, backprop="magic")


@pytest.mark.parametrize(
    "name", ["hamiltonian74", "leapfrog62", "hyperbolic2d", "lean_a_explicit_rd",
             "lean_a_implicit_rd", "lean_a_circular_rd", "lean_hamiltonian"],
)  # fmt: skip
@pytest.mark.parametrize("h", [0.0, -0.1, float("inf")])
def test_one_step_size_rule(name, h):
    """Every model's h obeys the one rule of `integrators.check_step_size`: finite and > 0
    (h = 0 would turn every step into the identity and silently freeze its parameters)."""
    with pytest.raises(ValueError, match=r"step size h must be finite and > 0"):
        models.create(name, h=h)
