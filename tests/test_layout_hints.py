"""Shape errors on channels-first (NCHW) input say so and show the transpose."""

import jax.numpy as jnp
import pytest

from revjax import transitions, wavelets
from revjax.space_to_depth import channels_first_hint, space_to_depth


@pytest.mark.parametrize(
    "check",
    [
        lambda x: transitions.check_halvable(x.shape),
        lambda x: space_to_depth(x, 2),
        lambda x: wavelets.check_divisible(x.shape, 1),
    ],
    ids=["stride2_transition", "space_to_depth", "haar"],
)
def test_nchw_input_gets_a_transpose_hint(check):
    """(N, 3, 32, 32) fails on "axis H has size 3" and the message names the transpose."""
    with pytest.raises(
        ValueError,
        match=r"axis H has size 3.*looks channels-first.*"
        r"x\.transpose\(0, 2, 3, 1\)",
    ):
        check(jnp.zeros((2, 3, 32, 32)))


def test_no_hint_for_channels_last_shapes():
    """An odd NHWC size gets the plain message (no misleading layout hint)."""
    assert channels_first_hint((2, 33, 32, 3)) == ""
    assert channels_first_hint((2, 32, 32, 3)) == ""
    assert channels_first_hint((2, 3, 16, 16, 16)) != ""
    with pytest.raises(ValueError, match="axis H has size 33") as err:
        transitions.check_halvable((2, 33, 32, 3))
    assert "channels-first" not in str(err.value)
