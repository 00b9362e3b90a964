"""Make a base image's root file system into a small runtime root: Python and the libraries it loads, no package
manager, no documentation, no translations; the service's user and folders added.

    python3 docker/slim_root.py /rootfs --venv /opt/venv      # run in a build stage on a copy of the base's root

docker/worker-detect.Dockerfile copies its base image's root into the build stage, slims it here and starts its
final stage FROM scratch with it: deleting files in a later layer would not make an image smaller, so this is the
only way to leave out what the base holds. The same script serves both architectures, because it only deletes and
writes files (it never runs anything of the root, which may be arm64 on an x86-64 build machine).

What goes, and why nothing of it is needed at run time (the sizes on Debian bookworm's minbase with python3):
- translations, manuals, info pages and docs, except each package's ``copyright`` (its licence): ~45 MB;
- apt and dpkg's databases and caches and apt itself, and perl (only dpkg's scripts use it): ~15 MB; the image
  is replaced, never upgraded in place;
- glibc's iconv modules (gconv): Python's codecs are its own: 8 MB;
- Python's own test suite, IDLE, tkinter, lib2to3, pydoc's topics, distutils, ensurepip and the wheels it
  installs (the venv is built in the build stage): ~8 MB;
- the tools of a machine's administrator (/usr/sbin, accounts, mounts, package signatures) and then every shared
  library that nothing left links to (read from the ELF files' DT_NEEDED entries, for any architecture): ~35 MB.
Kept: the shell, coreutils, grep, sed, find, tar (``docker exec``, ``kubectl cp``), zoneinfo, CA certificates,
/var/lib/dpkg/status (the package list vulnerability scanners read), glibc's libraries.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import struct
import sys
from pathlib import Path

REMOVE = [
    "usr/share/locale", "usr/share/man", "usr/share/info", "usr/share/lintian", "usr/share/bash-completion",
    "usr/share/i18n", "usr/lib/locale",
    "var/cache/*", "var/log/*", "var/lib/apt", "var/lib/dpkg/info", "var/lib/dpkg/*-old",
    "usr/bin/apt*", "usr/lib/apt", "usr/lib/*-linux-gnu/libapt-*", "etc/apt", "usr/share/perl5", "usr/share/perl",
    "usr/bin/perl*", "usr/lib/*-linux-gnu/perl-base", "usr/lib/*-linux-gnu/perl", "usr/lib/*-linux-gnu/gconv",
    "usr/share/python-wheels", "usr/local/include",
    # tools of a machine's administrator, not of a service: accounts, block devices and file systems, package
    # signatures, locales, the openssl command (Python's ssl module uses the library)
    "usr/sbin/*", "usr/bin/dpkg*", "usr/bin/debconf*", "usr/bin/deb-systemd-*", "usr/bin/gpgv", "usr/bin/openssl",
    "usr/bin/c_rehash", "usr/bin/localedef", "usr/bin/login", "usr/bin/su", "usr/bin/passwd", "usr/bin/ch[afs][gnh]*",
    "usr/bin/expiry", "usr/bin/gpasswd", "usr/bin/newgrp", "usr/bin/mount", "usr/bin/umount", "usr/bin/lsblk",
    "usr/bin/findmnt", "usr/bin/lsfd", "usr/bin/lslogins", "usr/bin/wall", "usr/bin/mesg", "usr/bin/last*",
]
KEEP = {"usr/sbin/nologin"}  # the service user's shell
# glibc's own libraries stay whether or not something links them (NSS and friends are loaded by name)
GLIBC = ("ld-linux", "libc.so", "libc_", "libm.so", "libmvec", "libpthread", "libdl", "librt", "libresolv", "libnss_",
         "libutil", "libanl", "libBrokenLocale", "libthread_db", "libnsl", "libmemusage", "libpcprofile")
PYTHON_PARTS = ["test", "idlelib", "tkinter", "turtledemo", "lib2to3", "pydoc_data", "distutils", "ensurepip",
                "config-3.11-*"]
PYTHON_LIBS = ["usr/lib/python3.11", "usr/local/lib/python3.11"]  # Debian's, python:3.11-slim's


def remove(root: Path, pattern: str) -> int:
    freed = 0
    for found in glob.glob(str(root / pattern)):
        path = Path(found)
        if str(path.relative_to(root)) in KEEP:
            continue
        if path.is_symlink() or path.is_file():
            freed += path.lstat().st_size
            path.unlink()
        elif path.is_dir():
            freed += sum(p.lstat().st_size for p in path.rglob("*") if not p.is_symlink() and p.is_file())
            shutil.rmtree(path)
    return freed


def slim_docs(root: Path) -> int:
    """/usr/share/doc: keep each package's copyright file, drop the rest."""
    freed = 0
    for path in sorted((root / "usr/share/doc").glob("**/*"), reverse=True):
        if path.is_dir() and not path.is_symlink():
            if not any(path.iterdir()):
                path.rmdir()
        elif path.name != "copyright":
            freed += path.lstat().st_size
            path.unlink()
    return freed


