# Distributed training toolkit: every setup and build step lives here.
#
#   make train RECIPE=image [NP=2] [HOSTFILE=hostfiles/x] [RUN_DIR=runs/...] [ARGS="--key=value"]
#   make test          # the whole test suite (what CI runs)
#   make tensorboard   # serve the runs folder
#   make config RECIPE=image   # list the recipe's config keys, types and defaults
#   make doctor HOSTFILE=hostfiles/x   # check every host before a multi-host run
#   make slurm RECIPE=bert NODES=4 GPUS_PER_NODE=8     # write jobs/bert.sbatch
#   make mpijob RECIPE=bert NODES=4 IMAGE=repo/img:tag # write a Kubeflow MPIJob
#   make setup         # what train/test do on first use: system packages, .venv, Horovod
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
TB_HOST ?= 127.0.0.1
TB_PORT ?= 6006
TEST_ARGS ?=
NODES ?= 2
GPUS_PER_NODE ?= 8
IMAGE ?=
PYTHON ?= $(shell command -v python3.11 || command -v python3)

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
.PHONY: help setup system-packages horovod train test tensorboard config doctor slurm mpijob clean

VENV := .venv
VENV_PYTHON := $(VENV)/bin/python
PIP := $(VENV_PYTHON) -m pip --disable-pip-version-check --no-input
SETUP_STAMP := $(VENV)/.setup-complete
PIP_VERSION := 24.3.1
HOROVOD_VERSION := $(shell sed -n 's/^horovod==//p' requirements.txt)
HOROVOD_CACHE := .cache/horovod
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
	@sed -n '2,11p' Makefile | sed 's/^# \{0,1\}//'

setup: $(SETUP_STAMP)

# Reinstalls when requirements.txt changes; Horovod is rebuilt only when its cached wheel
# (keyed by TensorFlow version and build flavour) is missing.
$(SETUP_STAMP): requirements.txt
	@$(MAKE) --no-print-directory system-packages
	test -x $(VENV_PYTHON) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet pip==$(PIP_VERSION)
	grep -v -e '^horovod==' -e '# no-deps' requirements.txt > $(VENV)/requirements-main.txt
	$(PIP) install --quiet -r $(VENV)/requirements-main.txt
	grep -e '# no-deps' requirements.txt | sed 's/#.*//' > $(VENV)/requirements-no-deps.txt
	$(PIP) install --quiet --no-deps -r $(VENV)/requirements-no-deps.txt
	@$(MAKE) --no-print-directory horovod
	$(VENV)/bin/horovodrun --check-build | tee $(VENV)/horovod-check-build.txt
	grep -q '\[X\] TensorFlow' $(VENV)/horovod-check-build.txt
	grep -q '\[X\] Gloo' $(VENV)/horovod-check-build.txt
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
# Gloo controller (and MPI when an MPI compiler is installed). TF 2.21 moved three headers
# that horovod/tensorflow/xla_mpi_ops.cc includes; no source patch is needed:
#  - highwayhash and farmhash headers ship inside the TF wheel under include/external/,
#    so they go on CPATH;
#  - tensorflow/compiler/xla/client/xla_builder.h is now xla/hlo/builder/xla_builder.h, so
#    a one-line forwarding header is generated, only when the old path is missing (on
#    older TF it would shadow the real header).
horovod:
	@tf_version=$$($(VENV_PYTHON) -c 'import importlib.metadata as m; print(m.version("tensorflow"))'); \
	if command -v mpicxx >/dev/null; then mpi=WITH; else mpi=WITHOUT; fi; \
	wheel_dir=$(HOROVOD_CACHE)/wheels/tf$$tf_version-gloo-mpi$${mpi,,}; \
	if ! ls $$wheel_dir/horovod-$(HOROVOD_VERSION)-*.whl >/dev/null 2>&1; then \
	  echo "building Horovod $(HOROVOD_VERSION) against TensorFlow $$tf_version (a few minutes, once)"; \
	  $(PIP) download --quiet --no-deps --no-binary :all: horovod==$(HOROVOD_VERSION) \
	    -d $(HOROVOD_CACHE)/src; \
	  tf_include=$$(TF_CPP_MIN_LOG_LEVEL=3 $(VENV_PYTHON) -c \
	    'import tensorflow as tf; print(tf.sysconfig.get_include())' 2>/dev/null); \
	  shim=$$PWD/$(HOROVOD_CACHE)/include-shim; rm -rf $$shim; mkdir -p $$shim; \
	  if [ ! -e $$tf_include/tensorflow/compiler/xla/client/xla_builder.h ]; then \
	    mkdir -p $$shim/tensorflow/compiler/xla/client; \
	    echo '#include "xla/hlo/builder/xla_builder.h"' \
	      > $$shim/tensorflow/compiler/xla/client/xla_builder.h; fi; \
	  env CPATH=$$tf_include/external/highwayhash:$$tf_include/external/farmhash_archive/src:$$shim \
	  HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 "HOROVOD_$${mpi}_MPI=1" \
	  HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 MAKEFLAGS=-j$$(nproc) \
	    $(PIP) wheel --no-cache-dir --no-build-isolation --no-deps -w $$wheel_dir \
	      $(HOROVOD_CACHE)/src/horovod-$(HOROVOD_VERSION).tar.gz; \
	fi; \
	$(PIP) install --quiet --no-deps $$wheel_dir/horovod-$(HOROVOD_VERSION)-*.whl

