"""Fabric: max-min fair fluid flows, checked against hand-computed schedules."""

from __future__ import annotations

import math

import pytest
from belusim.sim.kernel import Environment

from belusim.transport.fabric import Fabric

GB = 1e9


def _run(env: Environment, fabric: Fabric, flows: dict) -> dict:
    """flows: name -> (start_s, nbytes, [link names], cap_gbps). Returns name -> finish time."""
    done: dict[str, float] = {}

    def one(name, start, nbytes, links, cap):
        if start:
            yield env.timeout(start)
        yield fabric.flow(nbytes, [fabric.link(n) for n in links], cap)
        done[name] = env.now

    for name, (start, nbytes, links, cap) in flows.items():
        env.process(one(name, start, nbytes, links, cap))
    env.run()
    return done


@pytest.fixture
def env():
    return Environment()


def test_single_flow_takes_bytes_over_bandwidth(env):
    f = Fabric(env)
    f.add_link("L", 10)
    done = _run(env, f, {"a": (0, 3e9, ["L"], math.inf)})
    assert done["a"] == pytest.approx(0.3, rel=1e-12)
    assert f.bytes_requested == f.bytes_delivered == 3e9
    assert f.link("L").bytes_carried == pytest.approx(3e9, rel=1e-12)
    assert f.flows_started == f.flows_finished == 1
    assert f.active_flows == 0


def test_single_flow_over_a_path_is_limited_by_its_narrowest_link(env):
    f = Fabric(env)
    f.add_link("fast", 100)
    f.add_link("slow", 4)
    f.add_link("mid", 20)
    done = _run(env, f, {"a": (0, 2e9, ["fast", "slow", "mid"], math.inf)})
    assert done["a"] == pytest.approx(0.5, rel=1e-12)


def test_two_equal_flows_share_a_bottleneck_and_finish_together(env):
    f = Fabric(env)
    f.add_link("L", 10)
    done = _run(env, f, {"a": (0, 1e9, ["L"], math.inf), "b": (0, 1e9, ["L"], math.inf)})
    assert done["a"] == pytest.approx(0.2, rel=1e-12)
    assert done["b"] == pytest.approx(0.2, rel=1e-12)


def test_flow_starting_midway_piecewise_constant_schedule(env):
    # a: 1 GB from t=0; b: 0.2 GB from t=0.05 on the same 10 GB/s link.
    # [0, 0.05): a alone at 10 GB/s -> 0.5 GB moved, 0.5 GB left.
    # [0.05, 0.09): both at 5 GB/s -> b done at 0.05 + 0.2/5 = 0.09; a has 0.3 GB left.
    # [0.09, 0.12): a alone at 10 GB/s -> done at 0.12.
    f = Fabric(env)
    f.add_link("L", 10)
    done = _run(env, f, {"a": (0, 1e9, ["L"], math.inf), "b": (0.05, 0.2e9, ["L"], math.inf)})
    assert done["b"] == pytest.approx(0.09, rel=1e-12)
    assert done["a"] == pytest.approx(0.12, rel=1e-12)
    assert f.link("L").busy_time == pytest.approx(0.12, rel=1e-12)


def test_max_min_fairness_three_links_classic(env):
    # L1 = 10 GB/s carries A and B; L2 = 4 GB/s carries B and C.
    # Progressive filling: L2 saturates first at 2 GB/s each (B, C frozen); A takes 10 - 2 = 8.
    # B (1 GB) ends at 0.5 s; A then has 16 - 4 = 12 GB left, C 2 - 1 = 1 GB left.
    # Then A alone on L1 at 10 -> ends 0.5 + 1.2 = 1.7; C alone on L2 at 4 -> ends 0.75.
    f = Fabric(env)
    f.add_link("L1", 10)
    f.add_link("L2", 4)
    rates = {}

    def probe():
        yield env.timeout(0.25)
        rates.update({round(fl.nbytes): fl.rate for fl in f._active})

    env.process(probe())
    done = _run(env, f, {
        "A": (0, 16e9, ["L1"], math.inf),
        "B": (0, 1e9, ["L1", "L2"], math.inf),
        "C": (0, 2e9, ["L2"], math.inf),
    })
    assert rates[16_000_000_000] == pytest.approx(8 * GB, rel=1e-12)
    assert rates[1_000_000_000] == pytest.approx(2 * GB, rel=1e-12)
    assert rates[2_000_000_000] == pytest.approx(2 * GB, rel=1e-12)
    assert done["B"] == pytest.approx(0.5, rel=1e-12)
    assert done["C"] == pytest.approx(0.75, rel=1e-12)
    assert done["A"] == pytest.approx(1.7, rel=1e-12)
    # accounting: bytes per link, busy time and mean utilisation over the makespan
    assert f.link("L1").bytes_carried == pytest.approx(17e9, rel=1e-9)
    assert f.link("L2").bytes_carried == pytest.approx(3e9, rel=1e-9)
    assert f.link("L2").busy_time == pytest.approx(0.75, rel=1e-12)
    util = f.utilisation(1.7)
    assert util["L1"] == pytest.approx(1.0, rel=1e-9)
    assert util["L2"] == pytest.approx(3e9 / (4e9 * 1.7), rel=1e-9)
    assert f.bytes_requested == pytest.approx(f.bytes_delivered, rel=1e-12)
    assert f.bytes_delivered == 19e9


