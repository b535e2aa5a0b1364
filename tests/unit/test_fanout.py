"""Watch fan-out (issue 21): a change reaches, as content, only the hosts it concerns; the
others hear of it only through a coalesced progress notice. On every store."""

from __future__ import annotations

import pytest
from apitest import StartServer, connect, is_progress, watch

from sdnctl.controller import watch as watch_module
from sdnctl.controller.store.base import Store


def test_a_create_on_host_a_sends_nothing_to_host_b(
        store: Store, start_server: StartServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watch_module, "QUIET_PROGRESS", 3600.0)  # no notice within the test
    server = start_server(store, progress_interval=3600)
    with connect(server, store) as api:
        api.host("ha")
        api.host("hb")
        api.network("front")
        with watch(api, "ha") as a, watch(api, "hb") as b:
            assert a.next().snapshot
            assert b.next().snapshot
            api.container("on-a", host="ha")
            event = a.next()  # the probe works: A hears of its container
            assert [c.name for c in event.containers] == ["on-a"]
            api.container("on-b", host="hb")
            # The first thing B hears after both creates is its own container: nothing of A's
            # container came before it, not even a progress notice.
            event = b.next()
            assert [c.name for c in event.containers] == ["on-b"]
            assert not event.deleted_containers and not event.networks[1:]
            assert event.revision == store.revision()


def test_other_hosts_writes_reach_b_as_one_notice(
        store: Store, start_server: StartServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watch_module, "QUIET_PROGRESS", 0.2)
    server = start_server(store, progress_interval=3600)
    with connect(server, store) as api:
        api.host("ha")
        api.host("hb")
        api.network("front")
        with watch(api, "hb") as b:
            assert b.next().snapshot
            for i in range(3):
                api.container(f"a{i}", host="ha")
            target = store.revision()
            notice = b.next(timeout=10)
            while notice.revision < target:  # (a slow machine may split them)
                assert is_progress(notice), notice
                notice = b.next(timeout=10)
            assert is_progress(notice) and notice.revision == target
