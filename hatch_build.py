"""Wheel build hook: compile the simulator's hot modules to C extensions with mypyc.

    python hatch_build.py --inplace | --clean

builds them into this checkout (or removes them) for benchmarks that count a checkout's
instructions (benchmarks/instructions.py --tree). It needs mypy and setuptools installed,
writes and removes ./build, and while the .so files are there they, not the .py files, are
what runs.

`pip install .` builds them with the machine's C compiler (mypy, which carries mypyc, comes
from the package index as a build requirement). The compiled modules simulate exactly what
the Python source does; they only run faster. The .py files stay in the wheel beside them.

Pure Python instead, with the same results: an editable install (`pip install -e .`, so that
an edited .py file is what runs), BELUSIM_PURE_PYTHON=1, or a machine where compiling fails
(no compiler, no Python headers): the build then says why and goes on without them.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile

try:
    from hatchling.builders.hooks.plugin.interface import BuildHookInterface
except ImportError:  # run as a script (--inplace, --clean), where hatchling may be absent
    BuildHookInterface = object  # type: ignore[assignment,misc]

# The modules every engine step and transfer runs through (docs/performance.md). Compiled
# classes take no Python subclasses and no patched methods: tests wrap them instead.
COMPILED = [
    "belusim/policy/blocks.py",
    "belusim/policy/tier.py",
    "belusim/policy/scheduler.py",
    "belusim/policy/step.py",
    "belusim/policy/request.py",
    "belusim/policy/router.py",
    "belusim/policy/connector.py",
    "belusim/transport/fabric.py",
    "belusim/transport/stages.py",
    "belusim/transport/kvpath.py",
    "belusim/compute/roofline.py",
    "belusim/sim/engine.py",
    "belusim/sim/kernel.py",
    "belusim/sim/cluster.py",
]
GROUP = "belusim_core"  # the name of mypyc's shared runtime library in the wheel

SETUP = """\
import sys
from setuptools import setup
from mypyc.build import mypycify
mods = sys.argv[1:]
sys.argv = [sys.argv[0], "build_ext", "--inplace"]
setup(name="belusim-core", py_modules=[], packages=[],
      ext_modules=mypycify(["--follow-imports=silent", "--ignore-missing-imports"] + mods,
                           opt_level="3", group_name={group!r}))
"""


class CompileHotModules(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict) -> None:
        if version == "editable":
            return
        if os.environ.get("BELUSIM_PURE_PYTHON", "") not in ("", "0"):
            print("belusim: BELUSIM_PURE_PYTHON is set: installing pure Python", file=sys.stderr)
            return
        try:
            built = self._compile()
        except Exception as exc:  # any failure: pure Python, same results, slower
            print(f"belusim: compiling the hot modules failed, installing pure Python ({exc})",
                  file=sys.stderr)
            return
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        build_data["force_include"].update(built)

    def _compile(self) -> dict[str, str]:
        work = tempfile.mkdtemp(prefix="belusim-mypyc-")
        self._work = work
        shutil.copytree(os.path.join(self.root, "belusim"), os.path.join(work, "belusim"),
                        ignore=shutil.ignore_patterns("__pycache__", "*.so"))
        _run_mypyc(work)
        built = {path: os.path.relpath(path, work) for path in _compiled_files(work)}
        expected = len(COMPILED) + 1  # each module and the shared runtime
        if len(built) != expected:
            raise RuntimeError(f"expected {expected} compiled files, found {sorted(built.values())}")
        return built

    def finalize(self, version: str, build_data: dict, artifact_path: str) -> None:
        work = getattr(self, "_work", None)
        if work:
            shutil.rmtree(work, ignore_errors=True)


def _run_mypyc(work: str) -> None:
    """Compile COMPILED under `work` (a directory holding belusim/), the .so files in place."""
    with open(os.path.join(work, "setup_mypyc.py"), "w", encoding="utf-8") as f:
        f.write(SETUP.format(group=GROUP))
    proc = subprocess.run([sys.executable, "setup_mypyc.py", *COMPILED], cwd=work,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    os.remove(os.path.join(work, "setup_mypyc.py"))
    if proc.returncode:
        tail = "\n".join(proc.stdout.splitlines()[-20:])
        raise RuntimeError(f"mypyc exited with {proc.returncode}:\n{tail}")


def _compiled_files(root: str) -> list[str]:
    """The extensions mypyc left under `root`: each module beside its .py, the runtime at the top."""
    return [p for pattern in ("belusim/**/*.so", "belusim/**/*.pyd", f"{GROUP}__mypyc.*")
            for p in glob.glob(os.path.join(root, pattern), recursive=True)]


if __name__ == "__main__":
    root = os.path.dirname(os.path.abspath(__file__))
    if sys.argv[1:] not in (["--inplace"], ["--clean"]):
        sys.exit("usage: python hatch_build.py --inplace | --clean")
    for path in _compiled_files(root):
        os.remove(path)
    if sys.argv[1] == "--inplace":
        try:
            _run_mypyc(root)
        except (OSError, RuntimeError) as exc:
            sys.exit(f"hatch_build.py: {exc}")
        shutil.rmtree(os.path.join(root, "build"), ignore_errors=True)  # mypyc's C sources
        print(f"compiled {len(_compiled_files(root))} files in place; `python hatch_build.py --clean` "
              "removes them (until then an edited .py file in COMPILED does not run)")
