#!/usr/bin/env bash
# Run HERE (a machine with PyPI) before bench/gpu_check.sh: the device image has torch,
# transformers, accelerate and peft but not these, and it reaches no registry. Downloads
# x86-64 / CPython 3.12 wheels into .whl/ (git-ignored); `run` then carries .whl.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
PLAT=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
for pkg in pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
           trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 \
           py3langid==0.4.0 gguf==0.19.0 ctranslate2==4.8.5; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLAT[@]}" -d .whl "$pkg" || echo "gpu_wheels: no wheel for $pkg (its check will be skipped)"
done
du -sh .whl
