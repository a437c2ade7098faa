# Distributed training toolkit: every setup and build step lives here.
#
#   make train RECIPE=image [NP=2] [HOSTFILE=hostfiles/x] [RUN_DIR=runs/...] [ARGS="--key=value"]
#   make test          # the whole test suite (what CI runs)
#   make bench RECIPE=image NP="1 2"   # throughput, scaling, peers: bench/<recipe>/<time>/
#   make tensorboard   # serve the runs folder
#   make config RECIPE=image   # list the recipe's config keys, types and defaults
#   make doctor HOSTFILE=hostfiles/x   # check every host before a multi-host run
#   make slurm RECIPE=bert NODES=4 GPUS_PER_NODE=8     # write jobs/bert.sbatch
#   make mpijob RECIPE=bert NODES=4 IMAGE=repo/img:tag # write a Kubeflow MPIJob
#   make setup         # what train/test do on first use: system packages, .venv, Horovod
#   make setup GPU=1   # the same with Horovod's NCCL GPU operations
#
# Knobs (Make variables, with defaults):
RECIPE ?= image
NP ?=
HOSTFILE ?=
RUN_DIR ?=
ARGS ?=
RUNS_DIR ?= runs
START_TIMEOUT ?= 60
SSH_USER ?=
SSH_PORT ?=
SSH_IDENTITY ?=
NETWORK_INTERFACE ?=
SSH_KNOWN_HOSTS ?=
ELASTIC ?=
MIN_NP ?=
MAX_NP ?=
DISCOVERY_SCRIPT ?=
BLACKLIST_COOLDOWN ?=
TB_HOST ?= 127.0.0.1
TB_PORT ?= 6006
TEST_ARGS ?=
REPEATS ?= 3
STEPS ?= 40
WARMUP ?= 10
TIMELINE ?=
AUTOTUNE ?=
NODES ?= 2
GPUS_PER_NODE ?= 8
IMAGE ?=
PYTHON ?= $(shell command -v python3.11 || command -v python3)

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
.PHONY: help setup system-packages horovod horovod-wheel gpu-build-check train test tensorboard config doctor slurm mpijob bench clean

VENV := .venv
VENV_PYTHON := $(VENV)/bin/python
PIP := $(VENV_PYTHON) -m pip --disable-pip-version-check --no-input
SETUP_STAMP := $(VENV)/.setup-complete-$(HOROVOD_FLAVOUR)
PIP_VERSION := 24.3.1
HOROVOD_VERSION := $(shell sed -n 's/^horovod==//p' requirements.txt)
HOROVOD_CACHE := .cache/horovod
# GPU=1 builds Horovod with NCCL GPU operations, GPU=0 without; by default, when nvcc and an
# installed NCCL (NCCL_HOME or /usr/include/nccl.h) are both found.
GPU ?= auto
CUDA_HOME ?= /usr/local/cuda
NVCC := $(shell command -v nvcc || echo $(CUDA_HOME)/bin/nvcc)
CUDA_ARCHITECTURES ?= 75,80,86,90
ifeq ($(GPU),auto)
GPU_BUILD := $(shell test -x "$(NVCC)" && { test -n "$${NCCL_HOME:-}" || test -e /usr/include/nccl.h; } && echo 1 || echo 0)
else
GPU_BUILD := $(GPU)
endif
HOROVOD_MPI_FLAVOUR := gloo-$(shell command -v mpicxx >/dev/null && echo mpi || echo nompi)
HOROVOD_FLAVOUR := $(HOROVOD_MPI_FLAVOUR)-$(if $(filter 1,$(GPU_BUILD)),nccl,cpu)
# Debian packages: the default data sets (images: Fashion-MNIST; text: WordNet; speech:
# the text-to-speech engines and voices that speak it, and sox), and the compilers
# Horovod's build needs.
SYSTEM_PACKAGES := dataset-fashion-mnist wordnet-base \
  espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts sox \
  openssh-client cmake g++ make