def elf_needed(path: Path) -> list[str] | None:
    """The DT_NEEDED names of an ELF file (any architecture: no ldd, which would have to run it); None if not ELF."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    if data[:4] != b"\x7fELF":
        return None
    wide, order = data[4] == 2, "<" if data[5] == 1 else ">"
    header = (order + "Q", 0x28, 0x3A, "IIQQQQI", "qQ") if wide else (order + "I", 0x20, 0x2E, "IIIIIII", "iI")
    (shoff,) = struct.unpack_from(header[0], data, header[1])
    shentsize, shnum = struct.unpack_from(order + "HH", data, header[2])
    section, entry = order + header[3], order + header[4]
    sections = [struct.unpack_from(section, data, shoff + i * shentsize)[1:] for i in range(shnum)]
    needed = []
    for kind, _flags, _addr, offset, size, link in sections:
        if kind != 6:  # SHT_DYNAMIC
            continue
        strings = sections[link][3]
        for at in range(offset, offset + size, struct.calcsize(entry)):
            tag, value = struct.unpack_from(entry, data, at)
            if tag == 0:
                break
            if tag == 1:  # DT_NEEDED
                end = data.index(b"\0", strings + value)
                needed.append(data[strings + value:end].decode())
    return needed


def prune_libraries(root: Path, extra: list[Path]) -> int:
    """Delete the shared libraries in the system library folders that no ELF file left in the root (nor in
    ``extra``, the venv) links to, directly or through another library; glibc's own stay."""
    lib_dirs = sorted({Path(p) for p in glob.glob(str(root / "usr/lib/*-linux-gnu"))}
                      | {Path(p) for p in glob.glob(str(root / "lib/*-linux-gnu")) if not Path(p).is_symlink()})
    search = lib_dirs + [root / "usr/local/lib", root / "usr/lib"]

    def find(name: str) -> Path | None:
        for folder in search:
            if (folder / name).exists():
                return (folder / name).resolve()
        return None

    in_lib_dirs = {p.resolve() for d in lib_dirs for p in d.iterdir() if ".so" in p.name and p.is_file()}
    users = [p for top in [root, *extra] for p in top.rglob("*")
             if p.is_file() and not p.is_symlink() and p.resolve() not in in_lib_dirs and "/proc/" not in str(p)]
    keep: set[Path] = set()
    todo = [needs for p in users if (needs := elf_needed(p))]
    while todo:
        for name in todo.pop():
            found = find(name)
            if found is not None and found not in keep:
                keep.add(found)
                todo.append(elf_needed(found) or [])
    freed = 0
    for folder in lib_dirs:
        for path in folder.iterdir():
            if not path.name.startswith(GLIBC) and ".so" in path.name and path.is_file() and path.resolve() not in keep:
                if not path.is_symlink():
                    freed += path.stat().st_size
                path.unlink()
    return freed


def add_user(root: Path, uid: int, name: str) -> None:
    """The service's user and group (numeric id, so that Kubernetes' runAsNonRoot can verify it)."""
    etc = root / "etc"
    for file, line in (("passwd", f"{name}:x:{uid}:{uid}::/home/{name}:/usr/sbin/nologin"),
                       ("group", f"{name}:x:{uid}:")):
        path = etc / file
        text = path.read_text() if path.exists() else ""
        if not text:  # a root never configured (debootstrap --foreign): base-passwd's postinst did not run
            text = "root:x:0:0:root:/root:/bin/sh\n" if file == "passwd" else "root:x:0:\n"
        if f"\n{name}:" not in f"\n{text}":
            path.write_text(text + ("" if text.endswith("\n") else "\n") + line + "\n")
    (root / "home" / name).mkdir(parents=True, exist_ok=True)
    os.chown(root / "home" / name, uid, uid)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--venv", type=Path, help="a venv whose interpreter must exist in the root")
    parser.add_argument("--uid", type=int, default=10001)
    parser.add_argument("--user", default="fedad")
    args = parser.parse_args()
    root = args.root
    if args.venv is not None:
        python = os.readlink(args.venv / "bin" / "python3")
        target = python if os.path.isabs(python) else str(args.venv / "bin" / python)
        if not (root / target.lstrip("/")).exists():
            print(f"{args.venv}'s interpreter {target} is not in the runtime root {root}: build the venv with the "
                  "same Python layout as the base image (both Debian's, or both python:3.11-slim's)", file=sys.stderr)
            return 2
    freed = slim_docs(root)
    for pattern in REMOVE:
        freed += remove(root, pattern)
    for lib in PYTHON_LIBS:
        for part in PYTHON_PARTS:
            freed += remove(root, f"{lib}/{part}")
    freed += prune_libraries(root, [args.venv] if args.venv else [])
    add_user(root, args.uid, args.user)
    for folder in ("state", "data/skab", "etc/fedad", "tmp"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    os.chown(root / "state", args.uid, args.uid)
    (root / "tmp").chmod(0o1777)
    print(f"slim_root: {freed / 1e6:.0f} MB removed from {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
