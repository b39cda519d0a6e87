"""Stack config validation: the three real stacks load; bad input gives one clear message, never a traceback."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fleet.config import FLEET_KEY, FleetSettings
from fleet.stack_file import StackConfigError, available_stacks, load_stack, load_stack_file

ROOT = Path(__file__).resolve().parents[2]


def test_project_has_the_three_stacks():
    assert {"dev", "staging", "prod"} <= set(available_stacks(ROOT))


@pytest.mark.parametrize("stack", ["dev", "staging", "prod"])
def test_real_stacks_load(stack):
    config = load_stack(stack, ROOT)
    assert config.settings.environment == stack
    assert config.settings.node_groups


def test_stack_shapes_match_their_purpose():
    dev = load_stack("dev", ROOT).settings
    staging = load_stack("staging", ROOT).settings
    prod = load_stack("prod", ROOT).settings
    assert dev.target == "local" and dev.node_groups[0].instance_type == "local-cpu"
    assert staging.target == "aws" and staging.node_count == 1
    assert prod.target == "aws" and prod.node_count >= 2 and len(prod.aws.zones) >= 2
    assert prod.gateway.domain and prod.gateway.tls.mode in {"acme", "provided"}
    assert prod.monitoring.enabled and prod.policy.enforcement == "mandatory"


def _prod_raw() -> dict:
    return yaml.safe_load((ROOT / "Pulumi.prod.yaml").read_text())


def _write(tmp_path: Path, document: dict, stack: str = "broken") -> Path:
    path = tmp_path / f"Pulumi.{stack}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def _problems(tmp_path: Path, mutate) -> list[str]:
    document = _prod_raw()
    mutate(document["config"])
    with pytest.raises(StackConfigError) as caught:
        load_stack_file(_write(tmp_path, document))
    assert caught.value.stack_file == "Pulumi.broken.yaml"
    assert "Pulumi.broken.yaml" in str(caught.value)
    return caught.value.problems


def fleet(config: dict) -> dict:
    return config[FLEET_KEY]


def group(config: dict) -> dict:
    return fleet(config)["nodeGroups"][0]


def _second_group(config: dict, models: list[dict]) -> None:
    """A second group `chat-b` like the first, serving `models`."""
    fleet(config)["nodeGroups"].append(copy.deepcopy(dict(group(config), name="chat-b", models=models)))


def _aliased(config: dict, *aliases: str) -> dict:
    """The first group's model, with `aliases`."""
    model = group(config)["models"][0]
    model["aliases"] = list(aliases)
    return model


QWEN = {"name": "qwen2.5", "tag": "7b", "numCtx": 8192}


def _ttft_target_only(config: dict, target=2.0) -> None:
    fleet(config)["gateway"].pop("queuePerNode", None)
    fleet(config)["gateway"]["ttftTargetSeconds"] = target


