"""The policy pack on what the real program registers under mocks (components, renderers and all)."""

from __future__ import annotations

import json

import pytest
from policy_builders import CONTAINER, find, program_resources, set_label, set_models

from fleet import contract

from fleet.preview.policy_runner import evaluate
from policies import rules


@pytest.mark.parametrize("stack", ["dev", "staging", "prod"])
def test_the_program_passes_its_own_policies(stack):
    resources = program_resources(stack)
    report = evaluate(resources, stack)
    assert report.violations == [], [v.to_dict() for v in report.violations]
    # The policies had something to read: the containers and the rendered gateway config are there.
    assert find(resources, CONTAINER, "ollama") and find(resources, CONTAINER, "gateway")
    for gateway in find(resources, CONTAINER, "gateway"):
        conf = rules._nginx_conf(gateway.inputs)
        assert conf and "location" in conf


def test_the_program_oversized_in_prod_is_refused():
    resources = program_resources("prod")
    for node in find(resources, CONTAINER, "ollama"):
        set_models(node, [{"name": "llama3.1", "tag": "70b", "quantization": "fp16", "numCtx": 8192, "keepLoaded": True}])
    report = evaluate(resources, "prod")
    assert report.mandatory_failed
    assert {"vram-fit", "quantization-required"} <= {v.policy for v in report.mandatory}


def test_the_program_gateway_max_conns_is_checked():
    resources = program_resources("staging")
    gateway = find(resources, CONTAINER, "gateway")[0]
    declared = contract.decode_gateway(gateway.label_map).max_conns
    set_label(gateway, contract.LABELS.upstream_max_conns, json.dumps({k: v + 1 for k, v in declared.items()}))
    assert evaluate(resources, "staging").by_policy("concurrency-bounds")


def test_the_program_rendered_gateway_closes_admin_routes():
    gateway = find(program_resources("prod"), CONTAINER, "gateway")[0]
    conf = rules._nginx_conf(gateway.inputs)
    assert rules.open_admin_routes(conf) == []
    # Strip the admin checks from the rendered config: the same routes are reported open.
    opened = conf.replace("return 403;", "set $x 1;")
    assert any("/api/pull" in route for route in rules.open_admin_routes(opened))
