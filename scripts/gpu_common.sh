# Shared steps of the GPU scripts (sourced by scripts/gpu_check.sh and scripts/gpu_table.sh; not run
# on its own). The caller defines, before calling these functions:
#   say MESSAGE...   a logger (prints and appends to the caller's log)
#   LOG              the log file, REPO the repository root (the current directory)
# and may set PYTHON, VENV, DATA_ROOT, DATA_TAR, EXTRACT_DIR (see each function).

has_torch() { "$1" -c "import torch" >/dev/null 2>&1; }

# gpu_python: sets PY to a Python with torch that imports this checkout's ltsam, and HAS_CUDA (0/1).
#   PYTHON=...  use this interpreter; otherwise python3 if it has torch (the GPU machines' image),
#   else a venv of our own ($VENV, default /tmp/ltsam-gpu-venv) into which pip installs torch.
# ltsam: used as installed if it comes from this checkout; else this checkout is put first through
# PYTHONPATH=src (another checkout's install is left alone), or installed with
# `pip install -e . --no-deps --no-index --no-build-isolation` (the GPU machine is offline: torch,
# numpy, ... and setuptools are there already), falling back to PYTHONPATH=src if that fails.
gpu_python() {
    if [[ -n "${PYTHON:-}" ]]; then
        PY="$PYTHON"
    elif has_torch python3; then
        PY=$(command -v python3)
    else
        VENV="${VENV:-/tmp/ltsam-gpu-venv}"
        [[ -x "$VENV/bin/python" ]] || python3 -m venv --system-site-packages "$VENV" || { say "cannot create a venv"; return 1; }
        PY="$VENV/bin/python"
        has_torch "$PY" || "$PY" -m pip install -q torch torchvision || { say "no torch available"; return 1; }
    fi
    say "python: $PY"
    local at
    at=$("$PY" -c "import pathlib, ltsam; print(pathlib.Path(ltsam.__file__).resolve().parent)" 2>/dev/null)
    if [[ "$at" == "$REPO/src/ltsam" ]]; then
        say "ltsam already installed from this checkout"
    elif [[ -n "$at" ]]; then
        export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
        say "ltsam installed from $at; using this checkout through PYTHONPATH=src"
    elif "$PY" -m pip install -q --no-index --no-build-isolation --no-deps -e . >>"$LOG" 2>&1; then
        say "installed ltsam (pip install -e .)"
    else
        say "pip install -e . failed (see $LOG); using PYTHONPATH=src instead"
        export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
    fi
    "$PY" - <<'EOF' 2>&1 | tee -a "$LOG"
import platform, torch, ltsam
cuda = torch.cuda.is_available()
print(f"python {platform.python_version()}, torch {torch.__version__}, ltsam from {ltsam.__file__}")
print("device:", torch.cuda.get_device_name(0) if cuda else f"CPU only ({torch.get_num_threads()} threads)")
EOF
    if ! "$PY" -c "import ltsam.cli" >/dev/null 2>&1; then say "ltsam does not import"; return 1; fi
    HAS_CUDA=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$LOG"
    fi
    return 0
}

# gpu_data: sets ROOT to a folder holding train/<class>/* and test/<class>/* (or val/).
#   DATA_ROOT=...  an already extracted folder: used as it is;
#   otherwise DATA_TAR (default gpu_data/cifar10-jpeg.tar.gz) is extracted once into EXTRACT_DIR
#   (default /tmp/ltsam-cifar10-jpeg; a .complete marker skips later extractions). The archive may
#   hold train/ and test/ at its top or inside one folder.
gpu_data() {
    if [[ -n "${DATA_ROOT:-}" ]]; then
        ROOT="$DATA_ROOT"
    else
        local tar_file="${DATA_TAR:-gpu_data/cifar10-jpeg.tar.gz}" dir="${EXTRACT_DIR:-/tmp/ltsam-cifar10-jpeg}"
        if [[ ! -f "$tar_file" ]]; then
            say "no data: $tar_file is missing (copy cifar10-jpeg.tar.gz there, or set DATA_ROOT)"
            return 1
        fi
        if [[ ! -f "$dir/.complete" ]]; then
            say "extracting $tar_file into $dir"
            rm -rf "$dir" && mkdir -p "$dir"
            tar -xzf "$tar_file" -C "$dir" || { say "extraction failed"; return 1; }
            touch "$dir/.complete"
        fi
        local train_dir
        train_dir=$(find "$dir" -maxdepth 2 -type d -name train | head -n 1)
        ROOT=$(dirname "${train_dir:-$dir/train}")
    fi
    if [[ ! -d "$ROOT/train" ]]; then say "no train/ folder under $ROOT"; return 1; fi
    local test_dir="$ROOT/test"
    [[ -d "$test_dir" ]] || test_dir="$ROOT/val"
    say "data: $ROOT ($(find "$ROOT/train" -type f | wc -l) train / $(find "$test_dir" -type f 2>/dev/null | wc -l) test files)"
    return 0
}
