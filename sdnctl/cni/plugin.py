"""sdnctl-cni: the CNI plugin executable (spec 0.4.0, 1.0.0, 1.1.0), a thin client of the agent.

A runtime starts one process per call, so this file is the whole program: it imports nothing of
ours and of the standard library only C modules (``_json``, ``_socket``) besides ``os`` and
``sys``: ``json`` and ``socket`` would bring ``re`` and ``enum``, ~10 ms more; ``json`` is
imported only to word a decoding error. The installed wrapper runs it as ``python -S -E
plugin.py`` (no site, no environment: ~10 ms of start-up, where grpc alone costs ~100 ms).
It reads the environment and the configuration, answers
``VERSION`` itself, and hands every other command, as one JSON line, to the agent of the host it
runs on. The agent listens on an ABSTRACT unix socket (``@sdnctl-agent``); abstract names are
per network namespace, so a plugin run in a host's namespace (a lab host's too) reaches that
host's agent with no configuration at all. The agent answers one JSON line: ``{"result": ...}``
(printed as is, already in the caller's ``cniVersion``), ``{}`` (nothing to print) or
``{"error": {"code", "msg", "details"}}``.

Installed, the plugin is a small C program first (``sdnctl/cni/shim.c``, built by the set-up):
it passes the environment and stdin as they came to the agent, which runs this file's checks
(:func:`agent_request`) and words the answer, and it runs this file for VERSION and when no
agent listens (~1 ms of process start-up instead of ~10 for Python).

Errors are the spec's JSON on stdout with its codes and a non-zero exit status, never a
traceback: 1 incompatible version, 2 unsupported field, 4 invalid environment variables, 5 I/O,
6 undecodable configuration, 7 invalid configuration, 11 try again later (no agent here, or the
agent cannot reach the controller), 50 not available (STATUS), 999 anything else.
"""

from __future__ import annotations

import _socket  # socket.py would bring enum along: ~4 ms of a ~20 ms call
import os
import sys

TYPE_CHECKING = False  # typing costs ~3 ms to import: only for the type checker
if TYPE_CHECKING:
    from typing import Any

try:  # json's C half: json itself imports re and enum (~8 ms); used when it is there
    import _json
except ImportError:  # pragma: no cover (not CPython)
    _json = None  # type: ignore[assignment]

SUPPORTED_VERSIONS = ("0.4.0", "1.0.0", "1.1.0")
#: The agent's socket: an abstract name, "\0" + this (see the module note).
AGENT_SOCKET = "sdnctl-agent"
SOCKET_ENV = "SDNCTL_CNI_SOCKET"  # another abstract name (tests, a second agent), or a path

ERR_VERSION = 1
ERR_UNSUPPORTED_FIELD = 2
ERR_UNKNOWN_CONTAINER = 3
ERR_ENV = 4
ERR_IO = 5
ERR_DECODE = 6
ERR_CONFIG = 7
ERR_TRY_AGAIN = 11
ERR_NOT_AVAILABLE = 50
ERR_INTERNAL = 999

COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")
#: What each command needs in the environment (as libcni's skel: CNI_NETNS is optional for DEL).
REQUIRED_ENV = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    "GC": ("CNI_PATH",),
    "STATUS": ("CNI_PATH",),
}
#: Commands that exist only from this spec version on.
SINCE = {"STATUS": "1.1.0", "GC": "1.1.0", "CHECK": "0.4.0"}
TIMEOUT = 60.0  # seconds: the agent bounds its own waits well below this


