"""Shared test set-up: offline hubs, threads, a private cache directory, the `gpu` marker's
skip, and the `cli` fixture (the command line in this process)."""

import os
from dataclasses import dataclass

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# At most two threads, and one each when pytest-xdist runs files side by side (`make test`:
# two workers), so that the workers do not fight over the cores.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, torch.get_num_threads() // _WORKERS)))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def private_cache_dir(tmp_path_factory):
    """`--impl auto` caches its timed choices under the user's cache directory: tests keep
    theirs in a temporary one (and start from an empty cache)."""
    saved = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if saved is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = saved


@dataclass
class Ran:
    """What a command line run left: its exit code and what it printed."""

    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys):
    """`meo-profile ARGS` run in this process through the App itself (its exit codes, its
    one-line errors), returning a `Ran`: a fresh interpreter per command would cost seconds
    of imports each, and only the tests of processes and signals need one."""
    from cli import app

    def run(*args: str) -> Ran:
        capsys.readouterr()  # what came before is not this command's
        try:
            app(list(args), prog_name="meo-profile")
            code = 0
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else int(done.code is not None)
        out, err = capsys.readouterr()
        return Ran(code, out, err)

    return run
