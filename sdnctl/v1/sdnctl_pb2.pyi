from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class UserNsMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    USERNS_AUTO: _ClassVar[UserNsMode]
    USERNS_PRIVATE: _ClassVar[UserNsMode]
    USERNS_HOST: _ClassVar[UserNsMode]

class DropKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DROP_KIND_CONTAINER: _ClassVar[DropKind]
    DROP_KIND_NETWORK: _ClassVar[DropKind]
    DROP_KIND_VXLAN: _ClassVar[DropKind]
USERNS_AUTO: UserNsMode
USERNS_PRIVATE: UserNsMode
USERNS_HOST: UserNsMode
DROP_KIND_CONTAINER: DropKind
DROP_KIND_NETWORK: DropKind
DROP_KIND_VXLAN: DropKind

class Host(_message.Message):
    __slots__ = ("name", "underlay_ip", "lab", "agent_pid", "netns", "leases", "revision", "agent_connected", "observed_revision", "agent_synced", "reported_containers", "vtep_mac", "underlay_mtu", "metrics_url", "docker_host")
    NAME_FIELD_NUMBER: _ClassVar[int]
    UNDERLAY_IP_FIELD_NUMBER: _ClassVar[int]
    LAB_FIELD_NUMBER: _ClassVar[int]
    AGENT_PID_FIELD_NUMBER: _ClassVar[int]
    NETNS_FIELD_NUMBER: _ClassVar[int]
    LEASES_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    AGENT_CONNECTED_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_REVISION_FIELD_NUMBER: _ClassVar[int]
    AGENT_SYNCED_FIELD_NUMBER: _ClassVar[int]
    REPORTED_CONTAINERS_FIELD_NUMBER: _ClassVar[int]
    VTEP_MAC_FIELD_NUMBER: _ClassVar[int]
    UNDERLAY_MTU_FIELD_NUMBER: _ClassVar[int]
    METRICS_URL_FIELD_NUMBER: _ClassVar[int]
    DOCKER_HOST_FIELD_NUMBER: _ClassVar[int]
    name: str
    underlay_ip: str
    lab: bool
    agent_pid: int
    netns: str
    leases: _containers.RepeatedCompositeFieldContainer[Lease]
    revision: int
    agent_connected: bool
    observed_revision: int
    agent_synced: bool
    reported_containers: _containers.RepeatedScalarFieldContainer[str]
    vtep_mac: str
    underlay_mtu: int
    metrics_url: str
    docker_host: str
    def __init__(self, name: _Optional[str] = ..., underlay_ip: _Optional[str] = ..., lab: _Optional[bool] = ..., agent_pid: _Optional[int] = ..., netns: _Optional[str] = ..., leases: _Optional[_Iterable[_Union[Lease, _Mapping]]] = ..., revision: _Optional[int] = ..., agent_connected: _Optional[bool] = ..., observed_revision: _Optional[int] = ..., agent_synced: _Optional[bool] = ..., reported_containers: _Optional[_Iterable[str]] = ..., vtep_mac: _Optional[str] = ..., underlay_mtu: _Optional[int] = ..., metrics_url: _Optional[str] = ..., docker_host: _Optional[str] = ...) -> None: ...

class Network(_message.Message):
    __slots__ = ("name", "driver", "subnet", "host_prefix", "mtu", "masquerade", "revision", "gateway", "ip_range", "internal", "allow", "builtin", "vni", "vxlan_port", "dns_domain", "dns", "default_policy", "subnet6", "host_prefix6", "masquerade6")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DRIVER_FIELD_NUMBER: _ClassVar[int]
    SUBNET_FIELD_NUMBER: _ClassVar[int]
    HOST_PREFIX_FIELD_NUMBER: _ClassVar[int]
    MTU_FIELD_NUMBER: _ClassVar[int]
    MASQUERADE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    IP_RANGE_FIELD_NUMBER: _ClassVar[int]
    INTERNAL_FIELD_NUMBER: _ClassVar[int]
    ALLOW_FIELD_NUMBER: _ClassVar[int]
    BUILTIN_FIELD_NUMBER: _ClassVar[int]
    VNI_FIELD_NUMBER: _ClassVar[int]
    VXLAN_PORT_FIELD_NUMBER: _ClassVar[int]
    DNS_DOMAIN_FIELD_NUMBER: _ClassVar[int]
    DNS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_POLICY_FIELD_NUMBER: _ClassVar[int]
    SUBNET6_FIELD_NUMBER: _ClassVar[int]
    HOST_PREFIX6_FIELD_NUMBER: _ClassVar[int]
    MASQUERADE6_FIELD_NUMBER: _ClassVar[int]
    name: str
    driver: str
    subnet: str
    host_prefix: int
    mtu: int
    masquerade: bool
    revision: int
    gateway: str
    ip_range: str
    internal: bool
    allow: _containers.RepeatedScalarFieldContainer[str]
    builtin: bool
    vni: int
    vxlan_port: int
    dns_domain: str
    dns: _containers.RepeatedScalarFieldContainer[str]
    default_policy: str
    subnet6: str
    host_prefix6: int
    masquerade6: bool
    def __init__(self, name: _Optional[str] = ..., driver: _Optional[str] = ..., subnet: _Optional[str] = ..., host_prefix: _Optional[int] = ..., mtu: _Optional[int] = ..., masquerade: _Optional[bool] = ..., revision: _Optional[int] = ..., gateway: _Optional[str] = ..., ip_range: _Optional[str] = ..., internal: _Optional[bool] = ..., allow: _Optional[_Iterable[str]] = ..., builtin: _Optional[bool] = ..., vni: _Optional[int] = ..., vxlan_port: _Optional[int] = ..., dns_domain: _Optional[str] = ..., dns: _Optional[_Iterable[str]] = ..., default_policy: _Optional[str] = ..., subnet6: _Optional[str] = ..., host_prefix6: _Optional[int] = ..., masquerade6: _Optional[bool] = ...) -> None: ...

