"""Every number the gateway's config accepts renders an nginx config that nginx accepts: each bounded knob
of `gateway` (and its nested settings) at its smallest and at its largest allowed value, checked by `nginx -t`.
A bound wider than nginx's own (such as `limit_conn`'s 65535) would pass `fleet validate` and then break
the gateway on the host."""

from __future__ import annotations

import annotated_types
import pytest
from pydantic import BaseModel

from fleet.config import Gateway
from fleet.local.dataplane import load_settings
from fleet.render import nginx as ng
from render_tools import loopback_plan, make_prefix, nginx_test

ADMIN_KEY = "admin-key-0123456789abcdef"


def _bounded_numbers(model: type[BaseModel], prefix: str = "gateway") -> list[tuple[str, float, float]]:
    """(dotted camelCase key, smallest, largest) of every number field with both bounds, nested models included."""
    found = []
    for name, field in model.model_fields.items():
        key = f"{prefix}.{field.alias or name}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found += _bounded_numbers(annotation, key)
            continue
        low = next((m.ge for m in field.metadata if isinstance(m, annotated_types.Ge)), None)
        high = next((m.le for m in field.metadata if isinstance(m, annotated_types.Le)), None)
        if low is not None and high is not None:
            found.append((key, low, high))
    return found


BOUNDED = _bounded_numbers(Gateway)


def test_the_gateway_has_bounded_numbers_to_check():
    keys = {key for key, _, _ in BOUNDED}
    assert {"gateway.maxConnectionsPerIp", "gateway.readTimeoutS", "gateway.retryAfterS"} <= keys


@pytest.mark.tools
@pytest.mark.parametrize("key,low,high", BOUNDED, ids=[key for key, _, _ in BOUNDED])
def test_nginx_accepts_each_bound(tmp_path, key, low, high):
    for edge, value in (("smallest", low), ("largest", high)):
        try:
            settings = load_settings("prod", {key: value})
        except Exception as exc:  # a cross-field rule refusing the edge is a clear config error, not a broken render
            assert key.split(".")[-1] in str(exc), exc
            continue
        folder = tmp_path / edge
        paths = make_prefix(folder)
        plan = loopback_plan(settings, paths)
        (folder / "nginx.conf").write_text(ng.render_nginx(plan))
        clients = {name: f"key-{name}-0123456789abcdef" for name in plan.clients}
        (folder / "api-keys.conf").write_text(ng.render_api_keys(clients, ADMIN_KEY))
        result = nginx_test(folder / "nginx.conf", folder)
        assert result.returncode == 0, f"{key} = {value} ({edge} allowed): {result.stderr}"
