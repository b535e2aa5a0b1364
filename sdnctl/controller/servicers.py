"""Thin gRPC servicers: convert the request, call :class:`State`, convert the answer.

Domain errors become status codes in :class:`ErrorInterceptor`, in one place.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grpc

from sdnctl.api import convert
from sdnctl.api.addrfields import check_ipv4
from sdnctl.api.fields import check_count, check_name
from sdnctl.api.model import WAIT_HOST_MAX, Container, Host, Invalid
from sdnctl.api.registryconfig import RegistryEntry
from sdnctl.api.validate import ARG_MAX, REPORT_MAX, validate_status
from sdnctl.controller import dryrun, gc, ipam_report, policies
from sdnctl.controller.audit import AuditLog
from sdnctl.controller.auth import current_identity
from sdnctl.controller.errors import (
    AlreadyExists,
    Conflict,
    Exhausted,
    FailedPrecondition,
    NotFound,
    PermissionDenied,
    SdnError,
    Unavailable,
)
from sdnctl.controller.fanout import Hub, hub_of
from sdnctl.controller.flows import FlowTable
from sdnctl.controller.groupcommit import group_of
from sdnctl.controller.images import ImageRecord, Images
from sdnctl.controller.keys import AGENTS, REPLICAS
from sdnctl.controller.metrics import ControllerMetrics, Endpoints
from sdnctl.controller.state import HostView, State, creating
from sdnctl.controller.store.base import Compare, Delete, Put, Store, StoreUnavailable
from sdnctl.controller.watch import container_pb, host_events
from sdnctl.v1 import sdnctl_pb2 as pb
from sdnctl.v1 import sdnctl_pb2_grpc as pb_grpc

#: The most containers one CreateContainers may carry.
BATCH_MAX = 10_000

log = logging.getLogger(__name__)

STATUS_OF: list[tuple[type[Exception], grpc.StatusCode]] = [
    (Invalid, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (Exhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Conflict, grpc.StatusCode.ABORTED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (StoreUnavailable, grpc.StatusCode.UNAVAILABLE),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
]


def refuse_cni(msg: pb.Container) -> None:
    """CNI attachments are recorded only by their host's agent (HostSync.Attach, issue 17)."""
    if msg.HasField("cni"):
        raise Invalid("container.cni", "set only by the host's agent for a CNI attachment")


def status_code_for(error: Exception) -> grpc.StatusCode:
    for cls, code in STATUS_OF:
        if isinstance(error, cls):
            return code
    return grpc.StatusCode.INTERNAL


class HandlerCache(grpc.ServerInterceptor):
    """Put first: the handler the interceptors after it build for a method, built once.

    gRPC runs every interceptor's ``intercept_service`` on every call, and ours each wrap the
    handler in new closures: about a tenth of the interpreter's time with 4 clients creating
    (issue 21). None of them depends on the call's metadata when it builds a handler (they
    read the caller from the context when the call runs), so one per method serves every call.
    """

    def __init__(self) -> None:
        self._handlers: dict[str, Any] = {}

    def intercept_service(self, continuation: Callable[[Any], Any],
                          handler_call_details: Any) -> Any:
        method = handler_call_details.method
        handler = self._handlers.get(method)
        if handler is None:
            handler = continuation(handler_call_details)
            if handler is not None:
                self._handlers[method] = handler
        return handler


