"""Input pipelines: shapes, determinism, checkpointable iterators, sharding, augmentation.

TFDS datasets are exercised offline with ``tfds.testing.mock_data`` (``MockPolicy.USE_CODE``
generates random records from the builders' feature specs, no TensorFlow and no files).
"""

import subprocess
import sys

import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds

from revjax import data
from revjax.data import augment, digits, synthetic_video, tfds_pipeline

NUM_MOCK = 20
FAST = {"num_threads": 2, "prefetch_buffer_size": 16}


@pytest.fixture
def mock_tfds():
    """Every ``tfds.data_source`` call returns NUM_MOCK random records per split."""
    with tfds.testing.mock_data(num_examples=NUM_MOCK, policy=tfds.testing.MockPolicy.USE_CODE):
        yield


def take(ds, n):
    """First ``n`` batches of a fresh iterator."""
    it = iter(ds)
    return [next(it) for _ in range(n)]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def example_keys(batches):
    """Byte strings identifying every example of a list of batches."""
    return [image.tobytes() for b in batches for image in b["image"]]


# ----------------------------------------------------------------------------- API and errors


def test_unknown_name_lists_valid_names():
    """An unknown dataset name raises ValueError whose message names every valid dataset."""
    for call in (
        lambda: data.make_dataset("cifar11", "train", global_batch_size=8, seed=0, train=True),
        lambda: data.dataset_info("cifar11"),
    ):
        with pytest.raises(ValueError) as info:
            call()
        assert all(name in str(info.value) for name in data.DATASETS)
    assert {"digits", "synthetic_video", "cifar10", "davis"} <= set(data.DATASETS)


def test_indivisible_global_batch_names_both_numbers():
    """global_batch_size not divisible by the device count -> ValueError quoting both."""
    with pytest.raises(ValueError, match=r"global_batch_size=6 .*device_count\(\)=4"):
        data.make_dataset(
            "digits", "train", global_batch_size=6, seed=0, train=True, device_count=4
        )
    assert data.host_batch_size(8, process_count=2, device_count=4) == 4


def test_missing_tfds_dataset_says_how_to_prepare(tmp_path):
    """A dataset absent from data_dir raises DatasetNotPreparedError with the build command."""
    with pytest.raises(data.DatasetNotPreparedError) as info:
        data.make_dataset(
            "cifar10", "train", global_batch_size=8, seed=0, train=True, data_dir=tmp_path
        )
    message = str(info.value)
    assert f"tfds build cifar10 --data_dir={tmp_path} --file_format=array_record" in message
    assert isinstance(info.value, FileNotFoundError)
    imagenet = tfds_pipeline.preparation_instructions("imagenet2012", tmp_path)
    assert f"{tmp_path}/downloads/manual" in imagenet


def test_dataset_info_matches_batches(mock_tfds):
    """dataset_info's example shape and task agree with what make_dataset yields."""
    cases = {
        "digits": {},
        "synthetic_video": {"frames": 3, "height": 8, "width": 12},
        "cifar10": {},
        "stl10": {},
        "davis": {"clip_length": 2, "height": 16, "width": 24},
    }
    for name, options in cases.items():
        info = data.dataset_info(name, **options)
        batch = take(
            data.make_dataset(
                name, "test", global_batch_size=2, seed=0, train=False, **FAST, **options
            ),
            1,
        )[0]
        assert batch["image"].shape == (2, *info.image_shape), name
        assert batch["image"].dtype == np.float32 and batch["label"].dtype == np.int32
        label_shape = (2,) if info.task == "classification" else (2, *info.image_shape[:-1])
        assert batch["label"].shape == label_shape, name
        assert batch["label"].min() >= 0 and batch["label"].max() < info.num_classes
    assert data.dataset_info("cifar100").num_classes == 100
    assert data.dataset_info("imagenet2012").image_shape == (224, 224, 3)


