"""The stand-in images build on the project's dockerd and keep the official images' contract: entrypoint,
command, user, and the binaries the program's health checks call."""

from __future__ import annotations

import pytest

from fleet.local.standins import BY_REPOSITORY, STANDINS, repository_of

pytestmark = pytest.mark.docker

# What the official images declare that the program relies on (their image configs at the pinned tags).
OFFICIAL = {
    "ollama/ollama": {"Entrypoint": ["/bin/ollama"], "Cmd": ["serve"], "User": ""},
    "nginx": {"Entrypoint": ["/docker-entrypoint.sh"], "Cmd": ["nginx", "-g", "daemon off;"], "User": ""},
    "prom/prometheus": {
        "Entrypoint": ["/bin/prometheus"],
        "Cmd": ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"],
        "User": "nobody",
    },
    "prom/alertmanager": {
        "Entrypoint": ["/bin/alertmanager"],
        "Cmd": ["--config.file=/etc/alertmanager/alertmanager.yml", "--storage.path=/alertmanager"],
        "User": "nobody",
    },
    "prom/node-exporter": {"Entrypoint": ["/bin/node_exporter"], "User": "nobody"},
    "nginx/nginx-prometheus-exporter": {"Entrypoint": ["/usr/bin/nginx-prometheus-exporter"], "User": "nobody"},
}


def _run(client, image: str, *command: str, user: str | None = None) -> str:
    output = client.containers.run(image, list(command), entrypoint=[], remove=True, user=user)
    return output.decode()


def test_every_standin_is_built(standin_images):
    assert set(standin_images) == {s.replaces for s in STANDINS}


@pytest.mark.parametrize("repository", sorted(OFFICIAL))
def test_standin_declares_the_official_entrypoint_command_and_user(docker_client, standin_images, repository):
    config = docker_client.images.get(standin_images[repository]).attrs["Config"]
    for key, want in OFFICIAL[repository].items():
        assert (config.get(key) or ([] if key != "User" else "")) == want, f"{repository} {key}"


@pytest.mark.parametrize("standin", STANDINS, ids=lambda s: s.name)
def test_health_check_binary_runs_in_the_image(docker_client, standin_images, standin):
    tag = standin_images[standin.replaces]
    # The binary exists and executes in the image (not only a file of that name).
    output = _run(docker_client, tag, "sh", "-c", f"test -x {standin.health_binary} && {standin.health_binary} --version 2>&1 | head -n 1")
    assert output.strip(), f"{standin.health_binary} printed nothing in {tag}"


@pytest.mark.parametrize("repository", ["prom/prometheus", "prom/alertmanager", "prom/node-exporter"])
def test_prometheus_images_have_busybox_wget_like_the_official_ones(docker_client, standin_images, repository):
    # The official images are busybox images. BusyBox's wget reports an HTTP error even with -q, which the
    # program's Prometheus health check relies on (it reads the 401 from it); GNU wget -q prints nothing.
    output = _run(docker_client, standin_images[repository], "sh", "-c", "wget --help 2>&1 | head -n 1")
    assert output.startswith("BusyBox"), output


def test_alertmanager_standin_has_the_templates_debians_build_reads(docker_client, standin_images):
    output = _run(docker_client, standin_images["prom/alertmanager"], "ls", "/usr/share/prometheus/alertmanager")
    assert set(output.split()) == {"default.tmpl", "email.tmpl"}


def test_nginx_standin_runs_entrypoint_scripts_then_nginx(docker_client, standin_images):
    tag = standin_images["nginx"]
    script = "printf '#!/bin/sh\\necho ran-$0\\n' > /docker-entrypoint.d/10-x.sh && chmod +x /docker-entrypoint.d/10-x.sh"
    output = _run(docker_client, tag, "sh", "-c", f"{script} && /docker-entrypoint.sh nginx -v 2>&1")
    assert "ran-/docker-entrypoint.d/10-x.sh" in output
    assert "nginx version" in output
    assert _run(docker_client, tag, "id", "-u", "nginx").strip() == "101"


def test_repository_of_strips_tag_and_digest():
    assert repository_of("nginx:1.28.0-alpine@sha256:30f1") == "nginx"
    assert repository_of("prom/prometheus:v3.5.0@sha256:6380") == "prom/prometheus"
    assert repository_of("localhost:5000/team/app:1") == "localhost:5000/team/app"
    assert repository_of("docker.io/library/python:3.11-slim") == "python"
    assert BY_REPOSITORY[repository_of("ollama/ollama:0.32.15@sha256:57d6")].name == "ollama"
