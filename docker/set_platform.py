"""Label a local image with the platform its files are built for, e.g. linux/arm64.

    python docker/set_platform.py fedad-worker-detect:arm64 linux/arm64

Why: Debian's Docker 20.10 builds with the legacy builder, which cannot build for another architecture without
running it (no BuildKit, and no binfmt_misc handlers on machines where none may be registered), and whose
``docker import --platform`` is ignored without an experimental daemon. docker/*.Dockerfile therefore assemble an
arm64 image from an arm64 root and aarch64 wheels by copying files only; what the engine then records as the
image's architecture is the host's. This rewrites only that record: ``docker save``, set ``os``/``architecture``
(/``variant``) in the image config, ``docker load`` under the same tag. The layers stay byte for byte; the image id
changes with its config. Standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path


def relabel(image: str, platform: str, docker: str = "docker") -> str:
    """Give ``image`` the platform ``os/arch[/variant]``; returns the new image id."""
    os_name, arch, *variant = platform.split("/")
    with tempfile.TemporaryDirectory(prefix="fedad-platform-") as tmp:
        root = Path(tmp) / "image"
        subprocess.run([docker, "save", "-o", f"{tmp}/in.tar", image], check=True)
        with tarfile.open(f"{tmp}/in.tar") as saved:
            saved.extractall(root, filter="tar")
        manifest = json.loads((root / "manifest.json").read_text())
        for entry in manifest:
            old = root / entry["Config"]
            config = json.loads(old.read_text())
            config["os"], config["architecture"] = os_name, arch
            config.pop("variant", None)
            if variant:
                config["variant"] = variant[0]
            data = json.dumps(config, separators=(",", ":")).encode()
            digest = hashlib.sha256(data).hexdigest()
            old.unlink()
            (root / f"{digest}.json").write_bytes(data)
            entry["Config"] = f"{digest}.json"
            entry["RepoTags"] = [image] if ":" in image.rsplit("/", 1)[-1] else [f"{image}:latest"]
        (root / "manifest.json").write_text(json.dumps(manifest))
        (root / "repositories").unlink(missing_ok=True)  # legacy index of the old id; manifest.json is enough
        with tarfile.open(f"{tmp}/out.tar", "w") as out:
            for path in sorted(root.iterdir()):
                out.add(path, arcname=path.name)
        subprocess.run([docker, "load", "-q", "-i", f"{tmp}/out.tar"], check=True, stdout=subprocess.DEVNULL)
    return subprocess.run([docker, "image", "inspect", "-f", "{{.Id}}", image], check=True, capture_output=True,
                          text=True).stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image")
    parser.add_argument("platform", help="os/arch[/variant], e.g. linux/arm64")
    args = parser.parse_args()
    if args.platform.count("/") not in (1, 2):
        parser.error(f"platform {args.platform!r} is not os/arch[/variant], e.g. linux/arm64")
    print(f"{args.image}: {args.platform}, image id {relabel(args.image, args.platform)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
