"""Names and tags of what the agent owns in the kernel (pure; shared by planner and kernel code).

Interface names obey IFNAMSIZ (15 bytes): a fixed prefix plus 8 hex digits of a hash of the
owner key. Every link also carries its owner key in its alias (``sdnctl:net/front``), so resync
deletes only what is provably ours and a name collision is detected, never reused.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress

ALIAS_PREFIX = "sdnctl:"
BRIDGE_PREFIX = "sdnb"
VETH_PREFIX = "sdnv"
VXLAN_PREFIX = "sdnx"
IFB_PREFIX = "sdnf"  # the IFB device of a veth's egress limit (agent/kernel/shaping.py)


def _short_hash(key: str) -> str:
    return hashlib.sha1(key.encode()).hexdigest()[:8]


def bridge_name(network: str) -> str:
    return BRIDGE_PREFIX + _short_hash(network)


def bridge_alias(network: str) -> str:
    return f"{ALIAS_PREFIX}net/{network}"


def vxlan_name(network: str) -> str:
    """The overlay network's VXLAN device on a host (the same name on every host)."""
    return VXLAN_PREFIX + _short_hash(network)


def vxlan_alias(network: str) -> str:
    return f"{ALIAS_PREFIX}vxlan/{network}"


def vtep_mac_for(host: str) -> str:
    """A host's VTEP MAC: ``0e:`` (locally administered, unicast) then 5 bytes of a hash of the
    host name, so the MAC survives an agent restart and every peer can predict it."""
    digest = hashlib.sha1(f"vtep/{host}".encode()).digest()
    return "0e:" + ":".join(f"{b:02x}" for b in digest[:5])


def veth_name(container: str, interface: str) -> str:
    return VETH_PREFIX + _short_hash(f"{container}/{interface}")


def veth_alias(container: str, interface: str) -> str:
    return f"{ALIAS_PREFIX}ctr/{container}/{interface}"


def ifb_name(veth: str) -> str:
    """The IFB device of a veth's egress limit (within IFNAMSIZ)."""
    return IFB_PREFIX + hashlib.sha256(veth.encode()).hexdigest()[:11]


def link_local(mac: str) -> str:
    """The IPv6 link-local address the kernel gives an interface with ``mac`` (EUI-64): the
    anti-spoofing rules allow it beside a container's own IPv6 address (issue 20)."""
    octets = [int(b, 16) for b in mac.split(":")]
    eui = bytes([octets[0] ^ 0x02, *octets[1:3], 0xFF, 0xFE, *octets[3:]])
    return str(ipaddress.IPv6Address(b"\xfe\x80" + bytes(6) + eui))


@functools.lru_cache(maxsize=8192)
def container_mac(ip: str) -> str:
    """Docker's scheme: ``02:42:`` (locally administered, unicast) then the IPv4 address's four
    bytes, so the anti-spoofing rules know a container's MAC from its address alone. A container
    with an IPv6 address only (issue 20) gets ``02:43:`` and four bytes of a hash of it: its
    low 32 bits alone could repeat within a lease (a fixed ip6 may differ only above them).
    Remembered: a pass asks for every container's, for its rules and its veth (an address's
    parse was 6 % of an agent's interpreter time during `up`)."""
    if ":" in ip:
        digest = hashlib.sha256(ipaddress.IPv6Address(ip).packed).digest()
        return "02:43:" + ":".join(f"{b:02x}" for b in digest[:4])
    return "02:42:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(ip).packed)
