"""``promote`` and ``rollback`` at the command line: what is published (a checkpoint directory only, never a
folder that merely exists, never through a symbolic link) and what is promoted by name, and every refusal as one
line on stderr with exit 1 (an empty argument: a usage error, exit 2)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from typer.testing import CliRunner

from serving.registry import Registry
from streamcore.exceptions import StylestreamError
from tests.support import one_line, publish_tiny
from workers.cli import app


def _run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("STYLESTREAM_")}
    return subprocess.run([sys.executable, "-m", "workers.cli", *args], env={**environ, **env}, cwd=cwd,
                          capture_output=True, text=True, timeout=120, check=False)


def _cli_env() -> dict[str, str]:
    """The project on the path of a CLI run from another working directory."""
    root = str(Path(__file__).resolve().parents[2])
    return {"PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}


def _workdir(tmp_path: Path) -> Path:
    """A working directory that is no checkpoint, with a link out of it that a copy must not follow."""
    work = tmp_path / "work"
    (work / "src").mkdir(parents=True)
    (work / "src" / "main.py").write_text("print('not a model')\n")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "big.bin").write_bytes(b"\0" * 1024)
    (work / ".venv").symlink_to(tmp_path / "outside", target_is_directory=True)
    return work


def _left_in(registry: Path) -> list[str]:
    return sorted(p.name for p in registry.iterdir()) if registry.exists() else []


def test_publish_checks_the_checkpoint_files_before_copying_anything(tmp_path, monkeypatch) -> None:
    import serving.registry

    def copytree(*args, **kwargs):
        raise AssertionError("copied before checking the source")

    registry = Registry(tmp_path / "registry")
    linked = shutil.copytree(publish_tiny(tmp_path / "elsewhere", "v1").path, tmp_path / "linked")
    (linked / "config.json").rename(tmp_path / "config.json")
    (linked / "config.json").symlink_to(tmp_path / "config.json")  # not a regular file of the checkpoint
    monkeypatch.setattr(serving.registry.shutil, "copytree", copytree)  # shutil's own: set up before this
    for source, says in ((_workdir(tmp_path), "model.safetensors and config.json missing"),
                         (linked, "config.json missing or not a regular file"), (tmp_path / "nowhere", "not a directory")):
        with pytest.raises(StylestreamError, match=says):
            registry.publish(source, name="v1")
    assert _left_in(tmp_path / "registry") == []


@pytest.mark.parametrize("link", ["folder", "file"])
def test_publish_refuses_a_symbolic_link_in_the_checkpoint_and_follows_none(tmp_path, link) -> None:
    source = shutil.copytree(publish_tiny(tmp_path / "elsewhere", "v1").path, tmp_path / "ckpt")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("not part of the model")
    if link == "folder":
        (source / "assets").mkdir()
        (source / "assets" / "venv").symlink_to(tmp_path / "outside", target_is_directory=True)
    else:
        (source / "notes.txt").symlink_to(tmp_path / "outside" / "secret.txt")
    with pytest.raises(StylestreamError, match="is a symbolic link"):
        Registry(tmp_path / "registry").publish(source, name="v1")
    assert _left_in(tmp_path / "registry") == []  # no version, no half-copied .publish-* folder


@pytest.mark.parametrize("empty", ["", " "])
def test_promote_refuses_an_empty_argument_as_a_usage_error(tmp_path, monkeypatch, empty) -> None:
    monkeypatch.chdir(_workdir(tmp_path))
    result = CliRunner().invoke(app, ["promote", empty], env={"STYLESTREAM_MODEL_DIR": str(tmp_path / "registry")})
    assert result.exit_code == 2, result.output
    assert "CKPT" in result.output and "Traceback" not in result.output
    assert _left_in(tmp_path / "registry") == []


@pytest.mark.parametrize("args, says", [
    (["."], "'.' is neither a checkpoint directory nor a published version (the folder '.' holds no config.json"),
    (["src"], "'src' is neither a checkpoint directory nor a published version (the folder 'src' holds no"),
    (["v-nope"], "'v-nope' is neither a checkpoint directory nor a published version: no published version 'v-nope'"),
    (["../x"], "'../x' is neither a checkpoint directory nor a published version: version names are"),
    (["unsealed"], "'unsealed' is neither a checkpoint directory nor a published version: its folder in"),
])
def test_promote_refuses_what_is_neither_a_checkpoint_nor_a_version_in_one_line(tmp_path, args, says) -> None:
    registry = tmp_path / "registry"
    publish_tiny(registry, "v1")
    shutil.copytree(registry / "v1", registry / "unsealed")
    (registry / "unsealed" / "SHA256").unlink()  # a version folder never sealed by a publish
    line = one_line(_run(["promote", *args], _workdir(tmp_path), STYLESTREAM_MODEL_DIR=str(registry),
                         STYLESTREAM_REDIS_URL="redis://127.0.0.1:1", **_cli_env()))
    assert line.startswith("stylestream: not promoted: ") and says in line, line
    assert _left_in(registry) == ["unsealed", "v1"]


@pytest.mark.integration
def test_promote_takes_a_published_version_by_name_or_folder_without_publishing_it_again(make_settings, tmp_path,
                                                                                          monkeypatch) -> None:
    settings = make_settings(model_dir=tmp_path / "registry")
    for seed, version in enumerate(("v1", "v2"), 1):
        publish_tiny(tmp_path / "registry", version, seed=seed)
    monkeypatch.chdir(tmp_path / "registry")  # where "v1" is a folder holding a checkpoint as well as a version
    env = {k: v for k, v in settings.child_env().items() if k.startswith("STYLESTREAM_")}
    store = redis.Redis.from_url(settings.redis.url)
    for arg, serving in (("v1", "v1"), (str(tmp_path / "registry" / "v2"), "v2"), ("./v1", "v1")):
        result = CliRunner().invoke(app, ["promote", arg], env=env)
        assert result.exit_code == 0, result.output
        assert store.get(settings.redis.keys.model_current) == serving.encode()
    assert Registry(tmp_path / "registry").versions() == ["v1", "v2"]


@pytest.mark.integration
def test_rollback_to_a_version_removed_from_the_registry_is_one_line(make_settings, tmp_path) -> None:
    from serving.promotion import promote

    settings = make_settings(model_dir=tmp_path / "registry")
    for seed, version in enumerate(("v1", "v2"), 1):
        publish_tiny(tmp_path / "registry", version, seed=seed)
        promote(settings, version)
    shutil.rmtree(tmp_path / "registry" / "v1")
    line = one_line(_run(["rollback"], tmp_path, **{**settings.child_env(), **_cli_env()}))
    assert "not rolled back" in line and "'v1'" in line, line
    store = redis.Redis.from_url(settings.redis.url)
    assert store.get(settings.redis.keys.model_current) == b"v2"


@pytest.mark.integration
def test_after_the_first_promotion_rollback_names_how_to_serve_the_packaged_model_and_that_works(make_settings,
                                                                                                  tmp_path) -> None:
    from serving.promotion import promote
    from serving.registry import default_entry

    settings = make_settings(model_dir=tmp_path / "registry")
    publish_tiny(tmp_path / "registry", "v1", seed=1)
    promote(settings, "v1")
    env = {**settings.child_env(), **_cli_env()}
    line = one_line(_run(["rollback"], tmp_path, **env))
    assert "v1 is the only promotion recorded" in line and "stylestream promote default" in line, line
    store = redis.Redis.from_url(settings.redis.url)
    packaged = default_entry().version
    result = _run(["promote", "default"], tmp_path, **env)  # published under the packaged model's own name
    assert result.returncode == 0, result.stderr
    assert store.get(settings.redis.keys.model_current) == packaged.encode()
    result = _run(["rollback"], tmp_path, **env)  # now there is a promotion before the current one
    assert result.returncode == 0, result.stderr
    assert store.get(settings.redis.keys.model_current) == b"v1"
    result = _run(["promote", "default"], tmp_path, **env)  # by its name again: not published a second time
    assert result.returncode == 0, result.stderr
    assert store.get(settings.redis.keys.model_current) == packaged.encode()
    assert Registry(tmp_path / "registry").versions() == sorted(["v1", packaged])
