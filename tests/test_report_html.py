"""HTML reports, opened in a real headless Chromium: no console errors, every figure drawn,
a screenshot saved. Skips, saying why, where no Chromium is installed (`.ci/run` installs
Debian's `chromium` package when it can)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from belusim.cli.main import app

CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium found (apt-get install chromium): the "
                                                             "HTML reports are not opened in a browser here")

TINY = {
    "name": "tiny-html",
    "model": "qwen3-32b",
    "gpu": "h20",
    "cluster": {"servers": 1, "gpus_per_server": 2},
    "engine": {"kv_blocks": 400},
    "systems": [{"name": "vllm", "kv": {"kind": "hbm-only"}}, {"name": "cxl", "kv": {"kind": "cxl-pool",
                                                                                      "capacity_gb": 100}}],
    "workload": {"kind": "lveval-synthetic", "num_prompts": 12, "truncate_tokens": 2000,
                 "output": {"mode": "fixed", "tokens": 16}, "arrival": {"process": "closed", "clients": 4}},
}

# Collects what the page reports as errors into the DOM, where --dump-dom shows it.
_TRAP = ("<script>window.__errs=[];window.addEventListener('error',e=>window.__errs.push(String(e.message)));"
         "const _ce=console.error;console.error=(...a)=>{window.__errs.push(a.join(' '));_ce(...a)};"
         "window.addEventListener('load',()=>setTimeout(()=>{const p=document.createElement('pre');p.id='errs';"
         "p.textContent=JSON.stringify(window.__errs);document.body.appendChild(p)},0));</script>")


def open_in_chromium(page: Path, shot: Path) -> tuple[str, str, list[str]]:
    """(rendered DOM, Chromium's log, errors the page raised) for `page`; saves a screenshot."""
    trapped = page.with_name(page.stem + ".trapped.html")
    trapped.write_text(page.read_text().replace("<head>", "<head>" + _TRAP, 1))
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--virtual-time-budget=15000", "--enable-logging=stderr", "--v=0"]
    dom = subprocess.run(base + ["--dump-dom", trapped.as_uri()], capture_output=True, text=True, timeout=180)
    subprocess.run(base + ["--window-size=1280,2400", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, text=True, timeout=180)
    m = re.search(r'<pre id="errs">(.*?)</pre>', dom.stdout, re.S)
    assert m, f"the page never finished loading:\n{dom.stderr[-2000:]}"
    errors = json.loads(m.group(1).replace("&quot;", '"'))
    errors += [ln for ln in dom.stderr.splitlines() if "CONSOLE" in ln and ("Uncaught" in ln or "Error" in ln)]
    return dom.stdout, dom.stderr, errors


def check_figures(dom: str, expect: int) -> None:
    """Every figure div holds a drawn plot with at least one trace."""
    divs = re.findall(r'<div id="(fig\d+)" class="plotly-graph-div[^"]*"', dom)
    assert len(divs) == expect
    parts = re.split(r'<div id="fig\d+" class="plotly-graph-div[^"]*"', dom)[1:]
    for name, part in zip(divs, parts):
        assert 'class="main-svg"' in part, f"{name} not drawn"
        assert re.search(r'class="(trace|point|bars)[ "]', part), f"{name} drawn empty"


@pytest.fixture
def tiny(tmp_path):
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(TINY))
    return p


def test_report_files_are_self_contained(tiny, tmp_path):
    page = tmp_path / "run.html"
    r = CliRunner().invoke(app, ["run", str(tiny), "-q", "--report", str(page)])
    assert r.exit_code == 0, r.output
    text = page.read_text()
    assert "<script src=" not in text  # plotly.js inlined: opens offline
    assert text.count('class="plotly-graph-div"') == 4  # 2 CDFs, the breakdown, the links
    assert "TTFT CDF per system and phase" in text


@needs_chromium
def test_compare_and_plan_reports_open_in_chromium(tiny, tmp_path):
    cmp_page, plan_page = tmp_path / "compare.html", tmp_path / "plan.html"
    r = CliRunner().invoke(app, ["compare", str(tiny), "-q", "--report", str(cmp_page)])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["plan", str(tiny), "--slo", "ttft_p99=2500ms", "--seeds", "2", "--tolerance", "0.5",
                                 "--start-qps", "2", "--max-qps", "32", "--workers", "0", "-q",
                                 "--report", str(plan_page)])
    assert r.exit_code == 0, r.output
    for page, figures in ((cmp_page, 4), (plan_page, 5)):
        shot = page.with_suffix(".png")
        dom, log, errors = open_in_chromium(page, shot)
        assert errors == [], errors
        check_figures(dom, figures)
        assert shot.exists() and shot.stat().st_size > 20_000  # a page with figures, not a blank one


@needs_chromium
def test_the_browser_check_catches_a_broken_page(tmp_path):
    page = tmp_path / "bad.html"
    page.write_text("<!DOCTYPE html><html><head></head><body><div id=\"fig1\" class=\"plotly-graph-div\"></div>"
                    "<script>undefinedFunction()</script></body></html>")
    dom, _log, errors = open_in_chromium(page, tmp_path / "bad.png")
    assert any("undefinedFunction" in e for e in errors)
    with pytest.raises(AssertionError, match="not drawn"):
        check_figures(dom, 1)


@needs_chromium
def test_validate_report_opens_in_chromium(tmp_path):
    """`belusim validate --report` on the emulated backend: the error table and, per phase,
    predicted against measured TTFT and TPOT CDFs."""
    from tests.test_replay import SCENARIO

    sc = tmp_path / "replay.yaml"
    sc.write_text(yaml.safe_dump(SCENARIO))
    page = tmp_path / "validate.html"
    r = CliRunner().invoke(app, ["validate", str(sc), "--backend", "emulated", "-q", "--report", str(page)])
    assert r.exit_code == 0, r.output
    text = page.read_text()
    assert "TTFT CDF, phase hit" in text and "TPOT CDF, phase populate" in text
    assert "TTFT mean (ms)" in text  # the error table
    dom, _log, errors = open_in_chromium(page, page.with_suffix(".png"))
    assert errors == [], errors
    check_figures(dom, 4)  # 2 phases x (TTFT, TPOT)
    for fig in re.split(r'<div id="fig\d+" class="plotly-graph-div[^"]*"', dom)[1:]:
        assert fig.count('class="trace scatter') >= 2, "a figure lacks its predicted or measured line"
