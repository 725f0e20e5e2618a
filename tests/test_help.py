"""The command line's help: it answers without loading anything heavy (the issue: 4.5 s to print
a page), names no type for a flag and one style for integers, and the registries' names it
prints (models/names.py) are the registries' own."""

import subprocess
import sys

from meo_profile.models.catalog import HOST_NAMES
from meo_profile.models.hosts import HOSTS
from meo_profile.models.names import FFN_HOSTS, IMPL_NAMES, NATIVE_MOE_IMPLS, VARIANT_IMPLS
from meo_profile.models.native import NATIVE_MOE_IMPLS as NATIVE_IMPLS_OF_THE_HOSTS
from meo_profile.models.variants import VARIANTS

HEAVY = ("torch", "pandas", "matplotlib", "fvcore", "transformers", "numpy", "yaml", "ray",
         "submitit")
COMMANDS = ("flops", "latency", "trace", "sweep", "presets", "report", "check", "compare", "verify")

# In a fresh interpreter: every command's help, then what was imported to print it.
HELP_EVERYWHERE = f"""
import sys
from cli import app
for command in ([], *([c] for c in {COMMANDS!r})):
    try:
        app([*command, "--help"], prog_name="meo-profile")
    except SystemExit as done:
        assert done.code == 0, (command, done.code)
print("LOADED", sorted(m for m in {HEAVY!r} if m in sys.modules))
"""


def test_every_help_page_loads_nothing_heavy_and_types_no_flag():
    out = subprocess.run([sys.executable, "-c", HELP_EVERYWHERE], capture_output=True, text=True,
                         timeout=120, env={"COLUMNS": "200", "PATH": ""})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "LOADED []"
    assert "<bool>" not in out.stdout and "INTEGER" not in out.stdout
    assert "--depth" in out.stdout and "<int>" in out.stdout and "--max-memory" in out.stdout


def test_bare_command_prints_the_help_and_no_error(capsys):
    import pytest

    from cli import app

    with pytest.raises(SystemExit) as done:
        app([], prog_name="meo-profile")
    out, err = capsys.readouterr()
    assert done.value.code == 0 and "error" not in err.lower()
    assert "Usage: meo-profile" in out + err and "sweep" in out + err


def test_the_names_the_help_prints_are_the_registries_own():
    assert tuple(HOSTS) == FFN_HOSTS and HOST_NAMES[:len(FFN_HOSTS)] == FFN_HOSTS
    assert {name: v.impls for name, v in VARIANTS.items()} == VARIANT_IMPLS
    assert NATIVE_MOE_IMPLS == NATIVE_IMPLS_OF_THE_HOSTS
    assert set(IMPL_NAMES) == {i for v in VARIANTS.values() for i in v.impls} | {*NATIVE_MOE_IMPLS, "auto"}
