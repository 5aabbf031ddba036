"""Nothing a user has is overwritten or mixed: each output directory belongs to the command kind
that wrote it (its owner file); another's is refused in one line unless --force, which moves its
contents aside; a command's own directory is resumed or replaced whole; files honour the umask."""

from __future__ import annotations

import json
import os

import pytest

from iclft.errors import UserError
from iclft.store import (
    OWNER_NAME,
    claim_output_dir,
    output_owner,
    read_jsonl,
    write_json_atomic,
    write_text_atomic,
)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, save_tiny):
    return save_tiny(tmp_path_factory.mktemp("tiny-safety"), max_position_embeddings=160)


def _eval(iclft_main, tiny_dir, out, *extra, task="boolean"):
    return iclft_main("eval", "--model", str(tiny_dir), "--task", task, "--shots", "0", "-n", "2",
                      "-o", str(out), *extra)  # fmt: skip


def _one_line(code_err, *needles):
    code, err = code_err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


def _tree(root):
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_a_foreign_directory_is_refused_and_force_moves_it_aside(tiny_dir, tmp_path, iclft_main):
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "notes.txt").write_text("my notes")
    (mine / "sub" / "data.csv").write_text("a,b\n")
    before = _tree(mine)
    _one_line(_eval(iclft_main, tiny_dir, mine), "is not empty", "notes.txt", "--force")
    assert _tree(mine) == before  # nothing written, nothing removed
    assert _eval(iclft_main, tiny_dir, mine, "--force")[0] == 0
    assert _tree(tmp_path / "mine.replaced-1") == before  # moved aside whole, nothing lost
    assert not (mine / "notes.txt").exists() and (mine / "results.jsonl").exists()
    assert output_owner(mine) == "eval"


def test_a_directory_of_another_command_kind_is_refused(tiny_dir, tmp_path, iclft_main):
    """`iclft eval -o RUN_DIR` once wrote over a run's results.jsonl and left predictions that a
    later run mixed with its own; and the other way round."""
    run = tmp_path / "run"
    run.mkdir()
    write_json_atomic(run / "manifest.json", {"command": "run"})
    (run / "results.jsonl").write_text('{"x": 1}\n')
    before = _tree(run)
    _one_line(_eval(iclft_main, tiny_dir, run), "`iclft run`", "not `iclft eval`")
    assert _tree(run) == before
    ev = tmp_path / "ev"
    assert _eval(iclft_main, tiny_dir, ev)[0] == 0
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"models: [{tiny_dir}]\ntasks: [boolean]\nmethods: [baseline]\nshots: [0]\nn: 2\n"
    )
    _one_line(iclft_main("run", str(cfg), "-o", str(ev)), "`iclft eval`", "not `iclft run`")
    _one_line(iclft_main("rescore", str(ev), "-o", str(run)), "`iclft run`")
    _one_line(iclft_main("report", str(tmp_path / "fine")), "does not exist")
    fine = tmp_path / "fine"
    fine.mkdir()
    write_json_atomic(fine / OWNER_NAME, {"command": "finetune"})
    (fine / "results.jsonl").write_text("")
    _one_line(iclft_main("report", str(fine)), "written by `iclft finetune`")


def test_its_own_directory_is_replaced_whole(tiny_dir, tmp_path, iclft_main):
    out = tmp_path / "ev"
    assert _eval(iclft_main, tiny_dir, out, task="boolean,expression")[0] == 0
    assert {r["task"] for r in read_jsonl(out / "results.jsonl")} == {"boolean", "expression"}
    assert _eval(iclft_main, tiny_dir, out, task="parity")[0] == 0
    assert {r["task"] for r in read_jsonl(out / "predictions.jsonl")} == {"parity"}
    assert {r["task"] for r in read_jsonl(out / "results.jsonl")} == {"parity"}
    assert not list(tmp_path.glob("ev.replaced-*"))
    cache = out / "cache" / "responses.sqlite"  # a response cache kept in the directory stays
    assert _eval(iclft_main, tiny_dir, out, "--cache", str(cache))[0] == 0
    assert _eval(iclft_main, tiny_dir, out, "--cache", str(cache))[0] == 0
    assert cache.exists()


