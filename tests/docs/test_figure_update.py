"""`make figure` (python -m tests.docs.seed_figure docs/figures) on a clean tree leaves it clean:
a run that draws what the committed figures show, times, ids and the interleaving a run's
timing chooses aside, keeps them byte for byte; a drawing that shows something else is written,
and `--rewrite` writes whatever the run drew."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.docs import seed_figure
from tests.docs.seed_figure import FILES

FIGURES = Path(__file__).resolve().parents[2] / "docs" / "figures"


def committed(tmp_path: Path) -> dict[str, bytes]:
    for name in FILES:
        shutil.copyfile(FIGURES / name, tmp_path / name)
    return {name: (tmp_path / name).read_bytes() for name in FILES}


def test_drawing_again_keeps_the_figures_when_only_timings_changed(tmp_path: Path) -> None:
    before = committed(tmp_path)
    assert seed_figure.main([str(tmp_path)]) == 0
    after = {name: (tmp_path / name).read_bytes() for name in FILES}
    changed = [name for name in FILES if after[name] != before[name]]
    assert not changed, changed


def test_a_figure_that_shows_something_else_is_written_and_rewrite_writes_all(
    tmp_path: Path,
) -> None:
    before = committed(tmp_path)
    # the send figure as a drawing that lost a hop (what a change to the layers would do)
    send = (tmp_path / "send.mmd").read_text().splitlines()
    (tmp_path / "send.mmd").write_text("\n".join(x for x in send if "P2->>P3" not in x) + "\n")
    assert seed_figure.update(tmp_path) == {"send": "written", "conn": "kept"}
    assert seed_figure.same(
        "send", before["send.mmd"].decode(), (tmp_path / "send.mmd").read_text()
    )
    assert (tmp_path / "conn.mmd").read_bytes() == before["conn.mmd"]
    assert (tmp_path / "conn.svg").read_bytes() == before["conn.svg"]
    assert seed_figure.update(tmp_path, rewrite=True) == {"send": "written", "conn": "written"}


def test_what_counts_as_the_same_drawing() -> None:
    send = (FIGURES / "send.mmd").read_text()
    conn = (FIGURES / "conn.mmd").read_text()
    # other times, seq numbers and ids: the same
    retimed = send.replace("+213.2 µs", "+1.204 ms").replace(" 13 Ndis", " 15 Ndis")
    assert retimed != send and seed_figure.same("send", send, retimed)
    # a hop of another layer, or one more hop: not
    assert not seed_figure.same("send", send, send.replace("im0", "im1"))
    lines = conn.splitlines()
    # the echo's indication moved before the send's completion (a run's timing): the same
    hops = [i for i, x in enumerate(lines) if "->>" in x]
    later = hops[8:]
    swapped = list(lines)
    swapped[later[0]], swapped[later[-1]] = lines[later[-1]], lines[later[0]]
    assert swapped != lines and seed_figure.same("conn", conn, "\n".join(swapped))
    # but not within the offload, and not a hop lost
    early = list(lines)
    early[hops[0]], early[hops[1]] = lines[hops[1]], lines[hops[0]]
    assert not seed_figure.same("conn", conn, "\n".join(early))
    assert not seed_figure.same("conn", conn, "\n".join(lines[: later[-1]]))
