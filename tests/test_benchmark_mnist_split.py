"""The MNIST benchmark's validation split: recipes are chosen without the test images."""

import numpy as np
import pytest

from benchmarks.mnist_kinds import validation_split


def test_validation_split_holds_out_training_images_and_never_the_test_ones(tmp_path):
    rng = np.random.default_rng(1)
    x_train = np.arange(50 * 4, dtype=np.uint8).reshape(50, 2, 2)  # each image is unique
    y_train = rng.integers(0, 10, 50).astype(np.uint8)
    src = tmp_path / "m.npz"
    np.savez(src, x_train=x_train, y_train=y_train, x_test=np.full((7, 2, 2), 255, np.uint8), y_test=np.zeros(7))
    path = validation_split(str(src), 12, seed=3, out=tmp_path / "out")
    with np.load(path) as d:
        assert d["x_test"].shape == (12, 2, 2) and d["x_train"].shape == (38, 2, 2)
        seen = {img.tobytes(): label for img, label in zip(x_train, y_train)}
        both = np.concatenate([d["x_train"], d["x_test"]])
        labels = np.concatenate([d["y_train"], d["y_test"]])
        assert sorted(img.tobytes() for img in both) == sorted(seen)  # a partition of the training images
        assert all(seen[img.tobytes()] == label for img, label in zip(both, labels))  # labels travel with them
        assert not (both == 255).all(axis=(1, 2)).any()  # no test image
    again = validation_split(str(src), 12, seed=3, out=tmp_path / "again")
    other = validation_split(str(src), 12, seed=4, out=tmp_path / "other")
    with np.load(path) as a, np.load(again) as b, np.load(other) as c:
        assert np.array_equal(a["x_test"], b["x_test"]) and not np.array_equal(a["x_test"], c["x_test"])


def test_validation_split_refuses_a_share_that_leaves_nothing(tmp_path):
    src = tmp_path / "m.npz"
    np.savez(src, x_train=np.zeros((5, 2, 2), np.uint8), y_train=np.zeros(5))
    with pytest.raises(SystemExit, match="between 1 and 4"):
        validation_split(str(src), 5, seed=0, out=tmp_path)