class ContainerStatus(_message.Message):
    __slots__ = ("name", "state", "pid", "netns", "message", "exit_code", "restarts", "runtime", "runtime_root", "cgroup", "user_ns")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    NETNS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_ROOT_FIELD_NUMBER: _ClassVar[int]
    CGROUP_FIELD_NUMBER: _ClassVar[int]
    USER_NS_FIELD_NUMBER: _ClassVar[int]
    name: str
    state: str
    pid: int
    netns: str
    message: str
    exit_code: int
    restarts: int
    runtime: str
    runtime_root: str
    cgroup: str
    user_ns: bool
    def __init__(self, name: _Optional[str] = ..., state: _Optional[str] = ..., pid: _Optional[int] = ..., netns: _Optional[str] = ..., message: _Optional[str] = ..., exit_code: _Optional[int] = ..., restarts: _Optional[int] = ..., runtime: _Optional[str] = ..., runtime_root: _Optional[str] = ..., cgroup: _Optional[str] = ..., user_ns: _Optional[bool] = ...) -> None: ...

class Resources(_message.Message):
    __slots__ = ("memory_bytes", "cpus", "cpu_shares", "pids_limit", "ingress_bps", "egress_bps", "burst_bytes")
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    CPUS_FIELD_NUMBER: _ClassVar[int]
    CPU_SHARES_FIELD_NUMBER: _ClassVar[int]
    PIDS_LIMIT_FIELD_NUMBER: _ClassVar[int]
    INGRESS_BPS_FIELD_NUMBER: _ClassVar[int]
    EGRESS_BPS_FIELD_NUMBER: _ClassVar[int]
    BURST_BYTES_FIELD_NUMBER: _ClassVar[int]
    memory_bytes: int
    cpus: float
    cpu_shares: int
    pids_limit: int
    ingress_bps: int
    egress_bps: int
    burst_bytes: int
    def __init__(self, memory_bytes: _Optional[int] = ..., cpus: _Optional[float] = ..., cpu_shares: _Optional[int] = ..., pids_limit: _Optional[int] = ..., ingress_bps: _Optional[int] = ..., egress_bps: _Optional[int] = ..., burst_bytes: _Optional[int] = ...) -> None: ...

class Container(_message.Message):
    __slots__ = ("name", "host", "network", "command", "interface", "ip", "prefixlen", "gateway", "status", "revision", "fixed_ip", "ports", "share", "restart", "image", "image_id", "ip6", "prefixlen6", "gateway6", "fixed_ip6", "resources", "volumes", "cap_add", "user_ns", "stopped", "env", "workdir", "generation", "cni", "aliases", "dns", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    INTERFACE_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    PREFIXLEN_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    FIXED_IP_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    RESTART_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    IP6_FIELD_NUMBER: _ClassVar[int]
    PREFIXLEN6_FIELD_NUMBER: _ClassVar[int]
    GATEWAY6_FIELD_NUMBER: _ClassVar[int]
    FIXED_IP6_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    VOLUMES_FIELD_NUMBER: _ClassVar[int]
    CAP_ADD_FIELD_NUMBER: _ClassVar[int]
    USER_NS_FIELD_NUMBER: _ClassVar[int]
    STOPPED_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    WORKDIR_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    CNI_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    DNS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    name: str
    host: str
    network: str
    command: _containers.RepeatedScalarFieldContainer[str]
    interface: str
    ip: str
    prefixlen: int
    gateway: str
    status: ContainerStatus
    revision: int
    fixed_ip: str
    ports: _containers.RepeatedScalarFieldContainer[str]
    share: _containers.RepeatedScalarFieldContainer[str]
    restart: str
    image: str
    image_id: str
    ip6: str
    prefixlen6: int
    gateway6: str
    fixed_ip6: str
    resources: Resources
    volumes: _containers.RepeatedScalarFieldContainer[str]
    cap_add: _containers.RepeatedScalarFieldContainer[str]
    user_ns: UserNsMode
    stopped: bool
    env: _containers.RepeatedScalarFieldContainer[str]
    workdir: str
    generation: int
    cni: CniOwner
    aliases: _containers.RepeatedScalarFieldContainer[str]
    dns: _containers.RepeatedScalarFieldContainer[str]
    labels: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., host: _Optional[str] = ..., network: _Optional[str] = ..., command: _Optional[_Iterable[str]] = ..., interface: _Optional[str] = ..., ip: _Optional[str] = ..., prefixlen: _Optional[int] = ..., gateway: _Optional[str] = ..., status: _Optional[_Union[ContainerStatus, _Mapping]] = ..., revision: _Optional[int] = ..., fixed_ip: _Optional[str] = ..., ports: _Optional[_Iterable[str]] = ..., share: _Optional[_Iterable[str]] = ..., restart: _Optional[str] = ..., image: _Optional[str] = ..., image_id: _Optional[str] = ..., ip6: _Optional[str] = ..., prefixlen6: _Optional[int] = ..., gateway6: _Optional[str] = ..., fixed_ip6: _Optional[str] = ..., resources: _Optional[_Union[Resources, _Mapping]] = ..., volumes: _Optional[_Iterable[str]] = ..., cap_add: _Optional[_Iterable[str]] = ..., user_ns: _Optional[_Union[UserNsMode, str]] = ..., stopped: _Optional[bool] = ..., env: _Optional[_Iterable[str]] = ..., workdir: _Optional[str] = ..., generation: _Optional[int] = ..., cni: _Optional[_Union[CniOwner, _Mapping]] = ..., aliases: _Optional[_Iterable[str]] = ..., dns: _Optional[_Iterable[str]] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class PolicyPeer(_message.Message):
    __slots__ = ("labels", "any_labels", "network", "cidr")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ANY_LABELS_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    CIDR_FIELD_NUMBER: _ClassVar[int]
    EXCEPT_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.ScalarMap[str, str]
    any_labels: bool
    network: str
    cidr: str
    def __init__(self, labels: _Optional[_Mapping[str, str]] = ..., any_labels: _Optional[bool] = ..., network: _Optional[str] = ..., cidr: _Optional[str] = ..., **kwargs) -> None: ...

class PolicyRule(_message.Message):
    __slots__ = ("peers", "ports")
    PEERS_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    peers: _containers.RepeatedCompositeFieldContainer[PolicyPeer]
    ports: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, peers: _Optional[_Iterable[_Union[PolicyPeer, _Mapping]]] = ..., ports: _Optional[_Iterable[str]] = ...) -> None: ...

