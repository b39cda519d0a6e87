"""Small real GGUF files for the tests, written with the `gguf` package's own writer."""

from __future__ import annotations

from collections.abc import Mapping

import gguf
import numpy as np


def write_out(writer: gguf.GGUFWriter, tensors: Mapping[str, np.ndarray]) -> None:
    """Add `tensors` (name → data, in order) to the file `writer` holds the metadata of, write the header, the
    metadata and the tensor data, and close it."""
    for name, data in tensors.items():
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
