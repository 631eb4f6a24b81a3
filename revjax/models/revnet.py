"""Registry entries for RevNet and its ResNet baselines (Gomez, Ren, Urtasun, Grosse 2017,
arXiv:1707.04585, Table 1).

Filters list (stem, stage 1, ...) base widths; bottleneck nets multiply the stage widths by 4.
Parameter counts (10 / 1000 classes) equal those of Gomez et al. 2017, Table 1:

    resnet32 464,154   revnet38 464,890   resnet110 1,727,962   revnet110 1,729,194
    resnet164 1,703,258   revnet164 1,748,778   resnet101 44,541,480   revnet104 45,428,072

Every field is overridable: `create("revnet110", units=(3, 3, 3), transition="reversible")`.
"""

from __future__ import annotations

from revjax.families.resnet import ResNet
from revjax.families.revnet import RevNet
from revjax.models import register

__all__ = []

CIFAR = dict(strides=(1, 2, 2), num_classes=10)
IMAGENET = dict(
    strides=(1, 2, 2, 2), num_classes=1000, stem_kernel=7, stem_strides=2, stem_max_pool=True
)


def _factory(cls, **config):
    def factory(**overrides):
        return cls(**{**config, **overrides})

    factory.__doc__ = f"{cls.__name__} with {config} (any field overridable)."
    return factory


_CONFIGS = {
    "resnet32": (ResNet, dict(CIFAR, units=(5, 5, 5), filters=(16, 16, 32, 64))),
    "resnet110": (ResNet, dict(CIFAR, units=(18, 18, 18), filters=(16, 16, 32, 64))),
    "resnet164": (
        ResNet,
        dict(CIFAR, units=(18, 18, 18), filters=(16, 16, 32, 64), bottleneck=True),
    ),
    "resnet101": (
        ResNet,
        dict(IMAGENET, units=(3, 4, 23, 3), filters=(64, 64, 128, 256, 512), bottleneck=True),
    ),
    "revnet38": (RevNet, dict(CIFAR, units=(3, 3, 3), filters=(32, 32, 64, 112))),
    "revnet110": (RevNet, dict(CIFAR, units=(9, 9, 9), filters=(32, 32, 64, 128))),
    "revnet164": (
        RevNet,
        dict(CIFAR, units=(9, 9, 9), filters=(32, 32, 64, 128), bottleneck=True),
    ),
    "revnet104": (
        RevNet,
        dict(IMAGENET, units=(2, 2, 11, 2), filters=(128, 128, 256, 512, 832), bottleneck=True),
    ),
}

for _name, (_cls, _config) in _CONFIGS.items():
    register(_name)(_factory(_cls, **_config))
