"""Write requirements.lock: every package of the environment pinned with its sha256 hashes.

    python3 tools/lock.py            # keep the versions pinned today (re-hash, add what is new)
    python3 tools/lock.py --upgrade  # resolve pyproject.toml afresh

pip resolves ``pyproject.toml`` (with every extra it declares: ``test``, ...) in a throw-away venv with
``pip install --dry-run --report`` (pip's own resolver and its JSON installation report; no
package is installed) and the report gives each chosen file's URL and sha256. ``install.sh`` then
installs exactly these files with ``pip install --require-hashes --no-deps``: nothing is resolved
afresh, so the torch/torchvision pair can never mix. (pip-tools' ``pip-compile --generate-hashes``
does the same job but fetches every file of every version to hash them, which took over 15 minutes
here; pip's report already carries the hashes.) The lock is for the machine it is made on:
CPython 3.11 on Linux x86-64 for this project's development and CI machines.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import tomllib
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
HEADER = """\
# requirements.lock: the whole environment of mtl-dsl, every package pinned with its sha256 hash.
# Made by tools/lock.py (pip's resolver and installation report) for CPython {python} on
# {platform}; install.sh installs it with `pip install --require-hashes --no-deps -r`.
# Do not edit by hand: change pyproject.toml and run `make lock`.
"""


def pinned_versions() -> list[str]:
    if not LOCK.exists():
        return []
    return re.findall(r"^([A-Za-z0-9_.\-]+==[^\s\\]+)", LOCK.read_text(), re.M)


def extras() -> list[str]:
    """Every optional-dependency group of pyproject.toml: the lock covers them all."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return sorted(project.get("optional-dependencies", {}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--upgrade", action="store_true", help="ignore today's pins")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = Path(tmp) / "venv"
        venv.create(env, with_pip=True)
        report = Path(tmp) / "report.json"
        cmd = [str(env / "bin" / "python"), "-m", "pip", "install", "--dry-run", "--quiet",
               "--ignore-installed", "--report", str(report), "-e", f"{ROOT}[{','.join(extras())}]"]
        if not args.upgrade and pinned_versions():
            constraints = Path(tmp) / "constraints.txt"
            constraints.write_text("\n".join(pinned_versions()) + "\n")
            cmd += ["-c", str(constraints)]
        subprocess.run(cmd, check=True)
        items = json.loads(report.read_text())["install"]
    lines = [HEADER.format(python=".".join(map(str, sys.version_info[:2])),
                           platform=f"{sys.platform} {_machine()}")]
    for item in sorted(items, key=lambda i: i["metadata"]["name"].lower()):
        name, version = item["metadata"]["name"], item["metadata"]["version"]
        if name.replace("_", "-").lower() == "mtl-dsl":
            continue  # the project itself (installed editable, from this folder)
        sha = item["download_info"]["archive_info"]["hashes"]["sha256"]
        lines.append(f"{name}=={version} \\\n    --hash=sha256:{sha}")
    LOCK.write_text("\n".join(lines) + "\n")
    print(f"wrote {LOCK} ({len(lines) - 1} packages)")
    return 0


def _machine() -> str:
    import platform

    return platform.machine()


if __name__ == "__main__":
    sys.exit(main())
