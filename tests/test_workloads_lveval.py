"""LV-Eval: statistics table, synthetic generator, file loader (jsonl + zip), keys."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from belusim.workloads import WorkloadError, build_workload
from belusim.workloads.lveval import SUBSETS, TokenCounter, discover, load_files, synthesize, truncate

BS = 16


def words(tag: str, n: int) -> str:
    return " ".join(f"{tag}{i}" for i in range(n))


def rec(context: str, question: str, answer: str = "Paris", lang: str = "en", dataset: str = "factrecall_en") -> dict:
    return {
        "input": question,
        "context": context,
        "answers": [answer],
        "length": len(context.split()),
        "dataset": dataset,
        "language": lang,
        "answer_keywords": answer,
        "confusing_facts": [],
    }


CTX_A = words("alpha", 100)  # 130 estimated tokens -> 8 full context blocks
CTX_B = words("beta", 100)
Q1 = words("q", 20)  # 26 tokens: prompt 156 -> 9 blocks, block 8 holds question tokens
Q2 = words("r", 20)


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def lv_dir(tmp_path):
    """The Hugging Face layout: a plain jsonl and a {subset}.zip holding {subset}/{subset}_{level}.jsonl."""
    d = tmp_path / "LVEval"
    write_jsonl(d / "factrecall_en_16k.jsonl", [rec(CTX_A, Q1), rec(CTX_A, Q2), rec(CTX_B, Q1)])
    with zipfile.ZipFile(d / "cmrc_mixup.zip", "w") as zf:
        for level, n in (("16k", 2), ("32k", 1)):
            body = "".join(
                json.dumps(rec("北京是中国的首都。" * 10 + str(i), "中国的首都是哪里？", "北京", "zh", "cmrc_mixup"), ensure_ascii=False) + "\n"
                for i in range(n)
            )
            zf.writestr(f"cmrc_mixup/cmrc_mixup_{level}.jsonl", body)
    return d


def build(cfg: dict, bs: int = BS, seed: int = 0, base: Path | None = None):
    return build_workload(cfg, block_size=bs, seed=seed, base_dir=base or Path.cwd())


# --- statistics table ----------------------------------------------------------------------


def test_table_matches_components_md():
    assert len(SUBSETS) == 11
    assert sum(s.qa_pairs for s in SUBSETS.values()) == 1729
    assert SUBSETS["hotpotwikiqa_mixup"].mean_prompt_tokens["16k"] == 30_020
    assert SUBSETS["factrecall_en"].mean_prompt_tokens["256k"] == 233_909
    assert SUBSETS["factrecall_en"].gen_cap == 16 and SUBSETS["loogle_SD_mixup"].gen_cap == 64
    assert SUBSETS["multifieldqa_en_mixup"].mean_answer_tokens == 14.9
    for name, s in SUBSETS.items():
        known = name in ("hotpotwikiqa_mixup", "multifieldqa_en_mixup", "loogle_SD_mixup", "factrecall_en")
        assert s.prompt_tokens_source.startswith("components.md") == known
        assert s.prompt_tokens_source.startswith("assumed") != known
    # Chinese: the English base / 1.3 tokens per word x 0.8 tokens per character.
    assert SUBSETS["factrecall_zh"].mean_prompt_tokens["16k"] == pytest.approx(15_171 / 1.3 * 0.8)


# --- synthetic -----------------------------------------------------------------------------


def test_synthetic_is_deterministic_and_seed_dependent():
    cfg = {"kind": "lveval-synthetic", "num_prompts": 40, "shared_context_fraction": 0.3}
    a, b, c = build(cfg, seed=5), build(cfg, seed=5), build(cfg, seed=6)
    assert [(r.prompt_tokens, r.output_tokens, r.source) for r in a.requests] == [
        (r.prompt_tokens, r.output_tokens, r.source) for r in b.requests
    ]
    assert all(np.array_equal(x.block_keys, y.block_keys) for x, y in zip(a.requests, b.requests))
    assert [r.prompt_tokens for r in a.requests] != [r.prompt_tokens for r in c.requests]
    assert a.mode == "closed" and a.clients == 16 and all(r.arrival_s is None for r in a.requests)


def test_synthetic_lengths_follow_table():
    ps = synthesize(subsets=["hotpotwikiqa_mixup", "factrecall_en"], level="32k", num_prompts=2000, seed=1)
    for s in ("hotpotwikiqa_mixup", "factrecall_en"):
        lens = np.array([p.prompt_tokens for p in ps if p.subset == s])
        mean = SUBSETS[s].mean_prompt_tokens["32k"]
        assert lens.mean() == pytest.approx(mean, rel=0.02)
        assert lens.std() / lens.mean() == pytest.approx(0.15, rel=0.15)
    # Drawn in proportion to QA pairs (124 : 200).
    share = np.mean([p.subset == "hotpotwikiqa_mixup" for p in ps])
    assert share == pytest.approx(124 / 324, abs=0.04)


def test_synthetic_min_filter_truncation_and_caps():
    wl = build({"kind": "lveval-synthetic", "num_prompts": 200, "min_prompt_tokens": 15_000, "truncate_tokens": 2048})
    assert all(r.prompt_tokens == 2048 for r in wl.requests)
    assert all(r.tags["question_tokens"] == 32 for r in wl.requests)
    assert all(len(r.block_keys) == 128 for r in wl.requests)
    for r in wl.requests:
        cap = 16 if r.tags["subset"].startswith("factrecall") else 64
        assert 1 <= r.output_tokens <= cap
    ps = synthesize(subsets=["factrecall_en"], level="16k", num_prompts=300, seed=2, min_prompt_tokens=15_000)
    assert min(p.full_prompt_tokens for p in ps) >= 15_000
    with pytest.raises(WorkloadError, match="min_prompt_tokens"):
        synthesize(subsets=["factrecall_en"], level="16k", num_prompts=3, seed=2, min_prompt_tokens=40_000)


def test_synthetic_shared_context_keys():
    wl = build({"kind": "lveval-synthetic", "num_prompts": 60, "shared_context_fraction": 0.5, "subsets": ["factrecall_en"]})
    reqs = wl.requests
    shared = [r for r in reqs if r.tags["shared_context"]]
    assert shared
    by_first = {}
    for r in reqs:
        by_first.setdefault(int(r.block_keys[0]), []).append(r)
    groups = [g for g in by_first.values() if len(g) > 1]
    assert groups
    for g in groups:
        ctx = g[0].tags["context_tokens"]
        assert all(r.tags["context_tokens"] == ctx for r in g)
        n_ctx = ctx // BS
        for r in g[1:]:
            assert np.array_equal(r.block_keys[:n_ctx], g[0].block_keys[:n_ctx])  # context shared
            assert not set(r.block_keys[n_ctx:].tolist()) & set(g[0].block_keys[n_ctx:].tolist())  # question unique
    # Nothing is shared without a shared context.
    solo = build({"kind": "lveval-synthetic", "num_prompts": 30})
    all_keys = np.concatenate([r.block_keys for r in solo.requests])
    assert len(np.unique(all_keys)) == len(all_keys)


def test_truncate_rule():
    assert truncate(1000, 30, None) == (1000, 30)
    assert truncate(1000, 30, 512) == (482, 30)
    assert truncate(1000, 30, 20) == (0, 20)


def test_same_prompts_in_both_phases():
    cfg = {"kind": "lveval-synthetic", "num_prompts": 10, "arrival": {"process": "poisson", "rate_qps": 2}}
    a = build_workload(cfg, block_size=BS, seed=3, base_dir=Path.cwd(), phase="populate")
    b = build_workload(cfg, block_size=BS, seed=3, base_dir=Path.cwd(), phase="hit")
    assert all(np.array_equal(x.block_keys, y.block_keys) for x, y in zip(a.requests, b.requests))
    assert a.mode == "open" and all(r.arrival_s is not None for r in a.requests)


# --- files ----------------------------------------------------------------------------------


def test_discover_jsonl_and_zip(lv_dir):
    srcs = discover(lv_dir, None, ["16k"])
    assert [(s.subset, s.level, s.member) for s in srcs] == [
        ("cmrc_mixup", "16k", "cmrc_mixup/cmrc_mixup_16k.jsonl"),
        ("factrecall_en", "16k", None),
    ]
    assert {s.level for s in discover(lv_dir, ["cmrc_mixup"], None)} == {"16k", "32k"}
    with pytest.raises(WorkloadError, match="subset 'nope' not found"):
        discover(lv_dir, ["nope"], ["16k"])
    with pytest.raises(WorkloadError, match="no file for subset 'factrecall_en' at level '64k'"):
        discover(lv_dir, ["factrecall_en"], ["64k"])


def test_file_keys_share_context_not_question(lv_dir):
    wl = build({"kind": "lveval-files", "path": str(lv_dir), "subsets": ["factrecall_en"]})
    r0, r1, r2 = wl.requests
    # 100 words x 1.3 = 130 context tokens, 20 words x 1.3 = 26 question tokens.
    assert r0.prompt_tokens == 156 and r0.tags["context_tokens"] == 130 and len(r0.block_keys) == 9
    assert np.array_equal(r0.block_keys[:8], r1.block_keys[:8])  # same context: 8 full blocks shared
    assert r0.block_keys[8] != r1.block_keys[8]  # block 8 holds question tokens
    assert not set(r2.block_keys.tolist()) & set(r0.block_keys.tolist())  # other context
    # "Paris" = 1 word -> 1.3 -> 1 token, under the factrecall cap of 16.
    assert r0.output_tokens == 1
    assert r0.source == "lveval:factrecall_en:16k:0"
    # Replaying a record gives the same keys.
    again = build({"kind": "lveval-files", "path": str(lv_dir), "subsets": ["factrecall_en"]}, seed=9)
    assert all(np.array_equal(x.block_keys, y.block_keys) for x, y in zip(wl.requests, again.requests))


def test_chinese_token_estimate_and_zip_records(lv_dir):
    wl = build({"kind": "lveval-files", "path": str(lv_dir), "subsets": ["cmrc_mixup"], "levels": ["16k", "32k"]})
    assert len(wl.requests) == 3
    ctx_chars = len("北京是中国的首都。" * 10) + 1
    assert wl.requests[0].tags["context_tokens"] == round(ctx_chars * 0.8)
    assert wl.requests[0].tags["question_tokens"] == round(len("中国的首都是哪里？") * 0.8)
    assert wl.requests[0].tags["language"] == "zh"
    c = TokenCounter(tokens_per_word_en=2.0, tokens_per_char_zh=0.5)
    assert c.estimate("one two three", "en") == 6 and c.estimate("一二 三四", "zh") == 2


def test_files_filter_truncate_limit_order(lv_dir):
    base = {"kind": "lveval-files", "path": str(lv_dir), "subsets": ["factrecall_en"]}
    assert len(build({**base, "min_prompt_tokens": 156}).requests) == 3
    with pytest.raises(WorkloadError, match="no LV-Eval records left"):
        build({**base, "min_prompt_tokens": 157})
    t = build({**base, "truncate_tokens": 100})
    assert all(r.prompt_tokens == 100 and r.tags["question_tokens"] == 26 for r in t.requests)
    full = build(base)
    # Truncation keeps the head of the context, so the first blocks are unchanged.
    assert np.array_equal(t.requests[0].block_keys[:4], full.requests[0].block_keys[:4])
    assert len(build({**base, "max_records": 2}).requests) == 2
    sh = build({**base, "shuffle": True}, seed=1)
    assert sorted(r.source for r in sh.requests) == sorted(r.source for r in full.requests)


def test_relative_path_resolves_against_base_dir(lv_dir):
    wl = build({"kind": "lveval-files", "path": "LVEval", "subsets": ["factrecall_en"]}, base=lv_dir.parent)
    assert len(wl.requests) == 3
    with pytest.raises(WorkloadError, match="not found"):
        build({"kind": "lveval-files", "path": "no-such-dir"}, base=lv_dir.parent)


@pytest.mark.parametrize(
    "line, field, fragment",
    [
        ({"input": "q", "answers": ["a"], "language": "en"}, "context", "missing"),
        ({"input": 3, "context": "c", "answers": ["a"], "language": "en"}, "input", "string"),
        ({"input": "q", "context": "c", "answers": [1], "language": "en"}, "answers", "list of strings"),
        ({"input": "q", "context": "c", "answers": ["a"], "language": "fr"}, "language", "'en' or 'zh'"),
        ({"input": "q", "context": "c", "answers": ["a"], "length": -3, "language": "en"}, "length", "non-negative"),
    ],
)
def test_record_errors_name_file_member_line_field(tmp_path, line, field, fragment):
    d = tmp_path / "lv"
    d.mkdir()
    good = rec(CTX_A, Q1)
    with zipfile.ZipFile(d / "factrecall_en.zip", "w") as zf:
        zf.writestr("factrecall_en/factrecall_en_16k.jsonl", json.dumps(good) + "\n" + json.dumps(good) + "\n" + json.dumps(line) + "\n")
    with pytest.raises(WorkloadError) as e:
        build({"kind": "lveval-files", "path": str(d)})
    msg = str(e.value)
    assert "factrecall_en.zip[factrecall_en/factrecall_en_16k.jsonl]:3:" in msg
    assert f"field '{field}'" in msg and fragment in msg


def test_malformed_json_line_in_plain_file(tmp_path):
    p = write_jsonl(tmp_path / "x" / "factrecall_en_16k.jsonl", [rec(CTX_A, Q1), "{not json"])
    with pytest.raises(WorkloadError, match=r"factrecall_en_16k\.jsonl:2: invalid JSON"):
        load_files(p.parent)


def test_tokenizer_json_counts_and_prefix_sharing(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab_words = sorted(set((CTX_A + " " + Q1 + " " + Q2 + " extra Paris").split()))
    vocab = {w: i for i, w in enumerate(vocab_words)}
    vocab["[UNK]"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok_path = tmp_path / "tokenizer.json"
    tok.save(str(tok_path))
    # Contexts sharing their first 100 words share exactly 100 // 16 = 6 blocks.
    write_jsonl(
        tmp_path / "lv" / "factrecall_en_16k.jsonl",
        [rec(CTX_A, Q1), rec(CTX_A + " extra extra", Q2)],
    )
    wl = build({"kind": "lveval-files", "path": str(tmp_path / "lv"), "tokenizer_json": str(tok_path)})
    a, b = wl.requests
    assert a.prompt_tokens == 120 and b.prompt_tokens == 122  # one token per word
    assert np.array_equal(a.block_keys[:6], b.block_keys[:6])
    assert a.block_keys[6] != b.block_keys[6]
    with pytest.raises(WorkloadError, match="tokenizer_json"):
        build({"kind": "lveval-files", "path": str(tmp_path / "lv"), "tokenizer_json": str(tmp_path / "lv" / "factrecall_en_16k.jsonl")})


def test_trace_stats_measures_haystack_reuse_with_a_tokenizer(tmp_path):
    """factrecall-style records: one haystack, a fact inserted at different depths; a real
    tokenizer finds the shared prefix up to the earlier insertion."""
    pytest.importorskip("tokenizers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    from belusim.workloads.stats import trace_stats

    hay = [f"w{i}" for i in range(200)]
    fact = ["the", "secret", "is", "blue"]
    ctx1 = " ".join(hay[:40] + fact + hay[40:])
    ctx2 = " ".join(hay[:70] + fact + hay[70:])
    vocab = {w: i for i, w in enumerate(sorted(set(hay + fact + ["what", "is", "the", "secret"])))}
    vocab["[UNK]"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    write_jsonl(tmp_path / "lv" / "factrecall_en_16k.jsonl", [rec(ctx1, "what is the secret"), rec(ctx2, "what is the secret")])
    s = trace_stats(tmp_path / "lv", "lveval", 16, tokenizer_json=tmp_path / "tokenizer.json")
    total = 2 * (204 + 4)
    assert s["prefix_hit_ratio"] == pytest.approx((40 // 16) * 16 / total)
    # without a tokenizer the two contexts differ as wholes: no reuse is seen
    assert trace_stats(tmp_path / "lv", "lveval", 16)["prefix_hit_ratio"] == 0.0
