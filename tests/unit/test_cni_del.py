"""CNI DEL against the reconciler's passes, without root (issue 17): a DEL removes the veth at
once while the controller forgets the attachment, and the forget reaches the agent later on
the Watch stream. Until it has, a pass (a resync, a drift repair) must not build the veth
again: ``CniService.leaving`` names the attachments passes leave out. A DEL the controller
refused hands its attachment back to the passes."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from agent import cni
from agent.cni import AgentSide, CniService, Realised, attachment_name
from agent.desired import DesiredState
from agent.kernel.errors import KernelError
from agent.names import veth_name
from sdnctl.api import wire
from sdnctl.cni.plugin import CniError
from sdnctl.v1 import sdnctl_pb2 as pb

WAIT = 10.0


def Refused() -> wire.RpcError:
    return wire.RpcError(wire.StatusCode.UNAVAILABLE, "the controller is away")


class SlowController:
    """A HostSync stub whose Detach answers ``revision`` once released (or raises)."""

    def __init__(self, revision: int, refuse: bool = False) -> None:
        self.revision = revision
        self.refuse = refuse
        self.called = threading.Event()
        self.release = threading.Event()

    def Detach(self, request: pb.DetachRequest, timeout: float) -> pb.DeleteResponse:
        self.called.set()
        assert self.release.wait(WAIT)
        if self.refuse:
            raise Refused()
        return pb.DeleteResponse(revision=self.revision)


class NoWatch:
    def __init__(self, name: str) -> None:
        raise KernelError("no link watch in a unit test")


@pytest.fixture
def service(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(cni, "DeletionWatch", NoWatch)

    def make(controller: SlowController) -> tuple[CniService, list[str]]:
        removed: list[str] = []
        side = AgentSide(host="h1", controllers=["unix:/nowhere"],
                         sync=lambda: controller,  # type: ignore[arg-type,return-value]
                         desired=DesiredState, connected=lambda: True, realised=Realised(),
                         remove_veth=removed.append)
        svc = CniService(side, "/nowhere")
        threading.Thread(target=svc._remove_veths, daemon=True).start()
        return svc, removed
    return make


def deleting(svc: CniService, errors: list[Exception]) -> threading.Thread:
    def run() -> None:
        try:
            svc.delete({"containerID": "ctr-del", "ifname": "eth0"})
        except CniError as e:
            errors.append(e)
    thread = threading.Thread(target=run)
    thread.start()
    return thread


NAME = attachment_name("ctr-del", "eth0")


def test_passes_leave_an_attachment_out_from_its_del_until_the_forget_is_seen(
        service: Any) -> None:
    controller = SlowController(revision=7)
    svc, removed = service(controller)
    errors: list[Exception] = []
    thread = deleting(svc, errors)
    assert controller.called.wait(WAIT)
    # The veth is gone while the controller has not answered yet: any state is too old.
    svc._veths_gone(everything=True)  # (waits for the removal, if not over yet)
    assert removed == [veth_name(NAME, "eth0")]
    assert svc.leaving(1_000) == {NAME}
    controller.release.set()
    thread.join(WAIT)
    assert not thread.is_alive() and errors == []
    # Answered: a state older than the forget's revision still lists it, the forget's does not.
    assert svc.leaving(6) == {NAME}
    assert svc.leaving(7) == set()
    assert svc.leaving(6) == set()  # (and it is forgotten here for good)


def test_a_del_the_controller_refused_hands_the_attachment_back_to_the_passes(
        service: Any) -> None:
    controller = SlowController(revision=7, refuse=True)
    svc, removed = service(controller)
    errors: list[Exception] = []
    thread = deleting(svc, errors)
    assert controller.called.wait(WAIT)
    assert svc.leaving(0) == {NAME}
    controller.release.set()
    thread.join(WAIT)
    assert len(errors) == 1 and "unreachable" in str(errors[0])
    # The runtime tries the DEL again; meanwhile a pass builds the veth back, as before.
    assert svc.leaving(0) == set()
    # (A refused DEL answers without waiting for the veth's removal, which goes on in the
    # service's thread: wait for it before looking.)
    svc._veths_gone(everything=True)
    assert removed == [veth_name(NAME, "eth0")]