class ErrorInterceptor(grpc.ServerInterceptor):
    """Maps domain errors raised by servicers to gRPC status codes."""

    def intercept_service(self, continuation: Callable[[Any], Any],
                          handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        if handler.unary_unary:
            inner = handler.unary_unary

            def unary(request: Any, context: grpc.ServicerContext) -> Any:
                try:
                    return inner(request, context)
                except (SdnError, Invalid, StoreUnavailable) as e:
                    context.abort(status_code_for(e), str(e))

            return grpc.unary_unary_rpc_method_handler(
                unary, handler.request_deserializer, handler.response_serializer)
        if handler.unary_stream:
            inner_stream = handler.unary_stream

            def stream(request: Any, context: grpc.ServicerContext) -> Any:
                try:
                    yield from inner_stream(request, context)
                except (SdnError, Invalid, StoreUnavailable) as e:
                    context.abort(status_code_for(e), str(e))

            return grpc.unary_stream_rpc_method_handler(
                stream, handler.request_deserializer, handler.response_serializer)
        if handler.stream_unary:
            inner_upload = handler.stream_unary

            def upload(requests: Any, context: grpc.ServicerContext) -> Any:
                try:
                    return inner_upload(requests, context)
                except (SdnError, Invalid) as e:
                    context.abort(status_code_for(e), str(e))

            return grpc.stream_unary_rpc_method_handler(
                upload, handler.request_deserializer, handler.response_serializer)
        return handler




def address_names(state: State) -> dict[str, str]:
    """Container address -> container name, for naming the ends of flows."""
    views, _ = state.list_containers("", "")
    return {v.allocation.address: v.container.name for v in views if v.allocation is not None}


class Connections:
    """Which hosts have an agent with an open Watch stream.

    A replica knows its own streams. With ``heartbeat`` (several replicas on one store) it also
    records them in the store, beside a heartbeat of its own every ``heartbeat`` seconds, so that
    every replica can answer: a host is connected when some replica whose heartbeat is fresh
    (within three beats) holds its stream. A killed replica's records go stale with its heartbeat
    and :meth:`sweep` removes them.
    """

    def __init__(self, store: Store | None = None, heartbeat: float = 0.0,
                 clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        self._count: dict[str, int] = {}
        self.shared = store is not None and heartbeat > 0
        self.store = store
        self.heartbeat = heartbeat
        self.clock = clock
        self.replica = uuid.uuid4().hex[:12]

    def opened(self, host: str) -> None:
        with self._lock:
            self._count[host] = self._count.get(host, 0) + 1
            first = self._count[host] == 1
        if first:
            self._record(Put(f"{AGENTS}{host}/{self.replica}", b""))

    def closed(self, host: str) -> None:
        with self._lock:
            self._count[host] -= 1
            last = self._count[host] == 0
        if last:
            self._record(Delete(f"{AGENTS}{host}/{self.replica}"))

    def _record(self, op: Put | Delete) -> None:
        if not self.shared or self.store is None:
            return
        try:
            self.store.txn([], [op])
        except StoreUnavailable as e:  # the stream itself does not depend on it
            log.warning("could not record an agent connection: %s", e)

    def connected(self, host: str) -> bool:
        return host in self.connected_among([host])

    def connected_among(self, hosts: Iterable[str]) -> set[str]:
        """Those of ``hosts`` whose agent has a stream open here or, shared, on a live replica.
        The other replicas' records are read once for all of them (one range of them all, one
        heartbeat read per replica holding one): a listing that asked for each host in turn
        made two etcd round trips per host the other replica serves, 110 ms of ListHosts at
        100 hosts, which ``up`` and the benchmarks poll."""
        wanted = list(hosts)
        with self._lock:
            found = {host for host in wanted if self._count.get(host, 0) > 0}
        rest = [host for host in wanted if host not in found]
        if not rest or not self.shared or self.store is None:
            return found
        prefix = f"{AGENTS}{rest[0]}/" if len(rest) == 1 else AGENTS
        held: dict[str, set[str]] = {}  # replica -> the hosts it holds a stream of
        for kv in self.store.range(prefix)[0]:
            host, _, replica = kv.key[len(AGENTS):].rpartition("/")
            held.setdefault(replica, set()).add(host)
        remaining = set(rest)
        for replica, its_hosts in held.items():
            if its_hosts & remaining and self._alive(replica):
                found |= its_hosts & remaining
                remaining -= its_hosts
        return found

    def _alive(self, replica: str, beats: float = 3) -> bool:
        assert self.store is not None
        kv = self.store.get(REPLICAS + replica)
        try:
            return kv is not None and float(kv.value) > self.clock() - beats * self.heartbeat
        except ValueError:
            return False

    def beat(self) -> None:
        """Say this replica lives; the store has had no record of its streams if it restarted."""
        if self.shared and self.store is not None:
            self.store.txn([], [Put(REPLICAS + self.replica, f"{self.clock():.0f}".encode())])

    def sweep(self) -> None:
        """Remove the records of replicas whose heartbeat stopped long ago (ten beats)."""
        if not self.shared or self.store is None:
            return
        for kv in self.store.range(REPLICAS)[0]:
            if not self._alive(kv.key[len(REPLICAS):], beats=10):
                self.store.txn([Compare(kv.key, kv.mod_revision)], [Delete(kv.key)])
        for kv in self.store.range(AGENTS)[0]:
            replica = kv.key.rsplit("/", 1)[1]
            if replica != self.replica and not self._alive(replica, beats=10):
                self.store.txn([Compare(kv.key, kv.mod_revision)], [Delete(kv.key)])


def host_pb(view: HostView, connections: Connections, hub: Hub | None = None,
            connected: bool | None = None) -> pb.Host:
    """The host message; with ``hub``, the revision its connected agent has realised counts
    the writes since its report that did not concern it (issue 21: they do not wake it).
    ``connected``: known already (a listing asks ``connections`` once for all its hosts)."""
    if connected is None:
        connected = connections.connected(view.host.name)
    msg = convert.host_to_pb(view.host, view.leases, view.revision, connected)
    if view.status is not None:
        msg.agent_synced = True
        msg.observed_revision = view.status.observed_revision
        if hub is not None and connected:
            msg.observed_revision = hub.realised(view.host.name, msg.observed_revision)
        msg.reported_containers.extend(view.status.containers)
    return msg


MAX_ARCHIVE = 8 << 30  # bytes: a bigger upload is refused
#: WaitHost: how long it waits when the request gives no timeout (at most WAIT_HOST_MAX).
WAIT_HOST_DEFAULT = 10.0
#: WaitHost looks at the host again at least this often (seconds) while no write comes.
WAIT_HOST_RECHECK = 0.02


def gc_report_pb(report: gc.Report) -> pb.GcIpamReport:
    return pb.GcIpamReport(at=report.at, grace_seconds=report.grace, dry_run=report.dry_run,
                           items=[pb.GcIpamItem(kind=i.kind, network=i.network,
                                                subject=i.subject, detail=i.detail,
                                                action=i.action, first_seen=i.first_seen,
                                                free_in=i.free_in) for i in report.items])


def image_pb(record: ImageRecord, revision: int = 0, config: bytes = b"",
             access: RegistryEntry | None = None) -> pb.Image:
    msg = pb.Image(id=record.id, repo_tags=list(record.repo_tags), layers=list(record.layers),
                   size=record.size, config=config, revision=revision, source=record.source,
                   blobs=[pb.RegistryBlob(digest=d, media_type=t, size=s) for d, t, s in
                          zip(record.blob_digests, record.blob_types, record.blob_sizes,
                              strict=True)])
    if access is not None:
        msg.access.CopyFrom(registry_access_pb(record, access))
    return msg


def registry_access_pb(record: ImageRecord, entry: RegistryEntry) -> pb.RegistryAccess:
    """Trust and credentials for an agent that pulls ``record`` from its registry. The CA goes
    as PEM text (the agent's host has no copy of the controller's files); ``netns`` and
    ``address`` are this machine's way in, not the agent's, and stay here."""
    ca_pem = ""
    if entry.ca:
        try:
            with open(entry.ca) as f:
                ca_pem = f.read()
        except OSError as e:
            log.warning("registry CA %s unreadable: %s", entry.ca, e)
    return pb.RegistryAccess(registry=record.source.split("/", 1)[0], ca_pem=ca_pem,
                             username=entry.username, password=entry.password,
                             insecure=entry.insecure)


class ControllerServicer(pb_grpc.ControllerServicer):
    def __init__(self, state: State, connections: Connections, images: Images,
                 audit: AuditLog | None = None,
                 stopping: threading.Event | None = None,
                 gc_grace: int = gc.DEFAULT_GRACE,
                 endpoints: Endpoints | None = None,
                 flows: FlowTable | None = None) -> None:
        self.endpoints = endpoints or Endpoints()
        self.flows = flows or FlowTable()
        self.state = state
        self.connections = connections
        self.images = images
        self.audit = audit or AuditLog()
        self.stopping = stopping or threading.Event()
        self.gc_grace = gc_grace

    def CreateHost(self, request: pb.CreateHostRequest, context: Any) -> pb.Host:
        host = convert.host_from_pb(request.host)
        return host_pb(self.state.create_host(Host(host.name, host.underlay_ip, host.lab)),
                       self.connections)

    def GetHost(self, request: pb.GetRequest, context: Any) -> pb.Host:
        return host_pb(self.state.get_host(request.name), self.connections,
                       hub_of(self.state))

    def WaitHost(self, request: pb.WaitHostRequest, context: Any) -> pb.Host:
        """GetHost once the host's agent has realised ``revision`` (or none is connected, or
        ``timeout_ms`` passed). The host is read again only when the store moved (the agent's
        report is a write: ``store.wait`` wakes on it); what the hub counts as realised moves
        without a write, in memory, so that part is looked at every WAIT_HOST_RECHECK."""
        if request.revision < 0:
            raise Invalid("revision", "must not be negative")
        timeout = min(request.timeout_ms / 1000 if request.timeout_ms else WAIT_HOST_DEFAULT,
                      WAIT_HOST_MAX)
        deadline = time.monotonic() + timeout
        store = self.state.store
        seen = store.revision()
        view = self.state.get_host(request.name)  # (read after ``seen``: at least as new)
        while True:
            msg = host_pb(view, self.connections, hub_of(self.state))
            remaining = deadline - time.monotonic()
            if (msg.agent_synced and msg.observed_revision >= request.revision) or \
                    not msg.agent_connected or remaining <= 0 or not context.is_active():
                return msg
            now = store.wait(seen, min(remaining, WAIT_HOST_RECHECK))
            if now > seen:
                seen, view = now, self.state.get_host(request.name)

    def ListHosts(self, request: pb.ListRequest, context: Any) -> pb.ListHostsResponse:
        views, revision = self.state.list_hosts()
        hub = hub_of(self.state)
        up = self.connections.connected_among(v.host.name for v in views)
        return pb.ListHostsResponse(hosts=[host_pb(v, self.connections, hub, v.host.name in up)
                                           for v in views], revision=revision)

    def DeleteHost(self, request: pb.DeleteRequest, context: Any) -> pb.DeleteResponse:
        self.state.delete_host(request.name)
        return pb.DeleteResponse()

    def CreateNetwork(self, request: pb.CreateNetworkRequest, context: Any) -> pb.Network:
        network, revision = self.state.create_network(convert.network_from_pb(request.network))
        return convert.network_to_pb(network, revision)

    def GetNetwork(self, request: pb.GetRequest, context: Any) -> pb.Network:
        network, revision = self.state.get_network(request.name)
        return convert.network_to_pb(network, revision)

    def ListNetworks(self, request: pb.ListRequest, context: Any) -> pb.ListNetworksResponse:
        networks, revision = self.state.list_networks()
        return pb.ListNetworksResponse(
            networks=[convert.network_to_pb(n, r) for n, r in networks], revision=revision)

    def DeleteNetwork(self, request: pb.DeleteRequest, context: Any) -> pb.DeleteResponse:
        self.state.delete_network(request.name)
        return pb.DeleteResponse()

    def UpdateNetwork(self, request: pb.UpdateNetworkRequest, context: Any) -> pb.Network:
        network, revision = self.state.update_network(convert.network_from_pb(request.network))
        return convert.network_to_pb(network, revision)

    def CreateContainer(self, request: pb.CreateContainerRequest, context: Any) -> pb.Container:
        refuse_cni(request.container)
        container = convert.container_from_pb(request.container)
        # Concurrent creates share a transaction (groupcommit), each its own result or error.
        view, revision = group_of(self.state).submit(creating(container))
        return container_pb(dataclasses.replace(view, revision=revision))

    def CreateContainers(self, request: pb.CreateContainersRequest,
                         context: Any) -> pb.CreateContainersResponse:
        check_count(request.containers, "containers", BATCH_MAX)
        views, revision = self.state.create_containers(
            [convert.container_from_pb(c) for c in request.containers])
        return pb.CreateContainersResponse(containers=[container_pb(v) for v in views],
                                           revision=revision)

    def GetContainer(self, request: pb.GetRequest, context: Any) -> pb.Container:
        return container_pb(self.state.get_container(request.name))

    def ListContainers(self, request: pb.ListRequest, context: Any) -> pb.ListContainersResponse:
        if request.host:
            check_name(request.host, "host")
        if request.network:
            check_name(request.network, "network")
        views, revision = self.state.list_containers(request.host, request.network)
        return pb.ListContainersResponse(containers=[container_pb(v) for v in views],
                                         revision=revision)

    def DeleteContainer(self, request: pb.DeleteRequest, context: Any) -> pb.DeleteResponse:
        return pb.DeleteResponse(revision=self.state.delete_container(request.name))

    def DeleteContainers(self, request: pb.DeleteContainersRequest,
                         context: Any) -> pb.DeleteContainersResponse:
        check_count(request.names, "names", BATCH_MAX)
        deleted, revision = self.state.delete_containers(list(request.names))
        return pb.DeleteContainersResponse(deleted=deleted, revision=revision)

    def UpdateContainer(self, request: pb.UpdateContainerRequest, context: Any) -> pb.Container:
        refuse_cni(request.container)
        try:
            attached = self.state.get_container(request.container.name).container.cni_netns
        except (NotFound, Invalid):
            attached = ""  # update_container says why, in its order
        if attached:
            raise FailedPrecondition(f"container {request.container.name!r} is a CNI "
                                     "attachment: its runtime owns it")
        view = self.state.update_container(convert.container_from_pb(request.container))
        return container_pb(view)

    def GetIpam(self, request: pb.GetIpamRequest, context: Any) -> pb.IpamReport:
        if request.network:
            check_name(request.network, "network")
        view = ipam_report.report(self.state.store, request.network)
        return pb.IpamReport(
            leases=[convert.lease_to_pb(lease) for lease in view.leases],
            allocations=[convert.allocation_to_pb(a, host) for a, host in view.allocations],
            quarantined=[ipam_report.quarantine_to_pb(q) for q in view.quarantined],
            history=[ipam_report.ipam_event_to_pb(e) for e in view.history])

    def CheckIpam(self, request: pb.GetIpamRequest, context: Any) -> pb.IpamCheckReport:
        if request.network:
            check_name(request.network, "network")
        problems = ipam_report.check(self.state.store, request.network)
        return pb.IpamCheckReport(problems=[
            pb.IpamProblem(kind=p.kind, network=p.network, subject=p.subject, detail=p.detail)
            for p in problems])

    def Events(self, request: pb.EventsRequest, context: Any) -> Iterator[pb.AuditEvent]:
        if request.since < 0:
            raise Invalid("since", f"{request.since} is negative")
        seq = request.since
        records = self.audit.since(seq)
        while True:
            for r in records:
                yield pb.AuditEvent(seq=r.seq, at=r.at, identity=r.identity, method=r.method,
                                    request=r.request, code=r.code, message=r.message,
                                    revision=r.revision, peer=r.peer)
                seq = r.seq
            if not request.follow or not context.is_active() or self.stopping.is_set():
                return
            records = self.audit.wait(seq, timeout=1.0)


    def GetEndpoints(self, request: pb.GetEndpointsRequest, context: Any) -> pb.Endpoints:
        return pb.Endpoints(metrics_url=self.endpoints.metrics_url,
                            ui_url=self.endpoints.ui_url)

    def GetFlows(self, request: pb.GetFlowsRequest, context: Any) -> pb.FlowsReport:
        return self.flows.report(address_names(self.state))

    def GcIpam(self, request: pb.GcIpamRequest, context: Any) -> pb.GcIpamReport:
        if request.grace_seconds < 0:
            raise Invalid("grace_seconds", f"{request.grace_seconds} is negative")
        report = gc.collect(self.state, int(request.grace_seconds or self.gc_grace),
                            request.dry_run, alive=self.connections.connected)
        return gc_report_pb(report)

    def ValidateTopology(self, request: pb.ValidateTopologyRequest,
                         context: Any) -> pb.ValidateTopologyResponse:
        revision = dryrun.validate_request(self.state.store, request, self.state.timers,
                                           self.state.clock)
        return pb.ValidateTopologyResponse(revision=revision)

    # -- network policy (issue 22) -----------------------------------------------------------

    def CreatePolicy(self, request: pb.CreatePolicyRequest, context: Any) -> pb.Policy:
        policy, revision = policies.create_policy(
            self.state.store, convert.policy_from_pb(request.policy))
        return convert.policy_to_pb(policy, revision)

    def GetPolicy(self, request: pb.GetRequest, context: Any) -> pb.Policy:
        check_name(request.name, "name")
        policy, revision = policies.get_policy(self.state.store, request.name)
        msg = convert.policy_to_pb(policy, revision)
        views, _ = self.state.list_containers()
        msg.selected.extend(policies.selected(policies.policy_set(self.state.store), policy,
                                              [v.container for v in views]))
        return msg

    def ListPolicies(self, request: pb.ListRequest, context: Any) -> pb.ListPoliciesResponse:
        found, revision = policies.list_policies(self.state.store)
        return pb.ListPoliciesResponse(
            policies=[convert.policy_to_pb(p, r) for p, r in found], revision=revision)

    def DeletePolicy(self, request: pb.DeleteRequest, context: Any) -> pb.DeleteResponse:
        check_name(request.name, "name")
        return pb.DeleteResponse(revision=policies.delete_policy(self.state.store, request.name))

    def LoadImage(self, request_iterator: Iterator[pb.ImageChunk],
                  context: Any) -> pb.LoadImageResponse:
        with tempfile.TemporaryDirectory(dir=self.images.blobs.root,
                                         prefix="upload-") as tmp:
            path = os.path.join(tmp, "archive.tar")
            size = 0
            with open(path, "wb") as f:
                for chunk in request_iterator:
                    size += len(chunk.data)
                    if size > MAX_ARCHIVE:
                        raise Invalid("archive", f"larger than {MAX_ARCHIVE} bytes")
                    f.write(chunk.data)
            records = self.images.load(path)
        log.info("loaded image(s) %s", ", ".join(r.id for r in records))
        return pb.LoadImageResponse(images=[image_pb(r) for r in records])

    def ListImages(self, request: pb.ListRequest, context: Any) -> pb.ListImagesResponse:
        records, revision = self.images.list_images()
        return pb.ListImagesResponse(images=[image_pb(r, rev) for r, rev in records],
                                     revision=revision)

    def GetImage(self, request: pb.ImageRef, context: Any) -> pb.Image:
        record, revision = self.images.get(request.name)
        return image_pb(record, revision)

    def RemoveImage(self, request: pb.ImageRef, context: Any) -> pb.DeleteResponse:
        return pb.DeleteResponse(revision=self.images.remove(request.name))

    def RecordImage(self, request: pb.RecordImageRequest, context: Any) -> pb.Image:
        record = self.images.record(request.reference, request.manifest_digest, request.config,
                                    [(b.digest, b.media_type, b.size) for b in request.layers])
        log.info("recorded image %s from %s", record.id, record.source)
        record, revision = self.images.get(record.id)
        return image_pb(record, revision)

    def SaveImage(self, request: pb.ImageRef, context: Any) -> Iterator[pb.ImageChunk]:
        with tempfile.TemporaryDirectory(dir=self.images.blobs.root, prefix="save-") as tmp:
            path = os.path.join(tmp, "image.tar")
            self.images.save(request.name, path)
            yield from convert.file_chunks(path)


class HostSyncServicer(pb_grpc.HostSyncServicer):
    def __init__(self, state: State, connections: Connections, stopping: threading.Event,
                 images: Images, progress_interval: float = 10.0,
                 metrics: ControllerMetrics | None = None,
                 audit: AuditLog | None = None, flows: FlowTable | None = None) -> None:
        self.flows = flows or FlowTable()
        self.metrics = metrics or ControllerMetrics()
        self.audit = audit or AuditLog()
        self.state = state
        self.images = images
        self.connections = connections
        self.stopping = stopping
        self.progress_interval = progress_interval

    def Register(self, request: pb.RegisterRequest, context: Any) -> pb.RegisterResponse:
        check_count(request.capabilities, "capabilities")
        for i, capability in enumerate(request.capabilities):
            check_name(capability, f"capabilities[{i}]")
        host = Host(name=request.host, underlay_ip=request.underlay_ip,
                    agent_pid=request.agent_pid, netns=request.netns,
                    vtep_mac=request.vtep_mac, underlay_mtu=request.underlay_mtu,
                    metrics_url=request.metrics_url, docker_host=request.docker_host)
        view = self.state.register_host(host)
        log.info("agent of host %s registered (pid %d)", request.host, request.agent_pid)
        return pb.RegisterResponse(host=host_pb(view, self.connections))

    def Watch(self, request: pb.WatchRequest, context: Any) -> Iterator[pb.WatchEvent]:
        check_name(request.host, "host")
        if request.since_revision < 0:
            raise Invalid("since_revision", f"{request.since_revision} is negative")
        self.state.get_host(request.host)  # NOT_FOUND before streaming anything
        self.connections.opened(request.host)
        self.metrics.watch_streams.inc()
        try:
            for event in host_events(
                    self.state, request.host, request.since_revision,
                    alive=lambda: context.is_active() and not self.stopping.is_set(),
                    progress_interval=self.progress_interval,
                    keeps_names=request.keeps_names,
                    keeps_endpoints=request.keeps_endpoints,
                    wake_on=context.add_callback):
                self.metrics.watch_events.inc()
                yield event
        finally:
            self.metrics.watch_streams.dec()
            self.connections.closed(request.host)

    def ReportStatus(self, request: pb.ReportStatusRequest,
                     context: Any) -> pb.ReportStatusResponse:
        check_name(request.host, "host")
        if request.observed_revision < 0:
            raise Invalid("observed_revision", f"{request.observed_revision} is negative")
        check_count(request.containers, "containers", REPORT_MAX)
        statuses = [validate_status(convert.status_from_pb(s), f"containers[{i}]")
                    for i, s in enumerate(request.containers)]
        statuses = [s if len(s.message) <= ARG_MAX else
                    dataclasses.replace(s, message=s.message[:ARG_MAX]) for s in statuses]
        if current_identity().kind == "agent":  # its host is checked; its containers here
            foreign = self.state.foreign_containers(request.host,
                                                    [s.name for s in request.containers])
            if foreign:
                raise PermissionDenied(f"containers: {', '.join(foreign)} run on other hosts; "
                                       f"the agent of {request.host!r} may report only its own")
        check_count(request.events, "events", REPORT_MAX)
        check_count(request.flows, "flows", REPORT_MAX)
        check_count(request.drops, "drops", REPORT_MAX)
        for i, flow in enumerate(request.flows):
            check_ipv4(flow.src, f"flows[{i}].src")
            check_ipv4(flow.dst, f"flows[{i}].dst")
            if flow.packets < 0 or flow.bytes < 0:
                raise Invalid(f"flows[{i}]", "negative counters")
        for i, drop in enumerate(request.drops):
            if drop.kind == pb.DROP_KIND_CONTAINER:
                check_name(drop.container, f"drops[{i}].container")
            elif drop.kind == pb.DROP_KIND_NETWORK:
                check_name(drop.network, f"drops[{i}].network")
            elif drop.kind != pb.DROP_KIND_VXLAN:
                raise Invalid(f"drops[{i}].kind", f"unknown kind {drop.kind}")
            check_name(drop.reason, f"drops[{i}].reason")
            if drop.packets < 0:
                raise Invalid(f"drops[{i}].packets", "negative counter")
        for i, event in enumerate(request.events):
            check_name(event.kind, f"events[{i}].kind")
        self.state.report_status(request.host, statuses, request.observed_revision)
        self.flows.update(request.host, request.flows, request.drops)
        for event in request.events:
            self.metrics.agent_events.labels(event.kind).inc()
            self.audit.record(f"agent:{request.host}", f"agent/{event.kind}",
                              json.dumps({"subject": event.subject[:ARG_MAX], "at": event.at}),
                              "OK", event.detail[:ARG_MAX])
        return pb.ReportStatusResponse()

    def FetchImage(self, request: pb.ImageRef, context: Any) -> pb.Image:
        record, revision = self.images.get(request.name)
        return image_pb(record, revision, self.images.config(record.id),
                        self.images.access(record) if record.source else None)

    # -- CNI attachments (issue 17) -----------------------------------------------------------

    def Attach(self, request: pb.AttachRequest, context: Any) -> pb.Container:
        """Record a CNI attachment on the agent's own host (idempotent for the same owner)."""
        check_name(request.host, "host")
        spec = convert.container_from_pb(request.container)
        if not spec.cni_netns:
            raise Invalid("container.cni", "an attachment needs the runtime's netns and ID")
        spec = Container(name=spec.name, host=request.host, network=spec.network,
                         interface=spec.interface, fixed_ip=spec.fixed_ip,
                         fixed_ip6=spec.fixed_ip6, ports=spec.ports, cni_id=spec.cni_id,
                         cni_netns=spec.cni_netns, aliases=spec.aliases,
                         cni_docker=spec.cni_docker)
        try:
            return container_pb(self.state.create_container(spec))
        except AlreadyExists:
            view = self.state.get_container(spec.name)
            have = view.container
            if (have.host, have.cni_id, have.cni_netns) != (spec.host, spec.cni_id,
                                                            spec.cni_netns):
                raise
            if have.cni_docker:
                # A Docker endpoint learns its published ports after its address, and its
                # --ip6 after its IPv4 address was answered (issue 18): that one is kept, the
                # IPv6 address moves in the same transaction.
                wanted = dataclasses.replace(have, ports=spec.ports)
                held6 = view.allocation.address6 if view.allocation else ""
                if spec.fixed_ip6 and spec.fixed_ip6 != held6:
                    held = view.allocation.address if view.allocation else ""
                    wanted = dataclasses.replace(wanted, fixed_ip=have.fixed_ip or held,
                                                 fixed_ip6=spec.fixed_ip6)
                if wanted != have:
                    view = self.state.update_container(wanted)
            return container_pb(view)

    def Detach(self, request: pb.DetachRequest, context: Any) -> pb.DeleteResponse:
        """Forget a CNI attachment of the agent's own host; NOT_FOUND when there is none."""
        check_name(request.host, "host")
        view = self.state.get_container(request.name)
        if view.container.host != request.host or not view.container.cni_netns:
            raise PermissionDenied(f"container {request.name!r} is not a CNI attachment of host "
                                   f"{request.host!r}")
        return pb.DeleteResponse(revision=self.state.delete_container(request.name))

    def FetchBlob(self, request: pb.BlobRequest, context: Any) -> Iterator[pb.ImageChunk]:
        yield from convert.file_chunks(self.images.blob_path(request.digest))
