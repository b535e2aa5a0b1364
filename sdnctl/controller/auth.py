"""Who may call what: authentication from the TLS peer certificate, authorization per method.

Transport (see server.py): the unix socket is 0600 and root's, so a caller on it is ``local``, an
admin. A TCP listener is always mutual TLS, terminated by :mod:`sdnctl.controller.tlsfront`: its
handshake refuses a client without a certificate, with one from another CA, an expired one or a
revoked one, so none of those ever reaches this module. A call that comes through it arrives on
the gRPC server's private unix socket, and the peer gRPC reports for it names the connection
whose certificate :meth:`TlsFront.certificate` gives. :class:`SecurityInterceptor` then checks,
before any handler runs, that the certificate is not expired or revoked again (defence in depth:
a CRL that changed a moment ago), and that it names exactly one ``sdnctl://`` identity; else
UNAUTHENTICATED.

Authorization is ONE literal table, :data:`POLICY`: method -> the user roles that may call it,
and whether an agent may, and then only for its own host (the request's ``host`` field must be
the host named in its certificate). A method missing from the table is denied to everybody,
``local`` included, so that a new RPC cannot ship unreviewed (the table test enumerates every
method of every service the server serves).

    admin     everything
    operator  networks and containers (create, update, delete, validate) and every read
    viewer    reads only (get, list, IPAM, events, health, reflection)
    agent     HostSync.Register / Watch / ReportStatus as its own host; health

The identity of a call is in :func:`current_identity` while its handler runs, for checks that
need the store (an agent may report only its own host's containers: servicers.py).
"""

from __future__ import annotations

import contextvars
import datetime
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from sdnctl.api.model import Invalid
from sdnctl.api.pki import LOCAL, Identity, identity_of
from sdnctl.controller.audit import AuditLog
from sdnctl.controller.tlsfront import TlsFront

log = logging.getLogger(__name__)

ADMIN = frozenset({"admin"})
MANAGE = frozenset({"admin", "operator"})
READ = frozenset({"admin", "operator", "viewer"})
NOBODY: frozenset[str] = frozenset()

AGENT_NEVER = ""
AGENT_ANY = "*"
AGENT_OWN_HOST = "host"  # the request field that must name the agent's own host


@dataclass(frozen=True)
class Rule:
    roles: frozenset[str]
    agent: str = AGENT_NEVER
    mutating: bool = False


CTL = "/sdnctl.v1.Controller/"
SYNC = "/sdnctl.v1.HostSync/"
HEALTH = "/grpc.health.v1.Health/"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/"

POLICY: dict[str, Rule] = {
    CTL + "CreateHost": Rule(ADMIN, mutating=True),
    CTL + "GetHost": Rule(READ),
    CTL + "WaitHost": Rule(READ),
    CTL + "ListHosts": Rule(READ),
    CTL + "DeleteHost": Rule(ADMIN, mutating=True),
    # An agent's Docker plugin (issue 18) adopts or creates the network a `docker network
    # create -d sdnctl` names, on any host: networks are not per host.
    CTL + "CreateNetwork": Rule(MANAGE, AGENT_ANY, mutating=True),
    CTL + "GetNetwork": Rule(READ, AGENT_ANY),
    CTL + "ListNetworks": Rule(READ, AGENT_ANY),
    CTL + "DeleteNetwork": Rule(MANAGE, mutating=True),
    CTL + "UpdateNetwork": Rule(MANAGE, mutating=True),
    CTL + "CreateContainer": Rule(MANAGE, mutating=True),
    CTL + "CreateContainers": Rule(MANAGE, mutating=True),
    CTL + "GetContainer": Rule(READ),
    CTL + "ListContainers": Rule(READ),
    CTL + "DeleteContainer": Rule(MANAGE, mutating=True),
    CTL + "DeleteContainers": Rule(MANAGE, mutating=True),
    CTL + "UpdateContainer": Rule(MANAGE, mutating=True),
    CTL + "GetIpam": Rule(READ),
    CTL + "CheckIpam": Rule(READ),
    CTL + "GcIpam": Rule(ADMIN, mutating=True),
    # A dry run writes nothing, but asks what creating networks and containers would do.
    CTL + "ValidateTopology": Rule(MANAGE),
    CTL + "GetEndpoints": Rule(READ),
    CTL + "GetFlows": Rule(READ),
    CTL + "CreatePolicy": Rule(MANAGE, mutating=True),
    CTL + "GetPolicy": Rule(READ),
    CTL + "ListPolicies": Rule(READ),
    CTL + "DeletePolicy": Rule(MANAGE, mutating=True),
    CTL + "Events": Rule(READ),
    CTL + "LoadImage": Rule(MANAGE, mutating=True),
    CTL + "ListImages": Rule(READ),
    CTL + "GetImage": Rule(READ),
    CTL + "RemoveImage": Rule(MANAGE, mutating=True),
    CTL + "SaveImage": Rule(READ),
    CTL + "RecordImage": Rule(MANAGE, mutating=True),
    SYNC + "Register": Rule(ADMIN, AGENT_OWN_HOST, mutating=True),
    SYNC + "Watch": Rule(ADMIN, AGENT_OWN_HOST),
    SYNC + "ReportStatus": Rule(ADMIN, AGENT_OWN_HOST, mutating=True),
    # Any agent may fetch any image: images are not per host (a host's containers may need any).
    SYNC + "FetchImage": Rule(ADMIN, AGENT_ANY),
    SYNC + "FetchBlob": Rule(ADMIN, AGENT_ANY),
    # CNI attachments (issue 17): an agent records and forgets them on its own host only.
    SYNC + "Attach": Rule(ADMIN, AGENT_OWN_HOST, mutating=True),
    SYNC + "Detach": Rule(ADMIN, AGENT_OWN_HOST, mutating=True),
    HEALTH + "Check": Rule(READ, AGENT_ANY),
    HEALTH + "List": Rule(READ, AGENT_ANY),
    HEALTH + "Watch": Rule(READ, AGENT_ANY),
    REFLECTION + "ServerReflectionInfo": Rule(READ),
}

