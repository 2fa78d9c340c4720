#!/usr/bin/env bash
# Run HERE (a machine with PyPI) before bench/gpu_check.sh: downloads the wheels of
# bench/gpu_requirements.txt (what the check imports beyond the device image, bench/device_image.txt)
# for x86-64 / CPython 3.12 into .whl/ (git-ignored); `run` then carries .whl.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
PLAT=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
missing=0
while read -r pkg; do
  case "$pkg" in ''|'#'*) continue ;; esac
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLAT[@]}" -d .whl "$pkg" || { echo "gpu_wheels: no wheel for $pkg"; missing=1; }
done < bench/gpu_requirements.txt
du -sh .whl
exit $missing
