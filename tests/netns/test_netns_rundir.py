"""Namespaces pinned under /run/netns stay removable when someone runs ``ip netns add`` later.

``ip netns add`` bind-mounts /run/netns onto itself when it is not a mount point yet; a
namespace pinned before that is hidden beneath the new mount (its ``umount`` no longer reaches
it, its file cannot be unlinked: EBUSY) until the machine restarts. ``create_netns`` therefore
makes /run/netns a shared mount point first, as ``ip netns add`` does. Checked in a private
mount namespace of the test's own whose /run/netns is a plain directory again.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.netns

REPO = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import os, subprocess, sys
sys.path.insert(0, sys.argv[1])
from agent.kernel.netns import create_netns, remove_netns, netns_path
prefix = sys.argv[2]
while subprocess.run(["umount", "/run/netns"], capture_output=True).returncode == 0:
    pass  # this private mount namespace's /run/netns: the plain directory again
ours, theirs = netns_path(prefix + "ours"), prefix + "theirs"
create_netns(ours)
subprocess.run(["ip", "netns", "add", theirs], check=True)
try:
    remove_netns(ours)
finally:
    subprocess.run(["ip", "netns", "del", theirs], check=True)
print("left:", os.path.exists(ours))
"""


def test_a_later_ip_netns_add_does_not_hide_our_namespaces(run_prefix: str) -> None:
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable,
                           "-c", SCRIPT, str(REPO), run_prefix],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "left: False"
    assert not any(n.startswith(run_prefix) for n in os.listdir("/run/netns"))
