"""io.files: atomic writes."""

import json
import os
import stat
from pathlib import Path

import pytest

from moejet.io.files import atomic_output, write_json, write_text


def test_atomic_output_leaves_nothing_behind_on_error(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(OSError), atomic_output(target) as tmp:
        tmp.write_text("half")
        raise OSError(28, "No space left on device")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_atomic_output_replaces_the_file_with_the_usual_permissions_and_no_leftovers(tmp_path):
    target = tmp_path / "sub" / "f.json"  # the parent is created
    write_json(target, {"range": range(2, 4), 3: (1, {5})})
    assert json.loads(target.read_text()) == {"range": [2, 3], "3": [1, [5]]}
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask  # not mkstemp's 0600
    write_text(target, "new")
    assert target.read_text() == "new" and [p.name for p in target.parent.iterdir()] == ["f.json"]


def test_atomic_output_syncs_the_data_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
    import moejet.io.files

    target, synced = tmp_path / "f.txt", []
    real = moejet.io.files.fsync_path
    monkeypatch.setattr(moejet.io.files, "fsync_path",
                        lambda p: synced.append((Path(p), Path(p).is_file() and target.exists())) or real(p))
    write_text(target, "data")
    (tmp, target_existed), (directory, _) = synced
    assert tmp.parent == tmp_path and tmp != target and not target_existed  # the temp file, before the rename
    assert directory == tmp_path
