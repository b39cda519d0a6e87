"""Tags for every AWS resource of a stack: who owns it (project, stack, component) plus the stack's own `tags`.

The fleet's keys are applied last so a stack's `tags` cannot relabel a resource as another stack's.
"""

from __future__ import annotations

from fleet.config import PROJECT, RESERVED_TAG_KEYS, FleetSettings

# Keys the fleet sets itself; policy checks and cost reports rely on them. The config refuses them (and AWS's
# limits) in a stack's `tags`, so a bad tag is a config error, not a failed update half way through.
PROJECT_KEY, STACK_KEY, COMPONENT_KEY, ENVIRONMENT_KEY, NAME_KEY = RESERVED_TAG_KEYS
RESERVED = RESERVED_TAG_KEYS


def fleet_tags(settings: FleetSettings, stack: str, component: str, name: str | None = None) -> dict[str, str]:
    """The tags of one resource of `component` (e.g. "network", "gpu-host") in `stack`."""
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