class _Context:
    """What ``_json.make_scanner`` reads of a decoder: plain JSON, as ``json.loads`` does."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float
    memo: dict[str, str] = {}


_SCAN = _json.make_scanner(_Context()) if _json is not None else None  # type: ignore[arg-type]
_ENCODE = _json.make_encoder(None, None, _json.encode_basestring_ascii,  # type: ignore[arg-type]
                             None, ": ", ", ", False, False, True) if _json is not None else None


def loads(data: bytes | str) -> Any:
    """``json.loads`` without importing json on the good path; bad input takes the slow path
    (json itself), which raises ValueError with json's message."""
    if _SCAN is not None:
        try:
            text = data.decode() if isinstance(data, bytes) else data
            end = len(text)
            start = 0
            while start < end and text[start] in " \t\n\r":
                start += 1
            value, stop = _SCAN(text, start)
            while stop < end and text[stop] in " \t\n\r":
                stop += 1
            if stop == end:
                return value
        except Exception:  # json, below, says what is wrong
            pass
    import json  # only for bad input (or without _json): the error message

    return json.loads(data)


def dumps(value: Any) -> str:
    if _ENCODE is not None:
        return "".join(_ENCODE(value, 0))
    import json

    return json.dumps(value)


class CniError(Exception):
    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, version: str) -> dict[str, Any]:
        return {"cniVersion": version, "code": self.code, "msg": self.msg,
                "details": self.details}


