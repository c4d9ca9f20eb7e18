"""Property-based fuzzing (hypothesis): every input either loads or fails with the project's
error type and a message naming the file (or option) and the field or line; the fabric shares
links max-min fairly and conserves bytes. Bounded to run in CI in well under two minutes."""

from __future__ import annotations

import json
import math

import pytest
from belusim.sim.kernel import Environment
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from belusim.config.scenario import ConfigError, parse_set, resolve_scenario
from belusim.errors import InputError
from belusim.transport.fabric import Fabric
from belusim.workloads.errors import WorkloadError
from belusim.workloads.mooncake import read_mooncake
from belusim.workloads.trace_format import read_trace
from tests.test_core_cli import TINY

FUZZ = settings(max_examples=100, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)


def _mutate_tree(draw, obj, depth=0):
    """Replace one field of a nested dict/list with a random value, or drop it."""
    if isinstance(obj, dict) and obj:
        key = draw(st.sampled_from(sorted(obj, key=str)))
        choice = draw(st.integers(0, 3))
        obj = dict(obj)
        if choice == 0:
            del obj[key]
        elif choice == 1 or depth > 3:
            obj[key] = draw(json_values)
        else:
            obj[key] = _mutate_tree(draw, obj[key], depth + 1)
        return obj
    if isinstance(obj, list) and obj:
        i = draw(st.integers(0, len(obj) - 1))
        obj = list(obj)
        obj[i] = _mutate_tree(draw, obj[i], depth + 1)
        return obj
    return draw(json_values)


@st.composite
def scenario_texts(draw):
    kind = draw(st.integers(0, 4))
    if kind == 0:  # arbitrary bytes
        return draw(st.binary(max_size=300))
    if kind == 1:  # YAML-ish text
        return draw(st.text(alphabet=st.sampled_from(list("abc:-[]{},'\"&*!# \n\t0123.e") + ["\u00e9"]),
                             max_size=200)).encode("utf-8")
    data = _mutate_tree(draw, TINY)
    for _ in range(draw(st.integers(0, 2))):
        data = _mutate_tree(draw, data)
    try:
        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    except yaml.YAMLError:
        text = "{}"
    raw = text.encode("utf-8")
    if kind == 4 and raw:  # flip one byte
        i = draw(st.integers(0, len(raw) - 1))
        raw = raw[:i] + bytes([draw(st.integers(0, 255))]) + raw[i + 1:]
    return raw


@FUZZ
@given(raw=scenario_texts())
def test_fuzz_scenario_loader(tmp_path_factory, raw):
    p = tmp_path_factory.mktemp("s") / "fuzz.yaml"
    p.write_bytes(raw)
    try:
        resolve_scenario(p)
    except ConfigError as e:
        assert str(e).startswith(str(p)) or str(e).startswith("<"), str(e)[:200]


@FUZZ
@given(items=st.lists(st.one_of(
    st.text(max_size=30),
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(["engine.max_num_seqs", "cluster.servers", "name",
                                                        "systems.cxl-pool.kv.capacity_gb", "gpu", "run.phases",
                                                        "workload.num_prompts", "a..b", "systems.9.name"]),
              st.text(alphabet=st.sampled_from(list("[]{}:,'\"-.0123456789abcinf e")), max_size=15))),
    max_size=3))
def test_fuzz_set_parser_and_overrides(items):
    try:
        pairs = parse_set(items)
    except ConfigError as e:
        assert str(e).startswith("--set "), str(e)
        return
    assert len(pairs) == len(items)
    try:
        resolve_scenario(TINY, items)
    except ConfigError as e:  # the --set item or the scenario, and the field
        msg = str(e)
        assert msg.startswith("--set ") or msg.startswith("<scenario>"), msg[:200]


MOONCAKE = [{"timestamp": t, "input_length": 1000, "output_length": 10, "hash_ids": [t, t + 1]}
            for t in (0, 5, 9)]


@st.composite
def jsonl_files(draw, records):
    lines = [json.dumps(r).encode() for r in records]
    for _ in range(draw(st.integers(1, 3))):
        what = draw(st.integers(0, 4))
        i = draw(st.integers(0, len(lines) - 1))
        if what == 0:
            try:
                lines[i] = json.dumps(_mutate_tree(draw, json.loads(lines[i]))).encode()
            except ValueError:  # already junk from an earlier mutation
                pass
        elif what == 1:
            lines[i] = draw(st.binary(max_size=40))
        elif what == 2:
            depth = draw(st.integers(1, 2000))
            lines[i] = b"[" * depth + b"]" * depth
        elif what == 3 and lines[i]:
            j = draw(st.integers(0, len(lines[i]) - 1))
            lines[i] = lines[i][:j] + bytes([draw(st.integers(0, 255))]) + lines[i][j + 1:]
        else:
            lines.insert(i, draw(st.text(max_size=20)).encode("utf-8"))
    return b"\n".join(lines) + b"\n"


