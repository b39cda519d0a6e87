"""A GGUF header reader: the metadata and the tensor table, without touching tensor data.

The capacity model needs a few numbers and the tensor sizes. The `gguf` package's reader maps every field
element into numpy views, which takes tens of seconds for a vocabulary of 128k-256k tokens; this reader
walks the header with `struct` and keeps long arrays as their length (plus the values of numeric arrays,
which per-layer settings use). Layout: GGUF v2/v3 (magic, version, tensor count, metadata count, metadata
key/type/value, tensor name/dims/type/offset), little-endian.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

MAGIC = b"GGUF"
STRING = 8
ARRAY = 9
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
KEEP_STRINGS = 64  # string arrays longer than this are kept as their length only


class GgufHeaderError(ValueError):
    """Not a GGUF file, or a header cut short."""


@dataclass(frozen=True)
class StringArray:
    """A long array of strings (e.g. `tokenizer.ggml.tokens`), kept as its length."""

    length: int

    def __len__(self) -> int:
        return self.length


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # ggml order: the row length first
    type: int

    @property
    def n_elements(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count

    @property
    def n_bytes(self) -> int:
        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(self.type)]
        return self.n_elements // block * type_size


@dataclass(frozen=True)
class GgufHeader:
    fields: dict[str, Any]
    tensors: tuple[TensorInfo, ...]


# Arrays of arrays deeper than this are no model's metadata (each level would be a Python call).
MAX_ARRAY_DEPTH = 8


class _Reader:
    def __init__(self, stream: BinaryIO, size: int) -> None:
        self.stream = stream
        self.size = size
        self.depth = 0

    def take(self, size: int) -> bytes:
        # A length field of a damaged or hostile file can claim up to 2^64 bytes: refuse what the file cannot
        # hold before asking for it (reading it would need as much memory).
        if size > self.size - self.stream.tell():
            raise GgufHeaderError("the header ends early")
        data = self.stream.read(size)
        if len(data) != size:
            raise GgufHeaderError("the header ends early")
        return data

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        return self.take(self.unpack("<Q")).decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        length = self.unpack("<Q")
        if length > self.size - self.stream.tell():
            raise GgufHeaderError("the header ends early")
        self.stream.seek(length, 1)

    def value(self, kind: int) -> Any:
        if kind == STRING:
            return self.string()
        if kind == ARRAY:
            item, count = self.unpack("<I"), self.unpack("<Q")
            if item == STRING:
                if count > KEEP_STRINGS:
                    for _ in range(count):
                        self.skip_string()
                    return StringArray(count)
                return [self.string() for _ in range(count)]
            if item in _SCALARS:
                fmt = _SCALARS[item]
                return list(struct.unpack(f"<{count}{fmt[1]}", self.take(count * struct.calcsize(fmt))))
            if self.depth >= MAX_ARRAY_DEPTH:
                raise GgufHeaderError(f"arrays nested more than {MAX_ARRAY_DEPTH} deep")
            self.depth += 1
            try:
                return [self.value(item) for _ in range(count)]
            finally:
                self.depth -= 1
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind])
        raise GgufHeaderError(f"unknown metadata type {kind}")


def read_header(path: str | Path) -> GgufHeader:
    """The metadata and tensor table of the GGUF file at `path`."""
    with open(path, "rb") as stream:
        reader = _Reader(stream, os.fstat(stream.fileno()).st_size)
        if reader.take(4) != MAGIC:
            raise GgufHeaderError("not a GGUF file (bad magic)")
        version = reader.unpack("<I")
        if version not in (2, 3):
            raise GgufHeaderError(f"unsupported GGUF version {version}")
        tensor_count, field_count = reader.unpack("<Q"), reader.unpack("<Q")
        fields: dict[str, Any] = {}
        for _ in range(field_count):
            key = reader.string()
            fields[key] = reader.value(reader.unpack("<I"))
        tensors = []
        for _ in range(tensor_count):
            name = reader.string()
            dims = tuple(reader.unpack("<Q") for _ in range(reader.unpack("<I")))
            kind = reader.unpack("<I")
            reader.unpack("<Q")  # offset in the data region
            tensors.append(TensorInfo(name, dims, kind))
    return GgufHeader(fields, tuple(tensors))