def version_key(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        return (0,)


def parse_config(raw: bytes) -> dict[str, Any]:
    """The network configuration on stdin: decoded (6), then its required fields (7, 1)."""
    try:
        conf = loads(raw)
    except ValueError as e:
        raise CniError(ERR_DECODE, "could not decode the network configuration on stdin",
                       str(e)) from None
    if not isinstance(conf, dict):
        raise CniError(ERR_DECODE, "the network configuration on stdin is not a JSON object")
    version = conf.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise CniError(ERR_CONFIG, "cniVersion: missing (a string, e.g. \"1.0.0\")")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(ERR_VERSION, f"cniVersion {version!r} is not supported",
                       f"supported: {', '.join(SUPPORTED_VERSIONS)}")
    for field in ("name", "type"):
        if not isinstance(conf.get(field), str) or not conf[field]:
            raise CniError(ERR_CONFIG, f"{field}: missing (a non-empty string)")
    network = conf.get("network", conf["name"])
    if not isinstance(network, str) or not network:
        raise CniError(ERR_CONFIG, "network: expected the name of an sdnctl network")
    for field in ("controller",):
        if field in conf and not isinstance(conf[field], str):
            raise CniError(ERR_CONFIG, f"{field}: expected a string")
    for field in ("runtimeConfig", "args", "prevResult"):
        if field in conf and not isinstance(conf[field], dict):
            raise CniError(ERR_CONFIG, f"{field}: expected an object")
    return conf


def check_env(command: str, env: dict[str, str]) -> None:
    missing = [name for name in REQUIRED_ENV.get(command, ()) if not env.get(name)]
    if missing:
        raise CniError(ERR_ENV, f"missing environment variable(s): {', '.join(missing)}",
                       f"required for {command}")
    netns = env.get("CNI_NETNS", "")
    if netns and not netns.startswith("/"):
        raise CniError(ERR_ENV, f"CNI_NETNS: {netns!r} is not an absolute path")


def socket_address(env: dict[str, str]) -> str:
    """The agent's socket: ``$SDNCTL_CNI_SOCKET`` (a path when it starts with "/", else an
    abstract name), else ``@sdnctl-agent``."""
    name = env.get(SOCKET_ENV) or AGENT_SOCKET
    return name if name.startswith("/") else "\0" + name.lstrip("@")


def call_agent(address: str, request: dict[str, Any],
               timeout: float = TIMEOUT) -> dict[str, Any]:
    """One request, one answer. No agent listening here: 11 (try again later)."""
    where = address if address.startswith("/") else "@" + address[1:]
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(address)
        except OSError as e:
            raise CniError(ERR_TRY_AGAIN, f"no sdnctl agent listens on {where} in this network "
                           "namespace (is the agent of this host running?)", str(e)) from None
        sock.sendall(dumps(request).encode() + b"\n")
        sock.shutdown(_socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except OSError as e:
        raise CniError(ERR_TRY_AGAIN, f"the sdnctl agent on {where} did not answer", str(e)) \
            from None
    finally:
        sock.close()
    try:
        answer = loads(b"".join(chunks))
    except ValueError:
        raise CniError(ERR_TRY_AGAIN, f"the sdnctl agent on {where} closed the connection "
                       "without an answer") from None
    if not isinstance(answer, dict):
        raise CniError(ERR_INTERNAL, "the sdnctl agent sent something that is not an object")
    error = answer.get("error")
    if isinstance(error, dict):
        raise CniError(int(error.get("code") or ERR_INTERNAL), str(error.get("msg") or "error"),
                       str(error.get("details") or ""))
    return answer


def error_version(stdin: bytes) -> str:
    """The version to word an error in: the configuration's, when it is one we speak."""
    try:
        asked = loads(stdin).get("cniVersion")
    except (ValueError, AttributeError):
        return SUPPORTED_VERSIONS[-1]
    return asked if asked in SUPPORTED_VERSIONS else SUPPORTED_VERSIONS[-1]


def agent_request(env: dict[str, str], stdin: bytes) -> tuple[dict[str, Any], str]:
    """What to ask the agent for one call other than VERSION, and the configuration's version
    (checked here: also by the agent for the C shim's calls, which pass stdin as it came).
    Raises CniError."""
    command = env.get("CNI_COMMAND", "")
    if command not in COMMANDS or command == "VERSION":
        raise CniError(ERR_ENV, f"CNI_COMMAND: {command!r} is not one of "
                       f"{', '.join(c for c in COMMANDS if c != 'VERSION')}")
    conf = parse_config(stdin)
    version = conf["cniVersion"]
    if version_key(version) < version_key(SINCE.get(command, "0.0.0")):
        raise CniError(ERR_VERSION, f"{command} needs cniVersion {SINCE[command]} or later, "
                       f"the configuration says {version}")
    check_env(command, env)
    return {"command": command, "containerID": env.get("CNI_CONTAINERID", ""),
            "netns": env.get("CNI_NETNS", ""), "ifname": env.get("CNI_IFNAME", ""),
            "args": env.get("CNI_ARGS", ""), "config": conf}, version


def run(env: dict[str, str], stdin: bytes) -> tuple[dict[str, Any] | None, str]:
    """One call: (what to print, or None; the version to write errors in). Raises CniError."""
    command = env.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CniError(ERR_ENV, f"CNI_COMMAND: {command!r} is not one of {', '.join(COMMANDS)}")
    if command == "VERSION":
        try:
            asked = loads(stdin or b"{}").get("cniVersion", "")
        except (ValueError, AttributeError):
            asked = ""
        if asked and asked not in SUPPORTED_VERSIONS and version_key(asked) < (0, 4, 0):
            raise CniError(ERR_VERSION, f"cniVersion {asked!r} is not supported",
                           f"supported: {', '.join(SUPPORTED_VERSIONS)}")
        return {"cniVersion": SUPPORTED_VERSIONS[-1],
                "supportedVersions": list(SUPPORTED_VERSIONS)}, SUPPORTED_VERSIONS[-1]
    request, version = agent_request(env, stdin)
    answer = call_agent(socket_address(env), request)
    result = answer.get("result")
    return (result if isinstance(result, dict) else None), version


def main() -> int:
    env = dict(os.environ)
    version = SUPPORTED_VERSIONS[-1]
    try:
        try:
            stdin = sys.stdin.buffer.read() if env.get("CNI_COMMAND") != "VERSION" or \
                not sys.stdin.isatty() else b""
        except OSError as e:
            raise CniError(ERR_IO, "could not read the network configuration on stdin",
                           str(e)) from None
        version = error_version(stdin)
        output, version = run(env, stdin)
        if output is not None:
            sys.stdout.write(dumps(output) + "\n")
        return 0
    except CniError as e:
        sys.stdout.write(dumps(e.to_json(version)) + "\n")
        return 1
    except Exception as e:  # never a traceback: the runtime parses stdout
        sys.stdout.write(dumps(CniError(ERR_INTERNAL, f"sdnctl-cni: {e}",
                                             type(e).__name__).to_json(version)) + "\n")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
