"""The etcd store's mirror of its prefix (sdnctl/controller/store/mirror.py, issue 21): after
random puts and deletes, every prefix's range, and each key, is what a scan of a plain dict
finds, in key order. (Its reads through a real etcd are in test_store.py.)"""

from __future__ import annotations

import random

from sdnctl.controller.store.base import KeyValue
from sdnctl.controller.store.mirror import Mirror


def test_the_mirror_agrees_with_a_scan_through_puts_and_deletes() -> None:
    rng = random.Random(21)
    keys = [f"/{a}/{b}{c}" for a in ("c", "ca", "c0", "h") for b in ("x", "y") for c in range(30)]
    model = {k: KeyValue(k, b"loaded", 1, 1) for k in keys[::3]}
    mirror = Mirror(model.values(), revision=1)
    for revision in range(2, 700):
        key = rng.choice(keys)
        if rng.random() < 0.6:
            created = model[key].create_revision if key in model else revision
            model[key] = KeyValue(key, str(rng.random()).encode(), created, revision)
            mirror.put(model[key])
        else:
            model.pop(key, None)
            mirror.delete(key)
        mirror.revision = revision
        assert len(mirror) == len(model)
        prefix = rng.choice(["", "/", "/c", "/c/", "/ca/", "/c0", "/h/x", "/h/y1", "/z", "c"])
        want = [] if prefix and not prefix.startswith("/") else \
            [model[k] for k in sorted(model) if k.startswith(prefix)]
        assert mirror.range(prefix) == want
        asked = rng.sample(keys, 5)
        assert mirror.get_many(asked) == [model.get(k) for k in asked]
        assert mirror.get(key) == model.get(key)