# For the tests only: the multi-host test runs sshd in network namespaces.
TEST_SYSTEM_PACKAGES := openssh-server iproute2 util-linux
ifneq ($(filter /usr/bin/%,$(PYTHON)),)
SYSTEM_PACKAGES += python3-venv python3-dev
endif

help:
	@sed -n '2,13p' Makefile | sed 's/^# \{0,1\}//'

setup: $(SETUP_STAMP)

# Reinstalls when requirements.txt changes; Horovod is rebuilt only when its cached wheel
# (keyed by TensorFlow version and build flavour) is missing.
$(SETUP_STAMP): requirements.txt
	@$(MAKE) --no-print-directory system-packages
	test -x $(VENV_PYTHON) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet pip==$(PIP_VERSION)
	grep -v -e '^horovod==' -e '# no-deps' -e '# gpu-only' requirements.txt \
	  > $(VENV)/requirements-main.txt
	$(PIP) install --quiet -r $(VENV)/requirements-main.txt
	grep -e '# no-deps' requirements.txt | sed 's/#.*//' > $(VENV)/requirements-no-deps.txt
	$(PIP) install --quiet --no-deps -r $(VENV)/requirements-no-deps.txt
	@$(MAKE) --no-print-directory horovod
	$(VENV)/bin/horovodrun --check-build | tee $(VENV)/horovod-check-build.txt
	grep -q '\[X\] TensorFlow' $(VENV)/horovod-check-build.txt
	grep -q '\[X\] Gloo' $(VENV)/horovod-check-build.txt
	$(if $(filter 1,$(GPU_BUILD)),grep -q '\[X\] NCCL' $(VENV)/horovod-check-build.txt)
	rm -f $(VENV)/.setup-complete-*
	touch $@
	@echo "setup complete: $(VENV) (Horovod $(HOROVOD_VERSION), see $(VENV)/horovod-check-build.txt)"

