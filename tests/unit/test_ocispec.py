"""The OCI spec builder, volume and size parsing, and the validation of a container's runtime
fields: pure functions, no root."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent import ocispec
from agent.kernel.errors import KernelError
from agent.kernel.mountns import host_signature
from agent.runtime import host_mounts, spec_paths
from sdnctl.api.fields import parse_volume
from sdnctl.api.model import DEFAULT_CAPABILITIES, Container, Invalid, wants_user_ns
from sdnctl.api.units import parse_size
from sdnctl.api.validate import validate_container


def spec(**kw: object) -> dict:
    base: dict = {"args": ("sleep", "1"), "hostname": "web"}
    base.update(kw)
    return ocispec.build(ocispec.SpecInput(**base))


def kinds(config: dict) -> dict[str, str | None]:
    return {n["type"]: n.get("path") for n in config["linux"]["namespaces"]}


def test_bridged_joins_the_sandbox_and_gets_pid_and_mount_namespaces() -> None:
    config = spec(net="/run/x/netns/web", uts="/run/x/uts/web", ipc="/run/x/ipc/web")
    assert kinds(config) == {"pid": None, "mount": None, "cgroup": None,
                             "network": "/run/x/netns/web", "uts": "/run/x/uts/web",
                             "ipc": "/run/x/ipc/web"}
    assert "hostname" not in config  # the pinned UTS namespace is named already
    assert config["process"]["noNewPrivileges"] is True
    assert config["linux"]["seccomp"]["defaultAction"] == "SCMP_ACT_ALLOW"
    denied = config["linux"]["seccomp"]["syscalls"][0]["names"]
    assert {"mount", "ptrace", "kexec_load", "bpf", "setns", "unshare"} <= set(denied)
    rules = config["linux"]["seccomp"]["syscalls"][1:]
    clone = [r for r in rules if r["names"] == ["clone"]]
    assert all(r["errnoRet"] == 1 and r["args"][0]["op"] == "SCMP_CMP_MASKED_EQ" and
               r["args"][0]["value"] == r["args"][0]["valueTwo"] for r in clone)
    assert sum(r["args"][0]["value"] for r in clone) == 0x7E020000  # every CLONE_NEW* flag
    assert {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38} in rules


def test_the_filter_names_the_hosts_system_call_tables_and_no_others() -> None:
    """A 32-bit or x32 process on x86_64 reaches the kernel through its own table: the filter
    must name those (else they bypass it); ARM's tables are of no use there, and cost the
    runtime a compile at every start."""
    x86 = ocispec.seccomp(machine="x86_64")["architectures"]
    assert x86 == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    assert ocispec.seccomp(machine="aarch64")["architectures"] == ["SCMP_ARCH_AARCH64",
                                                                   "SCMP_ARCH_ARM"]
    assert ocispec.seccomp(machine="mips")["architectures"] == []  # the native table alone
    host = spec()["linux"]["seccomp"]["architectures"]
    assert host == ocispec.seccomp(machine=ocispec.HOST_MACHINE)["architectures"]


def test_open_mode_has_no_network_namespace_and_a_new_uts() -> None:
    config = spec()
    assert "network" not in kinds(config) and kinds(config)["uts"] is None
    assert config["hostname"] == "web"


def test_capabilities_default_without_net_raw_plus_what_is_added() -> None:
    caps = spec()["process"]["capabilities"]
    assert "CAP_NET_RAW" not in caps["bounding"] and "CAP_SYS_ADMIN" not in caps["bounding"]
    assert len(caps["effective"]) == len(DEFAULT_CAPABILITIES)
    added = spec(caps=(*DEFAULT_CAPABILITIES, "net_raw"))["process"]["capabilities"]
    assert "CAP_NET_RAW" in added["permitted"]


def test_limits_become_cgroup_resources() -> None:
    res = spec(limits=ocispec.Limits(memory=64 << 20, cpus=0.5, cpu_shares=512, pids=50),
               cgroups_path="/sdnctl/h1/web")
    linux = res["linux"]
    assert linux["cgroupsPath"] == "/sdnctl/h1/web"
    assert linux["resources"]["memory"] == {"limit": 64 << 20, "swap": 64 << 20}
    assert linux["resources"]["cpu"] == {"quota": 50000, "period": 100000, "shares": 512}
    assert linux["resources"]["pids"] == {"limit": 50}
    assert "memory" not in spec()["linux"]["resources"]


def test_user_namespace_maps_root_to_an_unprivileged_range() -> None:
    config = spec(user_ns=True)
    assert kinds(config)["user"] is None
    assert config["linux"]["uidMappings"] == [
        {"containerID": 0, "hostID": ocispec.USERNS_BASE, "size": ocispec.USERNS_SIZE}]
    assert not any(m["type"] == "mqueue" for m in config["mounts"])


IMG = "sha256:" + "1" * 64


@pytest.mark.parametrize(("user_ns", "network", "image", "caps", "supported", "want"), [
    ("auto", "front", IMG, (), True, True),  # the default, where the host has them
    ("auto", "none", IMG, (), True, True),
    ("auto", "container:db", IMG, ("CHOWN",), True, True),  # a default capability adds nothing
    ("auto", "front", IMG, (), False, False),  # ... and not where it has none
    ("auto", "front", "", (), True, False),  # the host's own root and tools
    ("auto", "host", IMG, (), True, False),  # the host's network
    ("auto", "front", IMG, ("NET_RAW",), True, False),  # would act on a host-owned netns
    ("auto", "front", IMG, ("cap_sys_time",), True, False),
    ("private", "host", "", ("NET_ADMIN",), True, True),  # asked for: always
    ("private", "front", IMG, (), False, True),  # (the agent then reports an error)
    ("host", "front", IMG, (), True, False),
])
def test_who_gets_a_user_namespace(user_ns: str, network: str, image: str,
                                   caps: tuple[str, ...], supported: bool, want: bool) -> None:
    assert wants_user_ns(user_ns, network, bool(image), caps, supported) is want


def test_user_ns_mode_is_validated() -> None:
    with pytest.raises(Invalid, match="user_ns") as e:
        validate_container(Container("web", "h1", "none", user_ns="sometimes"), "containers[0]")
    assert e.value.field == "containers[0].user_ns"


def test_volumes_and_a_read_only_host_root() -> None:
    vol = parse_volume("data:/var/lib/data:ro", "v")
    config = spec(volumes=((vol, "/store/volumes/data"),), readonly_root=True)
    assert config["root"] == {"path": "rootfs", "readonly": True}
    binds = [m for m in config["mounts"] if m["type"] == "bind"]
    assert binds == [{"destination": "/var/lib/data", "type": "bind",
                      "source": "/store/volumes/data",
                      "options": ["rbind", "nosuid", "nodev", "ro"]}]
    assert {m["destination"] for m in config["mounts"] if m["type"] == "tmpfs"} >= {"/run"}


def test_host_mounts_leave_out_pseudo_filesystems_and_private_trees(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(
        "1 0 8:1 / / rw - ext4 /dev/vda rw\n"
        "2 1 0:5 / /proc rw - proc proc rw\n"
        "3 1 0:6 / /run rw - tmpfs tmpfs rw\n"
        "4 3 0:7 / /run/netns/x rw - nsfs nsfs rw\n"
        "5 1 0:8 / /tmp rw - tmpfs tmpfs rw\n"
        "6 1 8:2 / /work rw - ext4 /dev/vdb rw\n"
        "7 6 8:3 / /work/data rw - xfs /dev/vdc rw\n"
        "8 5 0:9 / /tmp/lab/netns/c rw - nsfs nsfs rw\n")
    assert host_mounts(str(info)) == ["/tmp", "/work", "/work/data"]


def test_a_copy_of_the_mount_table_is_compared_without_the_pins(tmp_path: Path) -> None:
    """``mountns.host_signature``: the mounts a copy keeps (pins are detached from it), so a
    new pin does not make the runtime's copy stale, and any other new mount does."""
    info = tmp_path / "mountinfo"
    base = ("1 0 8:1 / / rw - ext4 /dev/vda rw\n"
            "3 1 0:6 / /run rw - tmpfs tmpfs rw\n")
    info.write_text(base + "4 3 0:7 / /run/netns/x rw - nsfs nsfs rw\n")
    before = host_signature(str(info))
    assert before == {"1", "3"}
    info.write_text(base + "9 3 0:7 / /run/netns/y rw - nsfs nsfs rw\n")
    assert host_signature(str(info)) == before
    info.write_text(base + "10 1 0:9 / /srv rw - tmpfs tmpfs rw\n")
    assert host_signature(str(info)) != before


