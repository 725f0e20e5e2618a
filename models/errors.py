"""The one error a configuration raises: it names the flag the user typed and the value."""

from __future__ import annotations

from typing import Any

# Spec field -> command-line flag, so that an error names what the user typed.
FLAG_OF = {"num_experts": "--experts", "top_k": "--top-k"}
# What kind of mistake a SpecError is, for a grid that crosses axes (sweep/grid.py):
# - "value": a value that is wrong in itself: bad input anywhere;
# - "impossible": valid values that make no configuration together (top-k above the expert
#   count, decoding with an encoder-only host): a grid leaves the combination out;
# - "inapplicable": a value that does not apply to the rest of the configuration (a decode
#   condition at prefill, merge reuse for a variant that merges nothing): a command refuses
#   it, a grid crossing that axis drops it (the field goes back to None).
KINDS = ("value", "impossible", "inapplicable")


class SpecError(ValueError):
    """A configuration that cannot be built; `str()` is one line naming the flag and the value."""

    def __init__(self, field_name: str, value: Any, reason: str, kind: str = "value"):
        self.field_name, self.value, self.reason, self.kind = field_name, value, reason, kind
        super().__init__(f"{flag_of(field_name)} {value!r}: {reason}")


def flag_of(field_name: str) -> str:
    return FLAG_OF.get(field_name, "--" + field_name.replace("_", "-"))
