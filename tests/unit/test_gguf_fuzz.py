"""A damaged or hostile GGUF file never crashes `fleet fit`: generated files, not listed ones.

Hypothesis writes a small real GGUF file (the `gguf` package's writer) and then spoils it: one metadata value
the capacity model reads set to a hostile one of any GGUF type (zero, negative, 2^64−1, NaN, a string, an
array, a boolean), or the bytes cut at any offset, or eight bytes overwritten with all ones (a length of
2^64−1) or with noise. `fleet fit --model FILE` then either answers (exit 0 or 1) or refuses with one line
naming the file (exit 2): never a traceback, never an exception's class name, never a hang on a length the
file cannot hold. Derandomized and bounded, so CI runs the same files every time.
"""

from __future__ import annotations

import itertools
import re
from struct import error as struct_error

import gguf
import numpy as np
from fuzzing import fuzz_settings
from hypothesis import given
from gguf_files import write_out
from hypothesis import strategies as st
from typer.testing import CliRunner

from fleet.cli import app

T = gguf.GGUFValueType
ARCH = "llama"
KEYS = [
    f"{ARCH}.block_count", f"{ARCH}.embedding_length", f"{ARCH}.attention.head_count", f"{ARCH}.attention.head_count_kv",
    f"{ARCH}.attention.key_length", f"{ARCH}.attention.value_length", f"{ARCH}.context_length",
    f"{ARCH}.attention.sliding_window", f"{ARCH}.feed_forward_length", f"{ARCH}.expert_count", f"{ARCH}.vocab_size",
    "general.file_type", "general.architecture", "tokenizer.ggml.tokens",
]
INTS = [0, 1, 2, 255, 2**31 - 1, 2**32 - 1]
typed_values = st.one_of(
    st.tuples(st.just(T.UINT32), st.sampled_from(INTS)),
    st.tuples(st.just(T.INT32), st.sampled_from([0, -1, -(2**31), 2**31 - 1])),
    st.tuples(st.just(T.UINT64), st.sampled_from([0, 2**63, 2**64 - 1])),
    st.tuples(st.just(T.INT64), st.sampled_from([-1, -(2**63), 2**63 - 1])),
    st.tuples(st.just(T.FLOAT32), st.sampled_from([0.0, -1.0, 0.5, 1e30, float("inf"), float("nan")])),
    st.tuples(st.just(T.FLOAT64), st.sampled_from([1e308, float("-inf"), float("nan"), 2.5])),
    st.tuples(st.just(T.BOOL), st.booleans()),
    st.tuples(st.just(T.STRING), st.sampled_from(["x", "4096", "llama\n", "\u202e", "9" * 500])),
    st.tuples(st.just(T.ARRAY), st.sampled_from([[0], [1, 2**31 - 1], ["a", "b"], [[1], [2]], [float("nan")]])),
)
FUZZ = fuzz_settings(120, large_data=False)
LEAKS = re.compile(r"Traceback \(most recent call last\)|\b[A-Z][A-Za-z]*(Error|Exception)\b|object at 0x")
_names = itertools.count()


def write_model(path, override: tuple[str, T, object] | None = None) -> None:
    """A small llama-shaped GGUF file; `override` sets one metadata key to a typed value."""
    writer = gguf.GGUFWriter(str(path), ARCH)
    values = {
        f"{ARCH}.block_count": (T.UINT32, 2), f"{ARCH}.context_length": (T.UINT32, 4096),
        f"{ARCH}.embedding_length": (T.UINT32, 64), f"{ARCH}.feed_forward_length": (T.UINT32, 128),
        f"{ARCH}.attention.head_count": (T.UINT32, 4), f"{ARCH}.attention.head_count_kv": (T.UINT32, 2),
        "general.file_type": (T.UINT32, int(gguf.LlamaFileType.MOSTLY_F16)),
        "tokenizer.ggml.tokens": (T.ARRAY, [f"t{i}" for i in range(32)]),
    }
    if override is not None:
        key, kind, value = override
        if key == "general.architecture":
            writer.kv_data[0].pop(key, None)
        values[key] = (kind, value)
    for key, (kind, value) in values.items():
        writer.add_key_value(key, value, kind)
    write_out(writer, {
        "token_embd.weight": np.zeros((32, 64), dtype=np.float16),
        "blk.0.attn_q.weight": np.zeros((64, 64), dtype=np.float16),
    })


def spoil(path, how: str, offset: float, noise: bytes) -> None:
    data = bytearray(path.read_bytes())
    at = int(offset * len(data))
    if how == "cut":
        data = data[:at]
    elif how == "ones":
        data[at : at + 8] = b"\xff" * 8
    elif how == "noise":
        data[at : at + len(noise)] = noise
    path.write_bytes(bytes(data))


def assert_answers_or_refuses(result, path) -> None:
    where = f"fleet fit --model {path.name}:\n{result.output[-2000:]}"
    assert result.exception is None or isinstance(result.exception, SystemExit), f"{where}\n{result.exception!r}"
    assert not LEAKS.search(result.output), where
    if result.exit_code in (0, 1):
        return
    assert result.exit_code == 2, where
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and path.name in lines[0], where


def fit(path):
    return CliRunner().invoke(app, ["fit", "--model", str(path), "--instance", "g6e.xlarge", "--num-ctx", "4096"],
                              env={"COLUMNS": "200", "NO_COLOR": "1"})


def test_the_unspoiled_file_fits(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_model(path)
    result = fit(path)
    assert result.exit_code == 0, result.output


@FUZZ
@given(key=st.sampled_from(KEYS), typed=typed_values)
def test_a_hostile_metadata_value_is_answered_or_refused_clearly(tmp_path_factory, key, typed):
    path = tmp_path_factory.getbasetemp() / f"meta-{next(_names)}.gguf"
    kind, value = typed
    try:
        write_model(path, (key, kind, value))
    except (ValueError, TypeError, OverflowError, struct_error):  # the writer cannot encode it: no such file exists
        return
    assert_answers_or_refuses(fit(path), path)


@FUZZ
@given(how=st.sampled_from(["cut", "ones", "noise"]), offset=st.floats(min_value=0, max_value=1), noise=st.binary(min_size=1, max_size=16))
def test_a_damaged_file_is_answered_or_refused_clearly(tmp_path_factory, how, offset, noise):
    path = tmp_path_factory.getbasetemp() / f"bytes-{next(_names)}.gguf"
    write_model(path)
    spoil(path, how, offset, noise)
    assert_answers_or_refuses(fit(path), path)


def test_a_folder_named_like_a_gguf_file_is_refused_clearly(tmp_path):
    folder = tmp_path / "model.gguf"
    folder.mkdir()
    result = fit(folder)
    assert result.exit_code == 2 and "is a folder, not a GGUF file" in result.output, result.output
    assert_answers_or_refuses(result, folder)
