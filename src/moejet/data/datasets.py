"""``build_dataset(spec, split)``: one entry point for torchvision, class-folder and synthetic datasets.

Specs: a name from :data:`DATASET_NAMES`, ``folder:PATH``, or a synthetic name with options, e.g.
``synthetic-upstream:size=32,per_class=50``. Every dataset yields ``(transform(PIL RGB image), int label)``
and has ``num_classes``.

Splits: our ``train`` / ``val`` map onto each dataset's official splits as ``train`` -> the official
training split, or train + val where the dataset has a val split (Pets ``trainval``; Flowers-102 train + val =
2,040 images and DTD partition 1 train + val = 3,760 images, as the release's dataset configs
``moejet/configs/_base_/datasets/{flowers102,dtd}_bs64.py`` train on ``trainval``) and ``val`` -> the official
*test* split (CIFAR, Flowers-102, Pets, STL-10, Food-101, DTD partition 1). ImageNet and ``folder:PATH`` read
``ROOT/train`` and ``ROOT/val``.

Roots: an explicit ``root`` is used as is (torchvision datasets create their own sub-folder in it, e.g.
``ROOT/cifar-10-batches-py``); otherwise ``$MOEJET_DATA/<name>``, or ``~/.cache/moejet/data/<name>``.

Unreadable images in class folders (truncated, not an image, ...) are replaced at load time by the next
readable image of the folder, so the ``(image, label)`` contract, batch sizes and DataLoader workers all
keep working without a special collate. Each process warns once per bad file with the running count and
the first bad path, and records the paths in ``dataset.unreadable``. :func:`find_unreadable` checks a whole
folder dataset up front when you want the full list.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image
from torchvision import datasets as tvd

from ..errors import UserError
from .synthetic import SyntheticShapes

# name -> (class, num_classes, kwargs of the official split(s) our train split concatenates, kwargs for our val
# split, folder it creates)
TORCHVISION = {
    "cifar10": (tvd.CIFAR10, 10, ({"train": True},), {"train": False}, "cifar-10-batches-py"),
    "cifar100": (tvd.CIFAR100, 100, ({"train": True},), {"train": False}, "cifar-100-python"),
    "flowers102": (tvd.Flowers102, 102, ({"split": "train"}, {"split": "val"}), {"split": "test"}, "flowers-102"),
    "pets": (tvd.OxfordIIITPet, 37, ({"split": "trainval"},), {"split": "test"}, "oxford-iiit-pet"),
    "stl10": (tvd.STL10, 10, ({"split": "train"},), {"split": "test"}, "stl10_binary"),
    "food101": (tvd.Food101, 101, ({"split": "train"},), {"split": "test"}, "food-101"),
    "dtd": (tvd.DTD, 47, ({"split": "train"}, {"split": "val"}), {"split": "test"}, "dtd"),
}
SYNTHETIC = ("synthetic", "synthetic-upstream", "synthetic-downstream")  # 'synthetic' = 'synthetic-downstream'
DATASET_NAMES = (*TORCHVISION, "imagenet", "folder", *SYNTHETIC)
SYNTHETIC_KEYS = ("size", "per_class", "val_per_class", "classes", "seed")
SPLITS = ("train", "val")


def parse_dataset_spec(spec: str) -> tuple[str, dict]:
    """``'synthetic-upstream:size=32,per_class=50'`` -> ``('synthetic-upstream', {'size': 32, 'per_class': 50})``.

    ``'folder:PATH'`` -> ``('folder', {'path': 'PATH'})``; ``'synthetic'`` is returned as ``'synthetic-downstream'``.
    """
    name, _, rest = str(spec).strip().partition(":")
    name = name.strip().lower()
    if name not in DATASET_NAMES:
        raise UserError(f"unknown dataset {spec!r}: use one of {', '.join(DATASET_NAMES)} "
                        "(folder:PATH for a class-per-folder tree)")
    if name == "folder":
        if not rest.strip():
            raise UserError("dataset 'folder' needs a path: use folder:PATH with PATH/train/<class>/* and "
                            "PATH/val/<class>/*")
        return "folder", {"path": rest.strip()}
    if name not in SYNTHETIC:
        if rest.strip():
            raise UserError(f"dataset {name!r} takes no options, got {rest!r}: use just {name!r}")
        return name, {}
    return ("synthetic-downstream" if name == "synthetic" else name), _parse_synthetic_options(name, rest)


def _parse_synthetic_options(name: str, text: str) -> dict[str, int]:
    options: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, eq, value = (s.strip() for s in item.partition("="))
        if key not in SYNTHETIC_KEYS:
            raise UserError(f"unknown option {key!r} for dataset {name!r}: valid keys are {', '.join(SYNTHETIC_KEYS)}")
        if key in options:
            raise UserError(f"option {key!r} given twice for dataset {name!r}: give it once")
        try:
            number = int(value) if eq else None
        except ValueError:
            number = None
        if number is None or number < (0 if key == "seed" else 1):
            minimum = "an integer >= 0" if key == "seed" else "a positive integer"
            raise UserError(f"option {key}={value!r} for dataset {name!r} is not {minimum}: e.g. {name}:{key}=32")
        options[key] = number
    return options


def dataset_label(spec: str) -> str:
    """The dataset's public name: ``folder:PATH`` as ``folder:<its folder name>`` (no path of this machine),
    ``synthetic`` as ``synthetic-downstream``, other specs as they are."""
    name, options = parse_dataset_spec(spec)
    if name == "folder":
        return f"folder:{Path(options['path']).expanduser().resolve().name or 'root'}"
    return str(spec).strip() if name != "synthetic-downstream" or ":" in str(spec) else name


def val_split_name(spec: str) -> str:
    """What our ``val`` split of ``spec`` is, in words (see the module docstring's splits)."""
    name, _ = parse_dataset_spec(spec)
    if name in TORCHVISION:
        return f"{name}'s official test split"
    if name == "imagenet":
        return "ImageNet's official validation set"
    if name == "folder":
        return f"the images of {dataset_label(spec)}/val"
    return f"the {name} val images"


def class_names(dataset: torch.utils.data.Dataset) -> list[str] | None:
    """The dataset's class names in label order (folder names, torchvision's and the synthetic data's ``classes``;
    the first part's for a concatenation), or None when it has none."""
    if isinstance(dataset, torch.utils.data.ConcatDataset):
        dataset = dataset.datasets[0]
    if isinstance(dataset, torch.utils.data.Subset):
        dataset = dataset.dataset
    names = getattr(dataset, "classes", None)
    return [str(n) for n in names] if names is not None and len(names) == getattr(dataset, "num_classes", len(names)) \
        else None


def default_root(name: str) -> Path:
    """``$MOEJET_DATA/<name>`` if the variable is set, else ``~/.cache/moejet/data/<name>``."""
    base = os.environ.get("MOEJET_DATA")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "moejet" / "data") / name


