"""The in-memory kernel fakes (agent/kernel/fakes.py) keep what they were told, as the kernel
would, so that a unit test driving the reconciler through them sees its own writes."""

from __future__ import annotations

from agent.kernel.fakes import FakeFirewall, FakeLinks
from agent.kernel.seams import FirewallOps, LinkOps
from agent.nftrules import FirewallSpec
from agent.observed import ObservedPeers, PeerEntries


def test_links_fake_remembers_links_and_peers() -> None:
    links: LinkOps = FakeLinks()
    index = links.ensure_bridge("sdnb1", "sdnctl:net/front", "10.88.0.1/24", 1500)
    assert links.ensure_bridge("sdnb1", "sdnctl:net/front", "10.88.0.1/24", 1500) == index
    links.ensure_veth("sdnv1", "sdnctl:ctr/web/eth0", "sdnb1", 1500, "/run/x/netns/web", "eth0",
                      "10.88.0.2/24", "10.88.0.1")
    assert [link.ifname for link in links.dump_owned()] == ["sdnb1", "sdnv1"]
    net = links.observe_containers({"/run/x/netns/web": "eth0"})["/run/x/netns/web"]
    assert net is not None and net.addresses == ("10.88.0.2/24",)
    links.ensure_vxlan("sdnx1", "sdnctl:vxlan/ov", 4096, "192.0.2.1", 4789, "eth0", 1450,
                       "0e:00:00:00:00:01", "10.70.1.0/32")
    links.ensure_peers("sdnx1", [PeerEntries("10.70.2.0/24", "10.70.2.0", "0e:00:00:00:00:02",
                                             "192.0.2.2")])
    assert links.observe_all_peers()["sdnx1"] == ObservedPeers(
        (("10.70.2.0/24", "10.70.2.0"),), (("10.70.2.0", "0e:00:00:00:00:02"),),
        (("0e:00:00:00:00:02", "192.0.2.2"),))
    assert links.remove_peers("sdnx1", ["10.70.2.0/24"], [], []) == 1
    assert links.remove_peers("sdnx1", ["10.70.2.0/24"], [], []) == 0  # gone: nothing to do
    assert links.remove_link("sdnv1") and not links.remove_link("sdnv1")


def test_firewall_fake_writes_only_a_different_spec() -> None:
    fw: FirewallOps = FakeFirewall()
    assert fw.observe() is None
    spec = FirewallSpec.from_masquerade([])
    assert fw.apply(spec) and not fw.apply(spec)
    assert fw.observe() is not None
    fw.remove()
    assert fw.observe() is None
