"""Start many agents from one import: a fork server for `sdnctl up`'s lab agents.

Design note. An agent's process spent about a second of CPU importing its modules (gRPC,
pyroute2, protobuf, our own) before it did anything; `sdnctl up` of 100 lab hosts started 100
interpreters at once and the two-core machine spent its first ~50 s importing the same modules
100 times (issue 21). This process imports ``agent.main`` once, then reads one request a line on
stdin (JSON: ``argv`` of ``agent.main``, ``netns`` path, ``log`` path) and forks a child for
each: the child starts a session of its own, points stdin at /dev/null and stdout/stderr at the
log, enters the network namespace (``setns``, one thread: nothing else runs yet) and runs
``agent.main.main(argv)``; the parent answers the child's PID on stdout. The children share the
imported modules' pages copy-on-write, which also lowers what 100 agents take together.

No connection to the controller is made before a fork (an agent dials it itself, through
``sdnctl.api.wire``: no threads of a gRPC library exist to be lost across ``fork``). Before it
serves, the imported modules' objects are frozen
(``gc.freeze``): the collector never visits them again, in the server or in a child, so a
child's collections write nothing into the pages it shares with the server and its siblings (a
visit writes into each object's header, and a page written to is copied): measured at 100 x 10,
2.5 % fewer page faults in the agents and 0.5 MB less PSS each. The server exits when its stdin
closes; its children are then re-parented (to the init process, or to a subreaper) like any
orphan, and are stopped by PID as before. ``--label`` is not read: it puts the caller's run
prefix into the command line that every child shows (/proc/PID/cmdline), as an agent started
by ``nsenter`` shows its own arguments.
"""

from __future__ import annotations

# What an agent imports only once it runs (the IDNA codec for the controller's address, the
# thread pool of its helpers): imported here, before any fork, each child had imported them
# again (about 6 ms of CPU each with grpcio's channel modules, 0.6 s for a 100-host lab).
import concurrent.futures.thread  # noqa: F401
import encodings.idna  # noqa: F401
import gc
import json
import os
import signal
import sys
import traceback
from typing import Any

from agent import main as agent_main
from agent.kernel.netns import setns_path


def child(request: dict[str, Any]) -> int:
    """In the forked child: detach, redirect, enter the namespace, run the agent."""
    os.setsid()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    null = os.open(os.devnull, os.O_RDONLY)
    log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(null)
    os.close(log)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 (the process's own streams)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    setns_path(request["netns"])
    return int(agent_main.main(list(request["argv"])) or 0)


def serve() -> int:
    gc.freeze()  # (see the module note)
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = child(request)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        sys.stdout.write(json.dumps({"pid": pid}) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(serve())
