#!/usr/bin/env python3
"""Writes an OCI image archive (an image layout in a tar) without a container engine.

    oci-image.py NAME OUT.tar --file SRC:DEST[:MODE] ... [--entrypoint ARG ...] [--cmd ARG ...]
                 [--user UID:GID] [--port N]

One uncompressed layer holds the files (owned by root, fixed timestamps, so the same inputs give
the same digest). NAME (e.g. docker.io/library/agent-operator:0.1.0) goes into index.json as
`io.containerd.image.name`, which is what `ctr images import` names the image after.
"""

import argparse
import hashlib
import io
import json
import os
import tarfile

EPOCH = 0


def add_blob(out: tarfile.TarFile, data: bytes, media_type: str) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(f"blobs/sha256/{digest}")
    info.size, info.mtime, info.mode = len(data), EPOCH, 0o644
    out.addfile(info, io.BytesIO(data))
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}


def directory(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, EPOCH
    return info


def layer(files: list[tuple[str, str, int]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        seen = set()
        for src, dest, mode in sorted(files, key=lambda f: f[1]):
            parts = dest.strip("/").split("/")
            for i in range(1, len(parts)):
                parent = "/".join(parts[:i])
                if parent not in seen:
                    seen.add(parent)
                    tar.addfile(directory(parent))
            with open(src, "rb") as f:
                data = f.read()
            info = tarfile.TarInfo(dest.strip("/"))
            info.size, info.mode, info.mtime = len(data), mode, EPOCH
            tar.addfile(info, io.BytesIO(data))
        # Writable scratch space for programs that expect /tmp (mounted over in a locked-down pod).
        if "tmp" not in seen:
            tmp = directory("tmp")
            tmp.mode = 0o1777
            tar.addfile(tmp)
    return buf.getvalue()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("name")
    p.add_argument("out")
    p.add_argument("--file", action="append", default=[], help="SRC:DEST[:MODE], MODE in octal")
    p.add_argument("--entrypoint", nargs="*", default=[])
    p.add_argument("--cmd", nargs="*", default=[])
    p.add_argument("--user", default="")
    p.add_argument("--port", action="append", default=[])
    args = p.parse_args()

    files = []
    for spec in args.file:
        parts = spec.split(":")
        mode = int(parts[2], 8) if len(parts) > 2 else 0o755
        files.append((parts[0], parts[1], mode))
    tar_bytes = layer(files)
    diff_id = "sha256:" + hashlib.sha256(tar_bytes).hexdigest()

    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": args.entrypoint or None,
            "Cmd": args.cmd or None,
            "User": args.user,
            "Env": ["PATH=/"],
            "ExposedPorts": {f"{port}/tcp": {} for port in args.port} or None,
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "oci-image.py"}],
    }
    config["config"] = {k: v for k, v in config["config"].items() if v is not None}

    tmp = args.out + ".tmp"
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as out:
        out.addfile(directory("blobs"))
        out.addfile(directory("blobs/sha256"))
        layer_desc = add_blob(out, tar_bytes, "application/vnd.oci.image.layer.v1.tar")
        config_desc = add_blob(out, json.dumps(config, sort_keys=True).encode(), "application/vnd.oci.image.config.v1+json")
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config_desc,
            "layers": [layer_desc],
        }
        manifest_desc = add_blob(out, json.dumps(manifest, sort_keys=True).encode(), "application/vnd.oci.image.manifest.v1+json")
        manifest_desc["annotations"] = {"io.containerd.image.name": args.name, "org.opencontainers.image.ref.name": args.name.rsplit(":", 1)[-1]}
        manifest_desc["platform"] = {"architecture": "amd64", "os": "linux"}
        for name, doc in [
            ("oci-layout", {"imageLayoutVersion": "1.0.0"}),
            ("index.json", {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [manifest_desc]}),
        ]:
            data = json.dumps(doc, sort_keys=True).encode()
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), EPOCH, 0o644
            out.addfile(info, io.BytesIO(data))
    os.replace(tmp, args.out)
    print(f"{args.name}: {manifest_desc['digest']} ({len(tar_bytes)} bytes) -> {args.out}")


if __name__ == "__main__":
    main()
