"""The paper's configs, shipped with the package: one YAML per experiment (paper Tables 1-4, Fig. 4) and the modern
recipes (``modern/``), written by the repository's ``configs/generate.py`` (its README lists every recipe).

    >>> from moejet.configs import config_names, resolve_config
    >>> "table1_vit_t_jetpack_cifar100" in config_names()
    True
    >>> resolve_config("table1_vit_t_jetpack_cifar100").name
    'table1_vit_t_jetpack_cifar100.yaml'

``moejet train --config NAME`` and ``moejet configs`` read them from here, so an installed moejet has them wherever
it runs. Importing this module imports neither torch nor timm.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

from ..errors import UserError

PACKAGED_DIR = Path(__file__).resolve().parent
SUFFIX = ".yaml"


def packaged_configs() -> dict[str, Path]:
    """Config name -> its YAML file, the paper's experiments first, then the modern recipes."""
    paths = sorted(PACKAGED_DIR.glob(f"*{SUFFIX}")) + sorted(PACKAGED_DIR.glob(f"modern/*{SUFFIX}"))
    return {path.stem: path for path in paths}


def config_names(pattern: str = "*") -> list[str]:
    """The packaged configs' names matching the shell-style ``pattern`` (e.g. ``table1_vit_t_*``)."""
    return [name for name in packaged_configs() if fnmatch.fnmatchcase(name, pattern)]


def resolve_config(name_or_path: str | Path) -> Path:
    """The YAML file ``name_or_path`` means: an existing file as given, else a packaged config by name (with or
    without ``.yaml``). Neither is a UserError naming both and how to list the names."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    packaged = packaged_configs()
    name = path.name.removesuffix(SUFFIX)
    if path.parent == Path(".") and name in packaged:
        return packaged[name]
    close = [n for n in packaged if name and name in n][:3]
    hint = f" (similar: {', '.join(close)})" if close else ""
    raise UserError(f"config file {name_or_path} does not exist, nor is {name!r} a packaged config{hint}: check the "
                    "path, or pass a name that `moejet configs` lists, e.g. table1_vit_t_jetpack_cifar100")
