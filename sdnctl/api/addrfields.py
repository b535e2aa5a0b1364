"""One address or network of a request or a file: parse it and check it, or raise ``Invalid``
naming the field.

Design note. ``fields`` checks one value of every other kind (names, ports, volumes, sizes,
interface names, image references) with the standard library alone; what needs netaddr (CIDRs,
addresses, the reserved ranges, a network's pool) is here, so that an agent, which checks names,
ports and volumes, does not load netaddr (2.3 MB of its memory). The controller, ``validate``
and topologies use both.
"""

from __future__ import annotations

import re

import netaddr

from sdnctl.api.model import Invalid

_IPV4_CIDR = re.compile(r"^[0-9]{1,3}(\.[0-9]{1,3}){3}/[0-9]{1,2}\Z")


def validate_cidr(value: object, field: str) -> netaddr.IPNetwork:
    """Parse an IPv4 network CIDR such as ``10.88.0.0/16``, or raise :class:`Invalid`."""
    if not isinstance(value, str):
        raise Invalid(field, f"expected a CIDR string such as 10.88.0.0/16, got {value!r}")
    try:
        net = netaddr.IPNetwork(value)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        raise Invalid(field, f"{value!r} is not a CIDR such as 10.88.0.0/16") from None
    if net.version != 4:
        raise Invalid(field, f"{value!r}: only IPv4 networks are supported")
    if not _IPV4_CIDR.match(value):
        raise Invalid(field, f"{value!r} is not a CIDR such as 10.88.0.0/16")
    if net.ip != net.network:
        raise Invalid(field, f"{value} has host bits set; did you mean {net.cidr}?")
    return net


def validate_cidr6(value: object, field: str) -> netaddr.IPNetwork:
    """Parse an IPv6 network CIDR such as ``fd00:88::/48``, or raise :class:`Invalid`."""
    example = "fd00:88::/48"
    if not isinstance(value, str) or "/" not in value:
        raise Invalid(field, f"expected an IPv6 CIDR string such as {example}, got {value!r}")
    try:
        net = netaddr.IPNetwork(value, version=6)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        raise Invalid(field, f"{value!r} is not an IPv6 CIDR such as {example}") from None
    if net.ip != net.network:
        raise Invalid(field, f"{value} has host bits set; did you mean {net.cidr}?")
    return net


def check_ipv6(value: str, field: str) -> str:
    """An IPv6 address, returned in its compressed form (as the kernel prints it)."""
    return _check_ip(value, field, 6)


def check_ipv4(value: str, field: str) -> str:
    return _check_ip(value, field, 4)


def _check_ip(value: str, field: str, version: int) -> str:
    what = f"{value!r} is not an IPv{version} address"
    if not isinstance(value, str) or (version == 6 and ":" not in value):
        raise Invalid(field, what)
    try:
        address = netaddr.IPAddress(value, version=version)
    except (netaddr.AddrFormatError, ValueError, TypeError) as e:
        raise Invalid(field, what) from e
    return str(address)


#: Ranges no network, and no host's underlay address, may touch.
RESERVED_RANGES = (
    (netaddr.IPNetwork("0.0.0.0/8"), "'this network' (0/8)"),
    (netaddr.IPNetwork("127.0.0.0/8"), "loopback (127/8)"),
    (netaddr.IPNetwork("169.254.0.0/16"), "link-local (169.254/16)"),
    (netaddr.IPNetwork("224.0.0.0/4"), "multicast (224/4)"),
    (netaddr.IPNetwork("240.0.0.0/4"), "reserved (240/4, broadcast)"),
)


#: The same for IPv6 (issue 20): unspecified, loopback, link-local (our devices' own), multicast
#: and IPv4-mapped addresses.
RESERVED_RANGES6 = (
    (netaddr.IPNetwork("::/128"), "the unspecified address (::)"),
    (netaddr.IPNetwork("::1/128"), "loopback (::1)"),
    (netaddr.IPNetwork("fe80::/10"), "link-local (fe80::/10)"),
    (netaddr.IPNetwork("ff00::/8"), "multicast (ff00::/8)"),
    (netaddr.IPNetwork("::ffff:0:0/96"), "IPv4-mapped (::ffff:0:0/96)"),
)


#: A network's subnet is at least this long a prefix (a /7 would take half of 0/1...).
POOL_PREFIX_MIN = 8
#: An IPv6 network's: a /16 already holds 2^48 /64 leases.
POOL_PREFIX_MIN6 = 16


def check_pool(subnet: netaddr.IPNetwork, field: str) -> netaddr.IPNetwork:
    """A network's subnet: a prefix of at least ``POOL_PREFIX_MIN`` bits, clear of every
    reserved range (host bits and the maximum prefix are checked by ``validate_cidr`` and
    ``host_prefix_for``)."""
    v6 = subnet.version == 6
    minimum = POOL_PREFIX_MIN6 if v6 else POOL_PREFIX_MIN
    if subnet.prefixlen < minimum:
        raise Invalid(field, f"{subnet} is too large: at most a /{minimum}")
    for reserved, what in RESERVED_RANGES6 if v6 else RESERVED_RANGES:
        if subnet.first <= reserved.last and reserved.first <= subnet.last:
            raise Invalid(field, f"{subnet} overlaps {what}, which is reserved")
    return subnet


def check_not_reserved(address: str, field: str) -> str:
    ip = netaddr.IPAddress(address)
    for reserved, what in RESERVED_RANGES6 if ip.version == 6 else RESERVED_RANGES:
        if ip in reserved:
            raise Invalid(field, f"{address} is in {what}, which is reserved")
    return address
