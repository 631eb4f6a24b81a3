"""The model registry: clear errors for unknown overrides; the parameter counts README states."""

import pytest

from revjax import models


def test_unknown_override_names_the_valid_fields_with_a_suggestion():
    """`num_class=100` (a typo) is a ValueError listing the fields and suggesting num_classes."""
    with pytest.raises(ValueError, match=r"'num_class' \(did you mean 'num_classes'\?\)") as err:
        models.create("revnet_mini", num_class=100)
    assert "Valid fields: backprop, channels, depth" in str(err.value)
    assert models.create("revnet_mini", num_classes=100).num_classes == 100


@pytest.mark.parametrize("name", models.names())
def test_every_model_lists_its_fields(name):
    """config_fields works for every registered model and includes what create accepts."""
    fields = models.config_fields(name)
    assert "name" in fields and "parent" not in fields and len(fields) > 1


def test_revnet_mini_parameter_count():
    """README and configs/default.py: revnet_mini has 37,866 parameters on 8x8x1 inputs."""
    assert models.summary("revnet_mini", (1, 8, 8, 1)).startswith("revnet_mini: 37,866 parameters")
