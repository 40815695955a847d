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


def test_init_exec_stamp_is_the_kernels_run_init_record() -> None:
    records = [
        b"6,1,15000,-;Linux version 6.12\n",
        b"5,400,2531250,-;Run /init as init process\n with arguments:\n",
    ]
    assert bootclock.init_exec_stamp(records) == 2.53125
    assert bootclock.init_exec_stamp(records[:1]) is None
    assert bootclock.init_exec_stamp([b"5,400,x,-;Run /init as init process\n"]) is None


def test_exec_uptime_without_kmsg_is_none(tmp_path: Path) -> None:
    assert bootclock.exec_uptime(str(tmp_path / "missing")) is None
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert bootclock.exec_uptime(str(empty)) is None
