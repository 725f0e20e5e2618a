"""What a user hands the tool is checked before any work: list flags, paths, files, numbers."""

import os

import pytest
from meo_profile.models import Spec, SpecError

from meo_profile.core.errors import BadInput
from meo_profile.core.inputs import output_dir, output_file, read_text, split_list
from meo_profile.core.units import parse_bytes
from meo_profile.measure.timing import TimingOptions


@pytest.mark.parametrize("text", ["1,,2", "1,2,", ",1", "", " , "])
def test_a_list_with_an_empty_item_is_refused_naming_the_flag(text):
    with pytest.raises(BadInput, match="^--top-k "):
        split_list(text, "--top-k")


def test_a_list_keeps_its_items_in_order():
    assert split_list(" moe, meo ", "--variant") == ["moe", "meo"]


def test_output_directories_must_be_writable_directories(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert output_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # checked, not created
    for bad, reason in ((afile, "a file is there"), (afile / "sub", "is a file, not a directory"),
                        ("", "empty path"), ("  ", "empty path")):
        with pytest.raises(BadInput, match=reason) as err:
            output_dir(bad, "--out")
        assert str(err.value).startswith("--out ") and "\n" not in str(err.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permission bits")
def test_a_read_only_directory_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    with pytest.raises(BadInput, match="cannot write in"):
        output_dir(locked / "results")
    with pytest.raises(BadInput, match="cannot write in"):
        output_file(locked / "trace.json")


def test_output_files_are_not_directories_and_not_overwritten_unless_asked(tmp_path):
    existing = tmp_path / "trace.json"
    existing.write_text("kept")
    with pytest.raises(BadInput, match="is a directory"):
        output_file(tmp_path, "--junit-xml")
    with pytest.raises(BadInput, match="does not exist"):
        output_file(tmp_path / "missing" / "t.json")
    with pytest.raises(BadInput, match="exists; pass --force"):
        output_file(existing, overwrite=False)
    assert output_file(existing, overwrite=True) == existing
    assert existing.read_text() == "kept"  # checking wrote nothing


def test_input_files_must_be_readable_utf8(tmp_path):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("grid: {}\n", encoding="utf-8")
    bad.write_bytes(b"grid:\n  host: \xff\xfe\n")
    assert read_text(good, "--config") == "grid: {}\n"
    with pytest.raises(BadInput, match=r"^--config .*not UTF-8 text \(byte 0xff at offset 14\)"):
        read_text(bad, "--config")
    with pytest.raises(BadInput, match="cannot read it"):
        read_text(tmp_path / "missing.yaml", "--claims")
    with pytest.raises(BadInput, match="cannot read it"):
        read_text(tmp_path, "--claims")


@pytest.mark.parametrize("text", ["-1GiB", "0", "0.1", "1e999", "nan", "inf", "8 parsecs", ""])
def test_a_memory_limit_is_a_finite_positive_size(text):
    with pytest.raises(ValueError, match="^--max-memory "):
        parse_bytes(text)


def test_sizes_parse_with_binary_and_decimal_units():
    assert parse_bytes("8GiB") == 8 * 2**30 and parse_bytes("500MB") == 500 * 10**6
    assert parse_bytes("1e9") == 10**9


@pytest.mark.parametrize("kwargs, flag", [
    (dict(min_run_time=float("inf")), "--min-run-time"),
    (dict(min_run_time=float("nan")), "--min-run-time"),
    (dict(min_run_time=0.0), "--min-run-time"),
    (dict(min_run_time=3601.0), "--min-run-time"),
    (dict(warmup=-1), "--warmup"),
    (dict(warmup=10**9), "--warmup"),
])
def test_timing_options_are_finite_and_bounded(kwargs, flag):
    with pytest.raises(SpecError, match=f"^{flag} "):
        TimingOptions(**kwargs)


@pytest.mark.parametrize("kwargs, flag", [
    (dict(seq_len=2**40 + 1), "--seq-len"),
    (dict(num_experts=2**16 + 1, top_k=1), "--experts"),
    (dict(layers=2**10 + 1), "--layers"),
    (dict(seed=-1), "--seed"),
    (dict(expert_unit=""), "--expert-unit"),
    (dict(variant="ce", ce_init=""), "--ce-init"),
    (dict(threshold=float("nan")), "--threshold"),  # a knob meo ignores is still checked
    (dict(capacity_factor=-1.0), "--capacity-factor"),
    (dict(router_scale=True), "--router-scale"),
])
def test_spec_fields_are_in_range_whichever_variant_reads_them(kwargs, flag):
    with pytest.raises(SpecError, match=f"^{flag} "):
        Spec(**kwargs)


def test_an_implementation_of_another_variant_names_the_variant():
    with pytest.raises(SpecError, match="^--impl 'loop': not an implementation of --variant meo; "
                                        "choose from gather, dense, fused, auto$"):
        Spec(variant="meo", impl="loop")