def test_no_tensorflow_import():
    """Building and iterating a pipeline imports neither TensorFlow nor (for digits) TFDS."""
    code = (
        "import sys\n"
        "from revjax.data import make_dataset\n"
        "ds = make_dataset('digits', 'train', global_batch_size=4, seed=0, train=True)\n"
        "next(iter(ds))\n"
        "assert 'tensorflow' not in sys.modules\n"
        "assert 'tensorflow_datasets' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ----------------------------------------------------------------------------- TFDS pipelines


def test_cifar10_shapes_and_eval_order(mock_tfds):
    """Train batches are (B, 32, 32, 3) float32 / (B,) int32; eval is the source in order."""
    train = take(
        data.make_dataset("cifar10", "train", global_batch_size=4, seed=0, train=True, **FAST), 2
    )
    assert train[0]["image"].shape == (4, 32, 32, 3) and train[0]["image"].dtype == np.float32
    assert train[0]["label"].shape == (4,) and train[0]["label"].dtype == np.int32

    ds = data.make_dataset(
        "cifar10", "test", global_batch_size=8, seed=0, train=False, drop_remainder=False, **FAST
    )
    batches = list(ds)  # num_epochs=None means one pass when evaluating
    assert [len(b["label"]) for b in batches] == [8, 8, 8]  # the last padded...
    assert [int(b["weight"].sum()) for b in batches] == [8, 8, 4]  # ...with weight 0
    source = tfds.data_source("cifar10", split="test")
    expected = [source[i] for i in range(NUM_MOCK)]
    np.testing.assert_array_equal(
        np.concatenate([b["label"] for b in batches])[:NUM_MOCK], [e["label"] for e in expected]
    )
    first = augment.per_image_standardization(expected[0]["image"])
    np.testing.assert_allclose(batches[0]["image"][0], first, rtol=1e-6)
    assert_same_batches(batches, list(ds))


def test_same_seed_same_batches_different_seed_differs(mock_tfds):
    """Shuffling and augmentation are pure functions of the seed."""

    def run(seed):
        ds = data.make_dataset(
            "cifar10", "train", global_batch_size=4, seed=seed, train=True, **FAST
        )
        return take(ds, 6)

    a, b, c = run(3), run(3), run(4)
    assert_same_batches(a, b)
    assert not np.array_equal(a[0]["image"], c[0]["image"])


def test_iterator_state_resumes_exactly(mock_tfds):
    """Restoring get_state() after 3 batches into a fresh iterator reproduces batches 4-5.

    Also across an epoch boundary (20 examples, batch 4: epoch 2 starts at batch 6), where
    the shuffle order and augmentation are reseeded.
    """
    ds = data.make_dataset("cifar10", "train", global_batch_size=4, seed=1, train=True, **FAST)
    for before, after in ((3, 2), (4, 4)):
        it = iter(ds)
        for _ in range(before):
            next(it)
        state = it.get_state()
        expected = [next(it) for _ in range(after)]
        fresh = iter(
            data.make_dataset("cifar10", "train", global_batch_size=4, seed=1, train=True, **FAST)
        )
        fresh.set_state(state)
        assert_same_batches(expected, [next(fresh) for _ in range(after)])


def test_epochs_reshuffle_and_finite_num_epochs(mock_tfds):
    """num_epochs=2 yields exactly two passes, each a permutation, in different orders."""
    ds = data.make_dataset(
        "cifar10",
        "train",
        global_batch_size=5,
        seed=0,
        train=True,
        num_epochs=2,
        augmentation="none",
        **FAST,
    )
    batches = list(ds)
    assert len(batches) == 2 * NUM_MOCK // 5
    keys = example_keys(batches)
    first, second = keys[:NUM_MOCK], keys[NUM_MOCK:]
    assert len(set(first)) == NUM_MOCK and set(first) == set(second)
    assert first != second


def _process_batches(name, split, processes, n=None, **kwargs):
    """Batches of each of ``processes`` simulated processes (first ``n``, or all)."""
    out = []
    for index in range(processes):
        ds = data.make_dataset(
            name,
            split,
            process_index=index,
            process_count=processes,
            device_count=processes,
            **kwargs,
            **FAST,
        )
        out.append(take(ds, n) if n is not None else list(ds))
    return out


def test_processes_together_read_the_single_process_global_batches(mock_tfds):
    """P simulated processes: concatenating their local batches k (in process order) gives
    exactly global batch k of one process, in training (shuffled, augmented, across epoch
    boundaries: 20 examples, batches of 8) and in evaluation (source order; the last partial
    batch padded with weight 0, every process yielding as many batches)."""
    train = dict(global_batch_size=8, seed=3, train=True)
    (single,) = _process_batches("cifar10", "train", 1, n=6, **train)
    for processes in (2, 4):
        parts = _process_batches("cifar10", "train", processes, n=6, **train)
        assert all(b["image"].shape[0] == 8 // processes for p in parts for b in p)
        joined = [
            {k: np.concatenate([p[step][k] for p in parts]) for k in ("image", "label")}
            for step in range(6)
        ]
        assert_same_batches(joined, single)

    test = dict(global_batch_size=8, seed=0, train=False, drop_remainder=False)
    (single,) = _process_batches("cifar10", "test", 1, **test)
    assert [b["weight"].tolist() for b in single][-1] == [1] * 4 + [0] * 4
    parts = _process_batches("cifar10", "test", 4, **test)
    assert [len(p) for p in parts] == [3] * 4  # process 3 holds only padding in batch 3
    assert parts[3][2]["weight"].tolist() == [0, 0]
    joined = [
        {k: np.concatenate([p[step][k] for p in parts]) for k in single[0]} for step in range(3)
    ]
    assert_same_batches(joined, single)


def test_process_rows_index_map():
    """Local element i of process p is global element (i // b) B + p b + i % b; without
    padding only whole global batches are kept."""
    source = grain.MapDataset.range(10)
    rows = data.ProcessRows(source, 4, 1, 2, pad=False)
    assert len(rows) == 4 and [rows[i] for i in range(4)] == [2, 3, 6, 7]
    assert len(data.ProcessRows(source, 4, 0, 2, pad=True)) == 6
    with pytest.raises(ValueError, match=r"process_index=2 must lie in \[0, 2\)"):
        data.make_dataset(
            "digits",
            "train",
            global_batch_size=4,
            seed=0,
            train=True,
            process_index=2,
            process_count=2,
            device_count=2,
        )


def test_other_tfds_datasets(mock_tfds):
    """cifar100 (lean augmentation), stl10, imagenet2012 and davis produce documented shapes."""
    kwargs = {"global_batch_size": 2, "seed": 0, **FAST}
    b = take(data.make_dataset("cifar100", "train", train=True, augmentation="lean", **kwargs), 1)
    assert b[0]["image"].shape == (2, 32, 32, 3)
    b = take(data.make_dataset("stl10", "train", train=True, **kwargs), 1)
    assert b[0]["image"].shape == (2, 96, 96, 3)
    for train in (True, False):
        b = take(data.make_dataset("imagenet2012", "train", train=train, **kwargs), 1)
        assert b[0]["image"].shape == (2, 224, 224, 3)
        video = {"clip_length": 3, "height": 16, "width": 20, "clips_per_video": 2}
        b = take(data.make_dataset("davis", "train", train=train, **video, **kwargs), 1)
        assert b[0]["image"].shape == (2, 3, 16, 20, 3)
        assert b[0]["label"].shape == (2, 3, 16, 20)
        assert set(np.unique(b[0]["label"])) <= {0, 1}
    assert tfds_pipeline.clip_start(50, 8, 2, 3) == 42 and tfds_pipeline.clip_start(5, 8, 1, 2) == 0


# ----------------------------------------------------------------------------- augmentation


def test_random_crop_keeps_shape_and_is_a_window():
    """pad-4 crop returns an (H, W, C) window of the zero-padded image; pad 0 is identity."""
    image = np.random.default_rng(0).integers(1, 256, (32, 32, 3), dtype=np.uint8)
    padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))
    for seed in range(5):
        out = augment.random_crop(image, np.random.default_rng(seed), pad=4)
        assert out.shape == image.shape and out.dtype == image.dtype
        windows = [padded[i : i + 32, j : j + 32] for i in range(9) for j in range(9)]
        assert any(np.array_equal(out, w) for w in windows)
    assert augment.random_crop(image, np.random.default_rng(0), pad=0) is image


