"""The errors a newcomer meets first: each stops the real entry point in seconds, before Ray starts,
with one line on stderr naming the thing (the key, the path) and the fix, and no traceback unless
``--debug`` (or ``CODIEMB_DEBUG=1``) asks for it.

No port case: a job binds no fixed port (``ray.init()`` moves its dashboard to the next free port
when 8265 is taken; the MLflow store is SQLite in the run dir), see ``pipeline/cli.py``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import UserFacingError, run_main
from pipeline.config import ConfigError, check_data_root, check_run_root, key_origin, load_config
from pipeline.model.loading import ModelNotFound, check_model_source

REPO = Path(__file__).resolve().parent.parent


def run_job(*args: str, module: str = "jobs.pipeline", **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "CODIEMB_DEBUG"}
    environ.update(HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0", **env)
    return subprocess.run(
        [sys.executable, "-m", module, "--config", "configs/smoke.yaml", *args],
        cwd=REPO,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )


def stop_line(result: subprocess.CompletedProcess, job: str = "pipeline") -> str:
    """The one line the job stopped with, after checking it stopped the way a newcomer should see."""
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert "Started a local Ray instance" not in output  # failed at start-up, before Ray
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith(f"{job} stopped: "), result.stderr[-3000:]
    assert sum("stopped: " in line for line in lines) == 1
    return lines[-1]


def test_missing_data_root_is_one_line_naming_the_key_and_the_fix(tmp_path):
    missing = tmp_path / "nonexistent"
    result = run_job(f"data.root={missing}", f"run.root={tmp_path / 'runs'}")
    line = stop_line(result)
    assert "Traceback" not in result.stderr
    assert f"data.root {missing} (set on the command line) does not exist" in line
    assert "point data.root at your copy of the public datasets" in line
    assert not (tmp_path / "runs").exists()  # stopped before anything was written


def test_debug_shows_the_traceback_above_the_same_line(tmp_path):
    missing = tmp_path / "nonexistent"
    result = run_job(f"data.root={missing}", f"run.root={tmp_path / 'runs'}", "--debug")
    line = stop_line(result)
    assert "Traceback (most recent call last)" in result.stderr
    assert "check_data_root" in result.stderr
    assert f"data.root {missing}" in line


@pytest.mark.parametrize("override", ["model=/no/such/model", "model.name_or_path=./no/such/model"])
def test_missing_model_folder_is_one_line_naming_the_path_and_the_fix(tmp_path, override):
    path = override.partition("=")[2]
    result = run_job(override, f"run.root={tmp_path / 'runs'}")
    line = stop_line(result)
    assert "Traceback" not in result.stderr
    assert "Repo id must be" not in result.stderr
    assert f"model.name_or_path {path} (set on the command line) does not exist" in line
    assert "neither a model folder nor a known model name ('packaged'" in line
    assert "model=packaged" in line  # the fix


def test_model_error_traceback_with_the_debug_variable(tmp_path):
    result = run_job("model=/no/such/model", f"run.root={tmp_path / 'runs'}", CODIEMB_DEBUG="1")
    line = stop_line(result)
    assert "Traceback (most recent call last)" in result.stderr
    assert "ModelNotFound" in result.stderr
    assert "/no/such/model" in line


def test_run_root_that_is_a_file_is_one_line_naming_it_and_the_fix(tmp_path):
    blocker = tmp_path / "runs-file"
    blocker.write_text("not a folder\n")
    result = run_job(f"run.root={blocker}")
    line = stop_line(result)
    assert "Traceback" not in result.stderr
    assert f"run.root {blocker} (set on the command line) cannot be written" in line
    assert f"{blocker} is a file, not a folder" in line
    assert "point run.root at a folder you can write" in line


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_run_root_under_a_read_only_folder_is_one_line(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        result = run_job(f"run.root={locked / 'runs'}")
    finally:
        locked.chmod(0o700)
    line = stop_line(result)
    assert "Traceback" not in result.stderr
    assert f"run.root {locked / 'runs'}" in line and "Permission denied" in line


@pytest.mark.parametrize(
    "module, job",
    [
        ("jobs.prepare", "prepare"),
        ("jobs.mine", "mine"),
        ("jobs.train", "train"),
        ("jobs.fuse", "fuse"),
        ("jobs.evaluate", "evaluate"),
        ("tune.sweep", "sweep"),
    ],
)
def test_every_entry_point_checks_at_start_up(tmp_path, module, job):
    blocker = tmp_path / "runs-file"
    blocker.write_text("")
    result = run_job(f"run.root={blocker}", module=module)
    assert "Traceback" not in result.stderr
    assert f"run.root {blocker}" in stop_line(result, job)


# --- the pieces, in process -------------------------------------------------------------------


def test_hub_ids_are_checked_against_the_cache_only_when_offline(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    check_model_source("BAAI/bge-base-en-v1.5")  # online: a plausible id is the Hub's to judge
    check_model_source("bert-base-uncased")
    with pytest.raises(ModelNotFound, match="neither a model folder"):
        check_model_source("runs/demo/final")  # path-shaped: never a Hub id
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFound, match="not in the local Hugging Face cache"):
        check_model_source("BAAI/bge-base-en-v1.5")
    snapshot = tmp_path / "models--BAAI--bge-base-en-v1.5" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("abc123")
    check_model_source("BAAI/bge-base-en-v1.5")  # offline and cached: fine


def test_model_folders_and_built_in_names(tmp_path):
    for name in ("packaged", "tiny-random", "tiny-random-decoder"):
        check_model_source(name)
    (tmp_path / "config.json").write_text("{}")
    check_model_source(str(tmp_path))
    with pytest.raises(ModelNotFound, match="no config.json"):
        check_model_source(str(tmp_path.parent))
    with pytest.raises(ModelNotFound, match="is a file"):
        check_model_source(str(tmp_path / "config.json"))


def test_data_root_named_in_the_preset_names_the_preset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the preset's relative data.root is not found from here
    cfg = load_config(REPO / "configs" / "smoke.yaml")
    assert key_origin(cfg, "data.root") == str(REPO / "configs" / "smoke.yaml")
    with pytest.raises(ConfigError) as err:
        check_data_root(cfg)
    assert str(err.value).startswith(
        f"data.root ../shared/data (= {tmp_path.parent / 'shared' / 'data'}) "
        f"({REPO / 'configs' / 'smoke.yaml'}) does not exist: point data.root at"
    )


def test_data_root_uri_is_looked_up_through_storage(tmp_path):
    cfg = load_config("smoke", [f"data.root=file://{tmp_path}/nowhere"])
    with pytest.raises(ConfigError, match="does not exist"):
        check_data_root(cfg)
    check_data_root(load_config("smoke", [f"data.root=file://{tmp_path}"]))


def test_run_root_check_creates_the_run_dir(tmp_path):
    cfg = load_config("smoke", [f"run.root={tmp_path / 'runs'}", "run.name=r"])
    check_run_root(cfg)
    assert (tmp_path / "runs" / "r").is_dir() and not any((tmp_path / "runs" / "r").iterdir())


def test_run_main_prints_known_errors_as_one_line_and_keeps_other_tracebacks(capsys, monkeypatch):
    monkeypatch.delenv("CODIEMB_DEBUG", raising=False)
    argv = ["--config", "smoke"]

    def fails(exc):
        def main(cfg):
            raise exc

        return main

    with pytest.raises(SystemExit) as exit_info:
        run_main(fails(UserFacingError("thing X is wrong: do Y")), argv, checks=(), name="job")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "job stopped: thing X is wrong: do Y\n"

    class Expected(RuntimeError):
        pass

    with pytest.raises(SystemExit) as exit_info:
        run_main(fails(Expected("known")), argv, checks=(), known=(Expected,), name="job")
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == "job stopped: known\n"

    with pytest.raises(KeyError):  # a bug is not the user's to fix: its traceback stays
        run_main(fails(KeyError("bug")), argv, checks=(), name="job")

    with pytest.raises(SystemExit):
        run_main(fails(UserFacingError("again")), [*argv, "--debug"], checks=(), name="job")
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.endswith("job stopped: again\n")
    assert run_main(lambda cfg: cfg.preset, argv, checks=(), name="job") == "smoke"
