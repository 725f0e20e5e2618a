"""The figures' shared look: one colour and marker per variant (Okabe-Ito, colour-blind safe),
one line style per host, the rc settings every figure is drawn under, axis helpers, and how a
figure is saved. A figure drawn under `styled` leaves the caller's matplotlib state as it was.
"""

from __future__ import annotations

import functools
import math
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullLocator, ScalarFormatter

VARIANT_COLOURS = {
    "dense": "#555555",
    "moe": "#0072B2",
    "moe-seq": "#56B4E9",
    "meo": "#D55E00",
    "meo-token": "#E69F00",
    "ce": "#009E73",
    "xmoe": "#CC79A7",
    "smear": "#F0E442",
    "lory": "#8C564B",
    "soft-moe": "#999933",
}
# variant -> (marker, size): a second cue beside colour, for grey print; earlier variants are
# drawn with larger markers so that identical values (moe and moe-seq memory) stay visible.
VARIANT_MARKERS = {"moe": ("o", 8), "moe-seq": ("s", 5), "meo": ("D", 6), "meo-token": ("^", 5),
                   "ce": ("v", 6), "xmoe": ("P", 6), "smear": ("<", 6), "lory": (">", 6),
                   "soft-moe": ("*", 7)}
# host -> (marker, line style)
HOST_STYLES = {
    "bert-small": ("o", ":"),
    "bert-base": ("s", "-"),
    "bert-large": ("^", "--"),
    "layer": ("D", "-."),
    "gpt2": ("v", "-"),
    "t5-small": ("P", ":"),
    "bart-base": ("X", "--"),
}
STYLE = {
    "font.size": 10, "axes.titlesize": 10.5, "axes.labelsize": 10, "legend.fontsize": 8.5,
    "xtick.labelsize": 9, "ytick.labelsize": 9, "axes.grid": True, "grid.alpha": 0.3,
    "axes.spines.top": False, "axes.spines.right": False, "legend.framealpha": 0.9,
    "svg.hashsalt": "meo-profile",  # stable element ids: a re-rendered SVG diffs only if it changed
}
PANEL_SIZE_IN = (6.0, 4.2)
TITLE_CHARS = 58  # what fits above a PANEL_SIZE_IN-wide panel at axes.titlesize
PNG_DPI = 150


class Missing(Exception):
    """A figure's data is absent; the message says which, for the line left in its place."""


@dataclass
class Drawn:
    figure: Figure
    caption: str


@dataclass(frozen=True)
class FigureEntry:
    """One figure of the report: file stem, title, and the function that draws it."""

    name: str
    title: str
    draw: Callable[[pd.DataFrame], Drawn]


def require(condition: bool, reason: str) -> None:
    if not condition:
        raise Missing(reason)


def colour(variant: str) -> str:
    return VARIANT_COLOURS.get(variant, "#000000")


def marker(variant: str) -> dict:
    shape, size = VARIANT_MARKERS.get(variant, ("o", 6))
    return {"marker": shape, "markersize": size}


def host_styles(hosts) -> dict[str, tuple[str, str]]:
    """(marker, line style) per host, in the order given: a named host's own (HOST_STYLES);
    each other one (a native MoE host, a user's `hf:` config) the next style that no host of
    this figure has taken, so that no two lines of a figure look alike."""
    hosts = list(hosts)
    taken = {HOST_STYLES[h] for h in hosts if h in HOST_STYLES}
    spare = [style for style in (*HOST_STYLES.values(), *SPARE_STYLES) if style not in taken]
    out = {}
    for host in hosts:
        out[host] = HOST_STYLES.get(host) or (spare.pop(0) if spare else ("o", "-"))
    return out


SPARE_STYLES = (("*", "-"), ("h", "--"), ("d", ":"), ("p", "-."), ("<", "-"), (">", "--"))


def styled(draw: Callable[[pd.DataFrame], Drawn]) -> Callable[[pd.DataFrame], Drawn]:
    """Run a draw function under the report's style, restoring the caller's rcParams after."""

    @functools.wraps(draw)
    def wrapper(df: pd.DataFrame) -> Drawn:
        with matplotlib.rc_context(STYLE):
            return draw(df)

    return wrapper


def new_panels(n: int, max_cols: int = 2) -> tuple[Figure, list]:
    cols = min(n, max_cols)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(PANEL_SIZE_IN[0] * cols, PANEL_SIZE_IN[1] * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:  # an odd panel count leaves a cell empty
        ax.remove()
    return fig, axes[:n]


def panel_title(ax, device: str, setting: str) -> None:
    """Device on the first line, the held setting below, wrapped to stay within the panel."""
    lines = [textwrap.shorten(device, TITLE_CHARS), *textwrap.wrap(setting, TITLE_CHARS)[:2]]
    ax.set_title("\n".join(lines), loc="left")


def log10_axis(ax, axis: str = "y") -> None:
    """Log-10 scale labelled 1, 2, 5, 10, 20, ... in plain numbers rather than powers of ten;
    denser ticks when the data spans less than a decade or two, so the axis keeps a few labels."""
    (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
    target = ax.yaxis if axis == "y" else ax.xaxis
    low, high = ax.get_ylim() if axis == "y" else ax.get_xlim()
    decades = math.log10(high / low) if low > 0 else 3
    subs = (1.0, 2.0, 5.0) if decades >= 1.5 else (1.0, 1.5, 2.0, 3.0, 5.0, 7.0) \
        if decades >= 0.6 else (1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0)
    target.set_major_locator(LogLocator(base=10, subs=subs))
    target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    target.set_minor_locator(NullLocator())


def log2_axis(ax, values, axis: str = "x") -> None:
    """Log-2 scale with a tick at each measured value, printed as plain integers."""
    ticks = sorted({int(v) for v in values if v == v})
    scale = ax.set_xscale if axis == "x" else ax.set_yscale
    target = ax.xaxis if axis == "x" else ax.yaxis
    scale("log", base=2)
    target.set_major_locator(FixedLocator(ticks))
    target.set_major_formatter(ScalarFormatter())
    target.set_minor_locator(NullLocator())


def legend(fig: Figure, axes: list, **kw) -> None:
    """One legend: inside the axes for one panel, below the panels for several (the union of
    their entries, each label once)."""
    if len(axes) == 1:
        axes[0].legend(**kw)
        return
    seen: dict[str, object] = {}
    for ax in axes:
        for handle, text in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(text, handle)
    fig.legend(list(seen.values()), list(seen), loc="outside lower center",
               ncol=min(len(seen), 3 * len(axes)), **kw)


def save(fig: Figure, directory: Path, stem: str) -> list[Path]:
    """Write `stem.png` and `stem.svg`; metadata without dates, so re-renders diff cleanly."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"{stem}.png", directory / f"{stem}.svg"]
    with matplotlib.rc_context(STYLE):
        fig.savefig(paths[0], dpi=PNG_DPI, metadata={"Software": None})
        fig.savefig(paths[1], metadata={"Date": None, "Creator": None})
    return paths