#: Methods whose successful calls are not audited (telemetry; see audit.py).
AUDIT_ONLY_REFUSALS = frozenset({SYNC + "ReportStatus"})


class Refused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def allowed(identity: Identity, method: str, request: Message | None) -> str | None:
    """None when ``identity`` may call ``method`` with ``request``, else why not."""
    rule = POLICY.get(method)
    if rule is None:
        return f"{method} is not in the authorization table"
    if identity.kind in ("user", "local"):
        if identity.role in rule.roles:
            return None
        return f"{identity} may not call {method}"
    if identity.kind == "agent":
        if rule.agent == AGENT_ANY:
            return None
        if rule.agent == AGENT_OWN_HOST and request is not None:
            host = getattr(request, rule.agent, None)
            if host == identity.name:
                return None
            return f"{identity} may act only as host {identity.name!r}, not {host!r}"
        return f"{identity} may not call {method}"
    return f"{identity} may not call {method}"


def authenticate(context: grpc.ServicerContext, front: TlsFront | None) -> Identity:
    """The caller's identity, or :class:`Refused` (UNAUTHENTICATED)."""
    peer = context.peer()
    if front is None or not front.owns(peer):
        if peer.startswith("unix:"):
            return LOCAL  # the controller's own 0600 socket
        raise Refused(grpc.StatusCode.UNAUTHENTICATED, "a client certificate is required")
    cert = front.certificate(peer)
    if cert is None:
        raise Refused(grpc.StatusCode.UNAUTHENTICATED, "the TLS connection has closed")
    if cert.not_valid_after_utc < datetime.datetime.now(datetime.UTC):
        raise Refused(grpc.StatusCode.UNAUTHENTICATED, "the client certificate has expired")
    if front.revocations is not None and front.revocations.revoked(cert.serial_number):
        raise Refused(grpc.StatusCode.UNAUTHENTICATED,
                      f"the client certificate (serial {cert.serial_number:#x}) is revoked")
    identity = identity_of(cert)
    if identity is None:
        raise Refused(grpc.StatusCode.UNAUTHENTICATED,
                      "the client certificate names no sdnctl:// identity")
    return identity


_CURRENT: contextvars.ContextVar[Identity] = contextvars.ContextVar("sdnctl_identity",
                                                                     default=LOCAL)


def current_identity() -> Identity:
    """The identity of the call whose handler runs in this thread."""
    return _CURRENT.get()


class _Undecodable:
    """Stands for a request that could not be parsed, so that the handler wrapper can answer
    INVALID_ARGUMENT rather than gRPC's INTERNAL."""


UNDECODABLE = _Undecodable()


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:
            return UNDECODABLE

    return deserialize


def _decoded(requests: Iterator[Any]) -> Iterator[Any]:
    """A client stream's messages; one that could not be decoded ends it with INVALID_ARGUMENT."""
    for i, request in enumerate(requests):
        if request is UNDECODABLE:
            raise Invalid("request", f"message {i} of the stream could not be decoded")
        yield request


