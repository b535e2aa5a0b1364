"""One value of a request or a file: parse it and check it, or raise ``Invalid`` naming the field.

Design note. Four modules share the vocabulary: ``model`` holds the data (frozen dataclasses,
constants, the domain error ``Invalid``), this module reads and checks ONE field (a name, a
port mapping, a volume, a size, an interface name, an image reference...) with the standard
library alone, ``addrfields`` one CIDR or address (with netaddr, which an agent does not load),
and ``validate`` checks one whole object (which fields, which combinations) with these.
Every function takes the value and ``field``, the path of the field in its document
(``containers[2].ports[0]``), and returns the value parsed or normalised. Nothing here reads
other objects or the store.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sized

from sdnctl.api.imagefmt import parse_reference
from sdnctl.api.model import NAME_MAX, NAME_RE, PROTOCOLS, Invalid, PortMapping, VolumeMount


def check_name(value: object, field_name: str) -> str:
    """Return ``value`` if it is a valid object name, else raise :class:`Invalid`."""
    if not isinstance(value, str) or not value:
        raise Invalid(field_name, "expected a non-empty string")
    if len(value) > NAME_MAX:
        raise Invalid(field_name, f"{value[:20]!r}... is longer than {NAME_MAX} characters")
    if not NAME_RE.match(value):
        raise Invalid(
            field_name,
            f"{value!r} is not a valid name (lower-case letters, digits and '-', "
            "starting and ending with a letter or digit)",
        )
    return value


def parse_port(spec: str, field: str) -> PortMapping:
    """Docker's ``[HOST_IP:]HOST_PORT:CONTAINER_PORT[/PROTOCOL]``; an IPv6 host address is
    written in brackets: ``[::]:8080:80`` (every IPv6 address of the host but ``::1``),
    ``[fd00::1]:8080:80`` (that one). ``0.0.0.0`` becomes "" (every address); an IPv6 one is
    kept compressed."""
    if not isinstance(spec, str):
        raise Invalid(field, "expected a string such as '8080:80' or '127.0.0.1:5353:53/udp'")
    body, _, protocol = spec.partition("/")
    protocol = protocol or "tcp"
    if protocol not in PROTOCOLS:
        raise Invalid(field, f"unknown protocol {protocol!r}; expected tcp or udp")
    host_ip = ""
    if body.startswith("["):
        host_ip, close, body = body[1:].partition("]:")
        if not close:
            raise Invalid(field, f"{spec!r}: an IPv6 host address is written "
                          "[ADDRESS]:HOST_PORT:CONTAINER_PORT")
        host_ip = _port_ipv6(host_ip, spec, field)
        parts = body.split(":")
        if len(parts) != 2:
            raise Invalid(field, f"{spec!r} is not [HOST_IP]:HOST_PORT:CONTAINER_PORT[/PROTOCOL]")
        host_port, container_port = parts
    else:
        parts = body.rsplit(":", 2)
        if len(parts) == 2:
            host_port, container_port = parts
        elif len(parts) == 3 and ":" in parts[0]:
            raise Invalid(field, f"{spec!r}: an IPv6 host address goes in brackets, "
                          "e.g. [::1]:8080:80")
        elif len(parts) == 3:
            host_ip, host_port, container_port = parts
        else:
            raise Invalid(field, f"{spec!r} is not [HOST_IP:]HOST_PORT:CONTAINER_PORT[/PROTOCOL]")
        if host_ip == "0.0.0.0":
            host_ip = ""
        if host_ip and (not re.fullmatch(r"[0-9]{1,3}(\.[0-9]{1,3}){3}", host_ip)
                        or any(int(octet) > 255 for octet in host_ip.split("."))):
            raise Invalid(field, f"{host_ip!r} in {spec!r} is not an IPv4 address")
    ports = []
    for text in (host_port, container_port):
        if not re.fullmatch(r"[0-9]{1,5}", text) or not 1 <= int(text) <= 65535:
            raise Invalid(field, f"{text!r} in {spec!r} is not a port (1-65535)")
        ports.append(int(text))
    return PortMapping(host_ip, ports[0], ports[1], protocol)


def _port_ipv6(text: str, spec: str, field: str) -> str:
    """A published port's IPv6 host address: ``::``, ``::1`` (the agent's userland proxy
    serves it, ``agent/portproxy.py``) or a unicast address of the host (no link-local one: it
    would need a zone; no multicast or IPv4-mapped one)."""
    try:
        if ":" not in text or "%" in text:  # (a zone: "fe80::1%eth0")
            raise ValueError(text)
        address = ipaddress.IPv6Address(text)
    except ValueError as e:
        raise Invalid(field, f"{text!r} in {spec!r} is not an IPv6 address") from e
    for bad, is_bad in (("link-local", address.is_link_local),
                        ("multicast", address.is_multicast),
                        ("IPv4-mapped", address.ipv4_mapped is not None)):
        if is_bad:
            raise Invalid(field, f"{text!r} in {spec!r} is a {bad} address; expected ::, ::1 "
                          "or one of the host's IPv6 addresses")
    return str(address)


def port_text(host_ip: str, host_port: int, container_port: int, protocol: str) -> str:
    """A published port as :func:`parse_port` reads it (an IPv6 host address in brackets)."""
    host = f"[{host_ip}]:" if is_ipv6_host(host_ip) else f"{host_ip}:" if host_ip else ""
    return f"{host}{host_port}:{container_port}/{protocol}"


def is_ipv6_host(host_ip: str) -> bool:
    """Whether a published port's host address is IPv6 (``::``, ``::1``, ...)."""
    return ":" in host_ip