PACKAGES ?= $(SYSTEM_PACKAGES)
system-packages:
	@missing=$$(for package in $(PACKAGES); do \
	    dpkg-query -W -f='$${Status}\n' $$package 2>/dev/null | grep -q 'install ok installed' \
	      || echo $$package; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if ! command -v apt-get >/dev/null; then \
	  echo "Please install the equivalents of these Debian packages: $$missing"; exit 1; fi; \
	if [ "$$(id -u)" = 0 ]; then sudo=; elif command -v sudo >/dev/null; then sudo=sudo; \
	else echo "Missing Debian packages: $$missing. Run as root: apt-get install $$missing"; \
	  exit 1; fi; \
	echo "installing Debian packages: $$missing"; \
	$$sudo apt-get update -qq; \
	DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $$missing

# Horovod 0.28.1 from the PyPI sdist, compiled against the installed TensorFlow with the
# Gloo controller (MPI too when an MPI compiler is installed; NCCL GPU operations with
# GPU=1). No source patch is needed for TF 2.21:
#  - the highwayhash and farmhash headers that horovod/tensorflow/xla_mpi_ops.cc includes
#    ship inside the TF wheel under include/external/, so they go on CPATH;
#  - tensorflow/compiler/xla/client/xla_builder.h moved to xla/hlo/builder/; an include
#    folder on CPATH provides build/xla_builder_compat.h under the old name, only when TF
#    lacks it (it would shadow the real header on older TF). That file also restores
#    xla::StatusOr and, for GPU builds, a function TF stopped exporting (see the file).
# GPU builds take NCCL from PyPI (nvidia-nccl-cu12/13, matching nvcc's CUDA major
# version) unless NCCL_HOME points at an installed NCCL.
HOROVOD_WHEEL_DIR = $(HOROVOD_CACHE)/wheels/tf$$tf_version-$(HOROVOD_FLAVOUR)
horovod-wheel:
	@tf_version=$$($(VENV_PYTHON) -c 'import importlib.metadata as m; print(m.version("tensorflow"))'); \
	wheel_dir=$(HOROVOD_WHEEL_DIR); \
	if ls $$wheel_dir/horovod-$(HOROVOD_VERSION)-*.whl >/dev/null 2>&1; then exit 0; fi; \
	echo "building Horovod $(HOROVOD_VERSION) ($(HOROVOD_FLAVOUR)) against TensorFlow $$tf_version (a few minutes, once)"; \
	$(PIP) download --quiet --no-deps --no-binary :all: horovod==$(HOROVOD_VERSION) \
	  -d $(HOROVOD_CACHE)/src; \
	tf_include=$$(TF_CPP_MIN_LOG_LEVEL=3 $(VENV_PYTHON) -c \
	  'import tensorflow as tf; print(tf.sysconfig.get_include())' 2>/dev/null); \
	shim=$$PWD/$(HOROVOD_CACHE)/include-shim; rm -rf $$shim; mkdir -p $$shim; \
	if [ ! -e $$tf_include/tensorflow/compiler/xla/client/xla_builder.h ]; then \
	  mkdir -p $$shim/tensorflow/compiler/xla/client; \
	  cp build/xla_builder_compat.h $$shim/tensorflow/compiler/xla/client/xla_builder.h; fi; \
	gpu_env=; \
	if [ "$(GPU_BUILD)" = 1 ]; then \
	  nccl_home=$${NCCL_HOME:-}; \
	  if [ -z "$$nccl_home" ]; then \
	    cuda_major=$$($(NVCC) --version | sed -n 's/.*release \([0-9]*\)\..*/\1/p'); \
	    $(PIP) install --quiet $$(grep "^nvidia-nccl-cu$$cuda_major==" requirements.txt | sed 's/#.*//'); \
	    nccl_pkg=$$($(VENV_PYTHON) -c 'import nvidia.nccl, os; print(os.path.dirname(nvidia.nccl.__file__) if nvidia.nccl.__file__ else list(nvidia.nccl.__path__)[0])'); \
	    nccl_home=$$PWD/$(VENV)/nccl; mkdir -p $$nccl_home/lib; \
	    ln -sfn $$nccl_pkg/include $$nccl_home/include; \
	    ln -sfn $$nccl_pkg/lib/libnccl.so.2 $$nccl_home/lib/libnccl.so; \
	    ln -sfn $$nccl_pkg/lib/libnccl.so.2 $$nccl_home/lib/libnccl.so.2; \
	  fi; \
	  gpu_env="HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_NCCL_HOME=$$nccl_home HOROVOD_NCCL_LINK=SHARED \
	    HOROVOD_CUDA_HOME=$(CUDA_HOME) HOROVOD_BUILD_CUDA_CC_LIST=$(CUDA_ARCHITECTURES)"; \
	fi; \
	if command -v mpicxx >/dev/null; then mpi=WITH; else mpi=WITHOUT; fi; \
	env CPATH=$$tf_include/external/highwayhash:$$tf_include/external/farmhash_archive/src:$$shim \
	  HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 "HOROVOD_$${mpi}_MPI=1" \
	  HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 MAKEFLAGS=-j$$(nproc) $$gpu_env \
	  $(PIP) wheel --no-cache-dir --no-build-isolation --no-deps -w $$wheel_dir \
	    $(HOROVOD_CACHE)/src/horovod-$(HOROVOD_VERSION).tar.gz

horovod: horovod-wheel
	@tf_version=$$($(VENV_PYTHON) -c 'import importlib.metadata as m; print(m.version("tensorflow"))'); \
	$(PIP) install --quiet --no-deps --force-reinstall $(HOROVOD_WHEEL_DIR)/horovod-$(HOROVOD_VERSION)-*.whl

# CI: when nvcc is present, prove that the GPU (NCCL) build compiles, links and loads,
# without replacing the CPU build in .venv: the GPU wheel goes to a separate folder that
# is put in front of .venv's packages for the check.
gpu-build-check: setup
	@$(MAKE) --no-print-directory horovod-wheel GPU=1
	@tf_version=$$($(VENV_PYTHON) -c 'import importlib.metadata as m; print(m.version("tensorflow"))'); \
	target=$(HOROVOD_CACHE)/gpu-check; rm -rf $$target; \
	$(PIP) install --quiet --no-deps --target $$target $(HOROVOD_CACHE)/wheels/tf$$tf_version-$(HOROVOD_MPI_FLAVOUR)-nccl/horovod-*.whl; \
	PYTHONPATH=$$target TF_CPP_MIN_LOG_LEVEL=3 $(VENV_PYTHON) -c \
	  'import horovod.tensorflow as hvd; hvd.init(); assert hvd.nccl_built() and hvd.cuda_built(), "no NCCL"; print("GPU build OK: NCCL", hvd.nccl_built(), "CUDA", hvd.cuda_built())'

LAUNCH_OPTIONS = --start_timeout=$(START_TIMEOUT) $(if $(NP),--np=$(NP)) \
  $(if $(HOSTFILE),--hostfile=$(HOSTFILE)) $(if $(SSH_USER),--ssh_user=$(SSH_USER)) \
  $(if $(SSH_PORT),--ssh_port=$(SSH_PORT)) $(if $(SSH_IDENTITY),--ssh_identity=$(SSH_IDENTITY)) \
  $(if $(SSH_KNOWN_HOSTS),--ssh_known_hosts=$(SSH_KNOWN_HOSTS)) \
  $(if $(NETWORK_INTERFACE),--network_interface=$(NETWORK_INTERFACE)) \
  $(if $(filter 1,$(ELASTIC)),--elastic --min_np=$(MIN_NP) --max_np=$(MAX_NP)) \
  $(if $(DISCOVERY_SCRIPT),--discovery_script=$(DISCOVERY_SCRIPT)) \
  $(if $(BLACKLIST_COOLDOWN),--blacklist_cooldown=$(BLACKLIST_COOLDOWN))

train: setup
	$(VENV_PYTHON) -m toolkit.launch --recipe=$(RECIPE) --runs_root=$(RUNS_DIR) \
	  $(LAUNCH_OPTIONS) $(if $(RUN_DIR),--run_dir=$(RUN_DIR)) \
	  $(if $(filter 1,$(TIMELINE)),--timeline=true) $(if $(filter 1,$(AUTOTUNE)),--autotune=true) \
	  $(ARGS)

# NP is a list here: make bench RECIPE=image NP="1 2"
bench: setup
	$(VENV_PYTHON) -m toolkit.bench --recipe=$(RECIPE) --np="$(or $(NP),1 2)" \
	  --repeats=$(REPEATS) --steps=$(STEPS) --warmup=$(WARMUP) \
	  $(if $(HOSTFILE),--hostfile=$(HOSTFILE)) $(ARGS)

test: setup
	@$(MAKE) --no-print-directory system-packages PACKAGES="$(TEST_SYSTEM_PACKAGES)"
	$(VENV_PYTHON) -m pytest tests $(TEST_ARGS)

doctor: setup
	$(VENV_PYTHON) -m toolkit.doctor --runs_root=$(RUNS_DIR) \
	  $(filter --start_timeout=% --hostfile=% --ssh_%,$(LAUNCH_OPTIONS)) \
	  $(if $(NETWORK_INTERFACE),--network_interface=$(NETWORK_INTERFACE))

slurm: setup
	$(VENV_PYTHON) -m toolkit.schedulers slurm --recipe=$(RECIPE) --nodes=$(NODES) \
	  --gpus_per_node=$(GPUS_PER_NODE) --output=jobs/$(RECIPE).sbatch $(ARGS)

mpijob: setup
	$(VENV_PYTHON) -m toolkit.schedulers mpijob --recipe=$(RECIPE) --nodes=$(NODES) \
	  --gpus_per_node=$(GPUS_PER_NODE) --image=$(IMAGE) --output=jobs/$(RECIPE)-mpijob.yaml $(ARGS)

config: setup
	@$(VENV_PYTHON) -m toolkit.train --recipe=$(RECIPE) --help

tensorboard: setup
	$(VENV_PYTHON) -m toolkit.board --runs_dir=$(RUNS_DIR) --host=$(TB_HOST) --port=$(TB_PORT) \
	  $(filter --start_timeout=% --hostfile=% --ssh_%,$(LAUNCH_OPTIONS))

clean:
	rm -rf $(VENV) .pytest_cache
