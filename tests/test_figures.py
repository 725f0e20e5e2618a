"""Figures: each drawn from a small synthetic results set and from a real tiny sweep; labelled,
one colour per variant everywhere, left out with a reason when their data is absent, and drawing
leaves matplotlib's global state alone."""

import warnings

import matplotlib
import pytest
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from synthetic_results import flops_records, full_set, layer_records

from meo_profile.core.identity import label
from meo_profile.measure.timing import TimingOptions
from meo_profile.report import document as report
from meo_profile.report import figures, views
from meo_profile.sweep.grid import Block
from meo_profile.sweep.run import SweepOptions, run_sweep


@pytest.fixture(scope="module")
def ok():
    return views.ok_rows(views.records_frame(full_set(gpu=True, train=True)))


@pytest.fixture(scope="module")
def drawn(ok):
    return {name: figures.FIGURES[name].draw(ok) for name in figures.FIGURES}


@pytest.mark.parametrize("name", list(figures.FIGURES))
def test_each_figure_is_a_labelled_figure_with_a_caption(drawn, name):
    d = drawn[name]
    assert isinstance(d.figure, Figure) and len(d.caption) > 40
    for ax in d.figure.axes:
        if ax.get_label() == "<colorbar>":
            continue
        assert ax.get_xlabel() and ax.get_ylabel(), name
        assert ax.get_title(loc="left"), name


def test_figures_split_panels_per_device_and_mode(drawn):
    panels = lambda name: [a for a in drawn[name].figure.axes if a.get_label() != "<colorbar>"]  # noqa: E731
    assert len(panels("fig4_latency_vs_k")) == 2  # cpu, cuda
    assert len(panels("fig5_speedup_heatmap")) == 2
    assert len(panels("fig6_memory_vs_experts")) == 3  # cpu inference, cpu train, cuda inference
    assert "train" in " ".join(a.get_title(loc="left") for a in panels("fig6_memory_vs_experts"))


def _colours_by_label(fig: Figure) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for ax in fig.axes:
        for line in ax.get_lines():
            out.setdefault(line.get_label(), set()).add(to_hex(line.get_color()))
        for points in ax.collections:
            if points.get_label() and not points.get_label().startswith("_"):
                out.setdefault(points.get_label(), set()).add(to_hex(points.get_facecolor()[0]))
    return out


def test_one_colour_per_variant_across_figures(drawn):
    for name in ("fig4_latency_vs_k", "fig6_memory_vs_experts", "fig7_roofline"):
        colours = _colours_by_label(drawn[name].figure)
        for variant in ("moe", "meo", "dense"):
            assert colours[label(variant)] == {figures.VARIANT_COLOURS[variant].lower()}, name
    fig1 = _colours_by_label(drawn["fig1_flops_vs_k"].figure)
    assert fig1["MEO, bert-base"] == {figures.VARIANT_COLOURS["meo"].lower()}
    assert fig1["vanilla MoE, bert-large"] == {figures.VARIANT_COLOURS["moe"].lower()}


def test_ratio_figure_draws_the_closed_form_beside_the_measurement(drawn):
    labels = _colours_by_label(drawn["fig3_flops_ratio"].figure)
    assert "closed form 1/k + 1/L, L=128" in labels
    assert "MoE layers only (experts + merge), all hosts" in labels


def test_heatmap_cells_carry_speedup_and_flops_ratio(drawn):
    ax = drawn["fig5_speedup_heatmap"].figure.axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert any(t.startswith("FLOPs ") and t.endswith("×") for t in texts)
    assert "not measured" in texts  # k=8 > E=4


def test_missing_metrics_raise_missing_with_a_reason():
    flops_only = views.ok_rows(views.records_frame(flops_records(ks=(1, 2))))
    for name in ("fig4_latency_vs_k", "fig5_speedup_heatmap", "fig6_memory_vs_experts",
                 "fig7_roofline"):
        with pytest.raises(figures.Missing, match="no "):
            figures.FIGURES[name].draw(flops_only)
    empty = views.ok_rows(views.records_frame([{"status": "error", "host": "layer"}]))
    for name in figures.FIGURES:
        with pytest.raises(figures.Missing):
            figures.FIGURES[name].draw(empty)


def test_drawing_leaves_matplotlib_state_alone(ok):
    before = dict(matplotlib.rcParams)
    backend = matplotlib.get_backend()
    figures.FIGURES["fig4_latency_vs_k"].draw(ok)
    assert dict(matplotlib.rcParams) == before and matplotlib.get_backend() == backend


def test_saved_files_do_not_change_rc_params(tmp_path, ok):
    before = dict(matplotlib.rcParams)
    paths = figures.save(figures.FIGURES["fig7_roofline"].draw(ok).figure, tmp_path, "roof")
    assert [p.suffix for p in paths] == [".png", ".svg"] and all(p.exists() for p in paths)
    assert dict(matplotlib.rcParams) == before