class Policy(_message.Message):
    __slots__ = ("name", "network", "select", "ingress_isolated", "ingress", "egress_isolated", "egress", "revision", "selected")
    class SelectEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    SELECT_FIELD_NUMBER: _ClassVar[int]
    INGRESS_ISOLATED_FIELD_NUMBER: _ClassVar[int]
    INGRESS_FIELD_NUMBER: _ClassVar[int]
    EGRESS_ISOLATED_FIELD_NUMBER: _ClassVar[int]
    EGRESS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    SELECTED_FIELD_NUMBER: _ClassVar[int]
    name: str
    network: str
    select: _containers.ScalarMap[str, str]
    ingress_isolated: bool
    ingress: _containers.RepeatedCompositeFieldContainer[PolicyRule]
    egress_isolated: bool
    egress: _containers.RepeatedCompositeFieldContainer[PolicyRule]
    revision: int
    selected: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., network: _Optional[str] = ..., select: _Optional[_Mapping[str, str]] = ..., ingress_isolated: _Optional[bool] = ..., ingress: _Optional[_Iterable[_Union[PolicyRule, _Mapping]]] = ..., egress_isolated: _Optional[bool] = ..., egress: _Optional[_Iterable[_Union[PolicyRule, _Mapping]]] = ..., revision: _Optional[int] = ..., selected: _Optional[_Iterable[str]] = ...) -> None: ...

class PolicyEndpoint(_message.Message):
    __slots__ = ("container", "network", "address", "labels", "address6")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ADDRESS6_FIELD_NUMBER: _ClassVar[int]
    container: str
    network: str
    address: str
    labels: _containers.ScalarMap[str, str]
    address6: str
    def __init__(self, container: _Optional[str] = ..., network: _Optional[str] = ..., address: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., address6: _Optional[str] = ...) -> None: ...

class PolicySet(_message.Message):
    __slots__ = ("policies", "endpoints", "network_cidrs", "network_cidrs6", "endpoints_kept")
    class NetworkCidrsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class NetworkCidrs6Entry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    NETWORK_CIDRS_FIELD_NUMBER: _ClassVar[int]
    NETWORK_CIDRS6_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_KEPT_FIELD_NUMBER: _ClassVar[int]
    policies: _containers.RepeatedCompositeFieldContainer[Policy]
    endpoints: _containers.RepeatedCompositeFieldContainer[PolicyEndpoint]
    network_cidrs: _containers.ScalarMap[str, str]
    network_cidrs6: _containers.ScalarMap[str, str]
    endpoints_kept: bool
    def __init__(self, policies: _Optional[_Iterable[_Union[Policy, _Mapping]]] = ..., endpoints: _Optional[_Iterable[_Union[PolicyEndpoint, _Mapping]]] = ..., network_cidrs: _Optional[_Mapping[str, str]] = ..., network_cidrs6: _Optional[_Mapping[str, str]] = ..., endpoints_kept: _Optional[bool] = ...) -> None: ...

class CreatePolicyRequest(_message.Message):
    __slots__ = ("policy",)
    POLICY_FIELD_NUMBER: _ClassVar[int]
    policy: Policy
    def __init__(self, policy: _Optional[_Union[Policy, _Mapping]] = ...) -> None: ...