def test_a_start_binds_the_pins_its_spec_joins_and_checks_its_bind_sources(
        tmp_path: Path) -> None:
    """``runtime.spec_paths``: the namespaces a spec joins by a path outside /proc (bound in
    the runtime's mount namespace for the start) and its bind sources (compared with the
    host's); an unreadable spec is the runtime's error, not a crash."""
    volume = parse_volume("/srv/data:/data", "v")
    spec = ocispec.build(ocispec.SpecInput(
        args=("sh",), hostname="c", env=(ocispec.DEFAULT_PATH,), net="/run/x/net/c",
        uts="/proc/7/ns/uts", ipc="/run/x/ipc/d", volumes=((volume, "/srv/data"),),
        etc_files=(("/etc/hosts", "/run/x/c.hosts"),)))
    config = tmp_path / "config.json"
    config.write_text(json.dumps(spec))
    joins, sources = spec_paths(str(config))
    assert joins == ["/run/x/net/c", "/run/x/ipc/d"]
    assert sources == ["/srv/data", "/run/x/c.hosts"]
    config.write_text("{")
    with pytest.raises(KernelError, match="could not read the spec"):
        spec_paths(str(config))


@pytest.mark.parametrize(("text", "want"), [
    ("data:/d", ("data", "/d", False)),
    ("/srv/www:/usr/share/www:ro", ("/srv/www", "/usr/share/www", True)),
    ("v.1:/x:rw", ("v.1", "/x", False)),
])
def test_volumes_parse(text: str, want: tuple[str, str, bool]) -> None:
    v = parse_volume(text, "v")
    assert (v.source, v.target, v.readonly) == want


