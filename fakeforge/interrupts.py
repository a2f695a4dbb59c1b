"""Ctrl-C and SIGTERM at any moment of a command: one line, exit 130 / 143, nothing half-done kept.

`guarded(prog, fn)` runs a command's body with both signals turned into exceptions (`KeyboardInterrupt`,
`Terminated`) from its first line, so config resolution, model loading and the work itself are cut the
same way: the code that owns an unfinished file drops it while the exception passes up, and the top
prints one line. The first signal wins; later ones are ignored so that clean-up is not cut short. After
the body returns (the command's work is over), a signal ends the process at once with the same code.
"""
from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable

__all__ = ["EXIT_CODES", "Terminated", "guarded", "install_handlers"]

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
WHAT = {signal.SIGINT: "interrupted (Ctrl-C)", signal.SIGTERM: "terminated (SIGTERM)"}
_depth = 0


class Terminated(BaseException):
    """SIGTERM (a scheduler's preemption): handled like Ctrl-C, unfinished work dropped."""


def _ignore_both() -> None:
    for sig in EXIT_CODES:
        signal.signal(sig, signal.SIG_IGN)


def _raise(signum, frame):
    _ignore_both()
    if signum == signal.SIGINT:
        raise KeyboardInterrupt()
    raise Terminated()


def _exit_now(signum, frame):
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(EXIT_CODES.get(signum, 128 + signum))


def install_handlers() -> None:
    """Turn the first SIGINT into KeyboardInterrupt and the first SIGTERM into `Terminated` in the
    main thread; any later one is ignored. A no-op outside the main thread."""
    try:
        for sig in EXIT_CODES:
            signal.signal(sig, _raise)
    except ValueError:  # not the main thread: signals are the main thread's business
        pass


def mark_reported(exc: BaseException) -> BaseException:
    """Note on `exc` that its one line was already logged (by the code that dropped the unfinished
    work), so `guarded` does not print a second one; returns `exc` for `raise mark_reported(exc)`."""
    exc.fakeforge_reported = True
    return exc


def guarded(prog: str, fn: Callable[[], int], exiting: bool = False) -> int:
    """Run `fn` with the handlers installed; a signal anywhere in it returns 130 / 143 after one line
    on stderr (`PROG: interrupted (Ctrl-C); ...`). Other exceptions pass through unchanged.

    `exiting`: the process ends when this returns (a console script), so a signal after `fn` exits at
    once with its code; otherwise the previous handlers are restored."""
    global _depth
    if _depth:  # nested (a pipeline running a command in-process): the outermost one answers
        return fn()
    try:
        previous = {s: signal.getsignal(s) for s in EXIT_CODES}
    except ValueError:
        previous = {}
    install_handlers()
    _depth += 1
    try:
        return fn()
    except KeyboardInterrupt as exc:
        sig, err = signal.SIGINT, exc
    except Terminated as exc:
        sig, err = signal.SIGTERM, exc
    finally:
        _depth -= 1
        try:
            for s, old in previous.items():
                signal.signal(s, _exit_now if exiting else old)
        except ValueError:
            pass
    if not getattr(err, "fakeforge_reported", False):
        print(f"{prog}: {WHAT[sig]}; anything unfinished was dropped, finished work is kept: rerun the same "
              "command to resume", file=sys.stderr, flush=True)
    return EXIT_CODES[sig]


def run_child(cmd: list[str], grace: float = 60.0) -> int:
    """`subprocess.run(cmd).returncode`, but a Ctrl-C or SIGTERM of this process is passed on to the child
    (which drops its unfinished work) and waited for up to `grace` seconds before it is killed; the
    exception is then raised again here."""
    import subprocess

    child = subprocess.Popen(cmd)
    try:
        return child.wait()
    except (KeyboardInterrupt, Terminated) as exc:
        if child.poll() is None:
            child.send_signal(signal.SIGINT if isinstance(exc, KeyboardInterrupt) else signal.SIGTERM)
            try:
                child.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        raise
