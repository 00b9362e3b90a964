#!/usr/bin/env bash
# Make an arm64 Debian bookworm base image with Python 3.11 on an x86-64 machine, without running anything of arm64:
#
#   bash docker/arm64-base.sh [TAG]        # default local/python-base-arm64 (make base-arm64 calls this)
#
# debootstrap --foreign only downloads and unpacks (its second stage would run arm64 programs, which needs
# binfmt_misc handlers for QEMU, and those must not be registered on shared machines). The packages it fetched
# for the second stage (python3 and its libraries, ca-certificates) are unpacked here with dpkg-deb -x, and the two
# things their maintainer scripts would have made are made here: /etc/passwd and /etc/group (base-passwd's masters)
# and the CA bundle (what update-ca-certificates writes). Python's standard library gets its bytecode from this
# machine's Python 3.11 (bytecode is the same on every architecture). The root is imported with `docker import`
# and labelled linux/arm64 (docker/set_platform.py). Where a registry is reachable,
# `docker pull --platform linux/arm64 python:3.11-slim` gives an equivalent base.
#
# Environment: FEDAD_DEBIAN_MIRROR (default http://deb.debian.org/debian), FEDAD_DEBIAN_SUITE (bookworm), PYTHON
# (python3: must be 3.11). Needs root (debootstrap), debootstrap, dpkg-deb and a Docker engine.
set -euo pipefail
tag=${1:-local/python-base-arm64}
mirror=${FEDAD_DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=${FEDAD_DEBIAN_SUITE:-bookworm}
python=${PYTHON:-python3}
here=$(cd "$(dirname "$0")" && pwd)
"$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
  || { echo "$python is not Python 3.11: its bytecode would not fit bookworm's Python" >&2; exit 2; }
root=$(mktemp -d /tmp/fedad-arm64-root.XXXXXX)
trap 'rm -rf "$root" "$root.log"' EXIT
t0=$(date +%s)
echo "debootstrap --arch arm64 --foreign $suite (download and unpack only) into $root" >&2
if ! debootstrap --arch arm64 --foreign --variant=minbase --include=python3,ca-certificates \
    "$suite" "$root" "$mirror" >"$root.log" 2>&1; then
  tail -n 20 "$root.log" >&2; exit 1
fi
# --keep-directory-symlink: /bin, /lib and /sbin are symlinks into /usr (merged /usr), which plain extraction replaces
for deb in "$root"/var/cache/apt/archives/*.deb; do
  dpkg-deb --fsys-tarfile "$deb" | tar -x --keep-directory-symlink -C "$root"
done
rm -rf "$root"/var/cache/apt/archives/*.deb "$root/debootstrap"
cp "$root/usr/share/base-passwd/passwd.master" "$root/etc/passwd"
cp "$root/usr/share/base-passwd/group.master" "$root/etc/group"
mkdir -p "$root/etc/ssl/certs"
find "$root/usr/share/ca-certificates" -name '*.crt' -print0 | sort -z | xargs -0 cat \
  >"$root/etc/ssl/certs/ca-certificates.crt"
test -x "$root/usr/bin/python3.11" || { echo "no python3.11 in the arm64 root" >&2; exit 1; }
"$python" -m compileall -q -j 0 -s "$root" -p / -x '/(test|idlelib|tkinter|lib2to3)/' "$root/usr/lib/python3.11" \
  || true  # a few files of the test suite do not compile on purpose; the rest has its bytecode
tar -C "$root" -c . | docker import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' \
  --message "debootstrap --foreign $suite arm64 + python3 (fedad)" - "$tag" >/dev/null
"$python" "$here/set_platform.py" "$tag" linux/arm64 >&2
echo "$tag: $(docker image inspect -f '{{.Os}}/{{.Architecture}}, {{.Size}} bytes' "$tag"), $(( $(date +%s) - t0 )) s" >&2
