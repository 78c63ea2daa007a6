"""Reading upstream PyTorch checkpoints safely: tensors only by default.

``torch.load(weights_only=True)`` refuses files that need arbitrary unpickling; such a file raises
:class:`UnsafeCheckpointError` unless the caller passes ``trust_checkpoint=True`` for a file they
trust. A missing file raises ``FileNotFoundError``, a corrupt one ``ValueError``; both name the file.
"""

from __future__ import annotations

import os
import pickle
from typing import Any, Union

__all__ = ["UnsafeCheckpointError", "load_torch_file"]

PathLike = Union[str, "os.PathLike[str]"]


class UnsafeCheckpointError(ValueError):
    """The file needs full unpickling (it holds Python objects, not just tensors)."""


def load_torch_file(path: PathLike, *, trust_checkpoint: bool = False) -> Any:
    """``torch.load`` on the CPU with ``weights_only=not trust_checkpoint``; a whole pickled
    ``nn.Module`` (only loadable when trusted) is reduced to its ``state_dict()``."""
    import torch

    name = os.fspath(path)
    if not os.path.isfile(name):
        raise FileNotFoundError(f"checkpoint not found: {name}")
    try:
        obj = torch.load(name, map_location="cpu", weights_only=not trust_checkpoint)
    except pickle.UnpicklingError as e:
        if trust_checkpoint:
            raise ValueError(f"{name}: corrupt checkpoint ({e})") from e
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnsafeCheckpointError(
            f"{name}: refusing to unpickle Python objects with weights_only=True ({first}); "
            "pass trust_checkpoint=True only if you trust this file") from e
    except (RuntimeError, EOFError, OSError) as e:  # truncated zip, not a torch file, ...
        raise ValueError(f"{name}: not a readable PyTorch checkpoint ({e})") from e
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    return obj