def test_flip_is_a_mirror():
    """random_flip returns the image or its left-right mirror, both with probability > 0."""
    image = np.arange(2 * 3 * 2).reshape(2, 3, 2)
    mirrored = image[:, ::-1, :]
    outcomes = set()
    for seed in range(20):
        out = augment.random_flip_left_right(image, np.random.default_rng(seed))
        assert np.array_equal(out, image) or np.array_equal(out, mirrored)
        outcomes.add(np.array_equal(out, mirrored))
    assert outcomes == {True, False}
    np.testing.assert_array_equal(augment.flip_left_right(augment.flip_left_right(image)), image)


def test_per_image_standardization():
    """Each standardised image has mean 0 and std 1; a constant image maps to zeros."""
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    out = augment.per_image_standardization(image)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.mean(), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.std(), 1.0, atol=1e-4)
    np.testing.assert_array_equal(augment.per_image_standardization(np.full((4, 4, 3), 7)), 0.0)
    train = augment.cifar_train(image, np.random.default_rng(1))
    np.testing.assert_allclose([train.mean(), train.std()], [0.0, 1.0], atol=1e-4)


def test_resize_recipes_shapes_and_boxes():
    """Random-resized boxes lie inside the image; recipes return their documented shapes."""
    rng = np.random.default_rng(0)
    for _ in range(50):
        top, left, bottom, right = augment.sample_resized_crop_box(rng, 40, 70)
        assert 0 <= top < bottom <= 40 and 0 <= left < right <= 70
    image = rng.integers(0, 256, (40, 70, 3), dtype=np.uint8)
    assert augment.imagenet_train(image, rng, 24).shape == (24, 24, 3)
    assert augment.imagenet_eval(image, 24, 28).shape == (24, 24, 3)
    assert augment.lean_train(image, rng).shape == (40, 70, 3)
    a = augment.lean_train(image, np.random.default_rng(5))
    np.testing.assert_array_equal(a, augment.lean_train(image, np.random.default_rng(5)))