BAD_CASES = [
    # (id, mutation, expected key path fragment, expected words in the message)
    ("unknown top key", lambda c: fleet(c).update(nodeGroup=[]), f"{FLEET_KEY}.nodeGroup", "unknown key; allowed keys here: environment"),
    ("unknown nested key", lambda c: group(c).update(gpus=2), "nodeGroups[0].gpus", "allowed keys here: name, instanceType"),
    ("typo in ollama knob", lambda c: group(c)["ollama"].update(numParalel=4), "ollama.numParalel", "numParallel"),
    ("num_parallel zero", lambda c: group(c)["ollama"].update(numParallel=0), "ollama.numParallel", "greater than or equal to 1"),
    ("num_parallel wrong type", lambda c: group(c)["ollama"].update(numParallel="four"), "ollama.numParallel", "whole number"),
    ("kv q4_0 without flash", lambda c: group(c)["ollama"].update(kvCacheType="q4_0", flashAttention=False), "nodeGroups[0].ollama", "needs flashAttention"),
    ("unknown kv type", lambda c: group(c)["ollama"].update(kvCacheType="q2"), "ollama.kvCacheType", "'f16', 'q8_0' or 'q4_0'"),
    ("unknown instance type", lambda c: group(c).update(instanceType="g9.huge"), "nodeGroups[0].instanceType", "allowed: g4dn.12xlarge"),
    ("duplicate model", lambda c: group(c)["models"].append(dict(group(c)["models"][0])), "nodeGroups[0].models", "listed twice"),
    ("unknown model", lambda c: group(c)["models"][0].update(name="llama9"), "nodeGroups[0].models[0]", "unknown model 'llama9:8b'"),
    ("unknown quantization", lambda c: group(c)["models"][0].update(quantization="q3_X"), "models[0].quantization", "'q4_0'"),
    ("num_ctx too small", lambda c: group(c)["models"][0].update(numCtx=10), "models[0].numCtx", "greater than or equal to 256"),
    ("count zero", lambda c: group(c).update(count=0), "nodeGroups[0].count", "greater than or equal to 1"),
    ("no node groups", lambda c: fleet(c).update(nodeGroups=[]), f"{FLEET_KEY}.nodeGroups", "at least 1 item"),
    ("bad group name", lambda c: group(c).update(name="Chat_Nodes"), "nodeGroups[0].name", "lower-case a-z, 0-9 and '-'"),
    ("local instance on aws", lambda c: group(c).update(instanceType="local-cpu"), FLEET_KEY, "is for target `local`"),
    ("aws without aws section", lambda c: fleet(c).pop("aws"), FLEET_KEY, "needs an `aws` section"),
    ("zone outside region", lambda c: fleet(c)["aws"].update(zones=["eu-west-1a"]), "aws.zones", "not in region"),
    ("ssh from anywhere", lambda c: fleet(c)["aws"].update(sshCidrs=["0.0.0.0/0"]), "aws.sshCidrs", "whole internet"),
    ("ssh from the world in halves", lambda c: fleet(c)["aws"].update(sshCidrs=["0.0.0.0/1", "128.0.0.0/1"]), "aws.sshCidrs", "whole internet"),
    ("bad cidr", lambda c: fleet(c)["gateway"].update(adminCidrs=["10.0.0.300/8"]), "gateway.adminCidrs[0]", "must be a CIDR"),
    ("latest image", lambda c: fleet(c).update(images={"ollama": "ollama/ollama:latest"}), "images.ollama", "`latest` is not allowed"),
    ("untagged image", lambda c: fleet(c).update(images={"nginx": "nginx"}), "images.nginx", "must name a tag"),
    ("bad keep alive", lambda c: group(c)["ollama"].update(keepAlive="forever"), "ollama.keepAlive", "duration"),
    ("bad body size", lambda c: fleet(c)["gateway"].update(maxBodySize="lots"), "gateway.maxBodySize", "nginx size"),
    ("duplicate clients", lambda c: fleet(c)["gateway"].update(clients=[{"name": "a"}, {"name": "a"}]), "gateway.clients", "repeated: a"),
    ("unknown environment", lambda c: fleet(c).update(environment="qa"), f"{FLEET_KEY}.environment", "'dev', 'staging' or 'prod'"),
    ("unknown tls mode", lambda c: fleet(c)["gateway"]["tls"].update(mode="letsencrypt"), "gateway.tls.mode", "'self-signed'"),
    ("acme without zone", lambda c: fleet(c)["gateway"].pop("hostedZone"), FLEET_KEY, "hostedZone"),
    ("retention not a duration", lambda c: fleet(c)["monitoring"].update(retention="a month"), "monitoring.retention", "Prometheus duration"),
    ("headroom too large", lambda c: fleet(c)["policy"].update(vramHeadroom=0.95), "policy.vramHeadroom", "less than 0.9"),
    ("quantization not published", lambda c: group(c)["models"][0].update(name="smollm2", tag="135m", quantization="q4_K_M"), "models[0]", "not published for smollm2:135m"),
    ("num_ctx above model max", lambda c: group(c)["models"][0].update(numCtx=1_000_000), "models[0]", "exceeds llama3.1:8b's maximum context"),
    ("plain api keys", lambda c: c.update({"ollama-fleet:apiKeys": '{"search": "k1"}'}), "ollama-fleet:apiKeys", "must be a secret"),
    ("plain grafana password", lambda c: c.update({"ollama-fleet:grafanaAdminPassword": "hunter2"}), "ollama-fleet:grafanaAdminPassword", "--secret"),
    ("unknown project key", lambda c: c.update({"ollama-fleet:nodes": 3}), "ollama-fleet:nodes", "unknown key"),
    ("unknown namespace", lambda c: c.update({"olama-fleet:fleet": {}}), "olama-fleet:fleet", "unknown namespace"),
    ("fleet key missing", lambda c: c.pop(FLEET_KEY), FLEET_KEY, "required key is missing"),
    ("fleet not a mapping", lambda c: c.update({FLEET_KEY: [1, 2]}), FLEET_KEY, "must be a mapping"),
    ("ttft target without a measurement", _ttft_target_only, "gateway.ttftTargetSeconds",
     "needs nodeGroups[0].measured (group 'chat'): measure it with `fleet tune --group chat --param concurrency`"),
    ("ttft target zero", lambda c: _ttft_target_only(c, 0), "gateway.ttftTargetSeconds", "greater than 0"),
    ("service time zero", lambda c: group(c).update(measured={"serviceTimeSeconds": 0, "firstTokenSeconds": 0.1}),
     "nodeGroups[0].measured.serviceTimeSeconds", "greater than 0"),
    ("measurement incomplete", lambda c: group(c).update(measured={"serviceTimeSeconds": 2.0}),
     "nodeGroups[0].measured.firstTokenSeconds", "required"),
    ("negative queue", lambda c: fleet(c)["gateway"].update(queuePerNode=-1), "gateway.queuePerNode", "greater than or equal to 0"),
    ("alias not a list", lambda c: group(c)["models"][0].update(aliases="chat"), "models[0].aliases", "must be a list"),
    ("alias with capitals", lambda c: _aliased(c, "Chat"), "models[0].aliases[0]", "must be `name` or `name:tag`"),
    ("alias with a namespace", lambda c: _aliased(c, "team/chat"), "models[0].aliases[0]", "must be `name` or `name:tag`"),
    ("alias with a source suffix", lambda c: _aliased(c, "chat:cloud"), "models[0].aliases[0]", "Ollama's source suffix"),
    ("alias is the model's own name", lambda c: _aliased(c, "chat", "llama3.1:8b"), "models[0].aliases[1]",
     "is the model's own name llama3.1:8b"),
    ("alias repeated as name:latest", lambda c: _aliased(c, "chat", "chat:latest"), "models[0].aliases[1]",
     "names chat:latest as aliases[0] does; each alias is listed once"),
    ("too many aliases", lambda c: _aliased(c, *(f"a{i}" for i in range(17))), "models[0].aliases", "at most 16 items"),
    ("alias is another group's model", lambda c: (_aliased(c, "qwen2.5:7b"), _second_group(c, [QWEN])),
     "nodeGroups[0].models[0].aliases[0]", "is the name of the model qwen2.5:7b that group 'chat-b' serves (nodeGroups[1].models[0]); allowed: a name no group serves"),
    ("alias of two models", lambda c: (_aliased(c, "chat"), _second_group(c, [dict(QWEN, aliases=["chat:latest"])])),
     "nodeGroups[1].models[0].aliases[0]", "is already an alias of llama3.1:8b (nodeGroups[0].models[0].aliases[0]); each alias names one model"),
    ("one model, other aliases in another group", lambda c: (_second_group(c, [dict(_aliased(c, "chat"), aliases=["assistant"])])),
     "nodeGroups[1].models[0].aliases", "llama3.1:8b is also served by group 'chat' with aliases [chat]"),
]