LAUNCH_OPTIONS = --start_timeout=$(START_TIMEOUT) $(if $(NP),--np=$(NP)) \
  $(if $(HOSTFILE),--hostfile=$(HOSTFILE)) $(if $(SSH_USER),--ssh_user=$(SSH_USER)) \
  $(if $(SSH_PORT),--ssh_port=$(SSH_PORT)) $(if $(SSH_IDENTITY),--ssh_identity=$(SSH_IDENTITY)) \
  $(if $(SSH_KNOWN_HOSTS),--ssh_known_hosts=$(SSH_KNOWN_HOSTS)) \
  $(if $(NETWORK_INTERFACE),--network_interface=$(NETWORK_INTERFACE))

train: setup
	$(VENV_PYTHON) -m toolkit.launch --recipe=$(RECIPE) --runs_root=$(RUNS_DIR) \
	  $(LAUNCH_OPTIONS) $(if $(RUN_DIR),--run_dir=$(RUN_DIR)) $(ARGS)

test: setup
	@$(MAKE) --no-print-directory system-packages PACKAGES="$(TEST_SYSTEM_PACKAGES)"
	$(VENV_PYTHON) -m pytest tests $(TEST_ARGS)

doctor: setup
	$(VENV_PYTHON) -m toolkit.doctor --runs_root=$(RUNS_DIR) \
	  $(filter-out --np=%,$(LAUNCH_OPTIONS))

slurm: setup
	$(VENV_PYTHON) -m toolkit.schedulers slurm --recipe=$(RECIPE) --nodes=$(NODES) \
	  --gpus_per_node=$(GPUS_PER_NODE) --output=jobs/$(RECIPE).sbatch $(ARGS)

mpijob: setup
	$(VENV_PYTHON) -m toolkit.schedulers mpijob --recipe=$(RECIPE) --nodes=$(NODES) \
	  --gpus_per_node=$(GPUS_PER_NODE) --image=$(IMAGE) --output=jobs/$(RECIPE)-mpijob.yaml $(ARGS)

config: setup
	@$(VENV_PYTHON) -m toolkit.train --recipe=$(RECIPE) --help

tensorboard: setup
	@mkdir -p $(RUNS_DIR)
	@echo "TensorBoard for $(RUNS_DIR): http://$(TB_HOST):$(TB_PORT)/"
	$(VENV)/bin/tensorboard --logdir $(RUNS_DIR) --host $(TB_HOST) --port $(TB_PORT)

clean:
	rm -rf $(VENV) .pytest_cache
