"""Terminal output fits 80 columns and pipes without cutting a value: tables wrap text and split
their columns; sentences with paths are never broken by rich."""

import io
import re

from rich.console import Console
from rich.table import Table

from meo_profile.terminal.render import fit_width, print_line, print_table

NUMBERS = [f"{1234.5678 * (i + 1):,.3f}" for i in range(11)]


def wide_table() -> Table:
    table = Table(title="FLOPs: a table wider than a terminal", caption="GFLOPs = 1e9 FLOPs")
    table.add_column("host")
    for i in range(len(NUMBERS)):
        table.add_column(f"metric number {i} (GFLOPs)", justify="right")
    table.add_row("bert-large", *NUMBERS)
    table.add_row("bert-small", *reversed(NUMBERS))
    return table


def rendered(table: Table, width: int = 80) -> str:
    console = Console(width=width, record=True, file=io.StringIO())
    print_table(table, console)
    return console.export_text()


def test_a_wide_table_is_split_without_cutting_a_number():
    text = rendered(wide_table())
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text
    for number in NUMBERS:  # each value whole, on one line
        assert re.search(rf"(?<![\d,.]){re.escape(number)}(?![\d,.])", text), number
    assert text.count("bert-large") >= 2  # the label column is repeated in every part
    assert "(continued)" in text and text.rstrip().endswith("GFLOPs = 1e9 FLOPs")


def test_a_table_that_fits_is_left_as_it_is():
    table = Table(title="small")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_row("median (ms)", "12.345")
    assert fit_width(table, 80) == [table]
    assert "(continued)" not in rendered(table)


def test_parts_share_the_width_and_keep_each_column_at_its_longest_word():
    parts = fit_width(wide_table(), 60)
    assert len(parts) > 2
    for part in parts:
        widths = [c.width for c in part.columns]
        assert all(w is not None for w in widths)
        assert sum(widths) + 3 * len(widths) + 1 <= 60
        assert min(widths[1:]) >= len(NUMBERS[-1])


def test_a_sentence_with_a_path_is_not_broken():
    console = Console(width=40, record=True, file=io.StringIO())
    path = "reports/a-rather-long-directory-name/with/results.jsonl"
    print_line(f"sweep: 13 configurations; results in {path}", console)
    assert path in console.export_text()


def test_a_stack_of_identical_blocks_is_one_row_with_its_count():
    from meo_profile.terminal.render import collapse_stacks, without_wrappers

    by_module = {"": 100, "model": 100, "model.layers": 96, "model.head": 4,
                 **{f"model.layers.{i}": 3 for i in range(32)},
                 **{f"model.layers.{i}.mlp": 2 for i in range(32)}}
    assert collapse_stacks(without_wrappers(by_module)) == [
        ("(model)", 1, 100), ("model.layers", 1, 96), ("model.layers.0-31", 32, 3),
        ("model.layers.0-31.mlp", 32, 2), ("model.head", 1, 4)]  # `model` wraps it all: gone
    # blocks that cost differently (DeepSeek-V3's dense first layers) keep their own rows
    mixed = {"layers.0": 5, "layers.1": 3, "layers.2": 3, "layers.4": 3}
    assert collapse_stacks(mixed) == [("layers.1,2,4", 3, 3), ("layers.0", 1, 5)]
