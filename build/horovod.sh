#!/usr/bin/env bash
# Build the Horovod wheel from its PyPI source against the installed TensorFlow, once per
# (TensorFlow version, build flavour); `make horovod-wheel` calls this. Horovod 0.28.1 is
# compiled with the Gloo controller (MPI too when an MPI compiler is installed; NCCL GPU
# operations when GPU_BUILD=1). No source patch is needed for TensorFlow 2.21:
#  - the highwayhash and farmhash headers that horovod/tensorflow/xla_mpi_ops.cc includes
#    ship inside the TensorFlow wheel under include/external/, so they go on CPATH;
#  - tensorflow/compiler/xla/client/xla_builder.h moved to xla/hlo/builder/; an include
#    folder on CPATH provides build/xla_builder_compat.h under the old name, only when
#    TensorFlow lacks it (it would shadow the real header on older TensorFlow). That file
#    also restores xla::StatusOr and, for GPU builds, a function TensorFlow stopped
#    exporting (see the file).
# GPU builds take NCCL from PyPI (nvidia-nccl-cu12/13, matching nvcc's CUDA major version,
# pinned in requirements.txt) unless NCCL_HOME points at an installed NCCL.
#
# Settings, all from the Makefile's variables (environment):
#   VENV_PYTHON       the virtualenv's python, with TensorFlow installed
#   HOROVOD_VERSION   the version pinned in requirements.txt
#   TF_VERSION        the TensorFlow version pinned in requirements.txt
#   FLAVOUR           e.g. gloo-nompi-cpu: part of the cache key
#   CACHE_DIR         where the source, the include shim and the wheels go
#   GPU_BUILD         1: NCCL GPU operations; 0: CPU only
#   NVCC, CUDA_HOME, CUDA_ARCHITECTURES, NCCL_HOME (optional): GPU builds only
set -euo pipefail

: "${VENV_PYTHON:?}" "${HOROVOD_VERSION:?}" "${TF_VERSION:?}" "${FLAVOUR:?}" "${CACHE_DIR:?}"
: "${GPU_BUILD:=0}"
project_root=$(cd "$(dirname "$0")/.." && pwd)
pip=("$VENV_PYTHON" -m pip --disable-pip-version-check --no-input)
wheel_dir="$CACHE_DIR/wheels/tf$TF_VERSION-$FLAVOUR"

if compgen -G "$wheel_dir/horovod-$HOROVOD_VERSION-*.whl" >/dev/null; then
  exit 0
fi
echo "building Horovod $HOROVOD_VERSION ($FLAVOUR) against TensorFlow $TF_VERSION" \
  "(a few minutes, once)"
"${pip[@]}" download --quiet --no-deps --no-binary :all: "horovod==$HOROVOD_VERSION" \
  -d "$CACHE_DIR/src"

tf_include=$(TF_CPP_MIN_LOG_LEVEL=3 "$VENV_PYTHON" -c \
  'import tensorflow as tf; print(tf.sysconfig.get_include())' 2>/dev/null)
shim="$PWD/$CACHE_DIR/include-shim"
rm -rf "$shim"
mkdir -p "$shim"
if [ ! -e "$tf_include/tensorflow/compiler/xla/client/xla_builder.h" ]; then
  mkdir -p "$shim/tensorflow/compiler/xla/client"
  cp "$project_root/build/xla_builder_compat.h" \
    "$shim/tensorflow/compiler/xla/client/xla_builder.h"
fi

build_environment=(
  "CPATH=$tf_include/external/highwayhash:$tf_include/external/farmhash_archive/src:$shim"
  HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1
  HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1
  "MAKEFLAGS=-j$(nproc)"
)
if command -v mpicxx >/dev/null; then
  build_environment+=(HOROVOD_WITH_MPI=1)
else
  build_environment+=(HOROVOD_WITHOUT_MPI=1)
fi

if [ "$GPU_BUILD" = 1 ]; then
  : "${NVCC:?}" "${CUDA_HOME:?}" "${CUDA_ARCHITECTURES:?}"
  nccl_home=${NCCL_HOME:-}
  if [ -z "$nccl_home" ]; then
    cuda_major=$("$NVCC" --version | sed -n 's/.*release \([0-9]*\)\..*/\1/p')
    nccl_requirement=$(grep "^nvidia-nccl-cu$cuda_major==" "$project_root/requirements.txt" \
      | sed 's/ *#.*//')
    if [ -z "$nccl_requirement" ]; then
      echo "no nvidia-nccl-cu$cuda_major pin in requirements.txt for nvcc's CUDA" \
        "$cuda_major; set NCCL_HOME to an installed NCCL" >&2
      exit 1
    fi
    "${pip[@]}" install --quiet "$nccl_requirement"
    nccl_package=$("$VENV_PYTHON" -c 'import nvidia.nccl, os
print(os.path.dirname(nvidia.nccl.__file__) if nvidia.nccl.__file__
      else list(nvidia.nccl.__path__)[0])')
    # The library's run path points here: keep the venv's nccl/ folder.
    nccl_home="$(dirname "$VENV_PYTHON")/../nccl"
    mkdir -p "$nccl_home/lib"
    ln -sfn "$nccl_package/include" "$nccl_home/include"
    ln -sfn "$nccl_package/lib/libnccl.so.2" "$nccl_home/lib/libnccl.so"
    ln -sfn "$nccl_package/lib/libnccl.so.2" "$nccl_home/lib/libnccl.so.2"
    nccl_home=$(cd "$nccl_home" && pwd)
  fi
  build_environment+=(
    HOROVOD_GPU_OPERATIONS=NCCL "HOROVOD_NCCL_HOME=$nccl_home" HOROVOD_NCCL_LINK=SHARED
    "HOROVOD_CUDA_HOME=$CUDA_HOME" "HOROVOD_BUILD_CUDA_CC_LIST=$CUDA_ARCHITECTURES"
  )
fi

env "${build_environment[@]}" "${pip[@]}" wheel --no-cache-dir --no-build-isolation \
  --no-deps -w "$wheel_dir" "$CACHE_DIR/src/horovod-$HOROVOD_VERSION.tar.gz"
