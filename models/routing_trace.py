"""The routing trace: which experts a model's routers chose, layer by layer, over a text.

Format version 1, one `.npz` file (numpy's zip of arrays, read without pickle):

| array           | dtype   | shape                              | holds                              |
|-----------------|---------|------------------------------------|------------------------------------|
| `top_k_index`   | int32   | (layers, sequences, tokens, k)     | the experts each token chose, per  |
|                 |         |                                    | MoE layer in the model's order     |
| `top_k_weights` | float32 | the same (optional)                | the gates the model gave them      |
| `meta`          | text    | ()                                 | JSON: `format`, `version`, `model`,|
|                 |         |                                    | `num_experts`, `top_k`, `tokens`,  |
|                 |         |                                    | `sequences`, `layer_names`,        |
|                 |         |                                    | `router_gates`, `text`             |

`meo-profile routing capture` writes one (meo_profile/measure/routing/capture.py), `routing
stats` reads one, and `--routing replay:FILE` imposes its choices (models/imposed.py). A file
that is not a trace of this version, or whose arrays disagree with its header, is a TraceError:
one line naming the file.
"""

from __future__ import annotations

import functools
import json
import os
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

FORMAT, VERSION = "meo-profile routing trace", 1


class TraceError(ValueError):
    """A file that cannot be read as a routing trace; `str()` is one line naming it."""


@dataclass(frozen=True)
class TraceHeader:
    model: str  # what was captured: the checkpoint's model type or folder name
    num_experts: int  # E of every layer
    top_k: int  # k of every layer
    sequences: int
    tokens: int  # per sequence
    layer_names: tuple[str, ...]  # the MoE blocks, in model order
    router_gates: str | None = None  # the captured router's gate convention
    text: str | None = None  # the text file it ran over (its name)

    @property
    def layers(self) -> int:
        return len(self.layer_names)


@dataclass
class RoutingTrace:
    header: TraceHeader
    top_k_index: np.ndarray  # (layers, sequences, tokens, k) int32
    top_k_weights: np.ndarray | None = None  # the same shape, float32

    def __post_init__(self) -> None:
        h = self.header
        want = (h.layers, h.sequences, h.tokens, h.top_k)
        if self.top_k_index.shape != want:
            raise TraceError(f"top_k_index has shape {self.top_k_index.shape}; its header says "
                             f"(layers, sequences, tokens, k) = {want}")
        if self.top_k_weights is not None and self.top_k_weights.shape != want:
            raise TraceError(f"top_k_weights has shape {self.top_k_weights.shape}, not {want}")
        if self.top_k_index.size and not (0 <= self.top_k_index.min() <= self.top_k_index.max()
                                          < h.num_experts):
            raise TraceError(f"top_k_index holds experts outside 0..{h.num_experts - 1}")


def save_trace(trace: RoutingTrace, path: str | Path) -> Path:
    """Write `trace` to `path` (a temporary file renamed, so a reader never sees half of it)."""
    path = Path(path)
    meta = {"format": FORMAT, "version": VERSION, **asdict(trace.header)}
    arrays = {"top_k_index": trace.top_k_index.astype(np.int32), "meta": np.array(json.dumps(meta))}
    if trace.top_k_weights is not None:
        arrays["top_k_weights"] = trace.top_k_weights.astype(np.float32)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:  # a file object: numpy would append .npz to a name
        np.savez_compressed(f, **arrays)
    os.replace(tmp, path)
    return path


def _open(path: str | Path) -> np.lib.npyio.NpzFile:
    if not Path(path).is_file():
        raise TraceError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):  # np.load would try other formats, pickle among them
        raise TraceError(f"{path}: not a routing trace (an .npz file, a zip of arrays)")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise TraceError(f"{path}: not a routing trace (.npz): {str(e).splitlines()[0][:120]}") from None


def _header(npz: np.lib.npyio.NpzFile, path: str | Path) -> TraceHeader:
    try:
        meta = json.loads(str(npz["meta"]))
    except (KeyError, ValueError):
        raise TraceError(f"{path}: not a routing trace (no readable `meta`)") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise TraceError(f"{path}: not a routing trace (format {meta.get('format')!r})"
                         if isinstance(meta, dict) else f"{path}: not a routing trace")
    if meta.get("version") != VERSION:
        raise TraceError(f"{path}: routing trace version {meta.get('version')!r}; this tool "
                         f"reads version {VERSION}")
    try:
        return TraceHeader(str(meta["model"]), int(meta["num_experts"]), int(meta["top_k"]),
                           int(meta["sequences"]), int(meta["tokens"]),
                           tuple(str(n) for n in meta["layer_names"]), meta.get("router_gates"),
                           meta.get("text"))
    except (KeyError, TypeError, ValueError) as e:
        raise TraceError(f"{path}: routing trace header lacks or mistypes {e}") from None


@functools.lru_cache(maxsize=32)
def _cached_header(path: str, mtime_ns: int, size: int) -> TraceHeader:
    with _open(path) as npz:
        return _header(npz, path)


def read_header(path: str | Path) -> TraceHeader:
    """The header alone (the arrays stay unread), cached while the file is unchanged: a spec
    checks its trace each time it is made."""
    try:
        st = os.stat(path)
    except OSError:
        raise TraceError(f"{path}: no such file") from None
    return _cached_header(str(path), st.st_mtime_ns, st.st_size)


def load_trace(path: str | Path) -> RoutingTrace:
    with _open(path) as npz:
        header = _header(npz, path)
        if "top_k_index" not in npz.files:
            raise TraceError(f"{path}: routing trace without `top_k_index`")
        weights = npz["top_k_weights"] if "top_k_weights" in npz.files else None
        return RoutingTrace(header, npz["top_k_index"], weights)