def host_ips_overlap(a: str, b: str) -> bool:
    """Whether two published ports' host addresses can take the same packet: "" (every
    address, IPv6 ones included on a dual-stack network) overlaps any address, ``::`` (every
    IPv6 address) any IPv6 address, and an address itself."""
    if not a or not b or a == b:
        return True
    return "::" in (a, b) and is_ipv6_host(a) and is_ipv6_host(b)


_VOLUME_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


PATH_MAX = 4096
#: A NUL or control character (one search: a look at each character was a fifth of the time
#: the controller took to handle a status report, which names each container's namespace).
_CONTROL = re.compile("[\x00-\x1f\x7f]")


def clean_path(path: str, field: str) -> str:
    """An absolute path with no ``..``, ``.`` or empty component, no NUL or control character,
    at most PATH_MAX bytes: nothing can climb out of the root it is taken under."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise Invalid(field, f"{str(path)[:40]!r} is not an absolute path")
    if len(path.encode()) > PATH_MAX:
        raise Invalid(field, f"longer than {PATH_MAX} bytes")
    if _CONTROL.search(path):
        raise Invalid(field, "contains a NUL or control character")
    parts = path.split("/")[1:]
    if path != "/" and any(part in ("", ".", "..") for part in parts):
        raise Invalid(field, f"{path!r} must be a plain absolute path (no '..', '.' or '//')")
    return path


def parse_volume(spec: str, field: str) -> VolumeMount:
    """Docker's ``NAME:/path[:ro|rw]`` or ``/host/path:/path[:ro|rw]``."""
    if not isinstance(spec, str) or spec.count(":") not in (1, 2):
        raise Invalid(field, f"{spec!r} is not NAME:/path[:ro] or /host/path:/path[:ro]")
    source, target, *mode = spec.split(":")
    if mode and mode[0] not in ("ro", "rw"):
        raise Invalid(field, f"unknown volume mode {mode[0]!r} in {spec!r}; expected ro or rw")
    if source.startswith("/"):
        clean_path(source, field)
    elif not _VOLUME_NAME.fullmatch(source):
        raise Invalid(field, f"volume name {source!r} must be 1-64 of A-Z a-z 0-9 _ . - "
                      "(a host path must be absolute)")
    clean_path(target, field)
    if target == "/":
        raise Invalid(field, f"{spec!r}: a volume cannot replace the container's root")
    return VolumeMount(source, target, bool(mode) and mode[0] == "ro")


