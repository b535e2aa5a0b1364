"""The store's key layout: every key the controller reads or writes, in one place.

Design note. Values are ``sdnctl.api.model.to_json`` of model objects unless said otherwise.
Keys are plain strings under a few prefixes, so one ``range`` reads a kind of record, a watch on
a prefix follows it, and a transaction guards exactly the keys it read (compare-and-swap on their
mod revisions). Modules that own a kind of record (``state``, ``ipam``, ``images``, ``gc``,
``servicers``) use these names, never spelled-out strings, so no module imports another just
to learn where something lives.

    /hosts/<name>                               Host
    /networks/<name>                            Network
    /containers/<name>                          Container
    /vni/<n>                                    the overlay network holding VNI n (uniqueness)
    /guards/subnets                             bumped by every network creation (overlap check)
    /status/containers/<name>                   ContainerStatus (agents' reports)
    /status/hosts/<name>                        HostStatus (agents' reports)
    /status/agents/<host>/<replica>             an agent of host has a Watch open on replica
    /status/replicas/<replica>                  unix time of that replica's last heartbeat
    /leases/<network>/<host>                    Lease: a host's subnet of a network
    /ipam/<network>/subnet/<a.b.c.d_len>        guard of a leased subnet
    /ipam/<network>/addr/<address>              guard of an allocated address
    /ipam/<network>/owner/<container>/<iface>   Allocation
    /ipam/<network>/quarantine/<subject>        a freed subnet or address, until it may return
    /ipam/<network>/previous/<host>             its last subnet(s), "v4 v6" (offered back first)
    /ipam/<network>/used/<a.b.c.d_len>          index: the used address ranges of one lease
    /index/hosts/<host>/<container>             index: the containers of one host (empty value)
    /history/ipam/<time>                        IpamEvent, trimmed by the sweeper
    /images/<hex>                               ImageRecord (blobs on disk)
    /gc/marks                                   the IPAM garbage collector's first sightings
"""

from __future__ import annotations

from netaddr import IPNetwork

HOSTS = "/hosts/"
NETWORKS = "/networks/"
CONTAINERS = "/containers/"
STATUS = "/status/"  # what agents report; never part of a host's desired state
CONTAINER_STATUS = STATUS + "containers/"
HOST_STATUS = STATUS + "hosts/"
#: ``/status/agents/<host>/<replica>``: an agent of host has a Watch open on that replica.
AGENTS = STATUS + "agents/"
#: ``/status/replicas/<replica>``: the unix time of that replica's last heartbeat.
REPLICAS = STATUS + "replicas/"
VNIS = "/vni/"
#: Bumped by every network creation, so that two concurrent ones cannot both miss an overlap.
SUBNETS_GUARD = "/guards/subnets"
#: Prefix of every lease key.
LEASES = "/leases/"
#: Prefix of every IPAM guard, owner, quarantine and previous-subnet key.
IPAM = "/ipam/"
#: The IPAM history: one key per event, sorting by time.
HISTORY = "/history/ipam/"
IMAGES = "/images/"
#: Network policies (issue 22): ``/policies/<name>``.
POLICIES = "/policies/"
MARKS = "/gc/marks"
#: Indexes written in the same transaction as what they index, so that a create, a listing of
#: one host or a port check reads what it concerns, not every container.
INDEX = "/index/"
HOST_INDEX = INDEX + "hosts/"


def host_key(name: str) -> str:
    return HOSTS + name


def network_key(name: str) -> str:
    return NETWORKS + name


def container_key(name: str) -> str:
    return CONTAINERS + name


def policy_key(name: str) -> str:
    return POLICIES + name


def status_key(name: str) -> str:
    return CONTAINER_STATUS + name


def vni_key(vni: int) -> str:
    return f"{VNIS}{vni}"


def image_key(image_id: str) -> str:
    return IMAGES + image_id.removeprefix("sha256:")


def lease_key(network: str, host: str) -> str:
    return f"{LEASES}{network}/{host}"


def network_prefix(network: str) -> str:
    """Every IPAM key of one network (guards, owners, quarantine, previous subnets)."""
    return f"{IPAM}{network}/"


def subnets_prefix(network: str) -> str:
    return f"{network_prefix(network)}subnet/"


def subnet_key(network: str, subnet: str) -> str:
    return subnets_prefix(network) + subnet.replace("/", "_")


def addrs_prefix(network: str) -> str:
    return f"{network_prefix(network)}addr/"


def addr_key(network: str, address: str) -> str:
    return addrs_prefix(network) + address


def owners_prefix(network: str) -> str:
    return f"{network_prefix(network)}owner/"


def owner_key(network: str, container: str, interface: str) -> str:
    return f"{owners_prefix(network)}{container}/{interface}"


def octet_prefix(subnet: IPNetwork) -> str:
    """The dotted-decimal text every address of ``subnet`` starts with ("10.1.2." for a /24):
    reading the address guards under it reads one lease's addresses, not the network's. IPv6
    text has no such prefix ("fd00:88::5" and "fd00:88:0:1::5"): "", the network's guards."""
    if subnet.version == 6:
        return ""
    whole = min(subnet.prefixlen // 8, 3)
    return "".join(f"{octet}." for octet in subnet.network.words[:whole])


def used_key(network: str, subnet: str) -> str:
    """The index of the used addresses of the lease ``subnet`` (a hint; guards are the truth)."""
    return f"{network_prefix(network)}used/{subnet.replace('/', '_')}"


def host_index_prefix(host: str) -> str:
    return f"{HOST_INDEX}{host}/"


def host_index_key(host: str, container: str) -> str:
    return host_index_prefix(host) + container


def quarantine_prefix(network: str) -> str:
    return f"{network_prefix(network)}quarantine/"


def quarantine_key(network: str, subject: str) -> str:
    """The quarantine of a freed subnet (``10.88.1.0/24``) or address (``10.88.1.5``)."""
    return quarantine_prefix(network) + subject.replace("/", "_")


def previous_key(network: str, host: str) -> str:
    """The subnet ``host`` held last on ``network``: offered back first when it leases again."""
    return f"{network_prefix(network)}previous/{host}"
