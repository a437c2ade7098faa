# Distributed training toolkit: every setup and build step lives here (`make help`).
# Targets carry a `## description` and knobs a `## meaning`: `make help` prints them.

# Knobs (Make variables, with defaults):
RECIPE ?= image## which recipe: image, bert, speech
NP ?=## number of workers (default: the hostfile's slots, else GPUs, else 2)
HOSTFILE ?=## hosts to run on, `<host> slots=<n>` per line (see hostfiles/)
RUN_DIR ?=## the run folder (default runs/<recipe>/<time>); reuse one to resume
ARGS ?=## config overrides, e.g. ARGS="--epochs=3 --batch_size_per_worker=128"
CONFIG ?=## make train: start from a config file (a run's config.json, or JSON/YAML keys)
RUNS_DIR ?= runs## where run folders go, and what make tensorboard serves
VERBOSE ?=## 1: show everything TensorFlow and Horovod print
START_TIMEOUT ?= 60## seconds to wait for ssh to each host and for workers to start
SSH_USER ?=## ssh user for the hosts (default: ssh's)
SSH_PORT ?=## ssh port for hosts without port= in the hostfile
SSH_IDENTITY ?=## private key file for ssh
SSH_KNOWN_HOSTS ?=## known_hosts file for ssh
NETWORK_INTERFACE ?=## interface(s) for Horovod traffic, e.g. eth0 or ib0,eth0
ELASTIC ?=## 1: elastic run, workers may fail or join (needs MIN_NP, MAX_NP)
MIN_NP ?=## elastic: fewest workers
MAX_NP ?=## elastic: most workers
DISCOVERY_SCRIPT ?=## elastic: script printing host:slots lines (default: the hostfile)
BLACKLIST_COOLDOWN ?=## elastic: MIN,MAX seconds before a failed host is tried again
TIMELINE ?=## 1: write Horovod's timeline to RUN_DIR/timeline.json
AUTOTUNE ?=## 1: let Horovod tune fusion and cycle time (log in RUN_DIR/autotune.csv)
TB_HOST ?= 127.0.0.1## where make tensorboard listens
TB_PORT ?= 6006## the port make tensorboard listens on
PORT ?= 8501## make serve: the port
MODEL_NAME ?=## make serve: the model's name in the URL (one RUN_DIR; default its recipe)
HOST ?=## make serve: the address to listen on, given on the command line (default 127.0.0.1)
TEST_ARGS ?=## extra pytest arguments, e.g. TEST_ARGS="-k resume"
REPEATS ?= 3## make bench: repeats of every configuration
STEPS ?= 40## make bench: timed steps per repeat
WARMUP ?= 10## make bench: untimed steps first
SYNC ?=## make bench: local_sgd also measures local SGD (LOCAL_STEPS, default 16)
LOCAL_STEPS ?=## make bench SYNC=local_sgd: steps between averagings
NODES ?= 2## make slurm / mpijob: nodes
GPUS_PER_NODE ?= 8## make slurm / mpijob: GPUs (workers) per node
IMAGE ?=## make mpijob: the container image
GPU ?= auto## 1: build Horovod with NCCL GPU operations; auto: when nvcc and NCCL exist
PYTHON ?= $(shell command -v python3.11 || command -v python3)

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
.PHONY: help setup system-packages horovod horovod-wheel gpu-build-check train test test-fast \
  tensorboard config doctor slurm mpijob bench bench-data bench-epochs bench-serve prepare-data serve clean

