"""Copy a controller's store to another store: SQLite to etcd, etcd to SQLite (or etcd to etcd).

    sdnctl controller migrate --from sqlite:/var/lib/sdnctl/controller.db \\
                              --to etcd://127.0.0.1:2379/sdnctl

Stop the controllers first: a write made during the copy may be missed. Every key and value is
copied exactly; revisions are not (each store numbers its own history, and the copy is written in
batches), so agents take a new snapshot when they first watch the new store, as they do when a
revision is unknown. The target must be empty: nothing is overwritten. Each batch is one
transaction guarded by "the key does not exist", and the copy is read back and compared with the
source before the command reports success.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence

from sdnctl.controller.store.base import Compare, KeyValue, Put, Store, StoreUnavailable
from sdnctl.controller.store.etcd import EtcdError
from sdnctl.controller.store.spec import (
    add_etcd_arguments,
    describe_store,
    etcd_access,
    open_store,
)

#: Keys per transaction (etcd allows 128 operations in one by default).
BATCH_KEYS = 100
#: Bytes of keys and values per transaction (etcd takes requests of up to 1.5 MiB by default).
BATCH_BYTES = 512 * 1024


class MigrationError(RuntimeError):
    pass


def batches(kvs: Sequence[KeyValue]) -> Iterator[list[KeyValue]]:
    batch: list[KeyValue] = []
    size = 0
    for kv in kvs:
        cost = len(kv.key) + len(kv.value)
        if batch and (len(batch) >= BATCH_KEYS or size + cost > BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(kv)
        size += cost
    if batch:
        yield batch


def copy_store(source: Store, target: Store) -> int:
    """Copy every key of ``source`` into the empty ``target``; return how many keys."""
    kvs, _ = source.range("")
    existing, _ = target.range("")
    if existing:
        raise MigrationError(f"the target store is not empty ({len(existing)} keys); "
                             "migrate into an empty store (another etcd prefix or a new file)")
    for batch in batches(kvs):
        revision = target.txn([Compare(kv.key, 0) for kv in batch],
                              [Put(kv.key, kv.value) for kv in batch])
        if revision is None:
            raise MigrationError("another writer is using the target store; stop it and "
                                 "start again with an empty target")
    copied, _ = target.range("")
    want = {kv.key: kv.value for kv in kvs}
    got = {kv.key: kv.value for kv in copied}
    if want != got:
        missing = sorted(want.keys() - got.keys())
        differ = sorted(k for k in want.keys() & got.keys() if want[k] != got[k])
        raise MigrationError(f"the copy differs from the source: {len(missing)} keys missing, "
                             f"{len(differ)} differ (first: {(missing or differ)[:3]})")
    return len(kvs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sdnctl controller migrate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", required=True, metavar="STORE",
                        help="sqlite:PATH or etcd://host:port,...[/prefix]")
    parser.add_argument("--to", dest="target", required=True, metavar="STORE",
                        help="sqlite:PATH or etcd://host:port,...[/prefix] (empty)")
    add_etcd_arguments(parser)
    args = parser.parse_args(argv)
    access = etcd_access(parser, args)
    stores: list[Store] = []
    try:
        for spec in (args.source, args.target):
            if not (spec.startswith("sqlite:") or spec.startswith("etcd://")):
                parser.error(f"{spec!r}: give sqlite:PATH or etcd://host:port,...[/prefix]")
            stores.append(open_store(spec, etcd_access=access))
        count = copy_store(stores[0], stores[1])
    except (MigrationError, StoreUnavailable, EtcdError, ValueError, OSError) as e:
        print(f"sdnctl controller migrate: {e}", file=sys.stderr)
        return 1
    finally:
        for store in stores:
            store.close()
    print(f"copied {count} keys from {describe_store(stores[0])} to "
          f"{describe_store(stores[1])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
