"""A node's runtime as one structured value (`fleet.node_runtime.NodeRuntime`): the deployment and the loopback
data plane build it the same way, and the Modelfile and the meter's argv are rendered from it."""

from __future__ import annotations

import dataclasses

import pytest

from fleet import contract, ports
from fleet.config import ModelSpec
from fleet.exporters.meter import build_parser
from fleet.local.dataplane import loopback_runtime
from fleet.node_runtime import MODELS_DIR, MeterOptions, NodeRuntime, ServedModel, import_path, modelfile
from fleet.stack_file import load_stack


@pytest.fixture(scope="module")
def group():
    return load_stack("dev").settings.node_groups[0]


def _with_models(group, *models: ModelSpec, num_thread: int | None = None):
    ollama = group.ollama.model_copy(update={"num_thread": num_thread})
    return group.model_copy(update={"models": list(models), "ollama": ollama})


def test_served_models_carry_their_parameters_and_aliases(group):
    model = group.models[0].model_copy(update={"aliases": ["chat", "gpt-4o-mini"], "num_ctx": 2048})
    runtime = NodeRuntime.of(_with_models(group, model, num_thread=3), "cpu-0")
    served = runtime.served(model.ref)
    assert served.name == model.ref and served.aliases == ("chat", "gpt-4o-mini")
    assert served.parameters == {"num_ctx": 2048, "num_thread": 3}
    assert served.modelfile() == f"FROM {served.source}\nPARAMETER num_ctx 2048\nPARAMETER num_thread 3\n"
    assert served.modelfile() == modelfile(model, 3)
    with pytest.raises(KeyError, match=model.ref):
        runtime.served("absent:1b")


def test_a_gguf_model_starts_from_its_file_in_the_container_and_unset_parameters_are_left_out(tmp_path, group):
    gguf = tmp_path / "custom.gguf"
    gguf.write_bytes(b"GGUF")
    custom = ModelSpec(name="custom", tag="1b", quantization="q4_0", gguf=str(gguf), num_ctx=2048)
    served = ServedModel.of(custom)
    assert served.source == import_path(custom) == "/tmp/custom-1b.gguf"
    assert served.parameters == {"num_ctx": 2048}  # no num_thread: Ollama's own default
    assert served.modelfile() == "FROM /tmp/custom-1b.gguf\nPARAMETER num_ctx 2048\n"


def test_the_environment_is_the_contract_knobs_and_the_container_adds_address_and_models(group):
    runtime = NodeRuntime.of(group, "cpu-0")
    assert runtime.environment == contract.ollama_environment(group)
    assert not {"OLLAMA_HOST", "OLLAMA_MODELS"} & set(runtime.environment)
    env = runtime.container_environment()
    assert env["OLLAMA_HOST"] == f"0.0.0.0:{ports.OLLAMA}" and env["OLLAMA_MODELS"] == MODELS_DIR
    assert {k: v for k, v in env.items() if k not in ("OLLAMA_HOST", "OLLAMA_MODELS")} == runtime.environment


def test_the_meter_argv_is_rendered_from_its_options_and_read_by_the_exporter(group):
    first = group.models[0].model_copy(update={"aliases": ["chat"]})
    second = ModelSpec(name="llama3.2", tag="1b", aliases=["small", "tiny"])
    runtime = NodeRuntime.of(_with_models(group, first, second), "cpu-0", ["dev", "ops"], ollama_host="node-ollama")
    meter = runtime.meter
    assert meter == MeterOptions(
        upstream=f"http://node-ollama:{ports.OLLAMA}",
        listen=f"0.0.0.0:{ports.METER}",
        metrics_listen=f"0.0.0.0:{ports.METER_METRICS}",
        node="cpu-0",
        models=(first.ref, "llama3.2:1b"),
        aliases=(("chat", first.ref), ("small", "llama3.2:1b"), ("tiny", "llama3.2:1b")),
        clients=("dev", "ops"),
    )
    argv = meter.argv()
    # Each model's aliases follow it, the clients come last.
    assert argv[argv.index("llama3.2:1b") + 1 : argv.index("llama3.2:1b") + 5] == [
        "--alias", "small=llama3.2:1b", "--alias", "tiny=llama3.2:1b"
    ]
    assert argv[-4:] == ["--client", "dev", "--client", "ops"]
    args = build_parser().parse_args(argv)
    assert args.upstream == meter.upstream and args.node == "cpu-0"
    assert args.listen == ("0.0.0.0", ports.METER) and args.metrics_listen == ("0.0.0.0", ports.METER_METRICS)
    assert args.model == list(meter.models) and args.alias == list(meter.aliases) and args.client == ["dev", "ops"]


def test_the_data_plane_moves_only_the_meter_addresses(group):
    deployed = NodeRuntime.of(group, "cpu-1", ["dev"])
    local = loopback_runtime(deployed, "http://127.0.0.1:4000", 4001, 4002)
    assert local.environment == deployed.environment and local.models == deployed.models
    assert dataclasses.replace(local.meter, upstream="", listen="", metrics_listen="") == dataclasses.replace(
        deployed.meter, upstream="", listen="", metrics_listen=""
    )
    args = build_parser().parse_args(local.meter.argv())
    assert args.upstream == "http://127.0.0.1:4000"
    assert args.listen == ("127.0.0.1", 4001) and args.metrics_listen == ("127.0.0.1", 4002)
    assert deployed.meter.listen == f"0.0.0.0:{ports.METER}"  # the value itself is left as it was
