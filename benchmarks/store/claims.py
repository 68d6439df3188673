"""Claims on measurements, so two runs on one store never measure the same thing twice: a claim
file per measurement, written whole and hard-linked into place; a claim whose process is gone
is taken over."""

import json
import os
import socket
import time
import uuid
from pathlib import Path

CLAIM_EXPIRES_S = 12 * 3600  # no single measurement runs this long: a claim older is stale


def take_claim(path: Path, me: dict) -> str:
    """"" if this process now holds the claim at ``path``; else who does. The claim file is
    written whole and then hard-linked into place, so another process never reads half a
    claim, and the link fails if a claim is there already."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
        tmp.write_text(json.dumps(me))
        try:
            os.link(tmp, path)
            return ""
        except FileExistsError:
            holder = _live_holder(path)
            if holder:
                return holder
            path.unlink(missing_ok=True)  # stale: its process is gone
        finally:
            tmp.unlink(missing_ok=True)
    return "a claim that kept changing hands"


def _live_holder(path: Path) -> str:
    """Who holds the claim at ``path``, or "" if nobody does any more (its process died on this
    host, it expired, or it is unreadable)."""
    try:
        info = json.loads(path.read_text())
        pid, host, since = int(info["pid"]), str(info["host"]), float(info["since"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    if time.time() - since > CLAIM_EXPIRES_S:
        return ""
    if host == socket.gethostname():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return ""
        except PermissionError:
            pass  # alive, another user's
    return f"run {info.get('run_id', '?')}, pid {pid} on {host}"


