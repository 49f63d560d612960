"""Labels and shapes are checked at load, for every dataset (issue 29, item 4): the class count comes from the
dataset's declaration, never from the largest label; a stray label, a count mismatch or a label that is not a
whole number is exit 2 naming the file, the array and the first bad index."""
import numpy as np
import pytest

from mres.errors import UserError
from mres.recipe import DatasetConfig
from mres.training.data import load_dataset, write_cifar_folder
from test_hardening_cli import _write_idx


def npz(tmp_path, **arrays):
    rng = np.random.default_rng(0)
    base = {"x_train": rng.integers(0, 255, (20, 8, 8)).astype(np.uint8), "y_train": np.arange(20) % 2,
            "x_test": rng.integers(0, 255, (6, 8, 8)).astype(np.uint8), "y_test": np.arange(6) % 2}
    base.update(arrays)
    path = tmp_path / "d.npz"
    np.savez(path, **base)
    return DatasetConfig(name="npz", path=str(path))


def test_npz_stray_test_label_is_refused_not_a_5000_class_head(tmp_path):
    y = np.arange(6) % 2
    y[3] = 4999
    with pytest.raises(UserError, match=r"d.npz: test label 4999 at index 3 would make a 5000-class head, "
                                        r"yet only 3 distinct labels occur.*num_classes"):
        load_dataset(npz(tmp_path, y_test=y))


def test_npz_declared_class_count_is_used_and_checked(tmp_path):
    assert load_dataset(npz(tmp_path).model_copy(update={"num_classes": 5})).num_classes == 5
    with pytest.raises(UserError, match=r"train label 1 at index 1 is outside 0 … 0"):
        load_dataset(npz(tmp_path, y_train=np.arange(20) % 2).model_copy(update={"num_classes": 1}))


@pytest.mark.parametrize("y, message", [
    (np.arange(20) % 2 + 0.5, r"y_train\[0\] = 0.5 is not a whole number"),
    ((np.arange(20) % 2).reshape(10, 2), r"y_train has shape \(10, 2\)"),
    (np.arange(19) % 2, r"20 train images but 19 train labels"),
    (np.where(np.arange(20) == 7, -1, np.arange(20) % 2), r"train label -1 at index 7 is negative"),
    (np.where(np.arange(20) == 4, 900, np.arange(20) % 2), r"train label 900 at index 4 would make a 901-class"),
])
def test_npz_bad_labels(tmp_path, y, message):
    with pytest.raises(UserError, match=message):
        load_dataset(npz(tmp_path, y_train=y))


def test_npz_complex_and_nan_images(tmp_path):
    x = np.zeros((20, 8, 8), np.complex64)
    with pytest.raises(UserError, match=r"x_train has dtype complex64"):
        load_dataset(npz(tmp_path, x_train=x))
    x = np.zeros((20, 8, 8), np.float32)
    x[5, 1, 1] = np.nan
    with pytest.raises(UserError, match=r"x_train\[5\] holds NaN"):
        load_dataset(npz(tmp_path, x_train=x))


def test_integral_float_labels_are_fine(tmp_path):
    assert load_dataset(npz(tmp_path, y_train=(np.arange(20) % 2).astype(np.float32))).num_classes == 2


def test_cifar10_label_99_is_refused_not_a_100_class_model(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (50, 3, 32, 32)).astype(np.uint8)
    y = np.arange(50) % 10
    y[17] = 99
    write_cifar_folder(tmp_path, "cifar10", x, y, x[:10], np.arange(10))
    with pytest.raises(UserError, match=r"train label 99 at index 17 is outside 0 … 9: cifar10 has 10 classes"):
        load_dataset(DatasetConfig(name="cifar10", data_root=str(tmp_path)))


def test_cifar_batch_with_fewer_labels_than_images_names_the_file(tmp_path):
    import pickle

    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (50, 3, 32, 32)).astype(np.uint8)
    folder = write_cifar_folder(tmp_path, "cifar10", x, np.arange(50) % 10, x[:10], np.arange(10))
    with open(folder / "data_batch_2", "wb") as fh:
        pickle.dump({b"data": x[:40].reshape(40, -1), b"labels": list(range(10))}, fh)
    with pytest.raises(UserError, match=r"data_batch_2 holds 40 images and 10 labels"):
        load_dataset(DatasetConfig(name="cifar10", data_root=str(tmp_path)))


def test_idx_test_label_200_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    for part, n in (("train", 12), ("t10k", 5)):
        _write_idx(tmp_path / f"{part}-images-idx3-ubyte", rng.integers(0, 255, (n, 28, 28)), gz=False)
        labels = np.arange(n) % 10
        if part == "t10k":
            labels[2] = 200
        _write_idx(tmp_path / f"{part}-labels-idx1-ubyte", labels, gz=False)
    with pytest.raises(UserError, match=r"test label 200 at index 2 is outside 0 … 9: fashion-mnist has 10"):
        load_dataset(DatasetConfig(name="fashion-mnist", path=str(tmp_path)))


def test_num_classes_is_an_npz_key_only():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="applies to npz data only"):
        DatasetConfig(name="synthetic", num_classes=3)
