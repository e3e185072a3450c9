#!/usr/bin/env bash
# One entry point for the README's two commands:
#   bash quickstart.sh train [lars-jax train options]   set up, then train the default model
#   bash quickstart.sh test  [pytest options]           set up, then run the whole test suite
# Setup is idempotent: system packages (Fashion-MNIST files, python3-venv) are installed
# when missing, a virtual environment is made in .venv, and the package is installed into it
# (re-installed only when pyproject.toml changes).
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

need_apt=()
[[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]] || need_apt+=(dataset-fashion-mnist)
"$PYTHON" -c "import ensurepip, venv" 2>/dev/null || need_apt+=(python3-venv)
if ((${#need_apt[@]})); then
  if command -v apt-get >/dev/null; then
    SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
    echo "quickstart: installing system packages: ${need_apt[*]}" >&2
    $SUDO apt-get update -qq || true
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >&2 || \
      echo "quickstart: could not install ${need_apt[*]}; see BUILD.md" >&2
  else
    echo "quickstart: no apt-get; install ${need_apt[*]} by hand (see BUILD.md)" >&2
  fi
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.lars_jax_installed"
want=$(cat pyproject.toml | sha256sum | cut -d' ' -f1)
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  echo "quickstart: installing lars_jax and its dependencies into $VENV" >&2
  # uv (installed into the venv by its own pip) installs and byte-compiles the ~90 wheels in
  # parallel: ~30 CPU-s where pip takes ~55 (BUILD.md). uv does not read pip's configuration
  # (a mirror set in pip.conf), so pip itself installs whenever uv cannot.
  if ! { "$VENV/bin/python" -m pip install -q --disable-pip-version-check uv >&2 &&
         "$VENV/bin/uv" pip install -q --compile-bytecode --python "$VENV/bin/python" \
           -e ".[train,dev]" >&2; }; then
    echo "quickstart: uv could not install; installing with pip" >&2
    "$VENV/bin/python" -m pip install -q -e ".[train,dev]" >&2
  fi
  echo "$want" > "$stamp"
fi

cmd=${1:-train}
shift || true
case "$cmd" in
  train) exec "$VENV/bin/lars-jax" train "$@" ;;
  test)  exec "$VENV/bin/python" -m pytest -n auto --dist worksteal tests lars_jax lars_jax_launcher experiments/evidence.py experiments/harness.py "$@" ;;
  *) echo "usage: bash quickstart.sh train|test [options]" >&2; exit 2 ;;
esac