def test_claims_own_resume_and_clear(tmp_path):
    d = tmp_path / "d"
    first = claim_output_dir(d, "analyze circuits")
    assert first.state == "new" and json.loads((d / OWNER_NAME).read_text()) == {
        "command": "analyze circuits"
    }
    write_text_atomic(d / "circuits.json", "{}")
    (d / "figs").mkdir()
    (d / "figs" / "a.png").write_bytes(b"x")
    again = claim_output_dir(d, "analyze circuits")
    assert again.state == "own" and (d / "circuits.json").exists()  # the caller decides
    again.clear()
    assert [p.name for p in d.iterdir()] == [OWNER_NAME]
    assert claim_output_dir(d, "eval").state == "new"  # only an owner file: empty, anyone's
    assert output_owner(d) == "eval"
    (d / "results.jsonl").write_text("")
    with pytest.raises(UserError, match="`iclft eval`, not `iclft analyze similarity`"):
        claim_output_dir(d, "analyze similarity")
    moved = claim_output_dir(d, "analyze similarity", force=True)
    assert moved.state == "moved" and moved.moved_to == tmp_path / "d.replaced-1"
    assert sorted(p.name for p in moved.moved_to.iterdir()) == [OWNER_NAME, "results.jsonl"]
    assert output_owner(d) == "analyze similarity"
    (d / "x.json").write_text("{}")
    assert claim_output_dir(d, "rescore", force=True).moved_to == tmp_path / "d.replaced-2"


def test_directories_written_before_owner_files_keep_their_owner(tmp_path):
    old_eval = tmp_path / "e"
    old_eval.mkdir()
    (old_eval / "manifest.json").write_text(json.dumps({"command": "eval"}))
    (old_eval / "results.jsonl").write_text("")
    assert claim_output_dir(old_eval, "eval").state == "own"
    half_run = tmp_path / "r"  # killed before its first manifest
    (half_run / "stages").mkdir(parents=True)
    assert output_owner(half_run) == "run"
    with pytest.raises(UserError, match="`iclft run`"):
        claim_output_dir(half_run, "eval")


@pytest.mark.parametrize("name", ["out.csv", "results.jsonl", "table.TSV"])
def test_a_file_name_is_refused_as_output(name, tiny_dir, tmp_path, iclft_main):
    _one_line(_eval(iclft_main, tiny_dir, tmp_path / name), "looks like a file name")
    assert not (tmp_path / name).exists()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"models: [{tiny_dir}]\ntasks: [boolean]\nmethods: [baseline]\nshots: [0]\n")
    _one_line(iclft_main("run", str(cfg), "-o", str(tmp_path / name)), "looks like a file name")
    assert not (tmp_path / name).exists()


def test_an_existing_file_is_refused_as_output(tiny_dir, tmp_path, iclft_main):
    f = tmp_path / "out"
    f.write_text("keep me")
    _one_line(_eval(iclft_main, tiny_dir, f), "is an existing file")
    _one_line(iclft_main("export", "lm-eval", "--task", "boolean", "-o", str(f)), "existing file")
    assert f.read_text() == "keep me"


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_files_honour_the_umask(umask, tmp_path):
    old = os.umask(umask)
    try:
        write_text_atomic(tmp_path / "a.txt", "x")
        claim_output_dir(tmp_path / "d", "eval")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "d" / OWNER_NAME).stat().st_mode & 0o777 == 0o666 & ~umask


def test_flags_show_no_value_type_in_help(iclft_main, capsys, monkeypatch):
    import sys

    from iclft.cli import main

    for cmd in (["run"], ["finetune"], ["eval"], ["analyze", "similarity"]):
        monkeypatch.setattr(sys, "argv", ["iclft", *cmd, "--help"])
        monkeypatch.setenv("COLUMNS", "200")
        capsys.readouterr()
        with pytest.raises(SystemExit):
            main()
        out = capsys.readouterr().out
        assert "--force" in out and "<bool>" not in out, out
        assert "<path>" in out  # options that take a value still show its type