def summary(request: Any) -> str:
    if isinstance(request, Message):
        try:
            return json_format.MessageToJson(request, preserving_proto_field_name=True,
                                             indent=None, sort_keys=True)
        except Exception:
            return "<unprintable>"
    return "<undecodable>" if request is UNDECODABLE else "<stream>"


class SecurityInterceptor(grpc.ServerInterceptor):
    """Authenticates, authorizes (:data:`POLICY`) and audits every call, before any handler."""

    def __init__(self, audit: AuditLog, front: TlsFront | None = None) -> None:
        self.audit = audit
        self.front = front  # the TCP listeners: who is behind each of their connections

    def _admit(self, method: str, request: Any, context: grpc.ServicerContext) -> Identity:
        """The caller's identity if it may go on; else record the refusal and abort."""
        try:
            identity = authenticate(context, self.front)
        except Refused as e:
            self._record("unauthenticated", method, request, e.code, e.message, context)
            context.abort(e.code, e.message)
            raise  # not reached: abort raises
        why = allowed(identity, method, request if isinstance(request, Message) else None)
        if why is not None:
            self._record(str(identity), method, request, grpc.StatusCode.PERMISSION_DENIED, why,
                         context)
            context.abort(grpc.StatusCode.PERMISSION_DENIED, why)
        if request is UNDECODABLE:
            message = "request: could not be decoded as the method's message"
            self._record(str(identity), method, request, grpc.StatusCode.INVALID_ARGUMENT,
                         message, context)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
        return identity

    def _record(self, identity: str, method: str, request: Any, code: grpc.StatusCode,
                message: str, context: grpc.ServicerContext, revision: int = 0) -> None:
        self.audit.record(identity, method, summary(request), code.name, message, revision,
                          context.peer())

    def _outcome(self, identity: Identity, method: str, request: Any, response: Any,
                 error: BaseException | None, context: grpc.ServicerContext) -> None:
        rule = POLICY.get(method)
        if rule is None or not rule.mutating:
            return
        if error is None:
            if method in AUDIT_ONLY_REFUSALS:
                return
            revision = getattr(response, "revision", 0)
            if not revision and hasattr(response, "host"):
                revision = getattr(response.host, "revision", 0)
            self._record(str(identity), method, request, grpc.StatusCode.OK, "", context,
                         revision if isinstance(revision, int) else 0)
            return
        code = context.code() if hasattr(context, "code") else None  # type: ignore[attr-defined]
        if not isinstance(code, grpc.StatusCode):
            code = grpc.StatusCode.UNKNOWN
        if method in AUDIT_ONLY_REFUSALS and code != grpc.StatusCode.PERMISSION_DENIED:
            return
        details = context.details() if hasattr(context, "details") else ""  # type: ignore
        self._record(str(identity), method, request, code,
                     details.decode() if isinstance(details, bytes) else str(details or error),
                     context)

    def _audited(self, identity: Identity, method: str, request: Any,
                 context: grpc.ServicerContext, call: Callable[[], Any]) -> Any:
        """Run a unary-response handler as ``identity`` and audit its outcome."""
        token = _CURRENT.set(identity)
        try:
            response = call()
        except BaseException as e:
            self._outcome(identity, method, request, None, e, context)
            raise
        finally:
            _CURRENT.reset(token)
        self._outcome(identity, method, request, response, None, context)
        return response

    def intercept_service(self, continuation: Callable[[Any], Any],
                          handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        if handler.unary_unary:
            inner = handler.unary_unary

            def unary(request: Any, context: grpc.ServicerContext) -> Any:
                identity = self._admit(method, request, context)
                return self._audited(identity, method, request, context,
                                     lambda: inner(request, context))

            return grpc.unary_unary_rpc_method_handler(
                unary, _tolerant(handler.request_deserializer), handler.response_serializer)
        if handler.unary_stream:
            inner_stream = handler.unary_stream

            def stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                self._admit(method, request, context)
                yield from inner_stream(request, context)

            return grpc.unary_stream_rpc_method_handler(
                stream, _tolerant(handler.request_deserializer), handler.response_serializer)
        if handler.stream_stream:
            inner_bidi = handler.stream_stream

            def bidi(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
                self._admit(method, None, context)
                yield from inner_bidi(requests, context)

            return grpc.stream_stream_rpc_method_handler(
                bidi, handler.request_deserializer, handler.response_serializer)
        inner_client = handler.stream_unary

        def client_stream(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            identity = self._admit(method, None, context)
            return self._audited(identity, method, None, context,
                                 lambda: inner_client(_decoded(requests), context))

        return grpc.stream_unary_rpc_method_handler(
            client_stream, _tolerant(handler.request_deserializer), handler.response_serializer)
