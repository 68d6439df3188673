"""Claims on measurements, so two runs on one store never measure the same thing twice: a claim
file per measurement, written whole and hard-linked into place; a claim whose holder is gone is
taken over.

A holder is a process instance, not a PID alone: on its own host a claim is live while the
process with its PID has the start time the claim recorded (``/proc``; a PID reused by another
process after a kill does not hold it). A host cannot see another's processes, so a holder
beats: it touches its claim every ``HEARTBEAT_S``, and a claim from another host is live while
its last beat is under ``STALE_S`` old (clocks of hosts sharing a store agree within that).
"""

import json
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

HEARTBEAT_S = 30.0  # how often a holder touches its claim
STALE_S = 300.0  # a claim from another host not touched for this long is its dead holder's


def process_start(pid: int) -> str | None:
    """Which process instance ``pid`` is: the boot and its start in clock ticks since boot
    (``/proc/PID/stat``, field 22); None where there is no such process, or no ``/proc``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    return f"{boot}:{stat.rsplit(')', 1)[1].split()[19]}"  # after the name, which may hold spaces


def holder(run_id: str) -> dict:
    """This process, as a claim records it."""
    return {"pid": os.getpid(), "started": process_start(os.getpid()), "host": socket.gethostname(),
            "run_id": run_id, "since": time.time()}


def take_claim(path: Path, me: dict) -> str:
    """"" if this process now holds the claim at ``path``; else who does. The claim file is
    written whole and then hard-linked into place, so another process never reads half a
    claim, and the link fails if a claim is there already. Nothing is left behind where the
    write fails (a full disk)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
        try:
            tmp.write_text(json.dumps(me))
            os.link(tmp, path)
            return ""
        except FileExistsError:
            live = _live_holder(path)
            if live:
                return live
            path.unlink(missing_ok=True)  # stale: its holder is gone
        finally:
            tmp.unlink(missing_ok=True)
    return "a claim that kept changing hands"


@contextmanager
def beating(path: Path, every: float = HEARTBEAT_S):
    """Touch the claim at ``path`` every ``every`` seconds while the block runs, so that other
    hosts see its holder is alive."""
    stop = threading.Event()

    def beat():
        while not stop.wait(every):
            try:
                os.utime(path)
            except OSError:  # taken over, or the store went away: nothing to keep alive
                return

    thread = threading.Thread(target=beat, name="claim-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _live_holder(path: Path) -> str:
    """Who holds the claim at ``path``, or "" if nobody does any more (its process is gone from
    this host, its beat stopped on another, or the claim is unreadable)."""
    try:
        info = json.loads(path.read_text())
        pid, host = int(info["pid"]), str(info["host"])
        beat = path.stat().st_mtime
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    alive = _alive_here(pid, info.get("started")) if host == socket.gethostname() else time.time() - beat < STALE_S
    return f"run {info.get('run_id', '?')}, pid {pid} on {host}" if alive else ""


def _alive_here(pid: int, started: str | None) -> bool:
    """Whether the process instance a claim on this host recorded still runs."""
    if started is not None and process_start(os.getpid()) is not None:
        return process_start(pid) == started
    try:  # no /proc, or a claim written without a start time: the PID alone
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    return True
