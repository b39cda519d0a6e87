"""Tables the CLI prints keep every value, on a narrow terminal and when piped.

rich sizes output to the terminal, and to 80 columns when the output is a pipe or a log file; columns that do
not fit are cut with "…" (`clie…`, `OLLAMA_NUM_PARALLE…`). Here a table printed to a terminal folds what does
not fit onto the next line instead of cutting it, and a table printed anywhere else gets its full width.
"""

from __future__ import annotations

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

# The widest a table may grow when the output is not a terminal (a log line beyond this is unreadable anyway).
MAX_PIPED_WIDTH = 400


def natural_width(console: Console, table: Table) -> int:
    """The width a table needs to show every cell on one line."""
    options = console.options.update(max_width=MAX_PIPED_WIDTH)
    return Measurement.get(console, options, table).maximum


def print_table(console: Console, table: Table) -> None:
    for column in table.columns:
        if column.overflow == "ellipsis":
            column.overflow = "fold"
    if console.is_terminal:
        console.print(table)
        return
    width = max(console.width, natural_width(console, table))
    wide = Console(file=console.file, width=width, color_system=None, highlight=False, soft_wrap=False)
    wide.print(table)
