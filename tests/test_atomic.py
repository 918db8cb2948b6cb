import os
import stat

import pandas as pd
import pytest

from bnrank.atomic import staged_dir, write_json, write_parquet, write_text


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_writes_are_complete_and_leave_no_temporaries(tmp_path):
    write_text(tmp_path / "a.txt", "hello")
    write_json(tmp_path / "sub" / "b.json", {"x": 1})
    write_parquet(tmp_path / "c.parquet", pd.DataFrame({"a": [1, 2]}))
    assert (tmp_path / "a.txt").read_text() == "hello"
    assert pd.read_parquet(tmp_path / "c.parquet").a.tolist() == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "c.parquet", "sub"]


def test_a_failing_writer_leaves_the_old_file(tmp_path):
    write_text(tmp_path / "a.txt", "old")

    def broken(path):
        path.write_text("half")
        raise RuntimeError("killed")

    from bnrank.atomic import write_with

    with pytest.raises(RuntimeError):
        write_with(tmp_path / "a.txt", broken)
    assert (tmp_path / "a.txt").read_text() == "old" and len(list(tmp_path.iterdir())) == 1


def test_files_and_dirs_get_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        write_text(tmp_path / "a.txt", "x")
        with staged_dir(tmp_path / "run") as stage:
            (stage / "f").write_text("y")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a.txt") == 0o644
    assert _mode(tmp_path / "run") == 0o755


def test_staged_dir_is_all_or_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with staged_dir(tmp_path / "run") as stage:
            (stage / "f").write_text("y")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with staged_dir(tmp_path / "run") as stage:
        (stage / "f").write_text("1")
    with pytest.raises(FileExistsError):
        with staged_dir(tmp_path / "run") as stage:
            (stage / "f").write_text("2")
    with staged_dir(tmp_path / "run", overwrite=True) as stage:
        (stage / "f").write_text("3")
    assert (tmp_path / "run" / "f").read_text() == "3" and len(list(tmp_path.iterdir())) == 1
