#!/usr/bin/env bash
# Benchmark svreg against peer registration tools on the shared brain pair.
#
# Usage: bash scripts/benchmark.sh [--resolutions 2 1] [--peers ants elastix convexadam fireants]
#                                  [--quick] [--setup-only] [--skip-setup] [other run_benchmark.py options]
#
# 1. Creates (idempotently) one virtual environment per peer under .bench/venvs/<peer> with pinned
#    PyPI versions (see PEER_SPECS below). A venv whose pins changed is rebuilt; a peer whose install
#    fails is recorded in .bench/venvs/<peer>.failed and skipped by the orchestrator with its error.
# 2. Calls benchmarks/run_benchmark.py with the main venv's python, passing all arguments through.
#    It prepares the data in .bench/data/<res>mm, runs every tool with 2 threads, evaluates all of
#    them identically with svreg_core.metrics and writes benchmarks/results/benchmark_<date>.{json,md}.
set -uo pipefail
CALLER="$(pwd)"  # run_benchmark.py runs here, so the paths given relative to it mean what the user meant
if [ -n "${BENCH_DIR:-}" ] && [ "${BENCH_DIR#/}" = "$BENCH_DIR" ]; then BENCH_DIR="${CALLER}/${BENCH_DIR}"; fi
cd "$(dirname "$0")/.."
REPO="$(pwd)"
MAIN_PY="${REPO}/.venv/bin/python"
BENCH_DIR="${BENCH_DIR:-${REPO}/.bench}"   # override for tests; venvs, data and runs live here
VENVS="${BENCH_DIR}/venvs"
BASE_PY="${BENCH_BASE_PYTHON:-python3}"

# torch first, pinned to the main venv's version, from the default index (on Linux x86-64 PyPI's wheel is the
# CUDA build, several GB; it runs on the CPU too): a peer package asking for another torch then fails loudly.
TORCH_PIN="torch==2.13.0"
declare -A PEER_SPECS=(
  [ants]="antspyx==0.6.3"
  [elastix]="itk-elastix==0.25.4"
  [convexadam]="convexadam==0.2.0"
  [fireants]="fireants==1.5.0"
)
declare -A PEER_NEEDS_TORCH=([ants]=0 [elastix]=0 [convexadam]=1 [fireants]=1)
# Every peer venv reads/writes NIfTI with nibabel/numpy.
COMMON_SPECS="nibabel numpy"
ALL_PEERS=(ants elastix convexadam fireants)

# --- parse only what this script needs; everything is forwarded to run_benchmark.py ---
peers=()
peers_given=0
setup_only=0
skip_setup=0
forward=()
in_peers=0
for a in "$@"; do
  case "$a" in
    --peers) in_peers=1; peers_given=1; forward+=("$a"); continue ;;
    --peers=*) in_peers=0; peers_given=1; peers+=("${a#--peers=}") ;;  # argparse's form: one peer
    --setup-only) setup_only=1; in_peers=0; continue ;;
    --skip-setup) skip_setup=1; in_peers=0; continue ;;
    --*) in_peers=0 ;;
    *) if [ "$in_peers" = 1 ]; then peers+=("$a"); fi ;;
  esac
  forward+=("$a")
done
if [ "${#peers[@]}" -eq 0 ] && [ "$peers_given" = 0 ]; then peers=("${ALL_PEERS[@]}"); fi

if [ ! -x "$MAIN_PY" ]; then
  echo "benchmark: main venv missing ($MAIN_PY); run: bash scripts/setup_env.sh" >&2
  exit 2
fi

setup_peer() {
  local peer="$1"
  local spec="${PEER_SPECS[$peer]:-}"
  if [ -z "$spec" ]; then
    echo "benchmark: unknown peer '$peer' (known: ${ALL_PEERS[*]})" >&2
    return 1
  fi
  local venv="${VENVS}/${peer}"
  local want="${spec} ${COMMON_SPECS}"
  if [ "${PEER_NEEDS_TORCH[$peer]}" = 1 ]; then want="${TORCH_PIN} ${want}"; fi
  local marker="${venv}/.bench-installed"
  if [ -x "${venv}/bin/python" ] && [ -f "$marker" ] && [ "$(cat "$marker")" = "$want" ]; then
    echo "benchmark: venv ${peer}: present (${want})"
    return 0
  fi
  echo "benchmark: venv ${peer}: installing ${want} ..."
  rm -rf "$venv" "${VENVS}/${peer}.failed"
  mkdir -p "$VENVS"
  local log="${VENVS}/${peer}.install.log"
  (
    "$BASE_PY" -m venv "$venv" || exit $?
    "${venv}/bin/python" -m pip install --quiet --upgrade pip || echo "(pip self-upgrade failed; continuing)"
    if [ "${PEER_NEEDS_TORCH[$peer]}" = 1 ]; then
      "${venv}/bin/python" -m pip install --quiet "$TORCH_PIN" || exit $?
      # Keep the torch pin in the same resolve: a package that pins another torch fails loudly here.
      "${venv}/bin/python" -m pip install --quiet "$spec" "$TORCH_PIN" $COMMON_SPECS || exit $?
    else
      "${venv}/bin/python" -m pip install --quiet "$spec" $COMMON_SPECS || exit $?
    fi
  ) >"$log" 2>&1
  local rc=$?
  if [ $rc -ne 0 ]; then
    { echo "pip install failed (exit $rc) for: ${want}"; tail -n 20 "$log"; } >"${VENVS}/${peer}.failed"
    echo "benchmark: venv ${peer}: INSTALL FAILED (exit $rc); see ${log}; the peer will be skipped" >&2
    tail -n 5 "$log" >&2
    return 0
  fi
  # Import check of the runner's dependencies (the runner itself prints versions).
  if ! "${venv}/bin/python" "${REPO}/benchmarks/peers/run_${peer}.py" --check >>"$log" 2>&1; then
    { echo "import check failed for ${peer}"; tail -n 20 "$log"; } >"${VENVS}/${peer}.failed"
    echo "benchmark: venv ${peer}: IMPORT CHECK FAILED; see ${log}; the peer will be skipped" >&2
    return 0
  fi
  echo "$want" >"$marker"
  "${venv}/bin/python" -m pip freeze >"${venv}/.bench-freeze.txt" 2>/dev/null
  echo "benchmark: venv ${peer}: ready"
}

# the arguments and the data are checked first: a typo or a missing pair must not wait for the peer installs
if [ "$setup_only" = 0 ] && ! (cd "$CALLER" && "$MAIN_PY" "${REPO}/benchmarks/run_benchmark.py" \
    --bench-dir "$BENCH_DIR" ${forward[@]+"${forward[@]}"} --check); then
  exit 2
fi
if [ "$skip_setup" = 0 ]; then
  for p in ${peers[@]+"${peers[@]}"}; do
    case "$p" in none|ours|ours_nospr|ours_native) continue ;; esac
    setup_peer "$p" || exit 2
  done
fi
if [ "$setup_only" = 1 ]; then exit 0; fi

export OMP_NUM_THREADS=2 ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=2
cd "$CALLER"
exec "$MAIN_PY" "${REPO}/benchmarks/run_benchmark.py" --bench-dir "$BENCH_DIR" ${forward[@]+"${forward[@]}"}
