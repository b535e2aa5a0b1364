"""What an agent process loads (issue 21: memory per agent): not the PKI's ``cryptography``
(~9 MB), which only issuing and checking certificates needs; the agent reads its TLS files
through ``sdnctl.api.tlsfiles``."""

from __future__ import annotations

import subprocess
import sys


def test_the_agent_does_not_load_cryptography() -> None:
    probe = ("import sys, agent.main, agent.forkserver; "
             "print(sorted(m for m in sys.modules if m.split('.')[0] == 'cryptography'))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[]", done.stdout
    control = subprocess.run([sys.executable, "-c", "import sys, sdnctl.api.pki; "
                              "print('cryptography' in sys.modules)"], capture_output=True,
                             text=True, check=True)
    assert control.stdout.strip() == "True"  # the probe sees what a module loads
