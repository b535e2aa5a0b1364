"""sdnctl image load | save | ls | rm: images held by the controller.

    sdnctl image load -i FILE         a `docker save` archive or an OCI image layout (tar)
    sdnctl image save -o FILE NAME    a `docker save` archive that `docker load` accepts
    sdnctl image ls [--json]
    sdnctl image rm NAME...           untag, or remove (refused while a container uses it)
    sdnctl image pull REF             record an image a registry holds (agents pull its layers)
    sdnctl image push NAME REF        upload the controller's image NAME to a registry as REF
    sdnctl image prune [--grace S] [--store-dir DIR | --host H...] [--dry-run] [--json]
                                      on this machine: remove images no container used for
                                      S seconds, and the layers only they needed, from a
                                      host's store (the agent does it on its own as well)

A registry's trust, credentials and way in come from the registry file
(``$SDNCTL_REGISTRY_CONFIG``, default ``<run dir>/registries.json``; a lab with a registry
writes its entry); ``--insecure`` (plain HTTP) is accepted for a loopback registry only.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from sdnctl.api import convert, wire
from sdnctl.api.client import CommandError, connect
from sdnctl.v1 import sdnctl_pb2 as pb

TIMEOUT = 600.0


def _fail(what: str, e: wire.RpcError) -> CommandError:
    return CommandError(f"{what}: {e.details()}")


def image_json(image: pb.Image) -> dict[str, Any]:
    return {"id": image.id, "repo_tags": list(image.repo_tags), "layers": list(image.layers),
            "size": image.size, "revision": image.revision, "source": image.source}


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.3g}{unit}" if unit != "B" else f"{int(value)}B"
        value /= 1000
    return f"{size}B"


def cmd_load(args: argparse.Namespace) -> int:
    if not os.path.isfile(args.input):
        raise CommandError(f"image load: {args.input}: no such file")
    client = connect()
    try:
        reply = client.api.LoadImage(convert.file_chunks(args.input), timeout=TIMEOUT)
    except wire.RpcError as e:
        raise _fail(f"image load {args.input}", e) from None
    for image in reply.images:
        tags = ", ".join(image.repo_tags) or "<untagged>"
        print(f"Loaded image: {tags} ({image.id})")
    return 0


def cmd_save(args: argparse.Namespace) -> int:
    client = connect()
    tmp = f"{args.output}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            for chunk in client.api.SaveImage(pb.ImageRef(name=args.name), timeout=TIMEOUT):
                f.write(chunk.data)
        os.replace(tmp, args.output)
    except wire.RpcError as e:
        raise _fail(f"image save {args.name}", e) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    client = connect()
    images = client.api.ListImages(pb.ListRequest(), timeout=30).images
    if args.json:
        print(json.dumps([image_json(i) for i in images], indent=2))
        return 0
    rows = [["REPOSITORY:TAG", "IMAGE ID", "LAYERS", "SIZE"]]
    for image in images:
        for tag in image.repo_tags or ["<none>"]:
            rows.append([tag, image.id.removeprefix("sha256:")[:12], str(len(image.layers)),
                         human_size(image.size)])
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    client = connect()
    for name in args.names:
        try:
            client.api.RemoveImage(pb.ImageRef(name=name), timeout=30)
        except wire.RpcError as e:
            raise _fail(f"image rm {name}", e) from None
        print(name)
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    from sdnctl.api import imagepull, registry  # (not at the top: sdnctl.cli.everyday's note)

    client = connect()
    try:
        image = imagepull.pull(client.api, args.ref, insecure=args.insecure)
    except (ValueError, registry.RegistryError) as e:
        raise CommandError(f"image pull {args.ref}: {e}") from None
    except wire.RpcError as e:
        raise _fail(f"image pull {args.ref}", e) from None
    if args.json:
        print(json.dumps(image_json(image), indent=2))
    else:
        print(f"Pulled image: {', '.join(image.repo_tags)} ({image.id}) from {image.source}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from sdnctl.api import imagefmt, imagepull, registry  # (sdnctl.cli.everyday's note)

    client = connect()
    try:
        digest = imagepull.push(client.api, args.name, args.ref, insecure=args.insecure)
    except (ValueError, registry.RegistryError, imagefmt.ImageFormatError) as e:
        raise CommandError(f"image push {args.name} {args.ref}: {e}") from None
    except wire.RpcError as e:
        raise _fail(f"image push {args.name}", e) from None
    print(f"Pushed {args.name} as {args.ref}@{digest}")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from sdnctl.lab import local  # (here, not at the top: sdnctl.cli.everyday's note)

    if args.store_dir:
        stores = {"": args.store_dir}
    else:
        found = local.lab_store_dirs()
        unknown = [h for h in args.host if h not in found]
        if unknown:
            raise CommandError(f"image prune: no lab host {', '.join(unknown)} on this machine "
                               "(give --store-dir for another host's store)")
        stores = {h: found[h] for h in (args.host or sorted(found))}
    reports = {}
    for host, store in stores.items():
        if not os.path.isdir(store):
            raise CommandError(f"image prune: {store}: no such directory")
        reports[host or store] = local.prune_store(store, args.grace, args.dry_run)
    if args.json:
        print(json.dumps(reports, indent=2))
        return 0
    verb = "would free" if args.dry_run else "freed"
    for where, r in reports.items():
        print(f"{where}: {len(r['removed_images'])} image(s), {len(r['removed_layers'])} "
              f"layer(s), {verb} {human_size(r['freed_bytes'])}; {len(r['waiting'])} unused "
              "within the grace period")
    return 0


def register(sub: Any) -> None:
    image = sub.add_parser("image", help="load, save, list, remove images")
    verbs = image.add_subparsers(dest="image_command", required=True)
    p = verbs.add_parser("load", help="load a `docker save` archive or an OCI image layout")
    p.add_argument("-i", "--input", required=True, metavar="FILE")
    p.set_defaults(func=cmd_load)
    p = verbs.add_parser("save", help="write an image as a `docker save` archive")
    p.add_argument("-o", "--output", required=True, metavar="FILE")
    p.add_argument("name", metavar="NAME[:TAG]")
    p.set_defaults(func=cmd_save)
    p = verbs.add_parser("ls", help="list images")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ls)
    p = verbs.add_parser("rm", help="untag or remove images")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.set_defaults(func=cmd_rm)
    p = verbs.add_parser("pull", help="record an image a registry holds")
    p.add_argument("ref", metavar="HOST[:PORT]/REPO[:TAG][@DIGEST]")
    p.add_argument("--insecure", action="store_true", help="plain HTTP (loopback only)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_pull)
    p = verbs.add_parser("push", help="upload an image to a registry")
    p.add_argument("name", metavar="NAME[:TAG]")
    p.add_argument("ref", metavar="HOST[:PORT]/REPO[:TAG]")
    p.add_argument("--insecure", action="store_true", help="plain HTTP (loopback only)")
    p.set_defaults(func=cmd_push)
    p = verbs.add_parser("prune", help="remove unused image layers from hosts' stores here")
    p.add_argument("--grace", type=float, default=0.0, metavar="SECONDS",
                   help="keep images unused for less than this (default: 0, all unused)")
    p.add_argument("--store-dir", default="", metavar="DIR", help="a host's image store "
                   "(the agent's --store-dir; default: every lab host's on this machine)")
    p.add_argument("--host", action="append", default=[], metavar="NAME",
                   help="a lab host (repeatable)")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_prune)