VENV := .venv
VENV_PYTHON := $(VENV)/bin/python
PIP := $(VENV_PYTHON) -m pip --disable-pip-version-check --no-input
PIP_VERSION := 24.3.1
# Both versions are read once, from the pins setup installs.
HOROVOD_VERSION := $(shell sed -n 's/^horovod==\([0-9.]*\).*/\1/p' requirements.txt)
TF_VERSION := $(shell sed -n 's/^tensorflow==\([0-9.]*\).*/\1/p' requirements.txt)
HOROVOD_CACHE := .cache/horovod
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
HOROVOD_WHEEL_DIR := $(HOROVOD_CACHE)/wheels/tf$(TF_VERSION)-$(HOROVOD_FLAVOUR)
SETUP_STAMP := $(VENV)/.setup-complete-$(HOROVOD_FLAVOUR)
# Debian packages: the default data sets (images: Fashion-MNIST; text: WordNet; speech:
# the text-to-speech engines and voices that speak it, and sox), and the compilers
# Horovod's build needs.
SYSTEM_PACKAGES := dataset-fashion-mnist wordnet-base \
  espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts sox \
  festvox-italp16k festvox-itapc16k festvox-suopuhe-lj festvox-suopuhe-mv \
  festvox-czech-dita festvox-czech-machac festvox-czech-krb festvox-czech-ph \
  festvox-ca-ona-hts festvox-ru \
  openssh-client cmake g++ make
# For the tests only: the multi-host test runs sshd in network namespaces; shellcheck
# checks the build scripts.
TEST_SYSTEM_PACKAGES := openssh-server iproute2 util-linux shellcheck
ifneq ($(filter /usr/bin/%,$(PYTHON)),)
SYSTEM_PACKAGES += python3-venv python3-dev
endif

help: ## this list, from the comments on the targets and knobs
	@echo "Usage: make <target> [KNOB=value ...]"; echo; echo "Targets:"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | \
	  awk -F'\t' '{printf "  %-16s %s\n", $$1, $$2}'
	@echo; echo "Knobs:"
	@grep -E '^[A-Z_]+ \?=.*## ' $(MAKEFILE_LIST) | \
	  sed -E 's/^([A-Z_]+) \?= ?([^#]*)## (.*)/\1\t\2\t\3/' | \
	  awk -F'\t' '{printf "  %-20s %s%s\n", $$1, $$3, ($$2 == "" ? "" : " [" $$2 "]")}'

setup: $(SETUP_STAMP) ## what train/test do on first use: system packages, .venv, Horovod

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
system-packages: ## install the missing Debian packages (PACKAGES=...; default: the setup's)
	build/system-packages.sh $(PACKAGES)

horovod-wheel: ## build the Horovod wheel against the pinned TensorFlow (cached)
	VENV_PYTHON=$(VENV_PYTHON) HOROVOD_VERSION=$(HOROVOD_VERSION) TF_VERSION=$(TF_VERSION) \
	  FLAVOUR=$(HOROVOD_FLAVOUR) CACHE_DIR=$(HOROVOD_CACHE) GPU_BUILD=$(GPU_BUILD) \
	  NVCC=$(NVCC) CUDA_HOME=$(CUDA_HOME) CUDA_ARCHITECTURES=$(CUDA_ARCHITECTURES) \
	  build/horovod.sh

horovod: horovod-wheel ## install the built Horovod wheel into .venv
	$(PIP) install --quiet --no-deps --force-reinstall $(HOROVOD_WHEEL_DIR)/horovod-$(HOROVOD_VERSION)-*.whl

# CI: when nvcc is present, prove that the GPU (NCCL) build compiles, links and loads,
# without replacing the CPU build in .venv: the GPU wheel goes to a separate folder that
# is put in front of .venv's packages for the check.
GPU_CHECK_DIR := $(HOROVOD_CACHE)/gpu-check
gpu-build-check: setup ## prove the NCCL GPU build of Horovod compiles, links and loads
	@$(MAKE) --no-print-directory horovod-wheel GPU=1
	rm -rf $(GPU_CHECK_DIR)
	$(PIP) install --quiet --no-deps --target $(GPU_CHECK_DIR) \
	  $(HOROVOD_CACHE)/wheels/tf$(TF_VERSION)-$(HOROVOD_MPI_FLAVOUR)-nccl/horovod-*.whl
	PYTHONPATH=$(GPU_CHECK_DIR) TF_CPP_MIN_LOG_LEVEL=3 $(VENV_PYTHON) -c \
	  'import horovod.tensorflow as hvd; hvd.init(); assert hvd.nccl_built() and hvd.cuda_built(), "no NCCL"; print("GPU build OK: NCCL", hvd.nccl_built(), "CUDA", hvd.cuda_built())'

