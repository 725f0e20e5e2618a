"""Bad input: what the command line answers with one line on stderr and exit code 2."""

from __future__ import annotations


class BadInput(ValueError):
    """Input the tool cannot use (a flag's value, a file, a claim's selection, an output
    directory in use); `str()` is one line naming the offending value."""
