"""Every benchmark still starts: each script under bench/ is imported as its own `python bench/x.py` run would
import it (its `sys.path` set-up included), without running its measurement.

The measurements themselves take minutes and print figures (docs/benchmarks.md); this catches a benchmark left
behind by a moved module or a renamed function, which otherwise shows only when someone next measures.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(p for p in (ROOT / "bench").glob("*.py") if p.name != "common.py")

# Imports the script under a module name other than __main__, so its `if __name__ == "__main__":` block (the
# measurement) does not run, with bench/ first on sys.path as when Python runs the script itself.
IMPORT = (
    "import importlib.util, sys\n"
    "path = sys.argv[1]\n"
    "sys.path.insert(0, path.rsplit('/', 1)[0])\n"
    "spec = importlib.util.spec_from_file_location('bench_under_test', path)\n"
    "module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)\n"
    "spec.loader.exec_module(module)\n"
    "assert callable(getattr(module, 'main', None)), 'no main()'\n"
)


def test_there_are_benchmarks_to_check():
    assert len(SCRIPTS) >= 10


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_the_benchmark_imports_and_has_a_main(script):
    text = script.read_text()
    assert 'if __name__ == "__main__":' in text, f"{script.name} would measure on import"
    done = subprocess.run([sys.executable, "-c", IMPORT, str(script)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, f"{script.name} does not import:\n{done.stderr[-3000:]}"


def test_a_benchmark_importing_a_moved_module_is_caught(tmp_path):
    script = tmp_path / "old.py"
    script.write_text('from fleet.exporter_proxy import ExporterServer\n\ndef main():\n    pass\n\n'
                      'if __name__ == "__main__":\n    main()\n')
    done = subprocess.run([sys.executable, "-c", IMPORT, str(script)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0 and "ModuleNotFoundError" in done.stderr
