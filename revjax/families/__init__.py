"""One module per paper family (RevNet and its ResNet baseline, Chang et al., hyperbolic, RevUp,
LeanResNet): engine layers, steps and parameter trees as pure functions. Nothing here imports
flax; each paper's Flax linen modules and registry entries are in `revjax.models.<paper>`.
"""

__all__: list[str] = []  # the family modules are imported by name
