import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mres.training.data import (augment, iterate_batches, load_dataset, read_cifar_folder, restrict_to,
                                write_cifar_folder)
from mres.errors import UserError
from mres.recipe import DatasetConfig


def test_synthetic_is_class_dependent():
    d = load_dataset(DatasetConfig(name="synthetic", synthetic={"n_train": 200, "n_test": 50, "size": 16}))
    assert d.x_train.shape == (200, 1, 16, 16) and d.num_classes == 10
    # class means differ far more than the noise of a mean over ~20 samples
    means = torch.stack([d.x_train[d.y_train == c].mean(0) for c in range(10)])
    assert (means[0] - means[1]).abs().mean() > 0.2
    assert abs(d.x_train.mean().item()) < 1e-4  # normalised


def test_npz_layouts(tmp_path):
    rng = np.random.default_rng(0)
    p = tmp_path / "a.npz"
    np.savez(p, x_train=rng.random((10, 3, 8, 8)).astype(np.float32), y_train=np.arange(10) % 3,
             x_test=rng.random((4, 3, 8, 8)).astype(np.float32), y_test=np.arange(4) % 3)
    d = load_dataset(DatasetConfig(name="npz", path=str(p), normalize=False))
    assert d.x_train.shape == (10, 3, 8, 8) and d.num_classes == 3
    p2 = tmp_path / "b.npz"
    np.savez(p2, x_train=np.full((5, 8, 8), 255, np.uint8), y_train=np.zeros(5), x_test=np.zeros((2, 8, 8), np.uint8),
             y_test=np.ones(2))
    d2 = load_dataset(DatasetConfig(name="npz", path=str(p2), normalize=False))
    assert d2.x_train.shape == (5, 1, 8, 8) and d2.x_train.max() == 1.0
    p3 = tmp_path / "c.npz"
    np.savez(p3, x_train=np.zeros((5, 8, 8)))
    with pytest.raises(UserError, match="missing arrays y_train, x_test, y_test"):
        load_dataset(DatasetConfig(name="npz", path=str(p3)))
    with pytest.raises(UserError, match="does not exist"):
        load_dataset(DatasetConfig(name="npz", path=str(tmp_path / "nope.npz")))


def test_restriction_is_two_by_two_mean():
    x = torch.randn(3, 2, 16, 16)
    manual = x.reshape(3, 2, 8, 2, 8, 2).mean(dim=(3, 5))
    torch.testing.assert_close(restrict_to(x, 8), manual)
    torch.testing.assert_close(restrict_to(x, 4), manual.reshape(3, 2, 4, 2, 4, 2).mean(dim=(3, 5)))
    with pytest.raises(UserError):
        restrict_to(x, 6)


def test_augment_crop_and_flip():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 1 * 5 * 5, dtype=torch.float32).reshape(2, 1, 5, 5)
    assert torch.equal(augment(x, 0, False, g), x)
    out = augment(x, 1, False, g)
    # every crop is a shifted window of the zero-padded image
    padded = F.pad(x, (1, 1, 1, 1))
    for i in range(2):
        assert any(torch.equal(out[i], padded[i, :, dy:dy + 5, dx:dx + 5]) for dy in range(3) for dx in range(3))
    flipped = augment(x, 0, True, torch.Generator().manual_seed(3))
    for i in range(2):
        assert torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(-1))


def test_batches_cover_every_sample_once():
    x = torch.arange(10.0)[:, None, None, None]
    y = torch.arange(10)
    seen = torch.cat([yb for _, yb in iterate_batches(x, y, 3, torch.Generator().manual_seed(1))])
    assert sorted(seen.tolist()) == list(range(10))


def test_cifar_format_folder_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    xtr = rng.integers(0, 256, (20, 3, 32, 32), dtype=np.uint8)
    xte = rng.integers(0, 256, (6, 3, 32, 32), dtype=np.uint8)
    write_cifar_folder(tmp_path, "cifar10", xtr, np.arange(20) % 10, xte, np.arange(6) % 10)
    a, b, c, d = read_cifar_folder(tmp_path / "cifar-10-batches-py", "cifar10")
    assert a.shape == (20, 3, 32, 32) and torch.equal((a * 255).round().byte(), torch.as_tensor(xtr))
    data = load_dataset(DatasetConfig(name="cifar10", data_root=str(tmp_path)))
    assert data.num_classes == 10 and data.x_test.shape == (6, 3, 32, 32)
    with pytest.raises(UserError, match="cifar100 not found"):
        load_dataset(DatasetConfig(name="cifar100", data_root=str(tmp_path)))


def test_missing_fashion_mnist_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MRES_CACHE", str(tmp_path / "cache"))
    with pytest.raises(UserError, match="apt-get install -y dataset-fashion-mnist"):
        load_dataset(DatasetConfig(name="fashion-mnist", path=str(tmp_path / "empty")))
