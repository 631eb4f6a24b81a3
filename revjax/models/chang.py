"""Chang et al. (2018) classifiers: Hamiltonian, midpoint and leapfrog networks (SPEC §4).

    x (N, H, W, 3) -> Stem: conv3x3(3 -> f0) + BN + ReLU            (stored, autodiff)
      -> body: 3 stages of reversible blocks (`revjax.families.chang`)   (reconstructed)
      -> ClassifierHead: BN + ReLU + global average pool + dense        (stored, autodiff)

`filters = (f0, f1, f2, f3)`: stem width and the state width of each stage (f0 == f1).
Stage transitions: "stored" (the paper's: the first block of a new stage runs at the old
width, then 2x2 average pool + zero channel padding, input stored) or "reversible"
(space-to-depth of every state, so widths must be f1, 4 f1, 16 f1; a factory called with
transition="reversible" and no `filters` uses `reversible_filters` of its defaults, e.g.
hamiltonian74 -> (32, 32, 128, 512)).

Registered names and depth formulas (a "layer" is one conv operation K or K^T):

- hamiltonianD: 4 convs per block (K, K^T in F and G): D = 3 · 4n + 2 = 12n + 2.
  hamiltonian74 (n = 6, filters 32,32,64,112), hamiltonian218 (n = 18, 32,32,64,128),
  hamiltonian1202 (n = 100, 32,32,64,128). Parameter counts equal SPEC §4.1.
- midpointD, leapfrogD: 2 convs per block (W and W^T, or K and K^T; the start block counts
  as block 0): D = 3 · 2n + 2 = 6n + 2. midpoint62 / leapfrog62 (n = 10) use filters
  16,16,32,56: the state is not split, so their 3x3 kernels have the same shapes as the
  Hamiltonian-74 kernels (16², 32², 56² channels) and the size is comparable
  (see `models.summary`).

Default step sizes: h = 1 for the Hamiltonian net (official config). No reference exists for
the other two; the defaults h = 0.1 (midpoint) and h = 0.5 (leapfrog) satisfy the frozen-
coefficient conditions at the reference initialisation (power iteration, 16x16 images, 16-56
channels: λ_max(K^T K) ≈ 6.1-6.3, so h²λ_max ≈ 1.6 < 4; ω_max(W − W^T) ≈ 3.6-3.9, so
hω_max ≈ 0.39 < 1). Frozen-coefficient stability does not prevent growth with i.i.d. weights
across depth (SPEC §8.2; experiments/reconstruction_drift.py).

All fields are overridable: `create("hamiltonian74", units=(334, 333, 333))`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from revjax import engine
from revjax.families import chang
from revjax.heads import ClassifierHead, Stem, check_num_classes
from revjax.models import register

__all__ = ["ChangNet", "DEFAULT_STEP_SIZES"]

DEFAULT_STEP_SIZES = {"hamiltonian": 1.0, "midpoint": 0.1, "leapfrog": 0.5}


class ChangNet(nn.Module):
    """Stem + reversible body of Hamiltonian / midpoint / leapfrog blocks + classifier head.

    Attributes:
      family: "hamiltonian" | "midpoint" | "leapfrog".
      units: blocks per stage.
      filters: (stem width, stage widths...); filters[0] must equal filters[1].
      h: step size (> 0).
      num_classes: logits per example (>= 1).
      backprop: "reversible" | "store" | "remat".
      transition: "stored" | "reversible".
      start: start rule (None: family default; leapfrog "zero_velocity" | "second_order").
      dtype: dtype of parameters and activations.

    Input (N, H, W, C_in) with H, W divisible by 2^(stages − 1); output (N, num_classes).
    """

    family: str = "hamiltonian"
    units: tuple[int, ...] = (6, 6, 6)
    filters: tuple[int, ...] = (32, 32, 64, 112)
    h: float = 1.0
    num_classes: int = 10
    backprop: str = "reversible"
    transition: str = "stored"
    start: str | None = None
    dtype: jnp.dtype = jnp.float32

    def config(self) -> chang.ChangConfig:
        """The validated body configuration (raises ValueError on a bad one)."""
        filters = tuple(self.filters)
        if len(filters) != len(self.units) + 1:
            raise ValueError(
                f"filters {filters} must hold the stem width plus one width per stage "
                f"({len(self.units)} stages)"
            )
        if filters[0] != filters[1]:
            raise ValueError(
                f"the stem width filters[0]={filters[0]} must equal the first stage width "
                f"filters[1]={filters[1]} (no transition before stage 1)"
            )
        check_num_classes(self.num_classes)
        engine._check_backprop(self.backprop)
        return chang.make_config(
            self.family, self.units, filters[1:], self.h, self.transition, self.start
        )

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        config = self.config()
        chang.check_input(x.shape, config)
        x = Stem(self.filters[0], dtype=self.dtype, name="stem")(x.astype(self.dtype), train)
        tree = {
            f"stage{s + 1}": self.param(
                f"stage{s + 1}",
                lambda k, s=s: chang.init_stage_params(k, config, s, self.dtype),
            )
            for s in range(len(config.units))
        }
        state = engine.apply(
            chang.body_layers(config),
            chang.body_params(tree, config),
            chang.to_state(x, config),
            backprop=self.backprop,
        )
        return ClassifierHead(self.num_classes, dtype=self.dtype, name="head")(
            chang.from_state(state, config), train
        )


def _factory(family: str, units: tuple[int, ...], filters: tuple[int, ...]):
    def build(**overrides) -> ChangNet:
        fields = {
            "family": family,
            "units": units,
            "filters": filters,
            "h": DEFAULT_STEP_SIZES[family],
        }
        if overrides.get("transition") == "reversible" and "filters" not in overrides:
            fields["filters"] = chang.reversible_filters(filters)
        fields.update(overrides)
        fields["units"] = tuple(fields["units"])
        fields["filters"] = tuple(fields["filters"])
        model = ChangNet(**fields)
        model.config()  # fail on a bad configuration now, not at the first call
        return model

    return build


register("hamiltonian74")(_factory("hamiltonian", (6, 6, 6), (32, 32, 64, 112)))
register("hamiltonian218")(_factory("hamiltonian", (18, 18, 18), (32, 32, 64, 128)))
register("hamiltonian1202")(_factory("hamiltonian", (100, 100, 100), (32, 32, 64, 128)))
register("midpoint62")(_factory("midpoint", (10, 10, 10), (16, 16, 32, 56)))
register("leapfrog62")(_factory("leapfrog", (10, 10, 10), (16, 16, 32, 56)))
