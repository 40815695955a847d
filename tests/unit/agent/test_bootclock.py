import os
from pathlib import Path

from pykata.agent import bootclock


def test_uptime_reads_the_first_field(tmp_path: Path) -> None:
    f = tmp_path / "uptime"
    f.write_text("12.34 40.00\n")
    assert bootclock.uptime(str(f)) == 12.34


def test_uptime_is_none_when_unreadable(tmp_path: Path) -> None:
    assert bootclock.uptime(str(tmp_path / "missing")) is None
    (tmp_path / "bad").write_text("x\n")
    assert bootclock.uptime(str(tmp_path / "bad")) is None


def test_exec_uptime_survives_a_command_name_with_spaces_and_parens(tmp_path: Path) -> None:
    ticks = os.sysconf("SC_CLK_TCK") * 3
    fields = ["S", *(["0"] * 18), str(ticks), "0"]
    f = tmp_path / "stat"
    f.write_text(f"1 (a (b) c) {' '.join(fields)}\n")
    assert bootclock.exec_uptime(str(f)) == 3.0


def test_exec_uptime_of_this_process_is_before_now() -> None:
    started, now = bootclock.exec_uptime(), bootclock.uptime()
    assert started is not None and now is not None
    assert 0 < started <= now