class ListPoliciesResponse(_message.Message):
    __slots__ = ("policies", "revision")
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    policies: _containers.RepeatedCompositeFieldContainer[Policy]
    revision: int
    def __init__(self, policies: _Optional[_Iterable[_Union[Policy, _Mapping]]] = ..., revision: _Optional[int] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("id", "repo_tags", "layers", "size", "config", "revision", "source", "blobs", "access")
    ID_FIELD_NUMBER: _ClassVar[int]
    REPO_TAGS_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    BLOBS_FIELD_NUMBER: _ClassVar[int]
    ACCESS_FIELD_NUMBER: _ClassVar[int]
    id: str
    repo_tags: _containers.RepeatedScalarFieldContainer[str]
    layers: _containers.RepeatedScalarFieldContainer[str]
    size: int
    config: bytes
    revision: int
    source: str
    blobs: _containers.RepeatedCompositeFieldContainer[RegistryBlob]
    access: RegistryAccess
    def __init__(self, id: _Optional[str] = ..., repo_tags: _Optional[_Iterable[str]] = ..., layers: _Optional[_Iterable[str]] = ..., size: _Optional[int] = ..., config: _Optional[bytes] = ..., revision: _Optional[int] = ..., source: _Optional[str] = ..., blobs: _Optional[_Iterable[_Union[RegistryBlob, _Mapping]]] = ..., access: _Optional[_Union[RegistryAccess, _Mapping]] = ...) -> None: ...

class RegistryBlob(_message.Message):
    __slots__ = ("digest", "media_type", "size")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    digest: str
    media_type: str
    size: int
    def __init__(self, digest: _Optional[str] = ..., media_type: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class RegistryAccess(_message.Message):
    __slots__ = ("registry", "ca_pem", "username", "password", "insecure")
    REGISTRY_FIELD_NUMBER: _ClassVar[int]
    CA_PEM_FIELD_NUMBER: _ClassVar[int]
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    INSECURE_FIELD_NUMBER: _ClassVar[int]
    registry: str
    ca_pem: str
    username: str
    password: str
    insecure: bool
    def __init__(self, registry: _Optional[str] = ..., ca_pem: _Optional[str] = ..., username: _Optional[str] = ..., password: _Optional[str] = ..., insecure: _Optional[bool] = ...) -> None: ...

class RecordImageRequest(_message.Message):
    __slots__ = ("reference", "manifest_digest", "config", "layers")
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_DIGEST_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    reference: str
    manifest_digest: str
    config: bytes
    layers: _containers.RepeatedCompositeFieldContainer[RegistryBlob]
    def __init__(self, reference: _Optional[str] = ..., manifest_digest: _Optional[str] = ..., config: _Optional[bytes] = ..., layers: _Optional[_Iterable[_Union[RegistryBlob, _Mapping]]] = ...) -> None: ...

class ImageChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class ImageRef(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class BlobRequest(_message.Message):
    __slots__ = ("digest",)
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    digest: str
    def __init__(self, digest: _Optional[str] = ...) -> None: ...

class LoadImageResponse(_message.Message):
    __slots__ = ("images",)
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[Image]
    def __init__(self, images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ...) -> None: ...

class ListImagesResponse(_message.Message):
    __slots__ = ("images", "revision")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[Image]
    revision: int
    def __init__(self, images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., revision: _Optional[int] = ...) -> None: ...

class Lease(_message.Message):
    __slots__ = ("network", "host", "subnet", "gateway", "renewed_at", "expires_at", "subnet6", "gateway6")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    SUBNET_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    RENEWED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    SUBNET6_FIELD_NUMBER: _ClassVar[int]
    GATEWAY6_FIELD_NUMBER: _ClassVar[int]
    network: str
    host: str
    subnet: str
    gateway: str
    renewed_at: int
    expires_at: int
    subnet6: str
    gateway6: str
    def __init__(self, network: _Optional[str] = ..., host: _Optional[str] = ..., subnet: _Optional[str] = ..., gateway: _Optional[str] = ..., renewed_at: _Optional[int] = ..., expires_at: _Optional[int] = ..., subnet6: _Optional[str] = ..., gateway6: _Optional[str] = ...) -> None: ...

class IpamEvent(_message.Message):
    __slots__ = ("at", "kind", "network", "host", "subnet", "address", "container")
    AT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    SUBNET_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    at: int
    kind: str
    network: str
    host: str
    subnet: str
    address: str
    container: str
    def __init__(self, at: _Optional[int] = ..., kind: _Optional[str] = ..., network: _Optional[str] = ..., host: _Optional[str] = ..., subnet: _Optional[str] = ..., address: _Optional[str] = ..., container: _Optional[str] = ...) -> None: ...

class Allocation(_message.Message):
    __slots__ = ("network", "container", "interface", "address", "host", "address6")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    INTERFACE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    ADDRESS6_FIELD_NUMBER: _ClassVar[int]
    network: str
    container: str
    interface: str
    address: str
    host: str
    address6: str
    def __init__(self, network: _Optional[str] = ..., container: _Optional[str] = ..., interface: _Optional[str] = ..., address: _Optional[str] = ..., host: _Optional[str] = ..., address6: _Optional[str] = ...) -> None: ...

class Quarantine(_message.Message):
    __slots__ = ("network", "subnet", "until")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    SUBNET_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    network: str
    subnet: str
    until: int
    def __init__(self, network: _Optional[str] = ..., subnet: _Optional[str] = ..., until: _Optional[int] = ...) -> None: ...

class GetIpamRequest(_message.Message):
    __slots__ = ("network",)
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    network: str
    def __init__(self, network: _Optional[str] = ...) -> None: ...

class IpamReport(_message.Message):
    __slots__ = ("leases", "allocations", "quarantined", "history")
    LEASES_FIELD_NUMBER: _ClassVar[int]
    ALLOCATIONS_FIELD_NUMBER: _ClassVar[int]
    QUARANTINED_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    leases: _containers.RepeatedCompositeFieldContainer[Lease]
    allocations: _containers.RepeatedCompositeFieldContainer[Allocation]
    quarantined: _containers.RepeatedCompositeFieldContainer[Quarantine]
    history: _containers.RepeatedCompositeFieldContainer[IpamEvent]
    def __init__(self, leases: _Optional[_Iterable[_Union[Lease, _Mapping]]] = ..., allocations: _Optional[_Iterable[_Union[Allocation, _Mapping]]] = ..., quarantined: _Optional[_Iterable[_Union[Quarantine, _Mapping]]] = ..., history: _Optional[_Iterable[_Union[IpamEvent, _Mapping]]] = ...) -> None: ...

class IpamProblem(_message.Message):
    __slots__ = ("kind", "network", "subject", "detail")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    kind: str
    network: str
    subject: str
    detail: str
    def __init__(self, kind: _Optional[str] = ..., network: _Optional[str] = ..., subject: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class IpamCheckReport(_message.Message):
    __slots__ = ("problems",)
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    problems: _containers.RepeatedCompositeFieldContainer[IpamProblem]
    def __init__(self, problems: _Optional[_Iterable[_Union[IpamProblem, _Mapping]]] = ...) -> None: ...

class ValidateTopologyRequest(_message.Message):
    __slots__ = ("hosts", "networks", "containers", "images", "policies")
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    NETWORKS_FIELD_NUMBER: _ClassVar[int]
    CONTAINERS_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    hosts: _containers.RepeatedCompositeFieldContainer[Host]
    networks: _containers.RepeatedCompositeFieldContainer[Network]
    containers: _containers.RepeatedCompositeFieldContainer[Container]
    images: _containers.RepeatedScalarFieldContainer[str]
    policies: _containers.RepeatedCompositeFieldContainer[Policy]
    def __init__(self, hosts: _Optional[_Iterable[_Union[Host, _Mapping]]] = ..., networks: _Optional[_Iterable[_Union[Network, _Mapping]]] = ..., containers: _Optional[_Iterable[_Union[Container, _Mapping]]] = ..., images: _Optional[_Iterable[str]] = ..., policies: _Optional[_Iterable[_Union[Policy, _Mapping]]] = ...) -> None: ...

class ValidateTopologyResponse(_message.Message):
    __slots__ = ("revision",)
    REVISION_FIELD_NUMBER: _ClassVar[int]
    revision: int
    def __init__(self, revision: _Optional[int] = ...) -> None: ...

class EventsRequest(_message.Message):
    __slots__ = ("follow", "since")
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    follow: bool
    since: int
    def __init__(self, follow: _Optional[bool] = ..., since: _Optional[int] = ...) -> None: ...

class AuditEvent(_message.Message):
    __slots__ = ("seq", "at", "identity", "method", "request", "code", "message", "revision", "peer")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    seq: int
    at: float
    identity: str
    method: str
    request: str
    code: str
    message: str
    revision: int
    peer: str
    def __init__(self, seq: _Optional[int] = ..., at: _Optional[float] = ..., identity: _Optional[str] = ..., method: _Optional[str] = ..., request: _Optional[str] = ..., code: _Optional[str] = ..., message: _Optional[str] = ..., revision: _Optional[int] = ..., peer: _Optional[str] = ...) -> None: ...

class CreateHostRequest(_message.Message):
    __slots__ = ("host",)
    HOST_FIELD_NUMBER: _ClassVar[int]
    host: Host
    def __init__(self, host: _Optional[_Union[Host, _Mapping]] = ...) -> None: ...

class CreateNetworkRequest(_message.Message):
    __slots__ = ("network",)
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    network: Network
    def __init__(self, network: _Optional[_Union[Network, _Mapping]] = ...) -> None: ...

class CreateContainerRequest(_message.Message):
    __slots__ = ("container",)
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    container: Container
    def __init__(self, container: _Optional[_Union[Container, _Mapping]] = ...) -> None: ...

class CreateContainersRequest(_message.Message):
    __slots__ = ("containers",)
    CONTAINERS_FIELD_NUMBER: _ClassVar[int]
    containers: _containers.RepeatedCompositeFieldContainer[Container]
    def __init__(self, containers: _Optional[_Iterable[_Union[Container, _Mapping]]] = ...) -> None: ...

class DeleteContainersRequest(_message.Message):
    __slots__ = ("names",)
    NAMES_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, names: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteContainersResponse(_message.Message):
    __slots__ = ("deleted", "revision")
    DELETED_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    deleted: _containers.RepeatedScalarFieldContainer[str]
    revision: int
    def __init__(self, deleted: _Optional[_Iterable[str]] = ..., revision: _Optional[int] = ...) -> None: ...

class CreateContainersResponse(_message.Message):
    __slots__ = ("containers", "revision")
    CONTAINERS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    containers: _containers.RepeatedCompositeFieldContainer[Container]
    revision: int
    def __init__(self, containers: _Optional[_Iterable[_Union[Container, _Mapping]]] = ..., revision: _Optional[int] = ...) -> None: ...

class UpdateNetworkRequest(_message.Message):
    __slots__ = ("network",)
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    network: Network
    def __init__(self, network: _Optional[_Union[Network, _Mapping]] = ...) -> None: ...

class UpdateContainerRequest(_message.Message):
    __slots__ = ("container",)
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    container: Container
    def __init__(self, container: _Optional[_Union[Container, _Mapping]] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class WaitHostRequest(_message.Message):
    __slots__ = ("name", "revision", "timeout_ms")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    name: str
    revision: int
    timeout_ms: int
    def __init__(self, name: _Optional[str] = ..., revision: _Optional[int] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class ListRequest(_message.Message):
    __slots__ = ("host", "network")
    HOST_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    host: str
    network: str
    def __init__(self, host: _Optional[str] = ..., network: _Optional[str] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("revision",)
    REVISION_FIELD_NUMBER: _ClassVar[int]
    revision: int
    def __init__(self, revision: _Optional[int] = ...) -> None: ...

class ListHostsResponse(_message.Message):
    __slots__ = ("hosts", "revision")
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    hosts: _containers.RepeatedCompositeFieldContainer[Host]
    revision: int
    def __init__(self, hosts: _Optional[_Iterable[_Union[Host, _Mapping]]] = ..., revision: _Optional[int] = ...) -> None: ...

class ListNetworksResponse(_message.Message):
    __slots__ = ("networks", "revision")
    NETWORKS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    networks: _containers.RepeatedCompositeFieldContainer[Network]
    revision: int
    def __init__(self, networks: _Optional[_Iterable[_Union[Network, _Mapping]]] = ..., revision: _Optional[int] = ...) -> None: ...

class ListContainersResponse(_message.Message):
    __slots__ = ("containers", "revision")
    CONTAINERS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    containers: _containers.RepeatedCompositeFieldContainer[Container]
    revision: int
    def __init__(self, containers: _Optional[_Iterable[_Union[Container, _Mapping]]] = ..., revision: _Optional[int] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("host", "underlay_ip", "agent_pid", "netns", "capabilities", "vtep_mac", "underlay_mtu", "metrics_url", "docker_host")
    HOST_FIELD_NUMBER: _ClassVar[int]
    UNDERLAY_IP_FIELD_NUMBER: _ClassVar[int]
    AGENT_PID_FIELD_NUMBER: _ClassVar[int]
    NETNS_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    VTEP_MAC_FIELD_NUMBER: _ClassVar[int]
    UNDERLAY_MTU_FIELD_NUMBER: _ClassVar[int]
    METRICS_URL_FIELD_NUMBER: _ClassVar[int]
    DOCKER_HOST_FIELD_NUMBER: _ClassVar[int]
    host: str
    underlay_ip: str
    agent_pid: int
    netns: str
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    vtep_mac: str
    underlay_mtu: int
    metrics_url: str
    docker_host: str
    def __init__(self, host: _Optional[str] = ..., underlay_ip: _Optional[str] = ..., agent_pid: _Optional[int] = ..., netns: _Optional[str] = ..., capabilities: _Optional[_Iterable[str]] = ..., vtep_mac: _Optional[str] = ..., underlay_mtu: _Optional[int] = ..., metrics_url: _Optional[str] = ..., docker_host: _Optional[str] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("host",)
    HOST_FIELD_NUMBER: _ClassVar[int]
    host: Host
    def __init__(self, host: _Optional[_Union[Host, _Mapping]] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("host", "since_revision", "keeps_names", "keeps_endpoints")
    HOST_FIELD_NUMBER: _ClassVar[int]
    SINCE_REVISION_FIELD_NUMBER: _ClassVar[int]
    KEEPS_NAMES_FIELD_NUMBER: _ClassVar[int]
    KEEPS_ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    host: str
    since_revision: int
    keeps_names: bool
    keeps_endpoints: bool
    def __init__(self, host: _Optional[str] = ..., since_revision: _Optional[int] = ..., keeps_names: _Optional[bool] = ..., keeps_endpoints: _Optional[bool] = ...) -> None: ...

class HostNetwork(_message.Message):
    __slots__ = ("network", "lease", "peers", "names", "names_kept")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    NAMES_KEPT_FIELD_NUMBER: _ClassVar[int]
    network: Network
    lease: Lease
    peers: _containers.RepeatedCompositeFieldContainer[Peer]
    names: _containers.RepeatedCompositeFieldContainer[DnsName]
    names_kept: bool
    def __init__(self, network: _Optional[_Union[Network, _Mapping]] = ..., lease: _Optional[_Union[Lease, _Mapping]] = ..., peers: _Optional[_Iterable[_Union[Peer, _Mapping]]] = ..., names: _Optional[_Iterable[_Union[DnsName, _Mapping]]] = ..., names_kept: _Optional[bool] = ...) -> None: ...

class DnsName(_message.Message):
    __slots__ = ("container", "aliases", "address", "dns", "address6")
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    DNS_FIELD_NUMBER: _ClassVar[int]
    ADDRESS6_FIELD_NUMBER: _ClassVar[int]
    container: str
    aliases: _containers.RepeatedScalarFieldContainer[str]
    address: str
    dns: _containers.RepeatedScalarFieldContainer[str]
    address6: str
    def __init__(self, container: _Optional[str] = ..., aliases: _Optional[_Iterable[str]] = ..., address: _Optional[str] = ..., dns: _Optional[_Iterable[str]] = ..., address6: _Optional[str] = ...) -> None: ...

class Peer(_message.Message):
    __slots__ = ("host", "subnet", "underlay_ip", "vtep_mac", "vtep_ip", "subnet6", "vtep_ip6")
    HOST_FIELD_NUMBER: _ClassVar[int]
    SUBNET_FIELD_NUMBER: _ClassVar[int]
    UNDERLAY_IP_FIELD_NUMBER: _ClassVar[int]
    VTEP_MAC_FIELD_NUMBER: _ClassVar[int]
    VTEP_IP_FIELD_NUMBER: _ClassVar[int]
    SUBNET6_FIELD_NUMBER: _ClassVar[int]
    VTEP_IP6_FIELD_NUMBER: _ClassVar[int]
    host: str
    subnet: str
    underlay_ip: str
    vtep_mac: str
    vtep_ip: str
    subnet6: str
    vtep_ip6: str
    def __init__(self, host: _Optional[str] = ..., subnet: _Optional[str] = ..., underlay_ip: _Optional[str] = ..., vtep_mac: _Optional[str] = ..., vtep_ip: _Optional[str] = ..., subnet6: _Optional[str] = ..., vtep_ip6: _Optional[str] = ...) -> None: ...

class WatchEvent(_message.Message):
    __slots__ = ("revision", "snapshot", "networks", "containers", "deleted_networks", "deleted_containers", "policy_set", "name_deltas", "keepalive")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    NETWORKS_FIELD_NUMBER: _ClassVar[int]
    CONTAINERS_FIELD_NUMBER: _ClassVar[int]
    DELETED_NETWORKS_FIELD_NUMBER: _ClassVar[int]
    DELETED_CONTAINERS_FIELD_NUMBER: _ClassVar[int]
    POLICY_SET_FIELD_NUMBER: _ClassVar[int]
    NAME_DELTAS_FIELD_NUMBER: _ClassVar[int]
    KEEPALIVE_FIELD_NUMBER: _ClassVar[int]
    revision: int
    snapshot: bool
    networks: _containers.RepeatedCompositeFieldContainer[HostNetwork]
    containers: _containers.RepeatedCompositeFieldContainer[Container]
    deleted_networks: _containers.RepeatedScalarFieldContainer[str]
    deleted_containers: _containers.RepeatedScalarFieldContainer[str]
    policy_set: PolicySet
    name_deltas: _containers.RepeatedCompositeFieldContainer[NameDelta]
    keepalive: bool
    def __init__(self, revision: _Optional[int] = ..., snapshot: _Optional[bool] = ..., networks: _Optional[_Iterable[_Union[HostNetwork, _Mapping]]] = ..., containers: _Optional[_Iterable[_Union[Container, _Mapping]]] = ..., deleted_networks: _Optional[_Iterable[str]] = ..., deleted_containers: _Optional[_Iterable[str]] = ..., policy_set: _Optional[_Union[PolicySet, _Mapping]] = ..., name_deltas: _Optional[_Iterable[_Union[NameDelta, _Mapping]]] = ..., keepalive: _Optional[bool] = ...) -> None: ...

class NameDelta(_message.Message):
    __slots__ = ("network", "containers", "names")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    CONTAINERS_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    network: str
    containers: _containers.RepeatedScalarFieldContainer[str]
    names: _containers.RepeatedCompositeFieldContainer[DnsName]
    def __init__(self, network: _Optional[str] = ..., containers: _Optional[_Iterable[str]] = ..., names: _Optional[_Iterable[_Union[DnsName, _Mapping]]] = ...) -> None: ...

class ReportStatusRequest(_message.Message):
    __slots__ = ("host", "containers", "observed_revision", "events", "flows", "drops")
    HOST_FIELD_NUMBER: _ClassVar[int]
    CONTAINERS_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_REVISION_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    FLOWS_FIELD_NUMBER: _ClassVar[int]
    DROPS_FIELD_NUMBER: _ClassVar[int]
    host: str
    containers: _containers.RepeatedCompositeFieldContainer[ContainerStatus]
    observed_revision: int
    events: _containers.RepeatedCompositeFieldContainer[AgentEvent]
    flows: _containers.RepeatedCompositeFieldContainer[Flow]
    drops: _containers.RepeatedCompositeFieldContainer[Drop]
    def __init__(self, host: _Optional[str] = ..., containers: _Optional[_Iterable[_Union[ContainerStatus, _Mapping]]] = ..., observed_revision: _Optional[int] = ..., events: _Optional[_Iterable[_Union[AgentEvent, _Mapping]]] = ..., flows: _Optional[_Iterable[_Union[Flow, _Mapping]]] = ..., drops: _Optional[_Iterable[_Union[Drop, _Mapping]]] = ...) -> None: ...

class ReportStatusResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GcIpamRequest(_message.Message):
    __slots__ = ("dry_run", "grace_seconds")
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    GRACE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    dry_run: bool
    grace_seconds: int
    def __init__(self, dry_run: _Optional[bool] = ..., grace_seconds: _Optional[int] = ...) -> None: ...

class GcIpamItem(_message.Message):
    __slots__ = ("kind", "network", "subject", "detail", "action", "first_seen", "free_in")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEEN_FIELD_NUMBER: _ClassVar[int]
    FREE_IN_FIELD_NUMBER: _ClassVar[int]
    kind: str
    network: str
    subject: str
    detail: str
    action: str
    first_seen: int
    free_in: int
    def __init__(self, kind: _Optional[str] = ..., network: _Optional[str] = ..., subject: _Optional[str] = ..., detail: _Optional[str] = ..., action: _Optional[str] = ..., first_seen: _Optional[int] = ..., free_in: _Optional[int] = ...) -> None: ...

class GcIpamReport(_message.Message):
    __slots__ = ("at", "grace_seconds", "dry_run", "items")
    AT_FIELD_NUMBER: _ClassVar[int]
    GRACE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    at: int
    grace_seconds: int
    dry_run: bool
    items: _containers.RepeatedCompositeFieldContainer[GcIpamItem]
    def __init__(self, at: _Optional[int] = ..., grace_seconds: _Optional[int] = ..., dry_run: _Optional[bool] = ..., items: _Optional[_Iterable[_Union[GcIpamItem, _Mapping]]] = ...) -> None: ...

class CniOwner(_message.Message):
    __slots__ = ("container_id", "netns", "docker")
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    NETNS_FIELD_NUMBER: _ClassVar[int]
    DOCKER_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    netns: str
    docker: bool
    def __init__(self, container_id: _Optional[str] = ..., netns: _Optional[str] = ..., docker: _Optional[bool] = ...) -> None: ...

class AttachRequest(_message.Message):
    __slots__ = ("host", "container")
    HOST_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    host: str
    container: Container
    def __init__(self, host: _Optional[str] = ..., container: _Optional[_Union[Container, _Mapping]] = ...) -> None: ...

class DetachRequest(_message.Message):
    __slots__ = ("host", "name")
    HOST_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    host: str
    name: str
    def __init__(self, host: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class GetEndpointsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Endpoints(_message.Message):
    __slots__ = ("metrics_url", "ui_url")
    METRICS_URL_FIELD_NUMBER: _ClassVar[int]
    UI_URL_FIELD_NUMBER: _ClassVar[int]
    metrics_url: str
    ui_url: str
    def __init__(self, metrics_url: _Optional[str] = ..., ui_url: _Optional[str] = ...) -> None: ...

class AgentEvent(_message.Message):
    __slots__ = ("at", "kind", "subject", "detail")
    AT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    at: float
    kind: str
    subject: str
    detail: str
    def __init__(self, at: _Optional[float] = ..., kind: _Optional[str] = ..., subject: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class Flow(_message.Message):
    __slots__ = ("host", "src", "dst", "proto", "packets", "bytes", "rate_bps", "src_container", "dst_container")
    HOST_FIELD_NUMBER: _ClassVar[int]
    SRC_FIELD_NUMBER: _ClassVar[int]
    DST_FIELD_NUMBER: _ClassVar[int]
    PROTO_FIELD_NUMBER: _ClassVar[int]
    PACKETS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    RATE_BPS_FIELD_NUMBER: _ClassVar[int]
    SRC_CONTAINER_FIELD_NUMBER: _ClassVar[int]
    DST_CONTAINER_FIELD_NUMBER: _ClassVar[int]
    host: str
    src: str
    dst: str
    proto: str
    packets: int
    bytes: int
    rate_bps: float
    src_container: str
    dst_container: str
    def __init__(self, host: _Optional[str] = ..., src: _Optional[str] = ..., dst: _Optional[str] = ..., proto: _Optional[str] = ..., packets: _Optional[int] = ..., bytes: _Optional[int] = ..., rate_bps: _Optional[float] = ..., src_container: _Optional[str] = ..., dst_container: _Optional[str] = ...) -> None: ...

class Drop(_message.Message):
    __slots__ = ("host", "container", "reason", "packets", "kind", "network")
    HOST_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PACKETS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    host: str
    container: str
    reason: str
    packets: int
    kind: DropKind
    network: str
    def __init__(self, host: _Optional[str] = ..., container: _Optional[str] = ..., reason: _Optional[str] = ..., packets: _Optional[int] = ..., kind: _Optional[_Union[DropKind, str]] = ..., network: _Optional[str] = ...) -> None: ...

class GetFlowsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FlowsReport(_message.Message):
    __slots__ = ("flows", "drops", "at")
    FLOWS_FIELD_NUMBER: _ClassVar[int]
    DROPS_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    flows: _containers.RepeatedCompositeFieldContainer[Flow]
    drops: _containers.RepeatedCompositeFieldContainer[Drop]
    at: float
    def __init__(self, flows: _Optional[_Iterable[_Union[Flow, _Mapping]]] = ..., drops: _Optional[_Iterable[_Union[Drop, _Mapping]]] = ..., at: _Optional[float] = ...) -> None: ...