def build_dataset(
    spec: str,
    split: str,
    transform: Callable | None = None,
    root: str | os.PathLike | None = None,
    download: bool = False,
) -> torch.utils.data.Dataset:
    """Dataset of ``(transform(PIL RGB image), int label)`` with ``num_classes``; see the module docstring.

    ``root`` and ``download`` apply to torchvision datasets and ImageNet; synthetic data needs neither.
    """
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}: use 'train' or 'val'")
    name, options = parse_dataset_spec(spec)
    if name in SYNTHETIC:
        return SyntheticShapes(name.removeprefix("synthetic-"), split, transform=transform, **options)
    if name == "folder":
        return folder_dataset(Path(options["path"]).expanduser(), split, transform, spec=spec)
    root = Path(root).expanduser() if root else default_root(name)
    if name == "imagenet":
        if download and not (root / split).is_dir():
            raise UserError("ImageNet cannot be downloaded automatically: get it from image-net.org, arrange it as "
                            "ROOT/train/<class>/* and ROOT/val/<class>/*, and pass --data-root ROOT "
                            "(moejet train: --set data.root=ROOT)")
        return folder_dataset(root, split, transform, spec=name)
    return torchvision_dataset(name, root, split, transform, download)


def torchvision_dataset(name: str, root: Path, split: str, transform: Callable | None, download: bool):
    """A torchvision dataset. Under torch.distributed only local rank 0 of each node downloads, the others wait; the
    downloads of several nodes (or runs) into one shared root take turns under a file lock, so the first downloads
    and the rest find the files there."""
    if download and torch.distributed.is_available() and torch.distributed.is_initialized() \
            and torch.distributed.get_world_size() > 1:
        error = None
        if int(os.environ.get("LOCAL_RANK", torch.distributed.get_rank())) == 0:
            try:
                _download(name, root, split)
            except UserError as err:
                error = str(err)
        errors = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(errors, error)  # the barrier: every node's download has finished
        if any(errors):
            raise UserError(next(e for e in errors if e))
        download = False
    if download:
        _download(name, root, split)
    return _open_torchvision(name, root, split, transform, download=False)


def _download(name: str, root: Path, split: str) -> None:
    """Download (or verify) dataset ``name`` into ``root``, one process per filesystem at a time."""
    from filelock import FileLock

    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f".{name}.download.lock")):
        _open_torchvision(name, root, split, None, download=True)