def test_rate_cap_of_a_flow_leaves_the_rest_to_others(env):
    # a capped at 2 GB/s, b uncapped, on a 10 GB/s link: a at 2, b at 8.
    # a (1 GB) ends at 0.5 s; b has moved 4 of 8 GB, then runs at 10 -> ends 0.9 s.
    f = Fabric(env)
    f.add_link("L", 10)
    done = _run(env, f, {"a": (0, 1e9, ["L"], 2.0), "b": (0, 8e9, ["L"], math.inf)})
    assert done["a"] == pytest.approx(0.5, rel=1e-12)
    assert done["b"] == pytest.approx(0.9, rel=1e-12)


def test_cap_only_flow_and_cap_below_link(env):
    f = Fabric(env)
    f.add_link("L", 10)
    done = _run(env, f, {"capped": (0, 1e9, ["L"], 4.0), "nolink": (0, 1e9, [], 5.0)})
    assert done["capped"] == pytest.approx(0.25, rel=1e-12)
    assert done["nolink"] == pytest.approx(0.2, rel=1e-12)


def test_zero_byte_flow_completes_at_once_and_counts(env):
    f = Fabric(env)
    f.add_link("L", 10)
    done = _run(env, f, {"z": (0.1, 0, ["L"], math.inf)})
    assert done["z"] == 0.1
    assert f.flows_started == f.flows_finished == 1
    assert f.bytes_requested == f.bytes_delivered == 0


def test_a_crumb_of_a_flow_started_beside_a_long_one_lands_at_once(env):
    """A flow of less than the fabric's done threshold lands when it starts, even while
    another flow is far from landing (a start need not scan the others for finished ones)."""
    f = Fabric(env)
    f.add_link("L", 10)
    done = _run(env, f, {"long": (0.0, 1e9, ["L"], math.inf), "crumb": (0.05, 1e-4, ["L"], math.inf)})
    assert done["crumb"] == 0.05
    assert done["long"] == pytest.approx(0.1, rel=1e-12)
    assert f.flows_started == f.flows_finished == 2


def test_many_staggered_flows_conserve_bytes(env):
    f = Fabric(env)
    f.add_link("A", 7)
    f.add_link("B", 3)
    flows = {}
    for i in range(30):
        links = ["A"] if i % 3 == 0 else (["B"] if i % 3 == 1 else ["A", "B"])
        flows[f"f{i}"] = (0.013 * i, 1e8 * (1 + i % 7), links, 2.5 if i % 5 == 0 else math.inf)
    done = _run(env, f, flows)
    assert len(done) == 30
    assert f.flows_started == f.flows_finished == 30
    assert f.active_flows == 0
    total = sum(b for _s, b, _l, _c in flows.values())
    assert f.bytes_requested == pytest.approx(total, rel=1e-12)
    assert f.bytes_delivered == pytest.approx(total, rel=1e-12)
    on_a = sum(b for _s, b, l, _c in flows.values() if "A" in l)
    assert f.link("A").bytes_carried == pytest.approx(on_a, rel=1e-9)
    # no link ever ran above its capacity: bytes carried <= capacity x busy time
    for link in f.links.values():
        assert link.bytes_carried <= link.capacity * link.busy_time * (1 + 1e-9)


def test_bad_links_are_refused(env):
    f = Fabric(env)
    f.add_link("L", 1)
    with pytest.raises(ValueError):
        f.add_link("L", 2)
    with pytest.raises(ValueError):
        f.add_link("Z", 0)
    with pytest.raises(ValueError):
        f.flow(10, [])