def _check_trace_error(e: WorkloadError, p) -> None:
    msg = str(e)
    assert msg.startswith(str(p)), msg[:200]
    assert ":" in msg[len(str(p)):][:12] or "field" in msg or "empty" in msg or "not found" in msg, msg[:200]


@FUZZ
@given(raw=jsonl_files(MOONCAKE))
def test_fuzz_mooncake_reader(tmp_path_factory, raw):
    p = tmp_path_factory.mktemp("m") / "m.jsonl"
    p.write_bytes(raw)
    try:
        read_mooncake(p)
    except WorkloadError as e:
        _check_trace_error(e, p)


def _belusim_trace_records():
    head = {"format": "belusim-trace", "version": 1, "block_size": 16, "mode": "open", "requests": 2}
    reqs = [{"req_id": i, "arrival_s": float(i), "prompt_tokens": 40, "output_tokens": 4, "block_size": 16,
             "block_keys": [7 * i + 1, 7 * i + 2], "source": "fuzz"} for i in range(2)]
    return [head] + reqs


@FUZZ
@given(raw=jsonl_files(_belusim_trace_records()))
def test_fuzz_belusim_trace_reader(tmp_path_factory, raw):
    p = tmp_path_factory.mktemp("b") / "b.jsonl"
    p.write_bytes(raw)
    try:
        read_trace(p)
    except WorkloadError as e:
        _check_trace_error(e, p)


def test_unmutated_fixtures_load(tmp_path):
    """The fuzzers start from inputs that load: a mutation is what makes them fail."""
    m = tmp_path / "m.jsonl"
    m.write_text("\n".join(json.dumps(r) for r in MOONCAKE) + "\n")
    assert len(read_mooncake(m)) == 3
    b = tmp_path / "b.jsonl"
    b.write_text("\n".join(json.dumps(r) for r in _belusim_trace_records()) + "\n")
    assert len(read_trace(b).requests) == 2
    resolve_scenario(TINY)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(caps=st.lists(st.floats(1.0, 100.0), min_size=1, max_size=4),
       flows=st.lists(st.tuples(st.floats(1e3, 1e9), st.sets(st.integers(0, 3), min_size=1, max_size=3),
                                st.one_of(st.just(math.inf), st.floats(0.5, 50.0)), st.floats(0.0, 0.05)),
                      min_size=1, max_size=8))
def test_fuzz_fabric_max_min_fairness_and_byte_conservation(caps, flows):
    env = Environment()
    fab = Fabric(env)
    links = [fab.add_link(f"l{i}", c) for i, c in enumerate(caps)]
    asked = 0.0

    def load(link):  # a path may cross one link twice (both ends in one DRAM): it counts twice
        return sum(f.rate * f.links.count(link) for f in fab._active)

    def check_fair():
        active = fab._active
        for link in links:  # no link over capacity
            assert load(link) <= link.capacity * (1 + 1e-9)
        for f in active:  # max-min: at its cap, or on a saturated link where no flow is faster
            assert f.rate > 0
            if f.cap < math.inf and f.rate >= f.cap * (1 - 1e-9):
                continue
            assert any(
                load(link) >= link.capacity * (1 - 1e-9)
                and all(g.rate <= f.rate * (1 + 1e-9) for g in active if link in g.links)
                for link in f.links
            ), "a flow could go faster without slowing a slower one"

    def start(nbytes, idx, cap, delay):
        yield env.timeout(delay)
        fab.flow(nbytes, [links[i % len(links)] for i in sorted(idx)], cap)
        check_fair()

    for nbytes, idx, cap, delay in flows:
        asked += nbytes
        env.process(start(nbytes, idx, cap, delay))
    env.run()
    assert fab.conservation_problems() == []
    assert fab.bytes_moved == pytest.approx(asked, rel=1e-9)


def test_fuzz_errors_are_the_projects_types():
    assert issubclass(ConfigError, InputError) and issubclass(WorkloadError, InputError)