IFNAMSIZ = 15


IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]+\Z")


def ip_version(text: str) -> int | None:
    """4 or 6 for an address of that family, None for anything else (a name, a CIDR)."""
    try:
        return ipaddress.ip_address(text).version
    except ValueError:
        return None


def check_ifname(value: str, field: str) -> str:
    """An interface name the kernel takes: 1-15 bytes of letters, digits, ``_ . -``; not
    ``.``, ``..`` or ``lo`` (every namespace has one)."""
    if (not isinstance(value, str) or not value or len(value.encode()) > IFNAMSIZ
            or not IFNAME_RE.match(value) or value in (".", "..", "lo")):
        raise Invalid(field, f"{value!r} is not a valid interface name (1-{IFNAMSIZ} bytes of "
                      "letters, digits, '_', '.', '-'; not 'lo')")
    return value


MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}\Z")


URL_MAX = 256


def check_http_url(value: str, field: str) -> str:
    """An ``http://host:port/path`` URL, printable, at most :data:`URL_MAX` characters."""
    if len(value) > URL_MAX or not value.isprintable() or " " in value \
            or not value.startswith("http://") or len(value) <= len("http://"):
        raise Invalid(field, f"{value[:80]!r} is not an http:// URL of at most {URL_MAX} "
                      "characters")
    return value


def check_unicast_mac(value: str, field: str) -> str:
    """A unicast Ethernet address written ``aa:bb:cc:dd:ee:ff`` (lower-case)."""
    if not isinstance(value, str) or not MAC_RE.match(value):
        raise Invalid(field, f"{value!r} is not a MAC address such as 0a:58:0a:00:00:01 "
                      "(lower-case)")
    if int(value[:2], 16) & 1:
        raise Invalid(field, f"{value} is a multicast address; a VTEP needs a unicast one")
    if value == "00:00:00:00:00:00":
        raise Invalid(field, "00:00:00:00:00:00 is not a usable MAC address")
    return value


LIST_MAX = 64  # ports, allow, share, capabilities, reported containers (per item kind)


def check_count(items: Sized, field: str, maximum: int = LIST_MAX) -> None:
    if len(items) > maximum:
        raise Invalid(field, f"{len(items)} items; at most {maximum}")


# Docker's reference grammar (github.com/distribution/reference): [domain/]path[:tag][@digest].
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"


_DOMAIN = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*(?::[0-9]+)?"


_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[_.]|__|-+)[a-z0-9]+)*"


_NAME = rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"


_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"


_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"


IMAGE_REF_RE = re.compile(rf"^(?P<name>{_NAME})(?::{_TAG})?(?:@{_DIGEST})?\Z")


IMAGE_NAME_MAX = 255


def check_image_ref(value: str, field: str) -> str:
    """An image reference as Docker parses it: ``[registry[:port]/]path[:tag][@digest]``."""
    m = IMAGE_REF_RE.match(value) if isinstance(value, str) else None
    if m is None:
        raise Invalid(field, f"{str(value)[:80]!r} is not an image reference such as "
                      "'alpine:3.19' or 'registry.example:5000/team/app@sha256:...'")
    if len(m.group("name")) > IMAGE_NAME_MAX:
        raise Invalid(field, f"the repository name is longer than {IMAGE_NAME_MAX} characters")
    return value


IMAGE_ID_RE = re.compile(r"sha256:[0-9a-f]{64}")


def image_name(ref: str, field: str) -> str:
    """An image ID (``sha256:<hex>``) as it is, or a reference checked and normalised to
    ``name:tag`` (the tag ``latest`` by default), as images are recorded."""
    if IMAGE_ID_RE.fullmatch(ref):
        return ref
    check_image_ref(ref, field)
    try:
        return parse_reference(ref)
    except ValueError as e:
        raise Invalid(field, str(e)) from None
