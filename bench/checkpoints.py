"""Load checkpoints as data only, with one-line errors for files that are not ours.

A checkpoint may come from elsewhere (a shared ``runs/`` folder, a download), so it is read with
``torch.load(weights_only=True)``: torch's restricted unpickler builds tensors and plain
containers and refuses every other global, so a pickle carrying code (a ``__reduce__`` payload)
fails before anything in it runs. Torch reports that refusal, a truncated zip or a non-pickle as
long multi-line errors whose advice is to retry with ``weights_only=False``, which is exactly what
must not be done with a file from elsewhere; ``load_tensors`` turns them into a ``BenchError``
that names the file.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from bench.errors import BenchError

_MARKER = "WeightsUnpickler error:"


def _reason(err: BaseException) -> str:
    """The informative sentence of torch's error (what it refused), on one line."""
    text = str(err)
    if _MARKER in text:
        text = text.split(_MARKER, 1)[1]
    for line in text.splitlines():
        line = line.strip()
        if line:
            # "Unsupported global: GLOBAL exec was not an allowed global by default. Please use
            # `add_safe_globals`..." -> keep the first sentence, drop the advice.
            return line.split(". ", 1)[0].rstrip(".")
    return type(err).__name__


def load_tensors(path: str | Path, max_bytes: int | None = None) -> dict[str, Any]:
    """The dict saved at ``path`` (a state dict or a mask), on the CPU.

    Raises ``BenchError`` when the file is missing, larger than ``max_bytes``, truncated or
    corrupt, holds anything but tensors and plain containers, or is not a dict."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as err:
        raise BenchError(f"cannot read checkpoint {path}: {err.strerror or err}") from None
    if max_bytes is not None and size > max_bytes:
        raise BenchError(f"checkpoint {path} is {size} bytes, more than the {max_bytes} allowed; "
                         "is it the right file?")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # The restricted unpickler refused something: a global (code) or an opcode it does not
        # support. Nothing of the file ran.
        raise BenchError(
            f"{path} is not a tensors-only checkpoint ({_reason(err)}); bench loads tensors only "
            "and never runs code from a checkpoint: rebuild it, or use a file you made with "
            "`bench build-instances`") from None
    except Exception as err:
        # Anything else is a file torch cannot read as a checkpoint: a truncated pickle ends in
        # EOFError, a damaged zip container is a RuntimeError from torch's stream reader, and
        # garbage makes the restricted unpickler fail in its own ways (KeyError, ...). The file
        # is at fault, not bench, so the user gets one line rather than a traceback.
        raise BenchError(f"checkpoint {path} is truncated or corrupt ({_reason(err)}); "
                         "delete it and rebuild that level") from None
    if not isinstance(data, dict):
        raise BenchError(f"checkpoint {path} holds a {type(data).__name__}, not a dict of "
                         "tensors; is it the right file?")
    return data
