"""Running ``brats-kd`` in the test process, as a user would meet it: exit status and messages."""

from __future__ import annotations

import threading


def run_cli(argv: list[str], capsys, timeout_s: float = 60.0) -> tuple[int, str, str]:
    """``brats-kd ARGV`` in this process: (exit status, stdout, stderr); fails on a traceback
    (an exception escaping ``main``) or a run longer than ``timeout_s``."""
    from napari_brats_kd.cli import main

    box: dict = {}

    def target() -> None:
        try:
            box["rc"] = main(argv)
        except BaseException as exc:
            box["exc"] = exc

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(timeout_s)
    assert not worker.is_alive(), f"brats-kd {' '.join(argv)} still running after {timeout_s} s"
    if "exc" in box:
        raise AssertionError(f"brats-kd {' '.join(argv)} raised {box['exc']!r}") from box["exc"]
    out, err = capsys.readouterr()
    return box["rc"], out, err


def assert_clean_error(argv: list[str], capsys, *words: str) -> str:
    """The command fails with one readable line naming ``words``; returns the line."""
    rc, _, err = run_cli(argv, capsys)
    lines = [line for line in err.strip().splitlines() if "error:" in line]
    assert rc == 2, f"exit {rc} for {argv}: {err[-500:]}"
    assert len(lines) == 1 and lines[0].startswith(f"brats-kd {argv[0]}: error:"), err[-500:]
    assert "Traceback" not in err and len(lines[0]) <= 2000
    for word in words:
        assert word.lower() in lines[0].lower(), f"{word!r} not in {lines[0]!r}"
    return lines[0]
