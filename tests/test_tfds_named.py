"""Any prepared TFDS dataset by name (``dataset="tfds:<name>"``) with the user's preprocessing.

A tiny image-classification dataset is prepared offline in a temporary ``data_dir`` in
array_record format from a ``GeneratorBasedBuilder`` defined here (uint8 ``Tensor`` images, so
building needs no TensorFlow), then read back only through ``tfds.data_source``.
"""

import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from revjax import configs, data
from revjax.data import tfds_named
from revjax.train import trainer

NUM_TRAIN, NUM_TEST = 24, 10


class RevjaxTinyShapes(tfds.core.GeneratorBasedBuilder):
    """12x10x3 uint8 pictures of 3 kinds; the label is stored under "kind" (not "label")."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "picture": tfds.features.Tensor(shape=(12, 10, 3), dtype=np.uint8),
                    "kind": tfds.features.ClassLabel(names=["a", "b", "c"]),
                    "index": tfds.features.Scalar(dtype=np.int64),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {
            "train": self._generate_examples(NUM_TRAIN, 0),
            "validation": self._generate_examples(NUM_TEST, 1000),
        }

    def _generate_examples(self, count, offset):
        for i in range(count):
            picture = np.full((12, 10, 3), (offset + i) % 256, np.uint8)
            yield i, {"picture": picture, "kind": i % 3, "index": offset + i}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfds")
    RevjaxTinyShapes(data_dir=str(root), file_format="array_record").download_and_prepare()
    return str(root)


CALLS = []  # (train?, pixel value) of every record the registered preprocess saw


def crop_and_scale(example, rng):
    """The user's preprocessing: centre 8x8 crop, pixels / 255 (+ 1 when training), and a
    record of each call."""
    CALLS.append((rng is not None, int(example["image"][0, 0, 0])))
    image = example["image"][2:10, 1:9].astype(np.float32) / 255.0
    return {"image": image + (1.0 if rng is not None else 0.0), "label": example["label"]}


def test_dataset_info_from_the_prepared_dataset(data_dir):
    """Keys, classes and split sizes come from DatasetInfo ("test" = "validation" here); the
    example shape is the preprocessed one; bad keys/splits/preprocess names are clear."""
    tfds_named.register_preprocess("revjax_test_crop", crop_and_scale)
    name = "tfds:revjax_tiny_shapes"
    info = data.dataset_info(name, data_dir=data_dir, preprocess="revjax_test_crop")
    assert info == data.DatasetInfo(3, (8, 8, 3), NUM_TRAIN, NUM_TEST, "classification")
    standard = data.dataset_info(name, data_dir=data_dir)  # CIFAR recipe, shape unchanged
    assert standard.image_shape == (12, 10, 3)
    with pytest.raises(ValueError, match="unknown preprocess 'nope'.*revjax_test_crop"):
        data.dataset_info(name, data_dir=data_dir, preprocess="nope")
    with pytest.raises(ValueError, match="'index' is not a ClassLabel"):
        data.dataset_info(name, data_dir=data_dir, label_key="index")
    with pytest.raises(ValueError, match="split 'test' is not in this dataset"):
        data.dataset_info(name, data_dir=data_dir, test_split="test")
    with pytest.raises(data.DatasetNotPreparedError, match="tfds build"):
        data.dataset_info("tfds:revjax_tiny_shapes", data_dir=f"{data_dir}/empty")
    with pytest.raises(ValueError, match="tfds:<name>"):
        data.dataset_info("tfds_revjax_tiny_shapes")


def test_pipeline_is_deterministic_and_sharded_by_process(data_dir):
    """Same seed, same batches; two processes' rows of a global batch are the one-process
    batch (the ProcessRows contract of every dataset)."""
    tfds_named.register_preprocess("revjax_test_crop", crop_and_scale)
    kwargs = dict(data_dir=data_dir, preprocess="revjax_test_crop", seed=3, train=True)
    name = "tfds:revjax_tiny_shapes"

    def first(**extra):
        ds = data.make_dataset(name, "train", global_batch_size=8, **kwargs, **extra)
        return next(iter(ds))

    whole = first(process_index=0, process_count=1, device_count=1)
    again = first(process_index=0, process_count=1, device_count=1)
    halves = [first(process_index=p, process_count=2, device_count=2) for p in (0, 1)]
    np.testing.assert_array_equal(whole["image"], again["image"])
    np.testing.assert_array_equal(whole["image"], np.concatenate([h["image"] for h in halves]))
    assert whole["image"].shape == (8, 8, 8, 3) and whole["image"].dtype == np.float32
    assert whole["image"].min() >= 1.0  # the training branch of the user's function ran
    pixel = np.rint((whole["image"][:, 0, 0, 0] - 1.0) * 255).astype(int)
    np.testing.assert_array_equal(whole["label"], pixel % 3)  # label "kind" travels along


def test_trainer_runs_two_steps_with_the_users_preprocessing(data_dir, tmp_path):
    """`dataset="tfds:revjax_tiny_shapes"` with `dataset_options.preprocess` naming a registered
    function trains 2 steps and evaluates through the trainer; the function saw training
    records (with an rng) and every validation record (without)."""
    tfds_named.register_preprocess("revjax_test_crop", crop_and_scale)
    config = configs.load_config("default")
    config.model_kwargs.widths, config.model_kwargs.units = (8,), (1,)
    config.dataset, config.data_dir = "tfds:revjax_tiny_shapes", data_dir
    config.dataset_options = {"preprocess": "revjax_test_crop"}
    config.global_batch_size, config.eval_batch_size, config.num_steps = 8, 5, 2
    config.memory_report, config.progress_bar, config.tensorboard = False, False, False
    config.drift_check_every = 0
    CALLS.clear()
    summary = trainer.train_and_evaluate(config, tmp_path)
    assert summary["steps"] == 2 and np.isfinite(summary["train_loss"])
    assert summary["dataset"] == "tfds:revjax_tiny_shapes"
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    assert sum(train for train, _ in CALLS) >= 16  # 2 batches of 8 training records
    eval_pixels = sorted(p for train, p in CALLS if not train)
    assert set(eval_pixels) >= set(range(1000 % 256, 1000 % 256 + NUM_TEST))
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["dataset_options"] == {"preprocess": "revjax_test_crop"}


def test_preprocess_by_module_path_and_bad_output(data_dir, tmp_path, monkeypatch):
    """ "package.module:function" (here a module of the user's) needs no registration; a
    function that does not return {"image", "label"} is named in the error."""
    (tmp_path / "my_preprocessing.py").write_text(
        "def gray(example, rng):\n"
        "    return {'image': example['image'].mean(-1, keepdims=True), "
        "'label': example['label']}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    name = "tfds:revjax_tiny_shapes"
    info = data.dataset_info(name, data_dir=data_dir, preprocess="my_preprocessing:gray")
    assert info.image_shape == (12, 10, 1)
    tfds_named.register_preprocess("revjax_test_bad", lambda example, rng: example["image"])
    with pytest.raises(ValueError, match="'revjax_test_bad' must return a dict"):
        data.dataset_info(name, data_dir=data_dir, preprocess="revjax_test_bad")
    with pytest.raises(ValueError, match="could not be imported"):
        data.dataset_info(name, data_dir=data_dir, preprocess="no_such_module_x:f")
