"""atlib.core.io: atomic writes leave the old file and no temporary file behind when the writer fails."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atlib.core.io import atomic_write, write_json_atomic, write_text_atomic


def test_a_writer_that_raises_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_write(path) as tmp:
            tmp.write_text("half of the new fi")
            raise RuntimeError("killed mid-write")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_a_writer_that_raises_before_writing_creates_nothing(tmp_path):
    path = tmp_path / "sub" / "model.pt"
    with pytest.raises(ValueError):
        with atomic_write(path):
            raise ValueError("no data")
    assert not path.exists() and list(path.parent.iterdir()) == []


def test_json_and_text_are_the_bytes_of_json_dumps_indent_1(tmp_path):
    obj = {"b": [1, 2.5, None], "a": {"x": "y"}}
    write_json_atomic(tmp_path / "a.json", obj)
    assert (tmp_path / "a.json").read_text() == '{\n "b": [\n  1,\n  2.5,\n  null\n ],\n "a": {\n  "x": "y"\n }\n}'
    write_text_atomic(tmp_path / "a.json", "replaced\n")
    assert (tmp_path / "a.json").read_text() == "replaced\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_numpy_and_torch_writers_write_the_target_itself(tmp_path):
    """np.save / np.savez append their suffix to a name without it: the temporary file has the
    target's own name, so nothing lands beside the target under another name."""
    with atomic_write(tmp_path / "labels.npy") as tmp:
        np.save(tmp, np.arange(3))
    with atomic_write(tmp_path / "feats.npz") as tmp:
        np.savez(tmp, x=np.ones(2))
    with atomic_write(tmp_path / "model.pt") as tmp:
        torch.save({"w": torch.ones(2)}, tmp)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feats.npz", "labels.npy", "model.pt"]
    assert np.load(tmp_path / "labels.npy").tolist() == [0, 1, 2]
    with np.load(tmp_path / "feats.npz") as z:
        assert z["x"].tolist() == [1.0, 1.0]
    assert torch.load(tmp_path / "model.pt", weights_only=True)["w"].tolist() == [1.0, 1.0]


def test_torch_save_through_it_gives_the_same_bytes_every_time(tmp_path):
    """torch.save names its archive's root folder after the file it writes: a temporary name that holds
    the process id made every model.pt of a rerun differ from the first (and its sha256 in provenance)."""
    import torch

    obj = {"w": torch.arange(4.0)}
    with atomic_write(tmp_path / "a" / "model.pt") as tmp:
        torch.save(obj, tmp)
    direct = tmp_path / "b" / "model.pt"
    direct.parent.mkdir()
    torch.save(obj, direct)
    assert (tmp_path / "a" / "model.pt").read_bytes() == direct.read_bytes()
