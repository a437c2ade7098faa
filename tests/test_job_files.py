"""Generated Slurm scripts and Kubeflow MPIJob manifests."""

import os
import subprocess

import pytest
import yaml

from toolkit.launcher import job_files

pytestmark = pytest.mark.fast

FAKE_SCONTROL = """#!/bin/sh
# Stands in for Slurm's scontrol: expands gpu[01-03] style lists as Slurm does.
[ "$1 $2" = "show hostnames" ] || exit 1
python3 - "$3" <<'PY'
import re, sys
for part in re.findall(r'[^,\\[]+(?:\\[[^\\]]*\\])?', sys.argv[1]):
    match = re.fullmatch(r'(.*)\\[(.*)\\]', part)
    if not match:
        print(part); continue
    for item in match.group(2).split(','):
        low, _, high = item.partition('-')
        for number in range(int(low), int(high or low) + 1):
            print(f"{match.group(1)}{number:0{len(low)}d}")
PY
"""
FAKE_MAKE = '#!/bin/sh\nfor argument in "$@"; do echo "ARG $argument"; done\n'



def test_slurm_script_is_valid_bash_and_derives_the_hostfile(tmp_path):
    output = tmp_path / "job.sbatch"
    assert job_files.main(["slurm", "--recipe=bert", "--nodes=3", "--gpus_per_node=4",
                           f"--project_dir={tmp_path}", f"--output={output}",
                           "--epochs=2", "--model=bert-base-uncased"]) == 0
    text = output.read_text()
    assert "#SBATCH --nodes=3" in text and "#SBATCH --gres=gpu:4" in text
    assert subprocess.run(["bash", "-n", str(output)]).returncode == 0

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, content in (("scontrol", FAKE_SCONTROL), ("make", FAKE_MAKE)):
        (bin_dir / name).write_text(content)
        (bin_dir / name).chmod(0o755)
    (tmp_path / "hostfiles").mkdir()
    environment = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}",
                       SLURM_JOB_NODELIST="gpu[07-08],cpu3", SLURM_JOB_ID="4242",
                       SLURM_GPUS_ON_NODE="4")
    result = subprocess.run(["bash", str(output)], env=environment, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    hostfile = (tmp_path / "hostfiles" / "slurm-4242").read_text()
    assert hostfile == "gpu07 slots=4\ngpu08 slots=4\ncpu3 slots=4\n"
    arguments = [line[4:] for line in result.stdout.splitlines() if line.startswith("ARG ")]
    assert arguments == ["train", "RECIPE=bert", "HOSTFILE=hostfiles/slurm-4242", "NP=12",
                         "RUN_DIR=runs/4242", "ARGS=--epochs=2 --model=bert-base-uncased"]
    from toolkit.launcher import hostfile as hostfile_lib

    assert hostfile_lib.total_slots(hostfile_lib.parse_text("h", hostfile)) == 12


def test_mpijob_manifest_has_the_required_fields(tmp_path):
    output = tmp_path / "job.yaml"
    assert job_files.main(["mpijob", "--recipe=image", "--nodes=4", "--gpus_per_node=8",
                           "--image=registry.example/toolkit:1", "--project_dir=/workspace",
                           f"--output={output}", "--epochs=3"]) == 0
    manifest = yaml.safe_load(output.read_text())
    assert manifest["apiVersion"] == "kubeflow.org/v2beta1" and manifest["kind"] == "MPIJob"
    assert manifest["metadata"]["name"] == "toolkit-image"
    spec = manifest["spec"]
    assert spec["slotsPerWorker"] == 8
    replicas = spec["mpiReplicaSpecs"]
    assert replicas["Launcher"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 4
    launcher = replicas["Launcher"]["template"]["spec"]["containers"][0]
    assert launcher["image"] == "registry.example/toolkit:1"
    assert launcher["command"] == ["make", "-C", "/workspace", "train", "RECIPE=image",
                                   "HOSTFILE=/etc/mpi/hostfile", "NP=32", "ARGS=--epochs=3"]
    worker = replicas["Worker"]["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 8


@pytest.mark.parametrize("arguments, message", [
    (["slurm", "--recipe=bert", "--nodes=2", "--epoch=3"], "did you mean 'epochs'"),
    (["mpijob", "--recipe=bert", "--nodes=2"], "needs --image"),
    (["slurm", "--recipe=nope", "--nodes=2"], "unknown recipe 'nope'"),
])
def test_bad_input_is_refused_before_writing(tmp_path, capsys, arguments, message):
    output = tmp_path / "out"
    assert job_files.main(arguments + [f"--output={output}"]) == 2
    assert message in capsys.readouterr().err
    assert not output.exists()
