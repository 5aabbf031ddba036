"""The robustness figure's shortcut-only reference: where it comes from and what is drawn."""

from __future__ import annotations

from dataclasses import replace

import pytest

from iclft.report.data import load_run
from iclft.report.figures import draw_shortcut_reference, plot_robustness, robustness_panels
from iclft.tasks import get_task


def _axes():
    from matplotlib.figure import Figure

    return Figure().subplots()


def _reference_lines(ax):
    return [ln for ln in ax.get_lines() if ln.get_label() == "shortcut-only model"]


def test_panels_carry_each_tasks_shortcut_only_accuracy(tmp_path, make_run):
    run = make_run(tmp_path / "run", tasks=("expression", "boolean", "relation"), analysis=False)
    panels = {p.task: p for p in robustness_panels(load_run(run), "smollm2-135m")}
    assert set(panels) == {"expression", "boolean", "relation"}
    for task, p in panels.items():
        assert p.shortcut_clean == 1.0
        assert p.shortcut_misleading == get_task(task).shortcut_accuracy_misleading
    assert panels["expression"].shortcut_misleading == 0.0
    assert panels["boolean"].shortcut_misleading == 0.5


@pytest.mark.parametrize("y", [0.0, 0.5])
def test_the_reference_is_a_dashed_line_and_a_star_at_the_shortcut_point(tmp_path, make_run, y):
    run = make_run(tmp_path / "run", tasks=("boolean",), analysis=False)
    (panel,) = robustness_panels(load_run(run), "smollm2-135m")
    panel = replace(panel, shortcut_clean=1.0, shortcut_misleading=y)
    ax = _axes()
    assert draw_shortcut_reference(ax, panel)
    (line,) = _reference_lines(ax)
    assert line.get_linestyle() == "--" and list(line.get_ydata()) == [y, y]
    stars = [ln for ln in ax.get_lines() if ln.get_marker() == "*"]
    assert len(stars) == 1 and (stars[0].get_xdata()[0], stars[0].get_ydata()[0]) == (1.0, y)


def test_old_runs_without_the_field_draw_no_reference(tmp_path, make_run):
    run = make_run(tmp_path / "run", tasks=("boolean",), analysis=False, shortcut_only=False)
    data = load_run(run)
    (panel,) = robustness_panels(data, "smollm2-135m")
    assert panel.shortcut_clean is None and panel.shortcut_misleading is None
    ax = _axes()
    assert not draw_shortcut_reference(ax, panel)
    assert not _reference_lines(ax)
    fig = plot_robustness(data, "smollm2-135m", tmp_path / "r.png")
    assert fig is not None and fig.path.is_file()
    assert "shortcut" not in fig.caption


def test_the_caption_explains_the_reference_when_it_is_drawn(tmp_path, make_run):
    data = load_run(make_run(tmp_path / "run", tasks=("parity",), analysis=False))
    fig = plot_robustness(data, "smollm2-135m", tmp_path / "r.png")
    assert fig is not None and fig.path.is_file()
    assert "answers only by the shortcut" in fig.caption
