"""Print the project's runtime requirements from pyproject.toml, one per line, optionally leaving some out.

    python docker/requirements.py pyproject.toml                          # everything: the wheelhouse
    python docker/requirements.py pyproject.toml --exclude onnx onnxruntime  # a smaller image

pyproject.toml stays the single list of dependencies; the Dockerfiles and `make wheels` derive theirs from it.
Standard library only (tomllib, Python 3.11), so it runs in a bare base image.
"""

import argparse
import re
import sys
import tomllib


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject")
    parser.add_argument("--exclude", nargs="*", default=[], help="distribution names to leave out")
    args = parser.parse_args()
    with open(args.pyproject, "rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    exclude = {canonical(n) for n in args.exclude}
    known = {canonical(re.match(r"[A-Za-z0-9._-]+", d).group(0)) for d in deps}
    unknown = exclude - known
    if unknown:
        print(f"--exclude names not in {args.pyproject}: {sorted(unknown)}", file=sys.stderr)
        return 2
    for dep in deps:
        if canonical(re.match(r"[A-Za-z0-9._-]+", dep).group(0)) not in exclude:
            print(dep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
