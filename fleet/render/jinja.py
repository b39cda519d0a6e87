"""The Jinja2 environment shared by the renderers (templates live in fleet/render/templates)."""

from __future__ import annotations

from functools import lru_cache

import jinja2


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    # StrictUndefined: a misspelt field fails the render instead of writing an empty directive.
    # No autoescape: the outputs are nginx/YAML files, not HTML; renderers validate what they interpolate.
    return jinja2.Environment(
        loader=jinja2.PackageLoader("fleet.render", "templates"),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


def render_template(name: str, **context: object) -> str:
    return environment().get_template(name).render(**context)