def test_busy_time_of_a_link_crossed_twice_is_wall_time(env):
    f = Fabric(env)
    f.add_link("L", 10)
    done = _run(env, f, {"loop": (0, 1e9, ["L", "L"], math.inf)})
    # half duplex link crossed twice: each crossing at 5 GB/s
    assert done["loop"] == pytest.approx(0.2, rel=1e-12)
    assert f.link("L").bytes_carried == pytest.approx(2e9)
    assert f.link("L").busy_time == pytest.approx(0.2, rel=1e-12)


def _progressive_filling(flows: list) -> list[float]:
    """Max-min rates of (links, cap) flows, one flow at a time in the given order: the
    fabric's arithmetic before it grouped flows by kind and remembered rates by kinds."""
    spare, counts = {}, {}
    for links, _cap in flows:
        for link in links:
            spare[link] = link.capacity
            counts[link] = counts.get(link, 0) + 1
    rates = [0.0] * len(flows)
    unfrozen, r = list(range(len(flows))), 0.0
    while unfrozen:
        inc = min([spare[lk] / n for lk, n in counts.items()], default=math.inf)
        inc = max(min(inc, min(flows[i][1] for i in unfrozen) - r), 0.0)
        r += inc
        saturated = set()
        for lk, n in counts.items():
            spare[lk] -= inc * n
            if spare[lk] <= lk.capacity * 1e-12:
                saturated.add(lk)
        keep = []
        for i in unfrozen:
            links, cap = flows[i]
            if (cap < math.inf and cap - r <= cap * 1e-12) or not saturated.isdisjoint(links):
                rates[i] = r
                for lk in links:
                    counts[lk] -= 1
                    if not counts[lk]:
                        del counts[lk]
            else:
                keep.append(i)
        if len(keep) == len(unfrozen):
            break
        unfrozen = keep
    for i in unfrozen:
        rates[i] = r
    return rates


def test_rates_are_exactly_progressive_fillings_whatever_the_order_and_memory(env):
    """The fabric remembers rates by the multiset of kinds of flows in flight and fills by
    kind: the rates must be bit for bit those of filling flow by flow in any order."""
    import random

    rng = random.Random(7)
    f = Fabric(env)
    links = [f.add_link(f"l{i}", rng.uniform(3, 40)) for i in range(6)]
    kinds = []
    for _ in range(12):
        path = rng.sample(links, rng.randint(1, 4))
        if rng.random() < 0.2:
            path.append(path[0])  # a link crossed twice
        kinds.append((path, rng.choice([math.inf, math.inf, rng.uniform(1, 10)])))
    checked = rounds = 0
    for _ in range(300):
        chosen = [rng.choice(kinds) for _ in range(rng.randint(2, 9))]
        ref = _progressive_filling([(links_, cap * 1e9) for links_, cap in chosen])
        rounds += len(set(ref)) > 2
        for order in (chosen, chosen[::-1]):  # the second meets the first's remembered rates
            for links_, cap in order:
                f.flow(1e12, links_, cap)
            got = {}
            for fl in f._active:
                got.setdefault((fl.links, fl.cap), set()).add(fl.rate)
            for (links_, cap), r in zip(chosen, ref):
                assert got[(tuple(links_), cap * 1e9)] == {r}
                checked += 1
            for fl in f._active:  # end them: the next set starts from an empty fabric
                fl.remaining = 0.0
            f._reschedule()
            assert f.active_flows == 0
    assert rounds > 30 and checked > 3000  # many sets took several rounds of filling


@pytest.mark.parametrize("now", [3e4, 1e6])
def test_a_flow_due_within_the_clocks_resolution_lands_late_in_a_long_run(now):
    """Late in a run the clock cannot tell apart times closer than its float spacing (3.6 ps
    at 30,000 s): a flow due in less than that (and more than the 1 ps tolerance) must land,
    not re-arm a timer that fires at the same instant for ever."""
    env = Environment(initial_time=now)
    f = Fabric(env)
    f.add_link("L", 1)  # 1 GB/s: 1.5e-3 bytes take 1.5 ps
    done = f.flow(1.5e-3, [f.link("L")])
    for _ in range(1000):
        if done.triggered or env.peek() == float("inf"):
            break
        env.step()
    assert done.triggered and env.now == now
    assert f.flows_started == f.flows_finished == 1 and not f.conservation_problems()