def test_video_augmentation_keeps_frames_and_masks_aligned():
    """Clip crop/flip is shared by frames and masks: bright pixels stay labelled 1."""
    frames = np.zeros((3, 30, 40, 3), np.uint8)
    frames[:, 5:20, 3:15] = 255
    masks = (frames[..., 0] > 0).astype(np.uint8)
    for seed in range(6):
        clip, labels = augment.video_train(frames, masks, np.random.default_rng(seed), (15, 20))
        assert clip.shape == (3, 15, 20, 3) and labels.shape == (3, 15, 20)
        assert clip[labels == 1].mean() > 0.5 > clip[labels == 0].mean()
        np.testing.assert_allclose([clip.mean(), clip.std()], [0.0, 1.0], atol=1e-4)


# ----------------------------------------------------------------------------- digits


def test_digits_split_sizes_stratified_disjoint():
    """Stratified 80/20 split: 1437/360 examples, disjoint, class shares match, standardised."""
    from sklearn.datasets import load_digits

    labels = load_digits().target
    train_idx, test_idx = digits.split_indices(labels)
    assert (len(train_idx), len(test_idx)) == (digits.NUM_TRAIN, digits.NUM_TEST)
    assert not set(train_idx) & set(test_idx)
    assert len(set(train_idx) | set(test_idx)) == len(labels)
    full, test = np.bincount(labels), np.bincount(labels[test_idx])
    assert np.all(np.abs(test - 0.2 * full) <= 1)

    train = digits.load_split("train")
    assert train["image"].shape == (1437, 8, 8, 1) and train["image"].dtype == np.float32
    assert train["label"].dtype == np.int32
    np.testing.assert_allclose([train["image"].mean(), train["image"].std()], [0, 1], atol=1e-4)
    np.testing.assert_array_equal(train["label"], labels[train_idx])