LAUNCH_OPTIONS = --start_timeout=$(START_TIMEOUT) $(if $(NP),--np=$(NP)) \
  $(if $(HOSTFILE),--hostfile=$(HOSTFILE)) $(if $(SSH_USER),--ssh_user=$(SSH_USER)) \
  $(if $(SSH_PORT),--ssh_port=$(SSH_PORT)) $(if $(SSH_IDENTITY),--ssh_identity=$(SSH_IDENTITY)) \
  $(if $(SSH_KNOWN_HOSTS),--ssh_known_hosts=$(SSH_KNOWN_HOSTS)) \
  $(if $(NETWORK_INTERFACE),--network_interface=$(NETWORK_INTERFACE)) \
  $(if $(filter 1,$(ELASTIC)),--elastic --min_np=$(MIN_NP) --max_np=$(MAX_NP)) \
  $(if $(DISCOVERY_SCRIPT),--discovery_script=$(DISCOVERY_SCRIPT)) \
  $(if $(BLACKLIST_COOLDOWN),--blacklist_cooldown=$(BLACKLIST_COOLDOWN))

# With CONFIG the file names the recipe; RECIPE is passed only when given explicitly.
RECIPE_OPTION = $(if $(CONFIG),--config=$(CONFIG) $(if $(filter command line environment,\
  $(origin RECIPE)),--recipe=$(RECIPE)),--recipe=$(RECIPE))

train: setup ## train RECIPE on NP workers (validated first; rerun with RUN_DIR to resume)
	$(VENV_PYTHON) -m toolkit.launcher.launch --runs_root=$(RUNS_DIR) $(RECIPE_OPTION) \
	  $(LAUNCH_OPTIONS) $(if $(RUN_DIR),--run_dir=$(RUN_DIR)) \
	  $(if $(filter 1,$(VERBOSE)),--verbose) \
	  $(if $(filter 1,$(TIMELINE)),--timeline=true) $(if $(filter 1,$(AUTOTUNE)),--autotune=true) \
	  $(ARGS)

prepare-data: setup ## scan RECIPE's data (ARGS) once into a manifest, before big runs
	$(VENV_PYTHON) -m toolkit.launcher.prepare_data --recipe=$(RECIPE) $(ARGS)

# NP is a list here: make bench RECIPE=image NP="1 2"
bench: setup ## throughput, scaling and peers for NP="1 2 ...": bench/<recipe>/<time>/
	$(VENV_PYTHON) -m toolkit.launcher.bench --recipe=$(RECIPE) --np="$(or $(NP),1 2)" \
	  --repeats=$(REPEATS) --steps=$(STEPS) --warmup=$(WARMUP) \
	  $(if $(filter local_sgd,$(SYNC)),--local_sgd=$(or $(LOCAL_STEPS),16)) \
	  $(if $(HOSTFILE),--hostfile=$(HOSTFILE)) $(ARGS)

# Generates its data sets once in .cache/bench-data (about 1 GB, a few minutes).
bench-data: setup ## data path at real sizes: start-up, resume cost, memory: bench/data/<time>/
	$(VENV_PYTHON) -m toolkit.launcher.bench_data --repeats=$(REPEATS) $(ARGS)

# Installs Debian's fortunes (its text set) and six voices of Asterisk's prompts (its
# speech set, ~120 MB) on first use; the digits come with scikit-learn.
ASTERISK_VOICE_PACKAGES := asterisk-core-sounds-en-wav asterisk-core-sounds-es-wav \
  asterisk-core-sounds-fr-wav asterisk-core-sounds-it-wav asterisk-core-sounds-ru-wav \
  asterisk-prompt-it-menardi-wav
