"""A small CNI driver that calls plugins exactly as libcni does (issue 17): the plugin named by
``type`` is looked up in ``CNI_PATH``, run with ``CNI_COMMAND``, ``CNI_CONTAINERID``,
``CNI_NETNS``, ``CNI_IFNAME``, ``CNI_ARGS`` and ``CNI_PATH`` in its environment and its network
configuration on stdin; its stdout is parsed as the result, or, on a non-zero exit, as the spec's
error object. A conflist is run as libcni runs it: ``name`` and ``cniVersion`` injected into each
plugin's configuration, each plugin's result as the next one's ``prevResult``, ``runtimeConfig``
from the capability arguments a plugin declares, DEL in reverse order.

Plugins run in the network namespace ``run_in`` (a lab host's: where a runtime of that host
would run them) through ``nsenter``, so that sdnctl's plugin reaches that host's agent. Used by
the spec-level tests and by bench/cni.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
PLUGIN_FILE = REPO / "sdnctl" / "cni" / "plugin.py"
REFERENCE_DIRS = ("/usr/lib/cni", "/opt/cni/bin")
ELF = b"\x7fELF"


class CniFailed(Exception):
    def __init__(self, code: int, msg: str, details: str, raw: str) -> None:
        super().__init__(f"CNI error {code}: {msg} ({details})")
        self.code, self.msg, self.details, self.raw = code, msg, details, raw


def make_cni_path(directory: Path, reference: tuple[str, ...] = (), shim: bool = True) -> str:
    """A CNI_PATH directory of the test's own: ``sdnctl`` as the set-up installs it (the C shim
    built by scripts/build-cni-shim.sh for the venv's python; with ``shim=False``, or without
    a C compiler, a wrapper that runs the plugin file with that python, no site) and links to
    reference plugins."""
    directory.mkdir(parents=True, exist_ok=True)
    wrapper = directory / "sdnctl"
    if shim and shutil.which("cc"):
        if not wrapper.exists() or wrapper.read_bytes()[:4] != ELF:
            subprocess.run([str(REPO / "scripts" / "build-cni-shim.sh"), str(wrapper),
                            sys.executable], check=True)
    else:
        wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} -S -E {PLUGIN_FILE} \"$@\"\n")
        wrapper.chmod(0o755)
    for name in reference:
        source = next((Path(d) / name for d in REFERENCE_DIRS if (Path(d) / name).exists()),
                      None)
        if source is None:
            raise FileNotFoundError(f"reference CNI plugin {name!r} is not installed")
        link = directory / name
        if not link.exists():
            link.symlink_to(source)
    return str(directory)


@dataclass
class Driver:
    cni_path: str
    run_in: str = ""  # a network namespace path: the plugins run there (nsenter)
    extra_env: dict[str, str] = field(default_factory=dict)
    timeout: float = 90.0

    def exec(self, conf: dict[str, Any] | bytes, command: str, container_id: str = "",
             netns: str = "", ifname: str = "eth0", args: str = "",
             plugin: str = "") -> tuple[int, Any, str]:
        """One plugin call: (exit status, parsed stdout or None, raw stdout)."""
        stdin = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
        name = plugin or (conf.get("type", "") if isinstance(conf, dict) else "")
        exe = next((os.path.join(d, name) for d in self.cni_path.split(":")
                    if os.path.isfile(os.path.join(d, name))), None)
        if exe is None:
            raise FileNotFoundError(f"failed to find plugin {name!r} in path [{self.cni_path}]")
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
               "CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_NETNS": netns,
               "CNI_IFNAME": ifname, "CNI_ARGS": args, "CNI_PATH": self.cni_path,
               **self.extra_env}
        argv = ["nsenter", f"--net={self.run_in}", exe] if self.run_in else [exe]
        done = subprocess.run(argv, input=stdin, env=env, capture_output=True,
                              timeout=self.timeout, check=False)
        raw = done.stdout.decode()
        try:
            parsed = json.loads(raw) if raw.strip() else None
        except ValueError:
            parsed = None
        return done.returncode, parsed, raw + done.stderr.decode()

    def call(self, conf: dict[str, Any] | bytes, command: str, **kw: Any) -> Any:
        """As libcni: the result on success, CniFailed (code, msg) on failure; a failure whose
        stdout is not the spec's error object fails the test's assertion instead."""
        code, parsed, raw = self.exec(conf, command, **kw)
        if code != 0:
            assert isinstance(parsed, dict) and isinstance(parsed.get("code"), int) and \
                "msg" in parsed, f"not a CNI error object on stdout: {raw!r}"
            assert "Traceback" not in raw, raw
            raise CniFailed(parsed["code"], parsed["msg"], parsed.get("details", ""), raw)
        return parsed

    def version(self, plugin: str, asked: str = "1.0.0") -> Any:
        return self.call({"cniVersion": asked}, "VERSION", plugin=plugin)

    # -- conflists ------------------------------------------------------------------------------

    @staticmethod
    def _plugin_conf(conflist: dict[str, Any], plugin: dict[str, Any], prev: Any,
                     capability_args: dict[str, Any]) -> dict[str, Any]:
        conf = dict(plugin, name=conflist["name"], cniVersion=conflist["cniVersion"])
        runtime = {k: v for k, v in capability_args.items()
                   if plugin.get("capabilities", {}).get(k)}
        if runtime:
            conf["runtimeConfig"] = runtime
        if prev is not None:
            conf["prevResult"] = prev
        return conf

    def add_list(self, conflist: dict[str, Any], container_id: str, netns: str,
                 ifname: str = "eth0", capability_args: dict[str, Any] | None = None) -> Any:
        prev = None
        for plugin in conflist["plugins"]:
            prev = self.call(self._plugin_conf(conflist, plugin, prev, capability_args or {}),
                             "ADD", container_id=container_id, netns=netns, ifname=ifname)
        return prev

    def check_list(self, conflist: dict[str, Any], container_id: str, netns: str, prev: Any,
                   ifname: str = "eth0", capability_args: dict[str, Any] | None = None) -> None:
        for plugin in conflist["plugins"]:
            self.call(self._plugin_conf(conflist, plugin, prev, capability_args or {}), "CHECK",
                      container_id=container_id, netns=netns, ifname=ifname)

    def del_list(self, conflist: dict[str, Any], container_id: str, netns: str, prev: Any = None,
                 ifname: str = "eth0", capability_args: dict[str, Any] | None = None) -> None:
        for plugin in reversed(conflist["plugins"]):
            self.call(self._plugin_conf(conflist, plugin, prev, capability_args or {}), "DEL",
                      container_id=container_id, netns=netns, ifname=ifname)
