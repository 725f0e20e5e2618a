"""The one error a configuration raises: it names the flag the user typed and the value."""

from __future__ import annotations

from typing import Any

# Spec field -> command-line flag, so that an error names what the user typed.
FLAG_OF = {"num_experts": "--experts", "top_k": "--top-k"}


class SpecError(ValueError):
    """A configuration that cannot be built; `str()` is one line naming the flag and the value."""

    def __init__(self, field_name: str, value: Any, reason: str):
        self.field_name, self.value, self.reason = field_name, value, reason
        super().__init__(f"{flag_of(field_name)} {value!r}: {reason}")


def flag_of(field_name: str) -> str:
    return FLAG_OF.get(field_name, "--" + field_name.replace("_", "-"))
