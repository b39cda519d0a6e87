"""`fleet render --stack NAME --out DIR`: every rendered file, and no secret among them."""

from __future__ import annotations

import json

import typer
import yaml
from typer.testing import CliRunner

from fleet import cli_render
from fleet.render import bundle, nginx
from fleet.stack_file import load_stack


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:  # a group, so `render` is a subcommand as in `fleet`
        pass

    cli_render.register(app)
    return app


def test_render_writes_every_file(stack, tmp_path):
    result = CliRunner().invoke(_app(), ["render", "--stack", stack, "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    written = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    settings = load_stack(stack).settings
    expected = {bundle.NGINX_CONF, bundle.NGINX_ROUTER, bundle.README}
    if settings.monitoring.enabled:
        expected |= {bundle.PROMETHEUS_CONF, bundle.RULES_FILE, bundle.ALERTMANAGER_CONF, bundle.GRAFANA_DATASOURCE, bundle.GRAFANA_PROVIDER, bundle.GRAFANA_DASHBOARD}
    assert expected <= written
    if settings.target == "aws":
        assert {f"cloud-init/{g.name}-0-setup.sh" for g in settings.node_groups} <= written
    json.loads((out / bundle.GRAFANA_DASHBOARD).read_text())
    yaml.safe_load((out / bundle.PROMETHEUS_CONF).read_text())
    conf = (out / bundle.NGINX_CONF).read_text()
    assert "max_conns=" in conf and "api-keys.conf" in conf
    for relative in written:
        text = (out / relative).read_text()
        assert "PRIVATE KEY" not in text, relative


def test_bundle_matches_the_renderers():
    settings = load_stack("prod").settings
    files = bundle.render_bundle(settings, "prod")
    plan = nginx.build_gateway_plan(settings, nginx.placeholder_upstreams(settings))
    assert files[bundle.NGINX_CONF] == nginx.render_nginx(plan)
    readme = files[bundle.README]
    assert all(f"`{path}`" in readme for path in files if path != bundle.README)


def test_render_reports_a_bad_stack(tmp_path):
    result = CliRunner().invoke(_app(), ["render", "--stack", "no-such-stack", "--out", str(tmp_path)])
    assert result.exit_code == cli_render.EXIT_CONFIG
    assert "Traceback" not in result.output