bench-epochs: setup ## the epochs rule on public data sets (digits, fortunes, voices): bench/epochs/<time>/
	@$(MAKE) --no-print-directory system-packages PACKAGES="fortunes $(ASTERISK_VOICE_PACKAGES)"
	$(VENV_PYTHON) -m toolkit.launcher.bench_epochs --np=$(or $(NP),2) $(ARGS)

# Trains a short default run per recipe once (.cache/bench-serve) unless runs/ has one.
bench-serve: setup ## make serve under load, batching on/off, c=1,8,32: bench/serve/<time>/
	$(VENV_PYTHON) -m toolkit.launcher.bench_serve --repeats=$(REPEATS) --runs_dir=$(RUNS_DIR) $(ARGS)

test: setup ## the whole test suite (what CI runs)
	@$(MAKE) --no-print-directory system-packages PACKAGES="$(TEST_SYSTEM_PACKAGES)"
	$(VENV_PYTHON) -m pytest tests $(TEST_ARGS)

test-fast: setup ## the seconds-long unit tests only (under a minute)
	@$(MAKE) --no-print-directory system-packages PACKAGES="$(TEST_SYSTEM_PACKAGES)"
	$(VENV_PYTHON) -m pytest tests -m fast --timeout=60 $(TEST_ARGS)

doctor: setup ## check every host of HOSTFILE before a multi-host run
	$(VENV_PYTHON) -m toolkit.launcher.doctor --runs_root=$(RUNS_DIR) \
	  $(filter --start_timeout=% --hostfile=% --ssh_%,$(LAUNCH_OPTIONS)) \
	  $(if $(NETWORK_INTERFACE),--network_interface=$(NETWORK_INTERFACE))

slurm: setup ## write jobs/<recipe>.sbatch for NODES x GPUS_PER_NODE
	$(VENV_PYTHON) -m toolkit.launcher.job_files slurm --recipe=$(RECIPE) --nodes=$(NODES) \
	  --gpus_per_node=$(GPUS_PER_NODE) --output=jobs/$(RECIPE).sbatch $(ARGS)

mpijob: setup ## write a Kubeflow MPIJob, jobs/<recipe>-mpijob.yaml (needs IMAGE)
	$(VENV_PYTHON) -m toolkit.launcher.job_files mpijob --recipe=$(RECIPE) --nodes=$(NODES) \
	  --gpus_per_node=$(GPUS_PER_NODE) --image=$(IMAGE) --output=jobs/$(RECIPE)-mpijob.yaml $(ARGS)

config: setup ## list RECIPE's config keys, types and defaults
	@$(VENV_PYTHON) -m toolkit.worker.train --recipe=$(RECIPE) --help

# HOST only from make's command line: shells often export HOST as the machine's name.
SERVE_HOST = $(if $(filter command line,$(origin HOST)),$(HOST),127.0.0.1)

serve: setup ## serve RUN_DIR's export (several: RUN_DIR="a b", or a folder of them) over TF Serving's REST API
	$(VENV_PYTHON) -m toolkit.launcher.serve $(foreach dir,$(RUN_DIR),--model=$(dir)) \
	  --host=$(SERVE_HOST) --port=$(PORT) $(if $(MODEL_NAME),--model_name=$(MODEL_NAME)) $(ARGS)

tensorboard: setup ## serve RUNS_DIR (on rank 0's host with HOSTFILE)
	$(VENV_PYTHON) -m toolkit.launcher.tensorboard_server --runs_dir=$(RUNS_DIR) \
	  --host=$(TB_HOST) --port=$(TB_PORT) \
	  $(filter --start_timeout=% --hostfile=% --ssh_%,$(LAUNCH_OPTIONS))

clean: ## remove .venv (the Horovod wheel stays cached in .cache/)
	rm -rf $(VENV) .pytest_cache
