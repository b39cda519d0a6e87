"""Every other input a user gives the CLI ends, when wrong, in a clear refusal: exit 2 and one `error:` line
naming the option (or the stack file) and what is allowed, never a traceback or an exception's class name.

Options of `fleet fit`, `usage`, `render`, `loadtest` and `tune` (numbers out of range, NaN and infinity,
durations, URLs, paths that do not exist, are folders or are the wrong kind of file), GGUF files that are
folders, empty, cut short or noise, and stack files that are not YAML, a YAML list, empty, tab-indented, not
UTF-8, unreadable, or a folder. Run in process (typer's CliRunner), in a project folder made for each test.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fleet.cli import app

ROOT = Path(__file__).resolve().parents[2]
EXIT_CONFIG = 2
LEAKS = re.compile(r"Traceback \(most recent call last\)|\b[A-Z][A-Za-z]*(Error|Exception)\b|object at 0x|unexpectedly")
URL = "http://127.0.0.1:9"  # nothing is sent: every case is refused before a request


@pytest.fixture
def project(tmp_path):
    """A project folder: Pulumi.yaml and the dev stack, plus files the cases name."""
    shutil.copy(ROOT / "Pulumi.yaml", tmp_path / "Pulumi.yaml")
    shutil.copy(ROOT / "Pulumi.dev.yaml", tmp_path / "Pulumi.dev.yaml")
    (tmp_path / "folder.gguf").mkdir()
    (tmp_path / "empty.gguf").write_bytes(b"")
    (tmp_path / "noise.gguf").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "cut.gguf").write_bytes(b"GGUF\x03\x00\x00\x00\x00\x00")
    (tmp_path / "long-key.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 8 + b"\x01" + b"\x00" * 7 + b"\xff" * 8)
    (tmp_path / "a-file").write_text("not a folder\n")
    (tmp_path / "not-pem.crt").write_text("not a certificate\n")
    return tmp_path


def invoke(project: Path, args: list[str]):
    with contextlib.chdir(project):
        return CliRunner().invoke(app, args, env={"COLUMNS": "200", "NO_COLOR": "1"})


def assert_refused(result, *expected: str, one_line: bool = True) -> None:
    output = result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), f"{output}\n{result.exception!r}"
    assert result.exit_code == EXIT_CONFIG, output
    assert not LEAKS.search(output), output
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines and lines[0].startswith("error: "), output
    if one_line:
        assert len(lines) == 1, output
    for text in expected:
        assert text in output, f"{text!r} not in:\n{output}"


FIT = ["fit", "--model", "llama3.1:8b", "--instance", "g6e.xlarge"]
CPU_FIT = ["fit", "--model", "llama3.2:1b", "--instance", "local-cpu"]
OPTION_CASES = {
    "fit num-ctx zero": (FIT + ["--num-ctx", "0"], ["--num-ctx", "greater than or equal to 256"]),
    "fit num-ctx huge": (FIT + ["--num-ctx", "99999999999999999999"], ["--num-ctx"]),
    "fit num-parallel zero": (FIT + ["--num-parallel", "0"], ["--num-parallel"]),
    "fit num-parallel negative": (FIT + ["--num-parallel", "-3"], ["--num-parallel"]),
    "fit headroom nan": (FIT + ["--headroom", "nan"], ["--headroom nan"]),
    "fit headroom inf": (FIT + ["--headroom", "inf"], ["--headroom inf"]),
    "fit headroom one": (FIT + ["--headroom", "1"], ["--headroom 1"]),
    "fit ollama version garbage": (FIT + ["--ollama-version", "garbage"], ["is not an Ollama version"]),
    "fit ollama version shell": (FIT + ["--ollama-version", "$(id)"], ["is not an Ollama version"]),
    "fit ollama version with more": (FIT + ["--ollama-version", "0.24.0\nrm -rf"], ["is not an Ollama version"]),
    "fit ollama version too old": (FIT + ["--ollama-version", "0.0.1"], ["not supported"]),
    "fit memory zero": (CPU_FIT + ["--memory-gib", "0"], ["--memory-gib 0", "more than 0"]),
    "fit memory nan": (CPU_FIT + ["--memory-gib", "nan"], ["--memory-gib nan"]),
    "fit memory huge": (CPU_FIT + ["--memory-gib", "99999999"], ["--memory-gib 1e+08", "at most 65536"]),
    "fit memory on a gpu": (FIT + ["--memory-gib", "16"], ["--memory-gib", "only for a CPU instance"]),
    "fit unknown instance": (["fit", "--model", "llama3.1:8b", "--instance", "x1.nope"], ["--instance", "unknown instance type"]),
    "fit unknown quant": (FIT + ["--quant", "q3"], ["--quant"]),
    "fit kv cache": (FIT + ["--kv-cache-type", "q2"], ["--kv-cache-type"]),
    "fit model shell": (["fit", "--model", "x$(id):1", "--instance", "g6e.xlarge"], ["--model"]),
    "fit gguf folder": (["fit", "--model", "folder.gguf", "--instance", "g6e.xlarge"], ["folder.gguf", "is a folder"]),
    "fit path folder": (["fit", "--model", "./", "--instance", "g6e.xlarge"], ["is a folder"]),
    "fit gguf missing": (["fit", "--model", "./missing.gguf", "--instance", "g6e.xlarge"], ["missing.gguf", "no such GGUF file"]),
    "fit gguf empty": (["fit", "--model", "empty.gguf", "--instance", "g6e.xlarge"], ["empty.gguf", "not a readable GGUF file"]),
    "fit gguf noise": (["fit", "--model", "noise.gguf", "--instance", "g6e.xlarge"], ["noise.gguf", "not a GGUF file"]),
    "fit gguf cut": (["fit", "--model", "cut.gguf", "--instance", "g6e.xlarge"], ["cut.gguf", "ends early"]),
    "fit gguf length beyond the file": (["fit", "--model", "long-key.gguf", "--instance", "g6e.xlarge"], ["long-key.gguf", "ends early"]),
    "usage since zero": (["usage", "--since", "0", "--prometheus-url", URL], ["--since \"0\"", "above zero"]),
    "usage since newline": (["usage", "--since", "5m\n", "--prometheus-url", URL], ["--since \"5m\\n\""]),
    "usage since arabic digit": (["usage", "--since", "\u0661h", "--prometheus-url", URL], ["--since \"\\u0661h\""]),
    "usage since out of range": (["usage", "--since", "999999y", "--prometheus-url", URL], ["longer than Prometheus can hold"]),
    "usage since word": (["usage", "--since", "yesterday", "--prometheus-url", URL], ["--since"]),
    "usage url no scheme": (["usage", "--prometheus-url", "prometheus:9090"], ["Prometheus URL", "http://"]),
    "usage url broken": (["usage", "--prometheus-url", "http://[::1"], ["Prometheus URL", "not a valid URL"]),
    "usage url port": (["usage", "--prometheus-url", "http://x:99999"], ["Prometheus URL", "not a valid URL"]),
    "render out is a file": (["render", "--stack", "dev", "--out", "a-file"], ["--out a-file: is a file"]),
    "render out under a file": (["render", "--stack", "dev", "--out", "a-file/sub"], ["--out a-file/sub: cannot create"]),
    "loadtest concurrency zero": (["loadtest", URL, "-n", "1", "-c", "0"], ["--concurrency"]),
    "loadtest concurrency huge": (["loadtest", URL, "-n", "1", "-c", "99999999999"], ["--concurrency", "10000"]),
    "loadtest concurrency word": (["loadtest", URL, "-n", "1", "-c", "many"], ["--concurrency"]),
    "loadtest rate inf": (["loadtest", URL, "-n", "1", "-r", "inf"], ["--rate"]),
    "loadtest rate nan": (["loadtest", URL, "-n", "1", "-r", "nan"], ["--rate"]),
    "loadtest requests negative": (["loadtest", URL, "-n", "-1"], ["--requests"]),
    "loadtest duration nan": (["loadtest", URL, "-d", "nan"], ["--duration"]),
    "loadtest timeout inf": (["loadtest", URL, "-n", "1", "--timeout", "inf"], ["--timeout inf"]),
    "loadtest timeout negative": (["loadtest", URL, "-n", "1", "--timeout", "-1"], ["--timeout"]),
    "loadtest drain inf": (["loadtest", URL, "-n", "1", "--drain", "inf"], ["--drain"]),
    "loadtest ca missing": (["loadtest", URL, "-n", "1", "--ca-cert", "missing.crt"], ["--ca-cert missing.crt: no such file"]),
    "loadtest ca folder": (["loadtest", URL, "-n", "1", "--ca-cert", "folder.gguf"], ["--ca-cert folder.gguf: is a folder"]),
    "loadtest ca not pem": (["loadtest", URL, "-n", "1", "--ca-cert", "not-pem.crt"], ["--ca-cert not-pem.crt: not a readable PEM"]),
    "loadtest out is a file": (["loadtest", URL, "-n", "1", "-o", "a-file"], ["--out a-file: is a file"]),
    "loadtest url broken": (["loadtest", "http://[::1", "-n", "1"], ["not a valid URL"]),
    "loadtest url no host": (["loadtest", "http://", "-n", "1"], ["not a valid URL"]),
    "loadtest url scheme": (["loadtest", "ftp://x", "-n", "1"], ["must start with http://"]),
    "loadtest source ip": (["loadtest", URL, "-n", "1", "--source-ip", "999.1.1.1"], ["--source-ip"]),
    "tune tolerance nan": (["tune", "-s", "dev", "-g", "cpu", "--url", URL, "-n", "1", "--tolerance", "nan"], ["--tolerance nan"]),
    "tune ttft negative": (["tune", "-s", "dev", "-g", "cpu", "--url", URL, "-n", "1", "--max-p95-ttft", "-1"], ["--max-p95-ttft"]),
    "tune error rate inf": (["tune", "-s", "dev", "-g", "cpu", "--url", URL, "-n", "1", "--max-error-rate", "inf"], ["--max-error-rate inf"]),
    "tune values huge": (["tune", "-s", "dev", "-g", "cpu", "--url", URL, "-n", "1", "--values", "99999999999"], ["--values"]),
    "tune clients zero": (["tune", "-s", "dev", "-g", "cpu", "--url", URL, "-n", "1", "--clients", "0"], ["--clients 0"]),
    "tune out is a file": (["tune", "-s", "dev", "-g", "cpu", "--url", URL, "-n", "1", "-o", "a-file"], ["--out a-file: is a file"]),
    "tune ca folder": (["tune", "-s", "dev", "-g", "cpu", "--url", URL, "-n", "1", "--ca-cert", "folder.gguf"], ["--ca-cert folder.gguf"]),
    "tune results missing": (["tune", "-s", "dev", "-g", "cpu", "--from-results", "missing"], ["--from-results missing"]),
    "tune results folder": (["tune", "-s", "dev", "-g", "cpu", "--from-results", "folder.gguf"], ["--from-results"]),
    "tune unknown group": (["tune", "-s", "dev", "-g", "nope", "--url", URL, "-n", "1"], ["Pulumi.dev.yaml", "no node group"]),
}


@pytest.mark.parametrize("case", sorted(OPTION_CASES))
def test_a_bad_option_is_refused_in_one_line(project, case):
    args, expected = OPTION_CASES[case]
    assert_refused(invoke(project, args), *expected)


# Stack files that are not a stack: (file contents as bytes, what the refusal says).
STACK_FILES = {
    "not yaml": (b"config: [unclosed\n", ["not valid YAML at line"]),
    "a yaml list": (b"- config\n- x\n", ["must be a mapping with a `config:` mapping (found a list)"]),
    "a yaml string": (b"just words\n", ["(found a string)"]),
    "config a list": (b"config:\n  - x\n", ["(found a list)"]),
    "empty": (b"", ["ollama-fleet:fleet: required key is missing"]),
    "only a comment": (b"# nothing here\n", ["ollama-fleet:fleet: required key is missing"]),
    "tab indented": (b"config:\n\tollama-fleet:fleet: {}\n", ["not valid YAML at line 2, column 1", "indent with spaces"]),
    "not utf-8": (b"config:\n  \xff\xfe: 1\n", ["cannot be read as UTF-8"]),
    "utf-16 with a byte order mark": ("config: {}\n".encode("utf-16"), ["cannot be read as UTF-8"]),
    "nested too deep": (b"config: " + b"[" * 5000 + b"]" * 5000 + b"\n", ["nested more than 64 levels deep"]),
    "a number as a key": (b"config:\n  7: x\n  ollama-fleet:fleet: {}\n", ["config[7]: not a config key"]),
    "an alias": (b"config:\n  a: &x 1\n  b: *x\n", ["anchors and aliases"]),
}


@pytest.mark.parametrize("command", ["validate", "preview", "plan", "render"])
@pytest.mark.parametrize("case", sorted(STACK_FILES))
def test_a_stack_file_that_is_no_stack_is_refused_clearly(project, case, command):
    content, expected = STACK_FILES[case]
    (project / "Pulumi.broken.yaml").write_bytes(content)
    args = [command, "--stack", "broken"] + (["--out", "out"] if command == "render" else [])
    assert_refused(invoke(project, args), "Pulumi.broken.yaml", *expected, one_line=False)


def test_a_byte_order_mark_is_read_as_utf8(project):
    (project / "Pulumi.bom.yaml").write_bytes(b"\xef\xbb\xbf" + (project / "Pulumi.dev.yaml").read_bytes().replace(b"environment:\n  - ollama-fleet/dev\n", b""))
    result = invoke(project, ["validate", "--stack", "bom"])
    assert result.exit_code == 0, result.output


def test_a_folder_named_like_a_stack_file_is_no_stack(project):
    (project / "Pulumi.folder.yaml").mkdir()
    result = invoke(project, ["validate", "--stack", "folder"])
    assert_refused(result, "Pulumi.folder.yaml", "no stack file for stack 'folder'", one_line=False)
    assert "stacks here: dev" in result.output  # the folder is not listed as a stack


def test_a_missing_stack_names_the_ones_there(project):
    assert_refused(invoke(project, ["validate", "--stack", "nope"]), "Pulumi.nope.yaml", "stacks here: dev", one_line=False)


def test_an_unreadable_stack_file_is_refused_clearly(project, monkeypatch):
    """As root every file is readable, so the read itself is made to fail as it does for another user."""
    target = project / "Pulumi.dev.yaml"
    real = Path.read_text

    def read_text(self, *args, **kwargs):
        if self.name == target.name:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    assert_refused(invoke(project, ["validate", "--stack", "dev"]), "Pulumi.dev.yaml", "Permission denied", one_line=False)


def test_a_failure_no_command_foresaw_still_ends_in_one_line(project, monkeypatch):
    """The command group's last line of defence: an unexpected error is one line and exit 1 (a traceback only
    with FLEET_DEBUG=1)."""
    from fleet.cli import capacity as cli_capacity

    def broken(*args, **kwargs):
        raise RuntimeError("something\nbroke")

    monkeypatch.setattr(cli_capacity.capacity, "single_model_group", broken)
    result = invoke(project, FIT)
    assert result.exit_code == 1, result.output
    assert result.output.splitlines()[0] == "error: the command failed unexpectedly: something broke", result.output
    assert "Traceback" not in result.output
    with contextlib.chdir(project):
        debug = CliRunner().invoke(app, FIT, env={"FLEET_DEBUG": "1"})
    assert isinstance(debug.exception, RuntimeError)


def test_an_os_error_no_command_foresaw_names_the_file(project, monkeypatch):
    from fleet.cli import capacity as cli_capacity

    def broken(*args, **kwargs):
        raise PermissionError(13, "Permission denied", "/some/file")

    monkeypatch.setattr(cli_capacity.capacity, "single_model_group", broken)
    result = invoke(project, FIT)
    assert result.exit_code == 1, result.output
    assert result.output.splitlines() == ["error: /some/file: Permission denied"], result.output


def test_the_cases_leave_no_output_behind(project):
    """A refused render or load test creates nothing (the refusal comes before any work)."""
    invoke(project, ["render", "--stack", "dev", "--out", "a-file/sub"])
    assert sorted(p.name for p in project.iterdir() if p.is_dir()) == ["folder.gguf"]
    assert os.path.isfile(project / "a-file")


def test_a_program_failure_is_its_own_message_without_the_sdk_wrapping():
    from fleet.cli.errors import program_failure

    wrapped = ValueError(
        "While processing resource: 'ollama-monitoring-alertmanager', type: 'docker:index/container:Container'\n"
        "ValueError has risen: While processing input: 'uploads', type <class 'str'>, value "
        "[<pulumi_docker._inputs.ContainerUploadArgs object at 0x7fb75b4232d0>]\n"
        "ValueError has risen: ollama-fleet:alertReceiverSecrets has no secret for receiver(s) chat"
    )
    assert program_failure(wrapped) == "ollama-fleet:alertReceiverSecrets has no secret for receiver(s) chat"
    assert program_failure(RuntimeError("a <x.Y object at 0xdeadbeef>\nhere")) == "a <value> here"
