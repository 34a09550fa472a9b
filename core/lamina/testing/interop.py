"""Running the Go container tools (skopeo, podman) in tests the way these machines need them.

As ``interop-smoke.sh`` does: a private mount and network namespace with empty ``/run`` and
``/var/tmp`` (and the host's default store hidden), the cgroup v2 controllers hidden from crun.
Every mount the tools make vanishes with the namespace.
"""

from __future__ import annotations

import shutil
import subprocess

__all__ = ["SANDBOX_SCRIPT", "sandbox"]

SANDBOX_SCRIPT = r'''
c=/sys/fs/cgroup/unified/cgroup.controllers
if [ -n "$(cat "$c" 2>/dev/null)" ]; then mount --bind /dev/null "$c" || exit 1; fi
if [ -d /var/lib/containers ]; then mount -t tmpfs -o mode=0700 tmpfs /var/lib/containers || exit 1; fi
mount -t tmpfs -o mode=0755 tmpfs /run || exit 1
mount -t tmpfs -o mode=1777 tmpfs /var/tmp || exit 1
exec "$@"
'''


def sandbox(*cmd: str, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """Run *cmd* inside a private mount + network namespace; output is captured as text."""
    return subprocess.run([shutil.which("unshare") or "unshare", "--mount", "--net", "--propagation", "private",
                           "sh", "-c", SANDBOX_SCRIPT, "sandbox", *cmd],
                          capture_output=True, text=True, env=env, timeout=timeout)
