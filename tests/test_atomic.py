"""Atomic outputs land whole, under the modes the umask asks for."""

import os
import stat

import pytest

from blockscope.io.atomic import atomic_dir, atomic_path, write_json


@pytest.fixture(params=[0o022, 0o002, 0o077])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_files_and_folders_get_the_umask_modes(tmp_path, umask):
    write_json({"a": 1}, tmp_path / "out.json")
    assert mode(tmp_path / "out.json") == 0o666 & ~umask
    with atomic_dir(tmp_path / "checkpoint") as folder:
        (folder / "sub").mkdir()
        (folder / "sub" / "weights.bin").write_bytes(b"\0" * 8)
        (folder / "tool.sh").write_text("#!/bin/sh\n")
        os.chmod(folder / "tool.sh", 0o700)
    assert mode(tmp_path / "checkpoint") == 0o777 & ~umask
    assert mode(tmp_path / "checkpoint" / "sub") == 0o777 & ~umask
    assert mode(tmp_path / "checkpoint" / "sub" / "weights.bin") == 0o666 & ~umask
    assert mode(tmp_path / "checkpoint" / "tool.sh") == 0o777 & ~umask


def test_a_failed_block_leaves_neither_target_nor_temporary(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "x.parquet") as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "ckpt") as folder:
            (folder / "a").write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