# The longest labels the tool writes: users' configs deep in folder trees (two of them sharing a
# folder name), a CPU's full model name; every variant and both devices (full_set).
LONG_HOSTS = {
    "bert-small": "hf:models/experiments/granite-moe-small-v2",
    "bert-base": "hf:/home/someone/checkpoints/2026-11/qwen3-moe-30b-a3b-instruct-finetuned/config.json",
    "bert-large": "hf:/home/someone/runs/run-a/checkpoint/config.json",
    "layer": "hf:/home/someone/runs/run-b/checkpoint/config.json",
}
LONG_CPU = "Intel(R) Xeon(R) Platinum 8480+ CPU @ 2.00GHz, a name as long as /proc/cpuinfo gives (224 cores)"


def axes_share(fig: Figure) -> float:
    """The canvas share the data axes keep once the layout is applied (a draw runs it), with
    warnings as errors: a layout that gives up says so only as a warning."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from meo_profile.report.figures.style import STYLE

    with warnings.catch_warnings(), matplotlib.rc_context(STYLE):
        warnings.simplefilter("error")
        FigureCanvasAgg(fig).draw()
    boxes = [ax.get_position() for ax in fig.axes if ax.get_label() != "<colorbar>"]
    return sum(b.width * b.height for b in boxes)


@pytest.fixture(scope="module")
def long_labelled():
    records = full_set(gpu=True, train=True)
    for r in records:
        r["host"] = LONG_HOSTS.get(r["host"], r["host"])
        if r["device_name"] and r["device_name"].startswith("Test CPU"):
            r["device_name"] = LONG_CPU
    return views.ok_rows(views.records_frame(records))


@pytest.mark.parametrize("name", list(figures.FIGURES))
def test_the_longest_labels_leave_the_axes_most_of_the_canvas(drawn, long_labelled, name):
    long = figures.FIGURES[name].draw(long_labelled).figure
    assert axes_share(long) >= max(0.4, 0.85 * axes_share(drawn[name].figure)), name
    legends = [t.get_text() for ax in long.axes for t in (ax.get_legend() or ax).texts] + \
              [t.get_text() for legend in long.legends for t in legend.texts]
    assert not any("/home/someone" in text for text in legends), legends


def test_a_users_configs_are_named_by_their_folder_and_told_apart(long_labelled):
    lines = figures.FIGURES["fig1_flops_vs_k"].draw(long_labelled).figure.axes[0].get_lines()
    hosts = {line.get_label().split(", ", 1)[1] for line in lines}
    assert hosts == {"hf:granite-moe-small-v2", "hf:qwen3-moe-30…ct-finetuned",
                     "hf:run-a/checkpoint", "hf:run-b/checkpoint"}
    styles = {(line.get_marker(), line.get_linestyle()) for line in lines}
    assert len(styles) == len(hosts)  # one marker and line style per host (colour: the variant)


def test_memory_figure_from_one_expert_count_is_left_out():
    one_e = views.ok_rows(views.records_frame(layer_records(experts=(16,), ks=(1, 2))))
    with pytest.raises(figures.Missing, match="fewer than two expert counts"):
        figures.FIGURES["fig6_memory_vs_experts"].draw(one_e)


# ------------------------------------------------------------------ a real (tiny) sweep
@pytest.fixture(scope="module")
def real_sweep(tmp_path_factory):
    """A real sweep, the fewest configurations that feed figures 1 and 3-6: a 32-wide layer,
    moe and meo at (E, k) = (2, 1), (2, 2), (4, 1)."""
    out = tmp_path_factory.mktemp("sweep")
    layer = {"host": ["layer"], "variant": ["moe", "meo"], "d_model": [32], "d_ff": [64],
             "seq_len": [16], "batch_size": [2], "device": ["cpu"]}
    blocks = [Block({**layer, "num_experts": [2], "top_k": [1, 2]}),
              Block({**layer, "num_experts": [4], "top_k": [1]})]
    jobs = [(s, b.metrics) for b in blocks for s in b.specs()[0]]
    run_sweep(jobs, SweepOptions(out=out, timing=TimingOptions(warmup=1, min_run_time=0.01)))
    return out


@pytest.mark.slow  # a real sweep: ~3 s on an idle 2-core CPU, several times that under load
def test_real_sweep_draws_the_figures(real_sweep):
    rep = report.build_report(report.load_results(real_sweep)[1], command="test")
    drawn = {f.name for f in rep.figure_blocks()}
    assert {"fig1_flops_vs_k", "fig3_flops_ratio", "fig4_latency_vs_k", "fig5_speedup_heatmap",
            "fig6_memory_vs_experts"} <= drawn
    omitted = [b for b in rep.blocks if isinstance(b, report.Omitted)]
    assert {o.title for o in omitted} <= {"Measured time against the roofline bound",
                                          "Four methods at one expert budget",
                                          "The merging family at one expert budget",
                                          "Where the time goes on CUDA",
                                          "Latency against skew and locality of routing",
                                          figures.FIGURES["fig12_regimes"].title}
