"""`meo-profile routing capture`: a local checkpoint's routing over a text, into a trace file.

The checkpoint is one folder (`--host hf:DIR`): `config.json`, the weights as transformers saves
them (safetensors), and a tokenizer (`tokenizer.json`, read with the `tokenizers` library, or
whatever transformers' AutoTokenizer reads there). Nothing is downloaded. The text is tokenized
whole and cut into sequences of `seq_len` tokens (the remainder dropped), which run through the
model `batch_size` at a time while capture.py records each MoE layer's choice.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from meo_profile.core.errors import BadInput
from meo_profile.core.inputs import output_file, read_text
from meo_profile.measure.routing.capture import capture_routing
from meo_profile.models.build import TORCH_DTYPES
from meo_profile.models.native_configs import HF_PREFIX, is_hf, quiet_transformers
from meo_profile.models.routing_trace import RoutingTrace, save_trace


def checkpoint_dir(host: str) -> Path:
    """`hf:DIR` -> DIR, a folder holding config.json (BadInput naming --host otherwise)."""
    if not is_hf(host):
        raise BadInput(f"--host {host!r}: capture reads a local checkpoint: hf:DIR")
    directory = Path(host[len(HF_PREFIX):]).expanduser()
    if not (directory / "config.json").is_file():
        raise BadInput(f"--host {host!r}: no checkpoint folder with a config.json at {directory}")
    return directory


def load_model(directory: Path, dtype: str, device: str) -> nn.Module:
    """The checkpoint's causal LM with its own weights, in eval mode (BadInput, one line, when
    transformers cannot load it offline)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    progress = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()  # stderr keeps one line: what was written
    try:
        with quiet_transformers():
            model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True,
                                                         dtype=TORCH_DTYPES[dtype])
    except (OSError, ValueError, KeyError) as e:
        raise BadInput(f"--host hf:{directory}: cannot load the checkpoint: "
                       f"{str(e).strip().splitlines()[0][:200]}") from None
    finally:
        if progress:
            logging.enable_progress_bar()
    return model.to(device).eval()


def load_tokenizer(directory: Path) -> Callable[[str], list[int]]:
    """text -> token ids, with the checkpoint's own tokenizer and no special tokens added (the
    text is cut into sequences afterwards, so none would be at a sequence's start)."""
    if (directory / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        return lambda text: tokenizer.encode(text, add_special_tokens=False).ids
    from transformers import AutoTokenizer

    try:
        with quiet_transformers():
            auto = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise BadInput(f"--host hf:{directory}: no tokenizer there: "
                       f"{str(e).strip().splitlines()[0][:200]}") from None
    return lambda text: auto.encode(text, add_special_tokens=False)


def token_sequences(ids: list[int], seq_len: int, max_sequences: int | None,
                    vocab_size: int) -> torch.Tensor:
    """The text's tokens as (S, seq_len) whole sequences (BadInput when not even one fits, or
    when the tokenizer's ids do not fit the model's vocabulary)."""
    count = len(ids) // seq_len
    if max_sequences is not None:
        count = min(count, max_sequences)
    if count == 0:
        raise BadInput(f"--text: {len(ids)} tokens, fewer than one sequence of --seq-len {seq_len}")
    if max(ids) >= vocab_size:
        raise BadInput(f"--text: the tokenizer gives id {max(ids)}, beyond the model's "
                       f"vocabulary of {vocab_size}: not this checkpoint's tokenizer")
    return torch.tensor(ids[: count * seq_len]).view(count, seq_len)


def capture_checkpoint(host: str, text_path: str, out: str, *, seq_len: int = 128,
                       batch_size: int = 8, max_sequences: int | None = None,
                       dtype: str = "float32", device: str = "auto",
                       overwrite: bool = False) -> tuple[Path, RoutingTrace]:
    """Capture `host`'s routing over the text at `text_path` into the trace file `out`."""
    directory = checkpoint_dir(host)
    target = output_file(out, "--out", overwrite=overwrite)
    text = read_text(text_path, "--text")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    model = load_model(directory, dtype, device)
    sequences = token_sequences(load_tokenizer(directory)(text), seq_len, max_sequences,
                                model.config.vocab_size)
    name = f"{model.config.model_type} ({directory.name})"
    trace = capture_routing(model, sequences.split(batch_size), model_name=name,
                            text_name=Path(text_path).name)
    return save_trace(trace, target), trace
