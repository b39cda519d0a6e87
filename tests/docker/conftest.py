"""Session fixtures of the Docker tests: the project's own dockerd (started here, stopped at the end) and the
stand-in images built on it. Where dockerd cannot start, the tests fail (never skip): CI runs as root with
Debian's docker.io installed by scripts/bootstrap.sh --full."""

from __future__ import annotations

import fcntl

import pytest

from fleet.local.dockerd import Dockerd, DockerdError
from fleet.local.standins import StandinError, build_all


@pytest.fixture(scope="session")
def dockerd():
    daemon = Dockerd()
    daemon.data_root.parent.mkdir(parents=True, exist_ok=True)
    # One test session per data root at a time (a second dockerd cannot share it).
    lock = (daemon.data_root.parent / "session.lock").open("w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        daemon.start()
    except DockerdError as exc:
        lock.close()
        pytest.fail(str(exc), pytrace=False)
    yield daemon
    daemon.stop()
    lock.close()


@pytest.fixture(scope="session")
def docker_client(dockerd):
    client = dockerd.client()
    yield client
    client.close()


@pytest.fixture(scope="session")
def standin_images(docker_client) -> dict[str, str]:
    """Stand-in tags by the repository they replace."""
    try:
        return build_all(docker_client)
    except StandinError as exc:
        pytest.fail(str(exc), pytrace=False)
