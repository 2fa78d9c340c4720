"""Import audit of `bench/gpu_check.sh --rehearse`: every Python process of the check appends to
$CLO_IMPORT_AUDIT one line per loaded top-level package, "IMPORTER IMPORTED", so that the check can
tell whether each one that clo, its tests or a fetched wheel needs is in the GPU machine's image or
among the wheels bench/gpu_wheels.sh fetches (an image package's own optional imports are the image's)."""

import os
import sys

_PATH = os.environ.get("CLO_IMPORT_AUDIT")
_SEEN = set()


def _importer():
    f = sys._getframe(2)
    while f is not None:
        name = f.f_globals.get("__name__", "")
        if name and not name.startswith(("importlib", "_frozen_importlib", "sitecustomize")) and name != "builtins":
            return name.split(".")[0]
        f = f.f_back
    return "?"


def _hook(event, args):
    if event != "import":
        return
    top = args[0].split(".")[0]
    if top in _SEEN or top.startswith("_"):
        return
    try:
        who = _importer()
    except Exception:  # an audit must never break the program it watches
        return
    if who == top:
        return
    _SEEN.add(top)
    try:
        with open(_PATH, "a", encoding="utf-8") as f:
            f.write(f"{who} {top}\n")
    except OSError:
        pass


if _PATH:
    sys.addaudithook(_hook)
