"""``ws.core.notebooks``: a headless run writes its executed copy whatever happens, and a run
that stops ends with the suite's one-paragraph message (the make targets' smoke runs in
tests/test_make_targets.py run it through ``make``)."""

from __future__ import annotations

from ws.core import notebooks


def _script(tmp_path, body: str):
    path = tmp_path / "nb.py"
    path.write_text(f"# %%\nx = 1\n\n# %%\n{body}\n")
    return path


def test_a_failing_cell_prints_its_error_and_keeps_the_executed_copy(tmp_path, capsys):
    out = tmp_path / "logs" / "nb.executed.ipynb"
    assert notebooks.run(_script(tmp_path, "raise ValueError('boom: give a better value')"), out) == 1
    err = capsys.readouterr().err
    assert "nb.py stopped in code cell 2:" in err and "ValueError: boom: give a better value" in err
    assert "Traceback" not in err and "boom" in out.read_text()


def test_a_dead_kernel_still_leaves_the_executed_copy_and_a_message(tmp_path, capsys):
    out = tmp_path / "nb.executed.ipynb"
    assert notebooks.run(_script(tmp_path, "import os\nos._exit(3)"), out) == 1
    assert "nb.py stopped" in capsys.readouterr().err
    assert out.is_file() and '"x = 1"' in out.read_text()


def test_a_run_that_finishes_returns_0(tmp_path):
    out = tmp_path / "nb.executed.ipynb"
    assert notebooks.run(_script(tmp_path, "print(x + 1)"), out) == 0 and '"2\\n"' in out.read_text()