def _open_torchvision(name: str, root: Path, split: str, transform: Callable | None, download: bool):
    cls, num_classes, train_splits, val_kwargs, folder = TORCHVISION[name]
    try:
        parts = [cls(root=str(root), transform=transform, download=download, **kwargs)
                 for kwargs in (train_splits if split == "train" else (val_kwargs,))]
    except ModuleNotFoundError as err:
        raise UserError(f"{name} needs the {err.name!r} package to read its files: pip install {err.name}") from err
    except (RuntimeError, OSError) as err:
        reason = " ".join(str(err).split())
        if download:
            raise UserError(f"could not download {name} into {root} ({reason}): check the network, or download it "
                            f"elsewhere and pass --data-root DIR (moejet train: --set data.root=DIR) "
                            f"holding {folder}/") from err
        raise UserError(f"{name} not found in {root} (looked for {root / folder}): pass --data-root DIR "
                        f"(moejet train: --set data.root=DIR) holding "
                        f"{folder}/, or enable downloading with data.download=true") from err
    dataset = parts[0] if len(parts) == 1 else torch.utils.data.ConcatDataset(parts)
    dataset.num_classes = num_classes
    return dataset


# --- class-per-folder trees (ImageNet, folder:PATH) -------------------------------------------------------

LOAD_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)  # what PIL raises on bad files


def load_rgb(path: str) -> Image.Image:
    with open(path, "rb") as f:
        return Image.open(f).convert("RGB")  # convert() forces the full decode, so truncation fails here


class ImageFolderSkipUnreadable(tvd.ImageFolder):
    """``ImageFolder`` whose unreadable files are replaced by the next readable one, counted and warned about.

    ``classes`` fixes the class list (and so the label of each class name), e.g. the train split's classes
    for the val split, so labels agree even when val lacks a class.
    """

    def __init__(self, root: str | os.PathLike, transform: Callable | None = None, classes: list[str] | None = None):
        self._fixed_classes = classes
        super().__init__(str(root), transform=transform, loader=load_rgb, allow_empty=classes is not None)
        self.num_classes = len(self.classes)
        self.unreadable: list[str] = []

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        if self._fixed_classes is None:
            return super().find_classes(directory)
        return list(self._fixed_classes), {c: i for i, c in enumerate(self._fixed_classes)}

    def __getitem__(self, index: int):
        if not -len(self.samples) <= index < len(self.samples):
            raise IndexError(f"index {index} out of range for {len(self.samples)} images")
        bad = set(self.unreadable)
        for offset in range(len(self.samples)):
            path, label = self.samples[(index + offset) % len(self.samples)]
            if path in bad:
                continue
            try:
                image = load_rgb(path)
            except LOAD_ERRORS as err:
                self._record_unreadable(path, err)
                bad.add(path)
                continue
            return (self.transform(image) if self.transform is not None else image), label
        raise UserError(f"no readable image in {self.root}: all {len(self.samples)} files failed to load")

    def _record_unreadable(self, path: str, err: Exception) -> None:
        self.unreadable.append(path)
        warnings.warn(f"skipped unreadable image {path} ({type(err).__name__}: {' '.join(str(err).split())}); "
                      f"{len(self.unreadable)} unreadable so far in this process, first {self.unreadable[0]}",
                      RuntimeWarning, stacklevel=3)


def folder_dataset(root: Path, split: str, transform: Callable | None, spec: str) -> ImageFolderSkipUnreadable:
    """``root/split/<class>/*`` with the class list (and labels) taken from ``root/train``."""
    split_dir, train_dir = root / split, root / "train"
    hint = ("pass --data-root ROOT (moejet train: --set data.root=ROOT)" if not spec.startswith("folder:")
            else "use folder:PATH")
    if not split_dir.is_dir():
        raise UserError(f"{spec} {split} data not found: no directory {split_dir} (expected {split_dir}/<class>/"
                        f"<image>; {hint} where ROOT/train and ROOT/val hold one folder per class)")
    classes = None
    if split != "train" and train_dir.is_dir():
        classes = sorted(e.name for e in os.scandir(train_dir) if e.is_dir())
        extra = sorted({e.name for e in os.scandir(split_dir) if e.is_dir()} - set(classes))
        if extra:
            raise UserError(f"{split_dir} has class folders missing from {train_dir}: {', '.join(extra[:5])}: "
                            "train and val need the same class folders")
    try:
        dataset = ImageFolderSkipUnreadable(split_dir, transform=transform, classes=classes)
    except FileNotFoundError as err:
        raise UserError(f"{spec} {split} data unusable in {split_dir} ({' '.join(str(err).split())}): put images "
                        f"in {split_dir}/<class>/ (extensions {', '.join(tvd.folder.IMG_EXTENSIONS)})") from err
    if not dataset.samples:
        raise UserError(f"{spec} {split} data not found: no images under {split_dir}/<class>/")
    return dataset


def find_unreadable(dataset: ImageFolderSkipUnreadable) -> list[str]:
    """Decode every file of a folder dataset up front; returns the unreadable paths (slow on big trees)."""
    bad = []
    for path, _ in dataset.samples:
        try:
            load_rgb(path)
        except LOAD_ERRORS:
            bad.append(path)
    return bad
