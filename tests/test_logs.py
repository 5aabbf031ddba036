"""Logs a cluster user can read: count-based plain progress off a terminal, -q/-v/--log-file,
and no transformers deprecation warning from iclft's own calls."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import warnings

import pytest
from transformers import TrainerControl, TrainerState

from iclft import logs
from iclft.finetune.callbacks import StepProgress
from iclft.icl.engine import Engine
from iclft.icl.prompts import DemoPool, build_prompt
from iclft.tasks import get_task

COUNT = re.compile(r" (\d+)/(\d+)")


@pytest.fixture
def plain(monkeypatch, caplog):
    """Progress off a terminal, its lines captured: ``plain()`` -> [(description, done)]."""
    monkeypatch.setattr(logs, "interactive", lambda: False)
    caplog.set_level(logging.INFO, logger=logs.LOGGER)

    def lines() -> list[tuple[str, int]]:
        out = []
        for r in caplog.records:
            if r.name == logs.PROGRESS_LOGGER:
                text = r.getMessage()
                m = COUNT.search(text)
                out.append((text[: m.start()], int(m.group(1))))
        return out

    return lines


@pytest.fixture
def configured(monkeypatch):
    """``logs.configure`` for one test, undone after it (transformers' settings restored)."""
    from transformers.utils import logging as hf_logging

    for var in ("TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS", "FORCE_COLOR"):
        monkeypatch.delenv(var, raising=False)
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    yield logs.configure
    logs.reset()
    hf_logging.set_verbosity(verbosity)
    (hf_logging.enable_progress_bar if bars else hf_logging.disable_progress_bar)()


def test_plain_lines_come_at_every_twentieth_of_the_total(plain):
    with logs.progress() as p:
        t = p.task("eval", 100)
        for _ in range(100):
            t.advance()
    assert [n for _, n in plain()] == list(range(0, 101, 5))


def test_a_small_total_gets_a_line_per_item_and_big_steps_one_per_step(plain):
    with logs.progress() as p:
        small = p.task("small", 7)
        for _ in range(7):
            small.advance()
        big = p.task("big", 40)
        for _ in range(4):
            big.advance(10)
        odd = p.task("odd", 45)  # every 3 items; the last line at the total itself
        for _ in range(22):
            odd.advance(2)
        odd.advance(1)
    got = plain()
    assert [n for d, n in got if d == "small"] == list(range(8))
    assert [n for d, n in got if d == "big"] == [0, 10, 20, 30, 40]
    # a line whenever count // 3 grows, and at the total itself
    odd_lines = [0, 4, 6, 10, 12, 16, 18, 22, 24, 28, 30, 34, 36, 40, 42, 45]
    assert [n for d, n in got if d == "odd"] == odd_lines


def test_a_new_description_gets_its_own_line(plain):
    with logs.progress() as p:
        t = p.task("eval boolean", 100)
        t.advance(1)
        t.update(description="eval expression")
        t.advance(1)
    assert plain() == [("eval boolean", 0), ("eval expression", 1)]


def test_disabled_or_quiet_progress_is_silent(plain, caplog):
    with logs.progress(enabled=False) as p:  # another process than rank 0
        p.task("eval", 10).advance(10)
    caplog.set_level(logging.WARNING, logger=logs.LOGGER)  # -q
    with logs.progress() as p:
        assert p.bar is None
        p.task("eval", 10).advance(10)
    assert plain() == []


def test_on_a_terminal_the_bar_shows_and_the_log_file_gets_the_lines(
    configured, monkeypatch, tmp_path, capsys
):
    monkeypatch.setenv("FORCE_COLOR", "1")  # rich treats the captured stderr as a terminal
    configured("info", tmp_path / "run.log")
    assert logs.interactive()
    with logs.progress() as p:
        assert p.bar is not None
        t = p.task("eval boolean", 4)
        t.advance(4)
    logging.getLogger("iclft.test").info("a message")
    screen = capsys.readouterr().err
    assert "a message" in screen and "eval boolean" in screen  # the bar
    assert "iclft.progress" not in screen and "4/4 (100%)" not in screen
    written = (tmp_path / "run.log").read_text()
    assert "INFO iclft.progress: eval boolean 0/4 (0%)" in written
    assert "INFO iclft.progress: eval boolean 4/4 (100%)" in written
    assert "INFO iclft.test: a message" in written


def test_configure_off_a_terminal_writes_plain_lines_and_logs_warnings(
    configured, tmp_path, capsys
):
    configured("quiet", tmp_path / "q.log")
    assert logs.quiet()
    logging.getLogger("iclft.test").info("hidden")
    logging.getLogger("iclft.test").warning("shown")
    warnings.warn("a user warning", UserWarning, stacklevel=1)
    screen = capsys.readouterr().err
    assert "hidden" not in screen
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d WARNING iclft.test: shown$", screen, re.M)
    written = (tmp_path / "q.log").read_text()
    assert "hidden" not in written and "shown" in written and "a user warning" in written
    configured("debug")  # a second call replaces the first: the file is closed, not written
    logging.getLogger("iclft.test").debug("debug line")
    assert "debug line" in capsys.readouterr().err
    assert "debug line" not in (tmp_path / "q.log").read_text()


def test_finetune_lines_show_the_loss_of_the_step_they_count(caplog, monkeypatch):
    monkeypatch.setattr(logs, "interactive", lambda: False)
    caplog.set_level(logging.INFO, logger=logs.LOGGER)
    state, control = TrainerState(max_steps=20), TrainerControl()
    cb = StepProgress()
    cb.on_train_begin(None, state, control)
    for step in range(1, 21):
        state.global_step = step
        control.should_log = step != 8  # a step that does not log is counted at its end
        cb.on_step_end(None, state, control)
        if control.should_log:
            cb.on_log(None, state, control, logs={"loss": step / 100})
    cb.on_train_end(None, state, control)
    lines = [r.getMessage() for r in caplog.records if r.name == logs.PROGRESS_LOGGER]
    assert [int(COUNT.search(x).group(1)) for x in lines] == list(range(21))
    assert lines[0].startswith("finetune 0/20 (0%) loss -")
    assert lines[5].startswith("finetune 5/20 (25%) loss 0.0500")
    assert lines[8].startswith("finetune 8/20 (40%) loss 0.0700")  # step 8 logged no loss
    assert lines[-1].startswith("finetune 20/20 (100%) loss 0.2000")


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3", "gpt2"])
def test_the_engine_emits_no_past_key_values_deprecation(arch, tiny_models, tiny_tokenizer):
    task = get_task("boolean")
    qs = task.generate("clean", 3, 1)
    pool = DemoPool(task, 1, "shared", 2)
    prompts = [build_prompt(task, q, pool.demos(q, i, 2), 2) for i, q in enumerate(qs)]
    engine = Engine(tiny_models[arch], tiny_tokenizer, batch_size=2, max_new_tokens=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine.generate([p.text for p in prompts], [p.prefix for p in prompts])
        engine.loglik([p.text for p in prompts], [list(task.choices)] * len(prompts))
    deprecated = [str(w.message) for w in caught if "past_key_values" in str(w.message)]
    assert deprecated == []
    assert engine.stats.forwards > 0 and engine.stats.cache_misses > 0  # the cache was used


def test_known_warnings_are_silenced_and_others_are_not():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logs.filter_known_warnings()
        for w in logs.KNOWN_WARNINGS:
            warnings.warn(w.message.replace("\\", "") + " and more", w.category, stacklevel=1)
        warnings.warn("`something_else` is deprecated", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["`something_else` is deprecated"]


def test_lora_on_gpt2_conv1d_raises_no_fan_in_fan_out_warning(tiny_tokenizer, tiny_model_factory):
    from iclft.finetune.config import TrainingSettings
    from iclft.finetune.methods import get_method

    model = tiny_model_factory("gpt2", len(tiny_tokenizer), seed=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        wrapped = get_method("lora").select(model, TrainingSettings(lora_rank=4, lora_alpha=8.0))
    assert not [w for w in caught if "fan_in_fan_out" in str(w.message)]
    assert wrapped.peft_config["default"].fan_in_fan_out is True


# ----- the command line --------------------------------------------------------------------


def _iclft(*args: str, cwd) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "160", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "iclft", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_quiet_silences_info_and_log_file_writes(tmp_path):
    gen = ("data", "generate", "--task", "boolean", "-n", "3", "-o")
    normal = _iclft(*gen, "a.jsonl", cwd=tmp_path)
    assert normal.returncode == 0, normal.stderr
    assert re.search(r"INFO iclft\.cli\.data: wrote 3 examples to a\.jsonl$", normal.stderr, re.M)
    quiet = _iclft("-q", "--log-file", "logs/q.log", *gen, "b.jsonl", cwd=tmp_path)
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert (tmp_path / "b.jsonl").read_text() == (tmp_path / "a.jsonl").read_text()
    assert (tmp_path / "logs" / "q.log").read_text() == ""  # -q: nothing at INFO, anywhere
    logged = _iclft("--log-file", "logs/i.log", *gen, "c.jsonl", cwd=tmp_path)
    assert logged.returncode == 0
    assert "wrote 3 examples to c.jsonl" in (tmp_path / "logs" / "i.log").read_text()
    again = _iclft("--log-file", "logs/i.log", *gen, "d.jsonl", cwd=tmp_path)  # appended
    text = (tmp_path / "logs" / "i.log").read_text()
    assert again.returncode == 0 and "c.jsonl" in text and "d.jsonl" in text


def test_a_user_error_is_one_line_on_screen_and_in_the_log_file(tmp_path):
    p = _iclft("--log-file", "e.log", "data", "generate", "--task", "nope", "-o", "x.jsonl",
               cwd=tmp_path)  # fmt: skip
    assert p.returncode == 2
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: unknown task 'nope'")
    assert re.search(
        r"ERROR iclft\.file: error: unknown task 'nope'", (tmp_path / "e.log").read_text()
    )


@pytest.mark.parametrize(
    "args,needle",
    [(["-v", "-q"], "exclude each other"), (["--log-file", "."], "is a directory")],
)
def test_bad_logging_options_are_one_line_and_exit_2(args, needle, tmp_path):
    p = _iclft(*args, "tasks", cwd=tmp_path)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0]


def test_replicas_log_warnings_only_and_write_no_file(configured, monkeypatch, tmp_path):
    monkeypatch.setenv("RANK", "1")
    configured("debug", tmp_path / "r.log")
    assert logs.quiet() and not (tmp_path / "r.log").exists()
