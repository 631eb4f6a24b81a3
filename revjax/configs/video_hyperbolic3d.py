"""Fully reversible hyperbolic 3-D segmentation of whole video clips (Peters, Haber, Lensink
2019, "Symmetric block-low-rank layers for fully reversible multilevel neural networks",
arXiv:1912.12137).

Model ``hyperbolic3d`` (NDHWC, width 8, 2 levels, 2 layers per level, reversible backprop)
on ``synthetic_video``: generated 8x32x32 clips of moving shapes with per-pixel labels in 4
classes (no download). Loss: per-voxel softmax cross-entropy; accuracy is per voxel.
Adam, lr 1e-3, batch 8, 3000 steps.

Expected result: per-voxel test accuracy well above the majority-class baseline (background)
and training-step temp memory (memory line) below "store", flat in depth. No DAVIS number:
the paper's video-segmentation results are not in the text available to us. Use
``--config.dataset=davis`` (prepared TFDS) for the real task.

Smoke (``:smoke``): 4x16x16 clips, width 4, batch 2, 2 steps.
"""

import ml_collections

from revjax.configs import default, is_smoke


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = default.get_config()
    config.name = "video_hyperbolic3d"
    config.model = "hyperbolic3d"
    config.model_kwargs = ml_collections.ConfigDict({"backprop": "reversible"})
    config.dataset = "synthetic_video"
    config.dataset_options = ml_collections.ConfigDict()
    config.global_batch_size = 8
    config.eval_batch_size = 8
    config.num_steps = 3000
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 1e-3
    config.optimizer.weight_decay = 0.0
    config.optimizer.schedule = "constant"
    config.log_every_steps = 50
    config.checkpoint_every_steps = 500
    # Spatial parallelism for clips too large for one device: --config.mesh.space=N splits
    # H (axis 2 of (B, T, H, W, C)) into N shards, each a multiple of 2**levels.
    config.mesh.spatial_axis = 2
    config.mesh.spatial_multiple = 4
    if is_smoke(arg):
        config.dataset_options = ml_collections.ConfigDict(
            {"frames": 4, "height": 16, "width": 16, "num_train": 16, "num_test": 4}
        )
        config.model_kwargs.width = 4
        config.global_batch_size = 2
        config.eval_batch_size = 2
        config.num_steps = 2
        config.log_every_steps = 1
        config.checkpoint_every_steps = 1
    return config
