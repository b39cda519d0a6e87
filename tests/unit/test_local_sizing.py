"""The loopback data plane sized to the machine: threads per node from the CPUs, a warning when the nodes'
threads exceed them, and the thread count reaching Ollama through the Modelfile."""

from __future__ import annotations

import pytest

from fleet.local import sizing
from fleet.local.dataplane import DataPlane, loopback_runtime
from fleet.node_runtime import NodeRuntime, modelfile, pull_script
from fleet.stack_file import load_stack


def test_usable_cpus_follows_a_cgroup_quota(tmp_path):
    quota = tmp_path / "cpu.max"
    quota.write_text("150000 100000\n")  # 1.5 CPUs: one whole CPU to share out
    assert sizing.usable_cpus(quota) == 1
    quota.write_text("max 100000\n")
    unlimited = sizing.usable_cpus(quota)
    assert unlimited >= 1 and unlimited == sizing.usable_cpus(tmp_path / "absent")


@pytest.mark.parametrize(
    ("nodes", "cpus", "threads"),
    [([1], 2, (2,)), ([2], 2, (1, 1)), ([2], 16, (8, 8)), ([1, 1], 8, (4, 4)), ([3], 2, (1, 1, 1)), ([2, 1], 6, (2, 2, 2))],
)
def test_the_cpus_are_shared_out_over_every_node(nodes, cpus, threads):
    plan, per_group = sizing.plan_threads(nodes, [None] * len(nodes), cpus)
    assert plan.node_threads == threads and plan.chosen
    assert per_group == [threads[0]] * len(nodes)
    assert plan.oversubscribed == (sum(threads) > cpus)


def test_a_warning_names_the_oversubscription_and_the_way_out():
    plan, _ = sizing.plan_threads([3], [None], 2)  # one thread each is the least, still 3 on 2 CPUs
    warning = plan.warning()
    assert warning.startswith("3 nodes × 1 thread = 3 threads on 2 CPUs")
    assert "--nodes" in warning and "--threads" in warning and "at most 2 threads" in warning
    given, _ = sizing.plan_threads([2], [None], 2, threads_per_node=2)  # asked for: 4 threads on 2 CPUs
    assert given.oversubscribed and not given.chosen and "2 nodes × 2 threads = 4" in given.warning()
    fitting, _ = sizing.plan_threads([2], [None], 2)
    assert fitting.warning() is None
    assert fitting.describe() == "2 nodes × 1 thread on 2 CPUs (shared out over this machine's CPUs)"
    mixed, per_group = sizing.plan_threads([1, 1], [3, None], 4)  # one group sets numThread itself
    assert per_group == [3, 2] and mixed.threads == 5 and "2 nodes with 3 + 2 threads" in mixed.warning()


def test_the_default_node_count_keeps_a_cpu_per_node():
    assert sizing.default_node_count(stack_count=1, cpus=2) == 1
    assert sizing.default_node_count(stack_count=4, cpus=2) == 2
    assert sizing.default_node_count(stack_count=2, cpus=2, groups=2) == 1
    assert sizing.default_node_count(stack_count=2, cpus=1) == 1


def test_num_thread_goes_into_the_modelfile_of_the_deployment_and_the_data_plane():
    group = load_stack("dev").settings.node_groups[0]
    model = group.models[0]
    assert "num_thread" not in modelfile(model)  # unset: Ollama's own default
    assert modelfile(model, 3).endswith("PARAMETER num_ctx 4096\nPARAMETER num_thread 3\n")
    threaded = group.model_copy(update={"ollama": group.ollama.model_copy(update={"num_thread": 2})})
    assert "PARAMETER num_thread 2" in pull_script("ollama", threaded)
    # The data plane imports with the parameters of the deployment's runtime, not a reading of its text.
    local = loopback_runtime(NodeRuntime.of(threaded, "cpu-0"), "http://127.0.0.1:1", 2, 3)
    assert local.served(model.ref).parameters == {"num_ctx": 4096, "num_thread": 2}


def test_the_data_plane_sizes_each_node_and_keeps_a_configured_value(tmp_path):
    two = DataPlane("dev", {"nodeGroups.0.count": 2}, run_dir=tmp_path / "a", cpus=2)
    assert two.settings.node_groups[0].ollama.num_thread == 1
    assert two.thread_plan.node_threads == (1, 1) and two.thread_plan.warning() is None
    assert "numThread" not in " ".join(two.overrides)  # the user's overrides stay as given (state file)
    configured = DataPlane("dev", {"nodeGroups.0.ollama.numThread": 2, "nodeGroups.0.count": 2}, run_dir=tmp_path / "b", cpus=2)
    assert configured.settings.node_groups[0].ollama.num_thread == 2 and configured.thread_plan.oversubscribed
    forced = DataPlane("dev", {}, run_dir=tmp_path / "c", cpus=8, threads_per_node=3)
    assert forced.settings.node_groups[0].ollama.num_thread == 3 and not forced.thread_plan.chosen
