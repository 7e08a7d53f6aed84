"""``ws.core.log``: the progress lines of long stages (headless runs see them in the terminal)."""

from __future__ import annotations

from ws.core.log import Bar, logger, progress


def _lines(fn) -> list[str]:
    got: list[str] = []
    sink = logger.add(lambda m: got.append(m.record["message"]), level="INFO")
    try:
        fn()
    finally:
        logger.remove(sink)
    return got


def test_progress_yields_every_item_and_says_how_far_and_how_long_is_left():
    seen: list[int] = []
    lines = _lines(lambda: seen.extend(progress(range(5), "completions", every_s=0.0)))
    assert seen == [0, 1, 2, 3, 4]
    assert [ln.split(" (")[0] for ln in lines[:-1]] == [f"completions: {i}/5" for i in range(1, 5)]
    assert all("about" in ln and "s left" in ln for ln in lines[:-1])
    assert lines[-1].startswith("completions: 5/5 done in ")


def test_progress_lines_are_spaced_in_time():
    lines = _lines(lambda: list(progress(iter(range(100)), "null draws", total=100)))
    assert lines == [lines[-1]] and lines[-1].startswith("null draws: 100/100 done")  # fast: only the closing line


def test_a_bar_advanced_by_hand_says_how_far_it_is_and_when_it_is_done():
    def run():
        with Bar(6, "capture batches", every_s=0.0) as bar:
            for _ in range(3):
                bar.update(2)

    lines = _lines(run)
    assert [ln.split(" (")[0] for ln in lines[:-1]] == ["capture batches: 2/6", "capture batches: 4/6"]
    assert lines[-1].startswith("capture batches: 6/6 done in ")
    assert _lines(lambda: Bar(3, "quiet", every_s=0.0, disable=True).update(3)) == []


def test_a_bar_left_by_an_error_does_not_say_done():
    def run():
        with Bar(4, "capture batches", every_s=60.0) as bar:
            bar.update(1)
            raise RuntimeError("stop")

    got: list[str] = []

    def catch():
        try:
            run()
        except RuntimeError:
            got.append("raised")

    assert _lines(catch) == [] and got == ["raised"]
