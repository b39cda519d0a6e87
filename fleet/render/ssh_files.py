"""The deployer's SSH files for one AWS host, written and removed by a command the Pulumi engine runs.

The Docker provider and the readiness step run the OpenSSH client, which reads the deployer's private key and
the host's pinned key from files. `write_script` writes both, mode 0600 in a folder that must belong to the user
with mode 0700; the contents come from the environment variables `KEY_VAR` and `KNOWN_HOSTS_VAR` (the key is a
secret: it never appears in the script, on a command line or in the output). `remove_script` takes them away when
the host goes. The scripts are POSIX sh, rendered here and run by pulumi-command; `check_folder` is the same
check as the write script's, for the program to refuse a bad folder before it registers anything.
"""

from __future__ import annotations

import os
import shlex
import stat
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import jinja2

from fleet.render.jinja import environment

KEY_VAR = "FLEET_SSH_PRIVATE_KEY"
KNOWN_HOSTS_VAR = "FLEET_SSH_KNOWN_HOSTS"
INTERPRETER = ["/bin/sh", "-c"]


@dataclass(frozen=True)
class SshFiles:
    """Where one host's SSH files live on the deployer."""

    folder: str
    key_file: str
    known_hosts_file: str


@lru_cache(maxsize=1)
def _shell_environment() -> jinja2.Environment:
    """The renderers' environment with a shell-quoting filter; made once, so each template compiles once."""
    env = environment().overlay()
    env.filters["q"] = lambda value: shlex.quote(str(value))
    return env


def _render(template: str, host_name: str, files: SshFiles) -> str:
    return _shell_environment().get_template(template).render(
        host_name=host_name,
        folder=files.folder,
        key_file=files.key_file,
        known_hosts_file=files.known_hosts_file,
        key_var=KEY_VAR,
        known_hosts_var=KNOWN_HOSTS_VAR,
    )


def write_script(host_name: str, files: SshFiles) -> str:
    """Create the folder (0700), refuse it unless it is the user's own and private, write both files (0600)."""
    return _render("deployer-ssh/write.sh.j2", host_name, files)


def remove_script(host_name: str, files: SshFiles) -> str:
    """Remove both files, and the folder when nothing else is left in it."""
    return _render("deployer-ssh/remove.sh.j2", host_name, files)


def check_folder(folder: str | Path) -> None:
    """Refuse a folder for SSH files that someone else owns or can read (a missing one is created private)."""
    path = Path(folder)
    if path.exists():
        info = path.stat()
        if info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o077:
            raise PermissionError(f"{path} must belong to you with mode 0700 (it holds an SSH key)")
