"""The launcher refuses bad input before anything starts."""

import os

from conftest import launch
from recipes import image


def test_dry_run_builds_the_horovodrun_command(tmp_path):
    result = launch(["--recipe=image", "--np=2", f"--run_dir={tmp_path}/r", "--dry_run",
                     "--epochs=1"], timeout=120)
    line = next(line for line in result.stdout.splitlines() if line.startswith("[launch]"))
    assert "horovodrun -np 2 --gloo" in line and " -H localhost:2 " in line
    assert f"-m toolkit.train recipe=image run_dir={tmp_path}/r epochs=1" in line


def expect_refusal(arguments, *fragments):
    result = launch(arguments, timeout=120, check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Nothing was launched." in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr
    assert "horovodrun" not in result.stdout


def test_unknown_recipe_lists_the_known_ones(tmp_path):
    expect_refusal(["--recipe=imag", f"--run_dir={tmp_path}/r"],
                   "unknown recipe 'imag'", "known recipes: bert, image",
                   "did you mean 'image'")


def test_unknown_config_key(tmp_path):
    expect_refusal(["--recipe=image", f"--run_dir={tmp_path}/r", "--epoch=3"],
                   "did you mean 'epochs'")


def test_bad_np_and_hostfile(tmp_path):
    expect_refusal(["--recipe=image", "--np=zero"], "NP must be a whole number")
    hosts = tmp_path / "hosts"
    hosts.write_text("localhost slots=2\nlocalhost slots=1\n")
    expect_refusal(["--recipe=image", f"--hostfile={hosts}"], f"{hosts}:2:", "already listed")
    hosts.write_text("localhost slots=2\n")
    expect_refusal(["--recipe=image", f"--hostfile={hosts}", "--np=3"],
                   "NP=3 is more than the 2 slots")


def test_run_dir_of_another_recipe_or_config_is_not_touched(tmp_path):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "config.json").write_text('{"recipe": "speech", "config": {}}')
    expect_refusal(["--recipe=image", f"--run_dir={run_dir}"], "holds a run of recipe 'speech'")
    (run_dir / "config.json").write_text('{"recipe": "image", "config": {"width": 64}}')
    expect_refusal(["--recipe=image", f"--run_dir={run_dir}"],
                   f"width: 64 -> {image.ImageConfig().width}")
    assert os.listdir(run_dir) == ["config.json"]


def test_read_only_run_dir(tmp_path):
    parent = tmp_path / "readonly"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        if os.access(parent, os.W_OK):  # root ignores permissions; use a read-only mount
            target = "/proc/toolkit-run"
        else:
            target = str(parent / "r")
        expect_refusal(["--recipe=image", f"--run_dir={target}"], "is not writable")
    finally:
        parent.chmod(0o700)


def test_resuming_with_other_classes_is_refused(tmp_path):
    from toolkit import run_folder

    (tmp_path / "config.json").write_text('{"recipe": "bert", "class_names": ["a", "b"]}')
    run_folder.check_same_classes(str(tmp_path), ["a", "b"])
    import pytest

    with pytest.raises(run_folder.RunFolderError, match=r"trained on classes \['a', 'b'\]"):
        run_folder.check_same_classes(str(tmp_path), ["a", "c"])


def test_bad_data_is_refused_before_launch(tmp_path):
    expect_refusal(["--recipe=image", f"--data_dir={tmp_path}/missing"],
                   f"image folder {tmp_path}/missing does not exist")
    (tmp_path / "images" / "cat").mkdir(parents=True)
    (tmp_path / "images" / "dog").mkdir(parents=True)
    from PIL import Image

    Image.new("L", (8, 8)).save(tmp_path / "images" / "cat" / "a.png")
    expect_refusal(["--recipe=image", f"--data_dir={tmp_path}/images"],
                   f"class folder {tmp_path}/images/dog has no images")
    Image.new("L", (8, 8)).save(tmp_path / "images" / "dog" / "b.png")
    (tmp_path / "images" / "dog" / "broken.png").write_bytes(b"not a png at all")
    expect_refusal(["--recipe=image", f"--data_dir={tmp_path}/images"],
                   "1 unreadable image files", "broken.png cannot be read as an image",
                   "--bad_images=skip")
    expect_refusal(["--recipe=bert", f"--train_file={tmp_path}/none.csv",
                    f"--validation_file={tmp_path}/none.csv"],
                   f"cannot read text data file {tmp_path}/none.csv")
    expect_refusal(["--recipe=speech", f"--data_dir={tmp_path}/no-audio"],
                   f"speech data folder {tmp_path}/no-audio does not exist")
