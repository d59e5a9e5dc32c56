"""The one safe reader of torch weight files: ``torch.load(weights_only=True)`` with an exact allow-list."""

from __future__ import annotations

import pickle
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from localize.core.errors import CheckpointError

_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def load_torch_file(path: str | Path, allowed_globals: Sequence[Any] = (),
                    map_location: str | torch.device = "cpu") -> Any:
    """Load a torch file allowing only tensors, containers and ``allowed_globals``.

    Raises CheckpointError with one line naming the file and the refused class (a pickle
    that asks for anything else is never executed), or why the file cannot be read.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weight file {path} does not exist")
    try:
        with torch.serialization.safe_globals(list(allowed_globals)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        m = _GLOBAL.search(str(e))
        what = f"it needs the disallowed class {m.group(1)}" if m else str(e).splitlines()[0]
        raise CheckpointError(f"refused weight file {path}: {what}") from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read weight file {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
