"""The rendered nginx gateway: loaded by the real nginx (`nginx -t`) and checked structurally."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from fleet import capacity
from fleet.config import FleetSettings
from fleet.render import nginx as ng
from fleet.stack_file import load_stack
from render_tools import Directive, loopback_plan, make_prefix, nginx_test, parse_nginx, require_tool

KEYS = {"search": "k-search-0123456789abcdef", "support-bot": "k-support-0123456789abcdef", "ci": "k-ci-0123456789ABCDEF"}
ADMIN_KEY = "admin-key-0123456789abcdef"


def _plan(settings: FleetSettings, prefix=None, **overrides) -> ng.GatewayPlan:
    return loopback_plan(settings, prefix, **overrides)


def _two_groups(settings: FleetSettings) -> FleetSettings:
    """A second group `embed` of two nodes serving a model of its own, also called `embeddings`."""
    first = settings.node_groups[0]
    model = first.models[0].model_copy(
        update={"name": "embedder", "tag": "v1", "gguf": "/models/embedder.gguf", "aliases": ["embeddings"]}
    )
    second = first.model_copy(update={"name": "embed", "count": 2, "models": [model]})
    return settings.model_copy(update={"node_groups": [first, second]})


def _locations(conf: str) -> dict[str, Directive]:
    return {" ".join(d.args): d for d in parse_nginx(conf).walk() if d.name == "location"}


@pytest.mark.tools
@pytest.mark.parametrize("tls", [True, False], ids=["tls", "plain"])
def test_nginx_accepts_every_stack(settings, tmp_path, tls):
    paths = make_prefix(tmp_path)
    plan = _plan(settings, paths, tls=tls)
    (tmp_path / "nginx.conf").write_text(ng.render_nginx(plan))
    clients = {name: f"key-{name}-0123456789abcdef" for name in plan.clients}
    (tmp_path / "api-keys.conf").write_text(ng.render_api_keys(clients, ADMIN_KEY))
    result = nginx_test(tmp_path / "nginx.conf", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


@pytest.mark.tools
def test_nginx_accepts_several_node_groups(tmp_path):
    settings = _two_groups(load_stack("prod").settings)
    paths = make_prefix(tmp_path)
    plan = _plan(settings, paths)
    (tmp_path / "nginx.conf").write_text(ng.render_nginx(plan))
    (tmp_path / "api-keys.conf").write_text(ng.render_api_keys(KEYS, ADMIN_KEY))
    result = nginx_test(tmp_path / "nginx.conf", tmp_path)
    assert result.returncode == 0, result.stderr


@pytest.mark.tools
def test_nginx_refuses_a_broken_key_include(tmp_path):
    """The check is real: nginx -t fails when the include is missing."""
    paths = make_prefix(tmp_path)
    (tmp_path / "nginx.conf").write_text(ng.render_nginx(_plan(load_stack("dev").settings, paths)))
    result = nginx_test(tmp_path / "nginx.conf", tmp_path)
    assert result.returncode != 0
    assert "api-keys.conf" in result.stderr


def test_max_conns_come_from_the_capacity_model(settings):
    plan = _plan(settings)
    conf = parse_nginx(ng.render_nginx(plan))
    upstreams = {d.args[0]: d for d in conf.walk() if d.name == "upstream"}
    assert set(upstreams) == {g.upstream for g in plan.groups}
    for group in settings.node_groups:
        block = upstreams[f"fleet_{group.name}"]
        expected = capacity.max_conns_per_node(group, settings.gateway.queue_per_node)
        servers = block.values("server")
        assert len(servers) == group.count
        for args in servers:
            params = dict(a.split("=", 1) for a in args[1:])
            assert int(params["max_conns"]) == expected
            assert "max_fails" in params and "fail_timeout" in params
        assert block.find("least_conn") and block.find("keepalive") and block.find("zone")
    assert plan.max_conns_by_group() == {
        g.name: capacity.max_conns_per_node(g, settings.gateway.queue_per_node) for g in settings.node_groups
    }


def test_admin_routes_are_closed_to_client_keys(settings):
    plan = _plan(_two_groups(settings))
    locations = _locations(ng.render_nginx(plan))
    guarded = set()
    for key, block in locations.items():
        ifs = [d for d in block.find("if") if d.args == ["($fleet_admin_allowed", "=", "0)"]]
        if ifs:
            assert ifs[0].values("return") == [["403"]]
            guarded.add(key.split()[-1])
    admin = ng.ADMIN_ROUTES + ng.ADMIN_PREFIXES
    # every group's admin routes under its prefix; the bare ones reach the first group
    expected = {group.prefix + route for group in plan.groups for route in admin} | set(admin)
    assert guarded == expected
    # every route that proxies is a known route, and only admin routes are guarded
    allowed = ng.READ_ONLY_ROUTES + ng.READ_ONLY_PREFIXES + admin
    proxied = {key.split()[-1] for key, block in locations.items() if block.find("proxy_pass")}
    named = {group.location for group in plan.groups}
    bare = set(admin) | {"/api/version"}
    assert proxied == {group.prefix + route for group in plan.groups for route in allowed} | bare | named
    # a group's own inference routes go through the router's check of the body, then to the group's location
    checked = {key.split()[-1] for key, block in locations.items()
               if block.values("js_content") == [["fleet_router.byGroupRoute"]]}
    assert checked == {group.prefix + route for group in plan.groups for route in ng.INFERENCE_ROUTES}
    # the admin check needs the admin key AND an admin network
    conf = ng.render_nginx(plan)
    assert '"_admin:1" 1;' in conf
    for cidr in settings.gateway.admin_cidrs:
        assert f"{cidr} 1;" in conf


def test_unknown_routes_are_404_and_health_is_open(settings):
    locations = _locations(ng.render_nginx(_plan(settings)))
    assert locations["/"].values("return") == [["404"]]
    health = locations["= /health"]
    assert health.values("return")[0][0] == "200"
    assert not health.find("limit_req") and not health.find("proxy_pass")


def test_bare_routes_go_through_the_model_router():
    settings = _two_groups(load_stack("prod").settings)
    plan = _plan(settings)
    conf = ng.render_nginx(plan)
    locations = _locations(conf)
    for route in ng.MODEL_BODY_ROUTES:
        block = locations[f"= {route}"]
        assert block.values("js_content") == [["fleet_router.byBody"]] and not block.find("proxy_pass")
        assert [a[0] for a in block.values("limit_req")][-1] == "zone=fleet_ip"  # limits before the body is read
        # the router reads the body in memory, up to the body limit
        assert block.values("client_body_buffer_size") == [[settings.gateway.max_body_size]]
    for route in ng.MODEL_LIST_ROUTES:
        assert locations[f"= {route}"].values("js_content") == [["fleet_router.mergedList"]]
    assert locations[f"^~ {ng.MODEL_PATH_PREFIX}"].values("js_content") == [["fleet_router.byPath"]]
    # each group's named location passes the normalised route, tries every node once and shares the upstream (max_conns)
    assert locations["@fleet_group_chat"].values("proxy_pass") == [["http://fleet_chat$fleet_upstream_uri"]]
    assert locations["@fleet_group_embed"].values("proxy_pass") == [["http://fleet_embed$fleet_upstream_uri"]]
    assert locations["@fleet_group_embed"].values("proxy_next_upstream_tries") == [["2"]]
    # the routing table is the config's, in Ollama's shortest spelling, weighted by admitted connections; an
    # alias goes where its model goes
    http = parse_nginx(conf).find("http")[0]
    variables = {args[0]: args[1:] for args in http.values("js_var")}
    capacity_of = {g.name: g.capacity for g in plan.groups}
    assert json.loads(variables["$fleet_model_routes"][0]) == {
        "llama3.1:8b": [["chat", capacity_of["chat"]]],
        "embedder:v1": [["embed", capacity_of["embed"]]],
        "embeddings:latest": [["embed", capacity_of["embed"]]],
    }
    assert json.loads(variables["$fleet_groups"][0]) == ["chat", "embed"]
    assert http.values("js_import") == [["fleet_router", "from", plan.paths.router_script]]
    assert parse_nginx(conf).values("load_module") == [[plan.paths.njs_module]]
    # operators keep each group's own routes; the first group answers /api/version and the bare admin routes
    assert locations["= /groups/embed/api/embed"].values("js_content") == [["fleet_router.byGroupRoute"]]
    assert locations["= /groups/chat/api/tags"].values("proxy_pass") == [["http://fleet_chat/api/tags"]]
    assert locations["= /api/version"].values("proxy_pass") == [["http://fleet_chat/api/version"]]
    assert locations["= /api/delete"].values("proxy_pass") == [["http://fleet_chat/api/delete"]]
    # state-changing admin calls are not resent once sent
    assert locations["= /api/delete"].values("proxy_next_upstream") == [["error", "timeout"]]
    assert locations["= /groups/embed/api/delete"].values("proxy_next_upstream") == [["error", "timeout"]]
    # the access log names the group
    assert '"group":"$fleet_group"' in "".join(next(d for d in http.walk() if d.name == "log_format").args)


def test_a_model_on_several_groups_is_spread_by_capacity():
    settings = load_stack("prod").settings
    first = settings.node_groups[0]
    first = first.model_copy(update={"models": [first.models[0].model_copy(update={"aliases": ["chat", "gpt-4o-mini:2024"]})]})
    second = first.model_copy(update={"name": "chat-b", "count": 3})
    plan = _plan(settings.model_copy(update={"node_groups": [first, second]}))
    spread = [("chat", 2 * plan.groups[0].servers[0].max_conns), ("chat-b", 3 * plan.groups[1].servers[0].max_conns)]
    assert plan.model_routes() == {"llama3.1:8b": spread, "chat:latest": spread, "gpt-4o-mini:2024": spread}
    # aliases add routing keys, not capacity: max_conns is the model's
    assert plan.groups[0].servers[0].max_conns == _plan(settings).groups[0].servers[0].max_conns


def test_model_names_that_cannot_be_rendered_are_refused():
    settings = load_stack("dev").settings
    group = settings.node_groups[0]
    bad = group.models[0].model_copy(update={"name": "evil'name", "gguf": "/m.gguf"})
    with pytest.raises(ng.GatewayPlanError, match=r"nodeGroups\[cpu\]\.models: `evil'name:135m` is not an Ollama model name"):
        _plan(settings.model_copy(update={"node_groups": [group.model_copy(update={"models": [bad]})]}))
    bad_alias = group.models[0].model_copy(update={"aliases": ["chat';"]})  # model_copy skips the config's checks
    with pytest.raises(ng.GatewayPlanError, match=r"nodeGroups\[cpu\]\.models: `chat';` is not an Ollama model name"):
        _plan(settings.model_copy(update={"node_groups": [group.model_copy(update={"models": [bad_alias]})]}))


def test_streaming_retry_and_header_directives(settings):
    http = parse_nginx(ng.render_nginx(_plan(settings))).find("http")[0]
    assert http.values("proxy_buffering") == [["off"]]
    # request buffering must stay on: nginx resends a buffered body to the next node only
    assert http.values("proxy_request_buffering") == [["on"]]
    assert http.values("proxy_http_version") == [["1.1"]]
    headers = {args[0]: args[1] for args in http.values("proxy_set_header")}
    assert headers["Connection"] == "" and headers["Authorization"] == "" and headers["X-API-Key"] == ""
    assert headers["X-Fleet-Client"] == "$fleet_client"
    assert http.values("proxy_read_timeout") == [[f"{settings.gateway.read_timeout_s}s"]]
    assert http.values("proxy_connect_timeout") == [[f"{settings.gateway.connect_timeout_s}s"]]
    assert http.values("proxy_next_upstream") == [
        ["error", "timeout", "invalid_header", "http_502", "http_503", "non_idempotent"]
    ]
    assert http.values("proxy_next_upstream_timeout")
    assert http.values("limit_req_status") == [["429"]]
    assert http.values("client_max_body_size") == [[settings.gateway.max_body_size]]
    # no location overrides the proxy headers (an override would drop the cleared Authorization)
    for directive in http.walk():
        if directive.name == "location":
            assert not directive.find("proxy_set_header")


def test_rate_limit_zones_follow_the_clients():
    settings = load_stack("prod").settings  # `ci` has its own rate
    plan = _plan(settings)
    conf = ng.render_nginx(plan)
    assert "limit_req_zone $fleet_key_1200rpm zone=fleet_key_1200rpm:10m rate=1200r/m;" in conf
    assert "limit_req_zone $fleet_key_600rpm zone=fleet_key_600rpm:10m rate=600r/m;" in conf
    assert f"rate={settings.gateway.rate_limits.per_ip_per_minute}r/m" in conf
    zones = {z.rate_per_minute: set(z.clients) for z in plan.key_zones}
    assert zones == {600: {"search", "support-bot", ng.ADMIN_CLIENT}, 1200: {"ci"}}
    chat = _locations(conf)["= /api/chat"]
    assert [a[0] for a in chat.values("limit_req")] == [
        "zone=fleet_key_600rpm",
        "zone=fleet_key_1200rpm",
        "zone=fleet_ip",
    ]
    assert all("nodelay" in a for a in chat.values("limit_req"))


def test_tls_redirect_and_hsts():
    prod = _plan(load_stack("prod").settings)
    conf = ng.render_nginx(prod)
    servers = parse_nginx(conf).find("http")[0].find("server")
    listens = [s.values("listen")[0] for s in servers]
    assert ["127.0.0.1:18443", "ssl", "default_server"] in listens
    redirect = next(s for s in servers if s.values("listen")[0] == ["127.0.0.1:18080", "default_server"])
    root = next(d for d in redirect.find("location") if d.args == ["/"])
    assert root.values("return") == [["308", "https://llm.example.com:18443$request_uri"]]
    assert "Strict-Transport-Security" in conf  # acme certificate
    staging = ng.render_nginx(_plan(load_stack("staging").settings))
    assert "Strict-Transport-Security" not in staging  # self-signed: no HSTS
    plain = ng.render_nginx(_plan(load_stack("dev").settings, tls=False))
    assert "ssl_certificate" not in plain and "return 308" not in plain


def test_stub_status_is_internal(settings):
    servers = parse_nginx(ng.render_nginx(_plan(settings))).find("http")[0].find("server")
    status = [s for s in servers for d in s.walk() if d.name == "stub_status"]
    assert len(status) == 1
    assert status[0].values("listen") == [["127.0.0.1:18081"]]
    location = next(d for d in status[0].find("location") if d.args == ["=", "/stub_status"])
    assert location.values("deny") == [["all"]]
    assert all(not a[0].startswith("0.0.0.0") for a in location.values("allow"))
    default = ng.build_gateway_plan(settings, ng.placeholder_upstreams(settings))
    assert default.status_listen == "127.0.0.1:8081"


def test_no_key_material_in_nginx_conf(settings):
    clients = {name: f"secret-{name}-0123456789abcdef" for name in (c.name for c in settings.gateway.clients)}
    conf = ng.render_nginx(_plan(settings))
    include = ng.render_api_keys(clients, ADMIN_KEY)
    for key in [*clients.values(), ADMIN_KEY]:
        assert key not in conf
        assert re.escape(key) in include
    assert "api-keys.conf" in conf
    # the access log names the client, never the key or the Authorization header
    log_format = next(d for d in parse_nginx(conf).walk() if d.name == "log_format")
    joined = "".join(log_format.args)
    assert "$fleet_client" in joined and "$upstream_header_time" in joined
    assert "authorization" not in joined.lower() and "api_key" not in joined.lower()


def test_api_key_include_is_case_sensitive_and_validated():
    include = ng.render_api_keys({"team": "Abc-0123456789_xyz.~"}, ADMIN_KEY)
    assert '"~^Abc\\-0123456789_xyz\\.\\~$" "team";' in include
    assert f'"~^{re.escape(ADMIN_KEY)}$" "{ng.ADMIN_CLIENT}";' in include
    with pytest.raises(ng.GatewayPlanError, match="16 to 256"):
        ng.render_api_keys({"team": "short"}, ADMIN_KEY)
    with pytest.raises(ng.GatewayPlanError, match="16 to 256"):
        ng.render_api_keys({"team": 'has"quote-0123456789'}, ADMIN_KEY)
    with pytest.raises(ng.GatewayPlanError, match="keys must differ"):
        ng.render_api_keys({"team": ADMIN_KEY}, ADMIN_KEY)
    with pytest.raises(ng.GatewayPlanError, match="DNS label"):
        ng.render_api_keys({"_admin": "k-0123456789abcdefgh"}, ADMIN_KEY)


def test_plan_refuses_bad_inputs():
    settings = load_stack("prod").settings
    with pytest.raises(ng.GatewayPlanError, match="unknown node group"):
        ng.build_gateway_plan(settings, {"chat": ["10.0.0.1:11435"], "nope": ["10.0.0.2:11435"]})
    with pytest.raises(ng.GatewayPlanError, match="at least one node"):
        ng.build_gateway_plan(settings, {"chat": []})
    with pytest.raises(ng.GatewayPlanError, match="host:port"):
        ng.build_gateway_plan(settings, {"chat": ["10.0.0.1"]})
    with pytest.raises(ng.GatewayPlanError, match="host:port"):
        ng.build_gateway_plan(settings, {"chat": ["10.0.0.1:11435; include /etc/passwd"]})
    with pytest.raises(ng.GatewayPlanError, match="paths.pid"):
        ng.GatewayPaths(pid="/run/nginx.pid; evil")
    plan = ng.build_gateway_plan(settings, {"chat": ["10.0.0.1:11435", "10.0.0.2:11435"]})
    assert [s.address for s in plan.groups[0].servers] == ["10.0.0.1:11435", "10.0.0.2:11435"]
    assert plan.groups[0].next_upstream_tries == 2


def test_access_log_goes_to_stdout_and_to_the_exporter_file_once_each():
    settings = load_stack("dev").settings
    deployed = ng.render_nginx(ng.build_gateway_plan(settings, ng.placeholder_upstreams(settings)))
    paths = ng.GatewayPaths()
    assert re.findall(r"^\s*access_log (\S+) fleet_json;", deployed, re.M) == [paths.access_log, paths.access_log_file]
    # Under one prefix the log already is a file: written once, not twice.
    local = ng.GatewayPaths.under("/tmp/gw")
    loopback = ng.render_nginx(ng.build_gateway_plan(settings, ng.placeholder_upstreams(settings), paths=local))
    assert re.findall(r"^\s*access_log (\S+) fleet_json;", loopback, re.M) == [local.access_log]


def test_log_rotation_script_passes_shellcheck_and_refuses_bad_paths(tmp_path):
    script = ng.render_log_rotation(ng.GatewayPaths().access_log_file, max_bytes=1000, interval_s=5)
    assert "max_bytes=1000\n" in script and "interval=5\n" in script and "nginx -s reopen" in script
    tool = require_tool(shutil.which("shellcheck"), "shellcheck")
    (tmp_path / "rotate.sh").write_text(script)
    result = subprocess.run([tool, "-s", "sh", str(tmp_path / "rotate.sh")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout
    quoted = ng.render_log_rotation("/l/access.log", reopen=["/usr/sbin/nginx", "-p", "/a b", "-s", "reopen"])
    assert "/usr/sbin/nginx -p '/a b' -s reopen ||" in quoted
    for bad in ("/var/log/$(reboot)", "rel ative"):
        with pytest.raises(ng.GatewayPlanError, match="log_path"):
            ng.render_log_rotation(bad)
    with pytest.raises(ng.GatewayPlanError, match="at least 1"):
        ng.render_log_rotation("/l/access.log", max_bytes=0)


GRAFANA_LOCATION = ["~", "^/grafana(/|$)"]


@pytest.mark.tools
@pytest.mark.parametrize(
    "upstream,resolver",
    [("10.0.1.5:3000", None), ("ollama-monitoring-grafana:3000", "127.0.0.11")],
    ids=["private-address", "container-name"],
)
def test_nginx_accepts_grafana_behind_every_stack(settings, tmp_path, upstream, resolver):
    paths = make_prefix(tmp_path)
    plan = _plan(settings, paths, tls=True, grafana_upstream=upstream, grafana_resolver=resolver)
    (tmp_path / "nginx.conf").write_text(ng.render_nginx(plan))
    clients = {name: f"key-{name}-0123456789abcdef" for name in plan.clients}
    (tmp_path / "api-keys.conf").write_text(ng.render_api_keys(clients, ADMIN_KEY))
    result = nginx_test(tmp_path / "nginx.conf", tmp_path)
    assert result.returncode == 0, result.stderr


def test_grafana_is_on_the_tls_server_only_for_admin_networks_without_a_key(settings):
    plan = _plan(settings, tls=True, grafana_upstream="10.0.1.5:3000")
    http = parse_nginx(ng.render_nginx(plan)).find("http")[0]
    servers = {"ssl" in s.values("listen")[0]: s for s in http.find("server") if s.find("server_name")}
    grafana = [d for d in servers[True].find("location") if d.args == GRAFANA_LOCATION]
    assert len(grafana) == 1 and not [d for d in servers[False].walk() if d.args == GRAFANA_LOCATION]
    location = grafana[0]
    # admin networks only, with the JSON body of the gateway's other refusals
    check = location.find("if")[0]
    assert check.args == ["($fleet_admin_network", "=", "0)"]
    status, body = check.values("return")[0]
    assert status == "403" and json.loads(body.removesuffix("\\n"))["error"].startswith("forbidden: ") and "gateway.adminCidrs" in body
    # no API key: Grafana's path is public to the key check (its own login guards it), and not rate-limited per key
    public = next(d for d in http.find("map") if d.args[1] == "$fleet_public_route")
    assert ["~^/grafana(/|$)", "1"] in [[d.name, *d.args] for d in public.block]
    assert not location.find("limit_req")
    # the websocket upgrade passes, the path is kept (no URI part), the gateway's own headers do not pass
    headers = {args[0]: args[1] for args in location.values("proxy_set_header")}
    assert headers["Upgrade"] == "$http_upgrade" and headers["Connection"] == "$fleet_connection_upgrade"
    assert headers["Host"] == "$http_host" and headers["X-API-Key"] == "" and headers["X-Fleet-Client"] == ""
    upgrade = next(d for d in http.find("map") if d.args[1] == "$fleet_connection_upgrade")
    assert {d.name: d.args[0] for d in upgrade.block} == {"default": "upgrade", "": "close"}
    assert location.values("proxy_pass") == [["http://10.0.1.5:3000"]]
    assert location.values("proxy_buffering") == [["off"]]
    # its requests stay out of the exporter's file (the gateway's metrics count API traffic)
    assert location.values("access_log") == [[plan.paths.access_log, "fleet_json"]]


def test_grafana_is_not_served_without_tls_and_a_name_needs_a_resolver(settings):
    plain = _plan(settings, tls=False, grafana_upstream="10.0.1.5:3000")
    assert plain.grafana_upstream is None and "grafana" not in ng.render_nginx(plain)
    with pytest.raises(ng.GatewayPlanError, match="grafana_resolver"):
        _plan(settings, tls=True, grafana_upstream="ollama-monitoring-grafana:3000")
    with pytest.raises(ng.GatewayPlanError, match="host:port"):
        _plan(settings, tls=True, grafana_upstream="10.0.1.5:3000; include /etc/passwd")
    with pytest.raises(ng.GatewayPlanError, match="IPv4"):
        _plan(settings, tls=True, grafana_upstream="grafana:3000", grafana_resolver="dns.example")


def test_admin_networks_outside_the_client_networks_reach_grafana_and_nothing_else():
    settings = load_stack("dev").settings  # clientCidrs 127.0.0.0/8
    conf = ng.render_nginx(_plan(settings, tls=True, grafana_upstream="10.0.1.5:3000"))
    http = parse_nginx(conf).find("http")[0]
    outside = next(d for d in http.find("map") if d.args[1] == "$fleet_outside_client_networks")
    assert outside.args[0] == "$fleet_client_network:$fleet_grafana_route"
    assert {d.name: d.args[0] for d in outside.block} == {"default": "0", "0:0": "1"}
    without = parse_nginx(ng.render_nginx(_plan(settings, tls=True))).find("http")[0]
    assert next(d for d in without.find("map") if d.args[1] == "$fleet_outside_client_networks").args[0] == "$fleet_client_network:0"