# ----------------------------------------------------------------------------- synthetic video


def test_synthetic_clip_deterministic_by_seed():
    """generate_clip is a pure function of its seed; other seeds give other clips."""
    a = synthetic_video.generate_clip(7, frames=4, height=16, width=20)
    b = synthetic_video.generate_clip(7, frames=4, height=16, width=20)
    c = synthetic_video.generate_clip(8, frames=4, height=16, width=20)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert a[0].shape == (4, 16, 20, 3) and a[0].dtype == np.float32
    assert a[1].shape == (4, 16, 20) and a[1].dtype == np.int32


def test_synthetic_labels_in_range_and_shapes_move():
    """Labels lie in [0, K) with shapes present, and shape masks change between frames."""
    for seed in range(5):
        clip, labels = synthetic_video.generate_clip(
            seed, frames=6, height=32, width=32, num_classes=5, channels=1
        )
        assert clip.shape == (6, 32, 32, 1)
        assert labels.min() >= 0 and labels.max() < 5 and labels.max() > 0
        foreground = labels > 0
        assert all(not np.array_equal(foreground[t], foreground[t + 1]) for t in range(5))
        ys, xs = np.nonzero(foreground[0])
        ye, xe = np.nonzero(foreground[-1])
        assert np.hypot(ys.mean() - ye.mean(), xs.mean() - xe.mean()) > 0.5


def test_synthetic_source_splits_use_disjoint_seeds():
    """Record i of a split is generate_clip(base_seed + i); train and test seeds differ."""
    options = {"frames": 2, "height": 8, "width": 8, "num_train": 5, "num_test": 3}
    train = synthetic_video.split_source("train", **options)
    test = synthetic_video.split_source("test", **options)
    assert (len(train), len(test)) == (5, 3)
    clip, labels = synthetic_video.generate_clip(
        synthetic_video.TEST_BASE_SEED + 2, frames=2, height=8, width=8
    )
    np.testing.assert_array_equal(test[2]["image"], clip)
    np.testing.assert_array_equal(test[2]["label"], labels)
    assert not np.array_equal(train[0]["image"], test[0]["image"])
    with pytest.raises(IndexError):
        train[5]


def test_image_folder_dataset(tmp_path):
    """folder:<root>: classes from train/ sub-directories, images decoded, resized to
    image_size, standardised; unknown layout gives a clear error."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", 3), ("test", 2)):
        for name in ("cat", "dog"):
            directory = tmp_path / split / name
            directory.mkdir(parents=True)
            for i in range(count):
                size = (10 + i, 12)
                pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(directory / f"{i}.png")
    name = f"folder:{tmp_path}"
    info = data.dataset_info(name, image_size=8)
    assert info == data.DatasetInfo(2, (8, 8, 3), 6, 4, "classification")
    batch = next(
        iter(
            data.make_dataset(name, "test", global_batch_size=4, seed=0, train=False, image_size=8)
        )
    )
    assert batch["image"].shape == (4, 8, 8, 3) and batch["image"].dtype == np.float32
    assert batch["label"].tolist() == [0, 0, 1, 1]
    np.testing.assert_allclose(batch["image"].mean(axis=(1, 2, 3)), 0.0, atol=1e-5)
    train = next(
        iter(
            data.make_dataset(name, "train", global_batch_size=2, seed=0, train=True, image_size=8)
        )
    )
    assert train["image"].shape == (2, 8, 8, 3)
    with pytest.raises(FileNotFoundError, match="train/"):
        data.dataset_info(f"folder:{tmp_path / 'nothing'}")
