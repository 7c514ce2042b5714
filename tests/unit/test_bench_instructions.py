"""bench/instructions.py: the work it counts is the hub's accepted path, and it reads callgrind right.

The counting itself (several minutes under valgrind) is not run here: the work it counts
is run without valgrind, and its reading of a profile is checked on a real, small one.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "instructions.py"


@pytest.fixture(scope="module")
def instructions() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gsem_bench_instructions", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory, instructions: ModuleType) -> Path:
    import run as bench  # bench/, put on the path by the script

    target = tmp_path_factory.mktemp("instructions") / "data"
    bench.prepare_data_dir(target)
    return target


@pytest.mark.parametrize("work", ["hub", "floor"])
def test_the_counted_work_runs_and_every_transaction_is_accepted(work: str, data_dir: Path) -> None:
    """What callgrind would count: one lifecycle of 32 incidents; any refusal fails the run."""
    done = subprocess.run([sys.executable, str(SCRIPT), "--child", work, "--data-dir", str(data_dir),
                           "--lifecycles", "1", "1"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "not accepted" not in done.stderr


def test_a_refused_transaction_fails_the_count(data_dir: Path, tmp_path: Path) -> None:
    """Counting a hub that refuses would measure the wrong thing: the run says so and fails."""
    broken = tmp_path / "data"
    shutil.copytree(data_dir, broken)
    # No agreement for the benchmark's requesters: every Service_Request is refused.
    with sqlite3.connect(broken / "gsem.db") as db:
        db.execute("DELETE FROM agreements")
    done = subprocess.run([sys.executable, str(SCRIPT), "--child", "hub", "--data-dir", str(broken),
                           "--lifecycles", "1", "1"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 1
    assert "of the hub's transactions were not accepted" in done.stderr


@pytest.mark.skipif(shutil.which("valgrind") is None or shutil.which("callgrind_annotate") is None,
                    reason="valgrind (with callgrind_annotate) is not installed")
def test_a_real_profile_is_read_by_function_and_library(instructions: ModuleType, tmp_path: Path) -> None:
    """A small Python program under callgrind: its instructions are mostly the interpreter's."""
    out = tmp_path / "callgrind.out"
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-S", "-c",
                    "import re; [re.match(b'(a|b)+c', b'ab' * 300 + b'c') for _ in range(300)]"],
                   check=True, capture_output=True, timeout=300)
    functions = instructions.by_function(out)
    total = sum(functions.values())
    assert total > 10_000_000
    # Every function is read once: together they are the program's total.
    totals = [int(line.split()[1]) for line in out.read_text().splitlines() if line.startswith(("summary:", "totals:"))]
    assert totals and abs(total - totals[0]) < 0.01 * totals[0]
    libraries: dict[str, int] = {}
    for (_, where), count in functions.items():
        name = instructions.library_of(where)
        libraries[name] = libraries.get(name, 0) + count
    assert max(libraries, key=libraries.__getitem__) == "Python interpreter"
    # The regular expression engine is named among the costliest functions.
    top = sorted(functions.items(), key=lambda kv: -kv[1])[:10]
    assert any(name.startswith("sre_") for (name, _), _ in top), top


def test_without_valgrind_it_says_what_to_install(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path)}  # an empty directory: no valgrind on it
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2
    assert "valgrind is not installed" in done.stderr
