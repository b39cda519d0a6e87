"""The README's quickstart, run as written from a fresh folder: `fleet local up`, the exported environment,
a streamed answer through the gateway with curl, the `ollama` client and the `openai` client (the
self-signed certificate passed as the CA each time), a short load test and `fleet local down`.

Only what the suite's own set-up already did (scripts/bootstrap.sh) is left out, and the ports are moved to
free ones so the test never collides with a sandbox the developer has running."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

README = Path(__file__).resolve().parents[2] / "README.md"
SET_UP = "bash scripts/bootstrap.sh"
FREE_PORTS = " --https-port 0 --http-port 0 --prometheus-port 0"


def quickstart_blocks() -> list[tuple[str, str]]:
    """(language, code) of every fenced block in the README's quickstart section."""
    section = README.read_text().split("\n## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(bash|python)\n(.*?)```", section, re.S)


def commands(code: str) -> list[str]:
    """Shell commands of a block: continuation lines joined, the set-up the suite already ran left out."""
    joined = re.sub(r"\\\n\s*", " ", code)
    lines = [re.sub(r"\s+#\s.*$", "", line) for line in joined.splitlines()]  # trailing comments
    return [line for line in lines if line.strip() and not line.lstrip().startswith(("#", SET_UP))]


@pytest.fixture
def sandbox(tmp_path, ollama_binary):
    """A folder like a fresh clone's for the commands: `.venv` is this suite's virtualenv."""
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    return tmp_path


def run_shell(lines: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    script = "set -euo pipefail\n" + "\n".join(lines) + "\n"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEET_", "VIRTUAL_ENV"))}
    env.update(NO_COLOR="1", COLUMNS="200", PATH="/usr/local/bin:/usr/bin:/bin")  # the venv is not activated
    return subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_readme_quickstart_streams_answers_with_curl_ollama_and_openai(sandbox, tmp_path_factory):
    blocks = quickstart_blocks()
    assert [language for language, _ in blocks][:4] == ["bash", "python", "python", "bash"]
    start = commands(blocks[0][1])
    assert any(line.startswith(".venv/bin/fleet local up") for line in start)
    models = tmp_path_factory.mktemp("quickstart-models")  # the model is imported here, not in the user's cache
    start = [line + FREE_PORTS + f" --models-dir {models}" if line.startswith(".venv/bin/fleet local up") else line
             for line in start]
    env_line = next(line for line in start if "fleet local env" in line)
    closing = commands(blocks[3][1])
    down = [line for line in closing if "fleet local down" in line]
    try:
        started = run_shell(start, sandbox)
        assert started.returncode == 0, started.stderr[-4000:]
        assert "Traceback" not in started.stderr
        # curl -N printed Ollama's NDJSON lines as they came: several tokens, then the final object.
        lines = [json.loads(line) for line in started.stdout.splitlines() if line.startswith("{")]
        assert len(lines) > 3 and all("response" in line for line in lines)
        assert lines[-1]["done"] is True and 0 < lines[-1]["eval_count"] <= 48
        assert "".join(line["response"] for line in lines).strip()

        for language, code in blocks[1:3]:
            assert language == "python"
            answered = run_shell([env_line, ".venv/bin/python - <<'PYTHON'\n" + code + "PYTHON"], sandbox, timeout=300)
            assert answered.returncode == 0, answered.stderr[-4000:]
            assert len(answered.stdout.strip()) > 10, answered.stdout

        # The closing block: status, a short load test, then down. The load test's levels are bounded: on a
        # machine too busy to answer within a level and its drain time, it reports the requests as cut (and
        # exits 1: nothing succeeded) instead of overrunning; it never reports an error.
        looked = run_shell([env_line] + [line for line in closing if "fleet local down" not in line], sandbox, timeout=300)
        assert "running  nginx" in looked.stdout and "errors at" not in looked.stdout, looked.stdout[-4000:]
        assert "latency p95" in looked.stdout  # the summary table, every column kept
        if looked.returncode != 0:
            assert looked.stderr.strip().endswith("no request succeeded") and "cut at 1 clients" in looked.stdout
    finally:
        stopped = run_shell(down, sandbox, timeout=180)
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped" in stopped.stdout and not (sandbox / ".fleet" / "local" / "state.json").exists()