def test_ttft_target_with_an_explicit_queue_needs_no_measurement(tmp_path):
    document = _prod_raw()
    fleet(document["config"])["gateway"]["ttftTargetSeconds"] = 2.0  # queuePerNode 8 stays: it overrides the target
    settings = load_stack_file(_write(tmp_path, document, "explicit")).settings
    assert settings.gateway.ttft_target_seconds == 2.0 and settings.gateway.queue_per_node == 8


@pytest.mark.parametrize("case_id,mutate,key_fragment,words", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_config_names_key_and_what_is_allowed(tmp_path, case_id, mutate, key_fragment, words):
    problems = _problems(tmp_path, mutate)
    assert any(key_fragment in p and words in p for p in problems), problems


def test_a_model_on_several_groups_has_its_aliases_in_each(tmp_path):
    document = _prod_raw()
    config = document["config"]
    first = _aliased(config, "chat", "gpt-4o-mini")
    _second_group(config, [dict(first, aliases=["gpt-4o-mini:latest", "chat"]), dict(QWEN, aliases=["coder"])])
    settings = load_stack_file(_write(tmp_path, document, "shared")).settings
    assert settings.node_groups[0].models[0].aliases == ["chat", "gpt-4o-mini"]
    assert settings.node_groups[1].models[1].aliases == ["coder"]


def test_every_problem_is_reported_at_once(tmp_path):
    def two_problems(c):
        group(c)["ollama"].update(numParallel=0)
        fleet(c)["gateway"].update(maxBodySize="lots")

    problems = _problems(tmp_path, two_problems)
    assert len(problems) == 2


def test_secret_key_stored_encrypted_is_accepted(tmp_path):
    document = _prod_raw()
    document["config"]["ollama-fleet:apiKeys"] = {"secure": "v1:AAAAbase64=="}
    config = load_stack_file(_write(tmp_path, document, "ok"))
    assert "ollama-fleet:apiKeys" in config.secret_keys_set


def test_invalid_yaml_is_a_clear_error(tmp_path):
    path = tmp_path / "Pulumi.bad.yaml"
    path.write_text("config:\n  ollama-fleet:fleet: [unclosed\n")
    with pytest.raises(StackConfigError, match="not valid YAML"):
        load_stack_file(path)


def test_missing_stack_lists_the_known_ones():
    with pytest.raises(StackConfigError, match="stacks here: dev, prod, staging"):
        load_stack("qa", ROOT)


def test_defaults_are_sensible():
    settings = FleetSettings.model_validate(
        {
            "environment": "dev",
            "target": "local",
            "nodeGroups": [{"name": "cpu", "instanceType": "local-cpu", "models": [{"name": "smollm2", "tag": "135m", "quantization": "q4_1"}]}],
        }
    )
    assert settings.gateway.rate_limits.per_key_per_minute > 0
    assert settings.node_groups[0].ollama.kv_cache_type == "f16"
    assert all("@sha256:" in image and ":latest" not in image for image in settings.images.model_dump().values())
    assert settings.policy.enforcement == "advisory"


def test_cli_validate_prints_message_without_traceback(tmp_path):
    document = _prod_raw()
    group(document["config"])["ollama"]["numParallel"] = 0
    _write(tmp_path, document)
    (tmp_path / "Pulumi.yaml").write_text((ROOT / "Pulumi.yaml").read_text())
    proc = subprocess.run(
        [sys.executable, "-m", "fleet.cli", "validate", "--stack", "broken"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "Pulumi.broken.yaml" in proc.stderr
    assert "nodeGroups[0].ollama.numParallel" in proc.stderr


def test_configuration_reference_is_up_to_date():
    from fleet.config_docs import render_reference

    assert (ROOT / "docs" / "configuration.md").read_text() == render_reference(), "run `make docs`"
