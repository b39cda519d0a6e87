"""Pulumi entry point: load the stack config, build the Fleet component, export its outputs."""

import sys

import pulumi

from fleet.stack_file import StackConfigError

try:
    from components.program import run

    run()
except StackConfigError as error:
    # A clear message instead of a traceback; the update stops before anything is created.
    pulumi.log.error(str(error))
    sys.exit(1)
