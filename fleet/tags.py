"""Tags for every AWS resource of a stack: who owns it (project, stack, component) plus the stack's own `tags`.

The fleet's keys are applied last so a stack's `tags` cannot relabel a resource as another stack's; AWS's own
limits are checked here so a bad tag is a config error, not a failed update half way through.
"""

from __future__ import annotations

from fleet.config import PROJECT, FleetSettings
from fleet.stack_file import StackConfigError

# Keys the fleet sets itself; policy checks and cost reports rely on them.
PROJECT_KEY = "project"
STACK_KEY = "stack"
COMPONENT_KEY = "component"
ENVIRONMENT_KEY = "environment"
NAME_KEY = "Name"  # shown by the AWS console
RESERVED = (PROJECT_KEY, STACK_KEY, COMPONENT_KEY, ENVIRONMENT_KEY, NAME_KEY)

_MAX_KEY = 128
_MAX_VALUE = 256
_MAX_TAGS = 50


def tag_problems(extra: dict[str, str]) -> list[str]:
    """Problems with a stack's `tags` (AWS limits, reserved keys), one line each, `tags.<key>: ...`."""
    problems = []
    for key, value in extra.items():
        if key.lower().startswith("aws:"):
            problems.append(f"tags.{key}: keys starting with `aws:` are reserved by AWS")
        if key in RESERVED:
            problems.append(f"tags.{key}: set by the fleet itself; reserved keys: {', '.join(RESERVED)}")
        if not 1 <= len(key) <= _MAX_KEY:
            problems.append(f"tags.{key}: keys are 1 to {_MAX_KEY} characters")
        if len(value) > _MAX_VALUE:
            problems.append(f"tags.{key}: values are at most {_MAX_VALUE} characters")
    if len(extra) + len(RESERVED) > _MAX_TAGS:
        problems.append(f"tags: at most {_MAX_TAGS - len(RESERVED)} extra tags (AWS allows {_MAX_TAGS} per resource)")
    return problems


def fleet_tags(settings: FleetSettings, stack: str, component: str, name: str | None = None) -> dict[str, str]:
    """The tags of one resource of `component` (e.g. "network", "gpu-host") in `stack`."""
    problems = tag_problems(settings.tags)
    if problems:
        raise StackConfigError(f"Pulumi.{stack}.yaml", problems)
    tags = dict(settings.tags)
    tags.update(
        {
            PROJECT_KEY: PROJECT,
            STACK_KEY: stack,
            COMPONENT_KEY: component,
            ENVIRONMENT_KEY: settings.environment,
        }
    )
    if name:
        tags[NAME_KEY] = name
    return tags
