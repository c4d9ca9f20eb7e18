"""The shared reader: bad bytes, deep nesting, duplicate keys and bad --set values fail with
the file (or option) and the line, through the project's error types."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from belusim.cli.main import app
from belusim.config.scenario import ConfigError, parse_set, resolve_scenario
from belusim.errors import InputError
from belusim.inputs import MAX_DEPTH, parse_json, parse_yaml
from belusim.workloads.cli import trace_app
from belusim.workloads.errors import WorkloadError
from belusim.workloads.mooncake import read_mooncake
from belusim.workloads.trace_format import read_trace
from tests.test_core_cli import TINY

MOONCAKE_LINE = '{"timestamp": 0, "input_length": 600, "output_length": 5, "hash_ids": [1, 2]}'


def test_duplicate_yaml_key_is_rejected_with_both_lines(tmp_path):
    p = tmp_path / "dup.yaml"
    text = yaml.safe_dump(TINY, sort_keys=False) + "engine: {kv_blocks: 10}\n"
    p.write_text(text)
    with pytest.raises(ConfigError, match=r"dup\.yaml:\d+: invalid YAML: duplicate key 'engine' \(first given on line \d+\)"):
        resolve_scenario(p)


def test_yaml_merge_keys_may_be_overridden():
    assert parse_yaml("base: &b {a: 1, c: 3}\nx:\n  <<: *b\n  a: 2\n", "f") == {
        "base": {"a": 1, "c": 3}, "x": {"a": 2, "c": 3}}


def test_latin1_scenario_names_file_and_line(tmp_path):
    p = tmp_path / "latin1.yaml"
    p.write_bytes(yaml.safe_dump(TINY, sort_keys=False).encode() + "# caf\u00e9\n".encode("latin-1"))
    r = CliRunner().invoke(app, ["show", str(p)])
    assert r.exit_code == 2
    assert "latin1.yaml:" in r.stderr and "not UTF-8 text (byte 0xe9" in r.stderr
    assert r.exception is None or isinstance(r.exception, SystemExit)


@pytest.mark.parametrize("text", ["[" * 1000 + "]" * 1000, "{\"a\":" * 1000 + "1" + "}" * 1000])
def test_deep_json_fails_with_the_line(text):
    with pytest.raises(InputError, match=rf"t\.jsonl:7: nested more than {MAX_DEPTH} levels"):
        parse_json(text, "t.jsonl", line=7)


def test_deep_yaml_fails_without_recursion_error():
    with pytest.raises(InputError, match="nested more than"):
        parse_yaml("a: " + "[" * 1000, "f.yaml")


def test_yaml_alias_bomb_is_bounded():
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    with pytest.raises(InputError, match="more than"):
        parse_yaml("\n".join(lines), "bomb.yaml")


def test_json_nan_is_rejected():
    with pytest.raises(InputError, match="NaN is not valid JSON"):
        parse_json('{"a": NaN}', "f.json")


@pytest.mark.parametrize("reader,line", [(read_mooncake, MOONCAKE_LINE)])
def test_mooncake_non_utf8_line_names_line_and_column(tmp_path, reader, line):
    p = tmp_path / "m.jsonl"
    p.write_bytes((line + "\n").encode() + b'{"timestamp": 1, "x": "\xff"}\n')
    with pytest.raises(WorkloadError, match=r"m\.jsonl:2: not UTF-8 text \(byte 0xff at column 24\)"):
        reader(p)


def test_trace_stats_on_bad_bytes_and_deep_nesting_exit_2(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(MOONCAKE_LINE.encode() + b"\n" + b"\xfe\xff\n")
    deep = tmp_path / "deep.jsonl"
    deep.write_text(MOONCAKE_LINE + "\n" + "[" * 1000 + "]" * 1000 + "\n")
    for p, msg in [(bad, "bad.jsonl:2: not UTF-8"), (deep, "deep.jsonl:2: nested more than")]:
        for cmd in (["stats", str(p)], ["convert", str(p), "--out", str(tmp_path / "o.jsonl")]):
            r = CliRunner().invoke(trace_app, cmd)
            assert r.exit_code == 2, (cmd, r.output)
            assert msg in r.output


def test_belusim_trace_non_utf8_and_deep(tmp_path):
    src = tmp_path / "t.jsonl"
    r = CliRunner().invoke(trace_app, ["export-synthetic", "--out", str(src), "--num-prompts", "2"])
    assert r.exit_code == 0
    lines = src.read_bytes().splitlines()
    (tmp_path / "u.jsonl").write_bytes(b"\n".join(lines[:2] + [lines[2][:-3] + b"\xc3("]))
    with pytest.raises(WorkloadError, match=r"u\.jsonl:3: not UTF-8"):
        read_trace(tmp_path / "u.jsonl")
    (tmp_path / "d.jsonl").write_bytes(b"\n".join(lines[:2] + [b"[" * 2000 + b"]" * 2000]))
    with pytest.raises(WorkloadError, match=r"d\.jsonl:3: nested more than"):
        read_trace(tmp_path / "d.jsonl")


@pytest.mark.parametrize("item,msg", [
    ("name=[unclosed", "--set 'name=[unclosed': invalid YAML"),
    ("name={a: 1", "--set 'name={a: 1': invalid YAML"),
    ("a..b=1", "empty part"),
    ("=1", "empty part"),
    ("novalue", "expected path.to.field=value"),
])
def test_bad_set_values_are_rejected(item, msg):
    with pytest.raises(ConfigError) as e:
        parse_set([item])
    assert msg in str(e.value)


def test_set_accepts_quoted_strings_and_yaml_values():
    assert parse_set(["name='[not a list'", "a.b=[1, 2]", "c=", "d=x y"]) == [
        ("name", "[not a list"), ("a.b", [1, 2]), ("c", ""), ("d", "x y")]
