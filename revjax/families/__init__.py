"""One module per paper family (RevNet, Chang et al., hyperbolic, RevUp, LeanResNet)."""
