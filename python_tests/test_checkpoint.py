"""Reading upstream checkpoints: tensors only unless trusted; clear errors for missing, corrupt or
unsafe files."""

from __future__ import annotations

import collections

import pytest

torch = pytest.importorskip("torch", reason="checkpoint conversion needs torch (pip install 'ig3d[torch]')")

from ig3d.convert.checkpoint import UnsafeCheckpointError, load_torch_file  # noqa: E402


def test_plain_state_dict_loads(tmp_path):
    p = tmp_path / "ok.pt"
    torch.save({"w": torch.ones(2)}, p)
    assert torch.equal(load_torch_file(p)["w"], torch.ones(2))


def test_pickled_objects_need_trust(tmp_path):
    p = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 3), p)
    with pytest.raises(UnsafeCheckpointError, match="module.pt: refusing to unpickle"):
        load_torch_file(p)
    sd = load_torch_file(p, trust_checkpoint=True)  # a whole module becomes its state dict
    assert isinstance(sd, collections.abc.Mapping) and sd["weight"].shape == (3, 2)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_torch_file(tmp_path / "nope.pt")
    p = tmp_path / "cut.pt"
    torch.save({"w": torch.ones(1000)}, p)
    p.write_bytes(p.read_bytes()[:300])
    with pytest.raises(ValueError, match="cut.pt: not a readable PyTorch checkpoint"):
        load_torch_file(p)
