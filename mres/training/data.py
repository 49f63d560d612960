"""Datasets as tensors on the device, batched and augmented there (no worker processes).

Names (DESIGN §7): ``fashion-mnist`` (Debian package ``dataset-fashion-mnist``), ``mnist``,
``cifar10``, ``cifar100`` (torchvision, ``data_root``; downloads only when asked), ``npz`` (a
user's file with ``x_train, y_train, x_test, y_test``) and ``synthetic`` (generated).
Coarser resolutions are made with the restriction R of the weight transfer (2×2 averaging
for the ``average-*`` families), never a generic resize.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError
from ..recipe import DatasetConfig

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def cache_dir() -> Path:
    return Path(os.environ.get("MRES_CACHE", Path.home() / ".cache" / "mres"))


@dataclass
class TensorData:
    """A dataset held as float tensors N×C×H×W (normalised) and int64 labels, on one device."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    native_resolution: int = 0  # resolution of the images as stored (augmentation scales to it)

    @property
    def in_channels(self) -> int:
        return self.x_train.shape[1]

    @property
    def resolution(self) -> int:
        return self.x_train.shape[-1]

    def to(self, device: torch.device | str) -> "TensorData":
        return replace(self, x_train=self.x_train.to(device), y_train=self.y_train.to(device),
                       x_test=self.x_test.to(device), y_test=self.y_test.to(device))

    def at_resolution(self, resolution: int, family: str = "average-bilinear") -> "TensorData":
        return replace(self, x_train=restrict_to(self.x_train, resolution, family),
                       x_test=restrict_to(self.x_test, resolution, family))

    def subset(self, n_train: int | None, n_test: int | None = None, seed: int = 0) -> "TensorData":
        g = torch.Generator().manual_seed(seed)

        def pick(x: torch.Tensor, y: torch.Tensor, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
            if n is None or n >= len(y):
                return x, y
            idx = torch.randperm(len(y), generator=g)[:n].to(y.device)
            return x[idx], y[idx]

        xt, yt = pick(self.x_train, self.y_train, n_train)
        xv, yv = pick(self.x_test, self.y_test, n_test)
        return replace(self, x_train=xt, y_train=yt, x_test=xv, y_test=yv)


# ----------------------------------------------------------------------------- restriction
def restrict_to(x: torch.Tensor, resolution: int, family: str = "average-bilinear") -> torch.Tensor:
    """Restrict images (N,C,H,W) to ``resolution`` by repeated application of the family's R."""
    n = x.shape[-1]
    if n == resolution:
        return x
    ratio = n / resolution
    if resolution > n or ratio != 2 ** round(math.log2(ratio)):
        raise UserError(f"resolution {resolution} is not reachable from {n}×{n} images by halving")
    while x.shape[-1] > resolution:
        if family in ("average-constant", "average-bilinear"):
            x = F.avg_pool2d(x, 2)  # R of both average families: mean of each 2×2 block
        else:
            from ..grids.operators import restrict_images

            x = restrict_images(x, family)
    return x


# ----------------------------------------------------------------------------- loading
CLASS_NAMES = {
    "fashion-mnist": ("T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                      "ankle boot"),
    "mnist": tuple(str(d) for d in range(10)),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
}


def class_names(dataset: str, num_classes: int) -> list[str]:
    """The classes' names where the dataset has them (Fashion-MNIST, MNIST, CIFAR-10), else ``class k``."""
    known = CLASS_NAMES.get(dataset, ())
    return [known[k] if k < len(known) else f"class {k}" for k in range(num_classes)]


def load_dataset(cfg: DatasetConfig, device: torch.device | str = "cpu") -> TensorData:
    """Load a dataset by name, subset it, normalise it and put it on ``device``."""
    loaders = {"fashion-mnist": _load_fashion, "mnist": _load_torchvision, "cifar10": _load_torchvision,
               "cifar100": _load_torchvision, "npz": _load_npz, "synthetic": _load_synthetic}
    x_tr, y_tr, x_te, y_te = loaders[cfg.name](cfg)
    num_classes = checked_classes(cfg, x_tr, y_tr, x_te, y_te)
    data = TensorData(cfg.name, x_tr, y_tr, x_te, y_te, num_classes, (0.0,), (1.0,), x_tr.shape[-1])
    data = data.subset(cfg.train_subset, cfg.test_subset, seed=cfg.seed)
    if cfg.normalize:
        mean = data.x_train.mean(dim=(0, 2, 3))
        std = data.x_train.std(dim=(0, 2, 3)).clamp_min(1e-6)
        data = replace(data, x_train=(data.x_train - mean[:, None, None]) / std[:, None, None],
                       x_test=(data.x_test - mean[:, None, None]) / std[:, None, None],
                       mean=tuple(mean.tolist()), std=tuple(std.tolist()))
    return data.to(device)


# the class count each dataset declares; npz: dataset.num_classes, else the labels of train ∪ test
DECLARED_CLASSES = {"fashion-mnist": 10, "mnist": 10, "cifar10": 10, "cifar100": 100}


def checked_classes(cfg: DatasetConfig, x_tr: torch.Tensor, y_tr: torch.Tensor, x_te: torch.Tensor,
                    y_te: torch.Tensor) -> int:
    """The number of classes, with every label checked to lie in [0, classes) and the counts to match —
    a stray label would otherwise silently widen the model's head (a label of 99 → 100 classes)."""
    where = {"npz": cfg.path, "synthetic": "synthetic"}.get(cfg.name) or f"{cfg.name} ({cfg.path or cfg.data_root or 'default place'})"
    declared = DECLARED_CLASSES.get(cfg.name) or (cfg.synthetic.classes if cfg.name == "synthetic" else cfg.num_classes)
    for split, x, y in (("train", x_tr, y_tr), ("test", x_te, y_te)):
        if len(x) != len(y):
            raise UserError(f"{where}: {len(x)} {split} images but {len(y)} {split} labels; they must be equal")
        if len(y) and int(y.min()) < 0:
            i = int(torch.nonzero(y < 0)[0])
            raise UserError(f"{where}: {split} label {int(y[i])} at index {i} is negative; labels are 0 … classes-1")
    if declared is None:  # npz without dataset.num_classes: the labels of train ∪ test say it
        both = torch.cat([y_tr, y_te])
        declared = int(both.max().item()) + 1 if len(both) else 0
        seen = len(torch.unique(both))
        if 2 * seen < declared:
            split, y = ("train", y_tr) if len(y_tr) and int(y_tr.max()) == declared - 1 else ("test", y_te)
            i = int(torch.nonzero(y == declared - 1)[0])
            raise UserError(f"{where}: {split} label {declared - 1} at index {i} would make a {declared}-class head, "
                            f"yet only {seen} distinct labels occur: fix the labels, or set dataset.num_classes")
        return declared
    for split, y in (("train", y_tr), ("test", y_te)):
        bad = torch.nonzero(y >= declared)
        if len(bad):
            i = int(bad[0])
            key = "" if cfg.name in DECLARED_CLASSES or cfg.name == "synthetic" else " (dataset.num_classes)"
            raise UserError(f"{where}: {split} label {int(y[i])} at index {i} is outside 0 … {declared - 1}: "
                            f"{cfg.name} has {declared} classes{key}")
    return declared


def load_eval_subset(dataset_cfg: dict, split: str, n: int | None, resolution: int,
                     device: torch.device | str = "cpu", seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed evaluation subset (normalised like training) at ``resolution`` — for analysis tools."""
    cfg = DatasetConfig.model_validate(dataset_cfg)
    data = load_dataset(cfg, "cpu")
    x, y = (data.x_train, data.y_train) if split == "train" else (data.x_test, data.y_test)
    if n is not None and n < len(y):
        idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:n]
        x, y = x[idx], y[idx]
    return restrict_to(x, resolution).to(device), y.to(device)


def _to_float(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 → [0, 1] floats; N×H×W → N×1×H×W; N×H×W×C (C∈{1,3}) → N×C×H×W."""
    t = torch.as_tensor(np.asarray(images))
    if t.ndim == 3:
        t = t[:, None]
    elif t.ndim == 4 and t.shape[-1] in (1, 3) and t.shape[1] not in (1, 3):
        t = t.permute(0, 3, 1, 2)
    if t.ndim != 4:
        raise UserError(f"images must be N×H×W or N×C×H×W, got shape {tuple(t.shape)}")
    if t.dtype == torch.uint8:
        return t.float().div_(255.0).contiguous()
    return t.float().contiguous()


def _load_fashion(cfg: DatasetConfig):
    """The four IDX files of ``dataset.path`` (default: the Debian package's folder), read directly.

    Each file is ``NAME`` or ``NAME.gz`` (the Debian files are recompressed, so torchvision's md5
    check would fail; mres parses the IDX format itself).  Nothing is cached, so the data read is
    always the data of ``dataset.path``.
    """
    src = Path(cfg.path) if cfg.path else DEBIAN_FASHION
    key = f"dataset.path {src}" if cfg.path else f"Fashion-MNIST not found in {src}"
    how = ("Install it with `sudo apt-get install -y dataset-fashion-mnist` (Debian), or set dataset.path to a "
           "folder holding the four IDX files (.gz or not): " + ", ".join(FASHION_FILES))
    if cfg.path and not src.is_dir():
        raise UserError(f"{key}: {'not a folder' if src.exists() else 'does not exist'}. {how}")
    absent = [f for f in FASHION_FILES if not ((src / f).is_file() or (src / f"{f}.gz").is_file())]
    if absent:
        raise UserError(f"{key}: missing {', '.join(absent)}. {how}")
    arrays = {f: read_idx(src / f if (src / f).is_file() else src / f"{f}.gz", key) for f in FASHION_FILES}
    x_tr, y_tr, x_te, y_te = (arrays[f] for f in FASHION_FILES)
    for x, y, part in ((x_tr, y_tr, "train"), (x_te, y_te, "t10k")):
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise UserError(f"{key}: {part}-images {x.shape} and {part}-labels {y.shape} do not match "
                            "(N×H×W images, N labels)")
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise UserError(f"{key}: train and test images differ in size ({x_tr.shape[1:]} vs {x_te.shape[1:]})")
    return (_to_float(x_tr), torch.as_tensor(y_tr.astype(np.int64)), _to_float(x_te),
            torch.as_tensor(y_te.astype(np.int64)))


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: Path, what: str = "") -> np.ndarray:
    """One IDX file (``.gz`` or plain): magic ``00 00 TYPE NDIM``, NDIM big-endian uint32 sizes, data."""
    where = f"{what}: {path.name}" if what else str(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                raw = fh.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise UserError(f"{where}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise UserError(f"{where}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise UserError(f"{where}: truncated IDX header")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    need = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != need:
        raise UserError(f"{where}: {len(raw) - header} data bytes for dimensions {'×'.join(map(str, dims))} "
                        f"({need} expected): truncated or damaged")
    return np.frombuffer(raw, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="), copy=True)


def _load_torchvision(cfg: DatasetConfig):
    """mnist via torchvision; cifar10/100 from torchvision's python-format folders, read here.

    The CIFAR batches are read by :func:`read_cifar_folder` (a restricted unpickler) rather than by
    torchvision, whose md5 check rejects any copy but the official one — so a CIFAR-format folder
    a user made (or a test generated) works too.  torchvision is used to download when asked.
    """
    from torchvision import datasets

    root = Path(cfg.data_root) if cfg.data_root else cache_dir() / "data"
    how = (f"Put torchvision's files under {root} (set dataset.data_root), or set dataset.download=true "
           "where a network exists.")
    if cfg.name == "mnist":
        try:
            tr = datasets.MNIST(str(root), train=True, download=cfg.download)
            te = datasets.MNIST(str(root), train=False, download=cfg.download)
        except RuntimeError as exc:
            raise UserError(f"mnist not found under {root} ({str(exc).splitlines()[0]}). {how}") from None
        return _to_float(tr.data), tr.targets.long(), _to_float(te.data), te.targets.long()
    folder = root / CIFAR_FOLDERS[cfg.name]
    if not folder.is_dir() and cfg.download:
        cls = datasets.CIFAR10 if cfg.name == "cifar10" else datasets.CIFAR100
        try:
            cls(str(root), train=True, download=True)
        except Exception as exc:  # no network
            raise UserError(f"{cfg.name}: could not download into {root}: {exc}") from None
    if not folder.is_dir():
        raise UserError(f"{cfg.name} not found: no folder {folder}. {how}")
    return read_cifar_folder(folder, cfg.name)


CIFAR_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
CIFAR_FILES = {"cifar10": ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels"),
               "cifar100": (["train"], ["test"], b"fine_labels")}


class _CifarUnpickler(pickle.Unpickler):
    """Only what a CIFAR batch holds: dicts, lists, bytes, str and numpy arrays."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):  # noqa: D401
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")


def read_cifar_folder(folder: Path, name: str = "cifar10"):
    train_files, test_files, label_key = CIFAR_FILES[name]

    def read(files: list[str]) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for f in files:
            path = folder / f
            if not path.exists():
                raise UserError(f"{name}: {path} is missing (a CIFAR python-format folder has {', '.join(train_files + test_files)})")
            try:
                with open(path, "rb") as fh:
                    d = _CifarUnpickler(fh, encoding="bytes").load()
                x = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
                y = np.asarray(d[label_key], dtype=np.int64)
            except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, AttributeError) as exc:
                raise UserError(f"{name}: {path} is not a readable CIFAR batch ({type(exc).__name__}: "
                                f"{str(exc)[:200]}); it holds {{b'data': N×3072 uint8, {label_key!r}: N labels}}") from None
            if len(x) != len(y) or y.ndim != 1:
                raise UserError(f"{name}: {path} holds {len(x)} images and {y.size} labels; they must be equal")
            xs.append(x)
            ys.append(y)
        return np.concatenate(xs), np.concatenate(ys)

    xtr, ytr = read(train_files)
    xte, yte = read(test_files)
    return _to_float(xtr), torch.as_tensor(ytr), _to_float(xte), torch.as_tensor(yte)


def write_cifar_folder(root: Path, name: str, x_train: np.ndarray, y_train: np.ndarray,
                       x_test: np.ndarray, y_test: np.ndarray) -> Path:
    """Write uint8 N×3×32×32 arrays in CIFAR's python format (for tests and user data)."""
    train_files, test_files, label_key = CIFAR_FILES[name]
    folder = Path(root) / CIFAR_FOLDERS[name]
    folder.mkdir(parents=True, exist_ok=True)
    for files, x, y in ((train_files, x_train, y_train), (test_files, x_test, y_test)):
        for f, xi, yi in zip(files, np.array_split(x, len(files)), np.array_split(y, len(files))):
            with open(folder / f, "wb") as fh:
                pickle.dump({b"data": xi.reshape(len(xi), -1).astype(np.uint8), label_key: yi.tolist()}, fh)
    return folder


def write_sample_cifar(root: Path, n_train: int = 200, n_test: int = 50, seed: int = 0) -> Path:
    """A small learnable CIFAR-10-format folder (class-dependent mean colour + noise), to try the CIFAR path offline."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(30, 226, (10, 3))

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n) % 10
        rng.shuffle(y)
        x = palette[y][:, :, None, None] + rng.normal(0, 20, (n, 3, 32, 32))
        return np.clip(x, 0, 255).astype(np.uint8), y

    x_train, y_train = make(n_train)
    x_test, y_test = make(n_test)
    return write_cifar_folder(root, "cifar10", x_train, y_train, x_test, y_test)


def _load_npz(cfg: DatasetConfig):
    path = Path(cfg.path or "")
    if path.exists() and not path.is_file():
        raise UserError(f"dataset.path {path} is not a regular file (a folder, a device or a pipe); give the .npz file")
    if not path.is_file():
        raise UserError(f"dataset.path {path} does not exist (npz needs a file with x_train, y_train, x_test, y_test)")
    if not zipfile.is_zipfile(path):  # np.load would take any other bytes for a pickle
        raise UserError(f"{path}: not a readable .npz file (not a zip archive: empty, truncated, or another format); "
                        "write it with numpy.savez(path, x_train=…, y_train=…, x_test=…, y_test=…)")
    try:
        with np.load(path, allow_pickle=False) as f:
            if not hasattr(f, "files"):
                raise UserError(f"{path}: a single array, not an .npz archive of x_train, y_train, x_test, y_test")
            need = ("x_train", "y_train", "x_test", "y_test")
            absent = [k for k in need if k not in f.files]
            if absent:
                raise UserError(f"{path}: missing arrays {', '.join(absent)} (has {', '.join(f.files) or 'none'})")
            arrays = {k: f[k] for k in need}
    except UserError:
        raise
    except ValueError as exc:  # object arrays need pickle, which is never allowed
        raise UserError(f"{path}: cannot read its arrays ({str(exc)[:200]}); an npz holds plain numeric arrays "
                        "(no Python objects or strings)") from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise UserError(f"{path}: not a readable .npz file ({type(exc).__name__}: {str(exc)[:200]}); write it with "
                        "numpy.savez(path, x_train=…, y_train=…, x_test=…, y_test=…)") from None
    for key in ("x_train", "x_test"):
        a = arrays[key]
        if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating) or a.dtype == bool):
            raise UserError(f"{path}: {key} has dtype {a.dtype}; images are real numbers (uint8 0-255 or floats)")
    x_tr, x_te = _to_float(arrays["x_train"]), _to_float(arrays["x_test"])
    for key, x in (("x_train", x_tr), ("x_test", x_te)):  # after the cast: 1e300 in float64 is inf in float32
        bad = ~torch.isfinite(x.flatten(1)).all(1)
        if bad.any():
            i = int(torch.nonzero(bad)[0])
            raise UserError(f"{path}: {key}[{i}] holds NaN or infinite pixels (as float32); fix or drop that image")
    y_tr, y_te = _npz_labels(path, "y_train", arrays["y_train"]), _npz_labels(path, "y_test", arrays["y_test"])
    if x_tr.shape[1:] != x_te.shape[1:] or x_tr.shape[-1] != x_tr.shape[-2]:
        raise UserError(f"{path}: train/test images must be square and of one shape, got "
                        f"{tuple(x_tr.shape[1:])} and {tuple(x_te.shape[1:])}")
    return x_tr, y_tr, x_te, y_te


def _npz_labels(path: Path, key: str, a: np.ndarray) -> torch.Tensor:
    """Integer class labels, one per image: a 1-D array of integers (floats only when integral)."""
    if a.ndim != 1:
        raise UserError(f"{path}: {key} has shape {a.shape}; labels are one integer per image (shape (N,))")
    if np.issubdtype(a.dtype, np.floating):
        frac = ~np.isfinite(a) | (a != np.round(a))
        if frac.any():
            i = int(np.argmax(frac))
            raise UserError(f"{path}: {key}[{i}] = {a[i].item()!r} is not a whole number; labels are class indices")
    elif not np.issubdtype(a.dtype, np.integer):
        raise UserError(f"{path}: {key} has dtype {a.dtype}; labels are integers (class indices)")
    return torch.as_tensor(a.astype(np.int64))


def _load_synthetic(cfg: DatasetConfig):
    """Class-dependent smooth images: a low-frequency template per class, shifted and noisy."""
    s = cfg.synthetic
    g = torch.Generator().manual_seed(1234 + cfg.seed)
    coords = torch.linspace(0, 1, s.size)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    templates = torch.zeros(s.classes, s.channels, s.size, s.size)
    for k in range(4):  # a few random low-frequency waves per class
        fx, fy = torch.randint(1, 4, (2, s.classes, s.channels), generator=g).float()
        phase = torch.rand(s.classes, s.channels, generator=g) * 2 * math.pi
        templates += torch.sin(2 * math.pi * (fx[..., None, None] * xx + fy[..., None, None] * yy)
                               + phase[..., None, None])

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, s.classes, (n,), generator=g)
        x = templates[y] + s.noise * torch.randn(n, s.channels, s.size, s.size, generator=g)
        # every image shifted by its own (dy, dx) in {-1, 0, 1}²: train and test share one distribution
        shifts = torch.randint(-1, 2, (n, 2), generator=g)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                sel = (shifts[:, 0] == dy) & (shifts[:, 1] == dx)
                x[sel] = torch.roll(x[sel], shifts=(dy, dx), dims=(2, 3))
        return x, y

    x_tr, y_tr = draw(s.n_train)
    x_te, y_te = draw(s.n_test)
    return x_tr, y_tr, x_te, y_te


# ----------------------------------------------------------------------------- batching
def augment(x: torch.Tensor, crop_padding: int, flip: bool, g: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding and horizontal flip, per sample, on the batch's device."""
    n, _, h, w = x.shape
    if crop_padding > 0:
        p = crop_padding
        padded = F.pad(x, (p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (n,), generator=g).to(x.device)
        dx = torch.randint(0, 2 * p + 1, (n,), generator=g).to(x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # n,h,1
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]  # n,1,w
        idx = torch.arange(n, device=x.device)[:, None, None]
        x = padded.permute(0, 2, 3, 1)[idx, rows, cols].permute(0, 3, 1, 2)
    if flip:
        mask = (torch.rand(n, generator=g) < 0.5).to(x.device)[:, None, None, None]
        x = torch.where(mask, x.flip(3), x)
    return x


def iterate_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, g: torch.Generator,
                    shuffle: bool = True, crop_padding: int = 0, flip: bool = False
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled mini-batches of device-resident tensors; the generator makes it reproducible."""
    n = len(y)
    order = torch.randperm(n, generator=g).to(y.device) if shuffle else torch.arange(n, device=y.device)
    for i in range(0, n, batch_size):
        idx = order[i:i + batch_size]
        xb = x[idx]
        if crop_padding or flip:
            xb = augment(xb, crop_padding, flip, g)
        yield xb, y[idx]


def num_batches(n: int, batch_size: int) -> int:
    return (n + batch_size - 1) // batch_size


def dataset_status() -> list[dict[str, str]]:
    """What is available on this machine and how to get the rest (for `mres datasets`)."""
    rows = []
    fashion_ok = all((DEBIAN_FASHION / f"{f}.gz").exists() or (DEBIAN_FASHION / f).exists() for f in FASHION_FILES)
    rows.append({"name": "fashion-mnist", "available": "yes" if fashion_ok else "no",
                 "where": str(DEBIAN_FASHION), "how": "apt-get install -y dataset-fashion-mnist"})
    root = cache_dir() / "data"
    checks = {"mnist": root / "MNIST" / "raw", "cifar10": root / "cifar-10-batches-py",
              "cifar100": root / "cifar-100-python"}
    for name, p in checks.items():
        rows.append({"name": name, "available": "yes" if p.exists() else "no", "where": str(root),
                     "how": "dataset.download=true (needs a network) or copy torchvision's files to dataset.data_root"})
    rows.append({"name": "npz", "available": "your file", "where": "dataset.path",
                 "how": "np.savez(F, x_train=..., y_train=..., x_test=..., y_test=...)"})
    rows.append({"name": "synthetic", "available": "yes", "where": "generated", "how": "dataset.synthetic.*"})
    return rows