@pytest.mark.parametrize("text", [
    "data", "data:relative", "data:/x/../etc", "/srv/../etc:/x", "../up:/x", "data:/",
    "data:/x:rx", "bad name:/x", "data:/x//y", "/a:/b:ro:extra",
])
def test_volumes_that_escape_or_make_no_sense_are_refused(text: str) -> None:
    with pytest.raises(Invalid) as info:
        parse_volume(text, "containers[0].volumes[0]")
    assert info.value.field == "containers[0].volumes[0]"


def test_sizes() -> None:
    assert parse_size("64m", "m") == 64 << 20
    assert parse_size("1.5g", "m") == 3 << 29
    assert parse_size(4096, "m") == 4096
    for bad in ("lots", "-1m", True, "12q"):
        with pytest.raises(Invalid):
            parse_size(bad, "m")


def make(**kw: object) -> Container:
    base: dict = {"name": "web", "host": "h1", "network": "front"}
    base.update(kw)
    return Container(**base)


@pytest.mark.parametrize(("fields", "where"), [
    ({"memory": 1024}, "container.resources.memory"),
    ({"cpus": -1.0}, "container.resources.cpus"),
    ({"cpu_shares": 1}, "container.resources.cpu_shares"),
    ({"pids_limit": -5}, "container.resources.pids_limit"),
    ({"volumes": ("a:/x", "b:/x")}, "container.volumes[1]"),
    ({"cap_add": ("FLY",)}, "container.cap_add[0]"),
    ({"env": ("no equals",)}, "container.env[0]"),
    ({"workdir": "rel"}, "container.workdir"),
    ({"image": "Bad Image"}, "container.image"),
    ({"image": "", "command": ()}, "container.command"),
])
def test_runtime_fields_are_validated(fields: dict, where: str) -> None:
    with pytest.raises(Invalid) as info:
        validate_container(make(**fields))
    assert info.value.field == where


def test_an_image_may_bring_its_own_command() -> None:
    assert validate_container(make(image="busybox", command=())).image == "busybox"
    assert validate_container(make(image="sha256:" + "a" * 64, command=()))
