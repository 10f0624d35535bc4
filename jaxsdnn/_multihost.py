"""The CLI's multi-host half: a rendezvous before the distributed runtime, and a supervisor.

Before ``jax.distributed.initialize``, process 0 listens on the coordinator port and every other
process checks in with its id and a summary of its inputs (network fingerprint, value and image
digests, partition, settings); process 0 answers "go" only when all have come within the
timeout and agree, so a missing peer, a taken port or a mismatch ends every process in one line
instead of a hang or a native abort. Multi-host ``infer`` / ``train`` then run in a child process
(:func:`supervise`), so that the runtime's native abort of a process (a peer that died mid-run)
still ends in one line.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time

__all__ = ["UsageError", "host_rendezvous", "peer_rendezvous", "split_address", "supervise", "wants_supervisor"]


class UsageError(ValueError):
    """A problem with the command line itself."""


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--coordinator {address!r}: expected HOST:PORT with a port in [1, 65535]")
    return host.strip("[]"), int(port)


# -- the rendezvous: every process checks in with process 0 before the distributed runtime starts.
# The runtime aborts the process (SIGABRT and a native stack dump, no exception) when a peer never
# registers or the port is taken, and processes that disagree on the network, the images or the
# partition enter mismatched collectives and hang for ever. So process 0 first listens on the
# coordinator port itself, every other process sends it a JSON line with its id and a summary of
# its inputs (``facts``), and process 0 answers everyone "go" only when all have come within
# --init-timeout and agree; otherwise every process ends with one line. Process 0 then closes the
# port and starts the runtime's service on it.
def _send_line(conn, obj) -> None:
    conn.sendall((json.dumps(obj) + "\n").encode())


def _recv_line(conn, deadline: float) -> dict | None:
    """One JSON line from ``conn`` before ``deadline``; None on timeout, EOF or garbage."""
    import socket

    data = b""
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        conn.settimeout(min(left, 1.0))
        try:
            chunk = conn.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            return None
        if not chunk:
            return None
        data += chunk
        if len(data) > 1 << 20:
            return None
    try:
        obj = json.loads(data.split(b"\n", 1)[0])
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def _differences(mine: dict, theirs: dict) -> list[str]:
    keys = sorted(set(mine) | set(theirs))
    return [f"{k} {theirs.get(k)!r} (process 0: {mine.get(k)!r})" for k in keys if mine.get(k) != theirs.get(k)]


def host_rendezvous(address: str, num_processes: int, facts: dict, timeout: float) -> None:
    import socket

    _, port = split_address(address)
    try:
        if socket.has_dualstack_ipv6():
            server = socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True, reuse_port=False)
        else:
            server = socket.create_server(("", port))
    except OSError as e:
        raise UsageError(
            f"--coordinator {address}: cannot listen on port {port} ({e.strerror or e}); is another program "
            "(or another run) using it? Choose a free port"
        ) from None
    deadline = time.monotonic() + timeout
    peers: dict[int, tuple] = {}  # process id -> (connection, facts)
    problems: list[str] = []
    try:
        server.settimeout(0.25)
        while len(peers) < num_processes - 1 and not problems and time.monotonic() < deadline:
            try:
                conn, _ = server.accept()
            except socket.timeout:
                continue
            hello = _recv_line(conn, min(deadline, time.monotonic() + 5.0))
            if hello is None or hello.get("jaxsdnn") != 1:
                conn.close()  # not one of ours (a port scanner, a stale client): keep waiting
                continue
            pid, n = hello.get("process_id"), hello.get("num_processes")
            if n != num_processes:
                problems.append(f"process {pid} was started with --num-processes {n}, process 0 with {num_processes}")
            elif not isinstance(pid, int) or not 0 < pid < num_processes:
                problems.append(f"a process joined with --process-id {pid}, expected 1..{num_processes - 1}")
            elif pid in peers:
                problems.append(f"two processes were started with --process-id {pid}")
            else:
                theirs = hello.get("facts") or {}
                diff = _differences(facts, theirs)
                if diff:
                    hint = ("; make one with `jaxsdnn partition` and give every process --partition FILE"
                            if facts.get("partition") != theirs.get("partition") and len(diff) == 1 else "")
                    problems.append(f"process {pid} has different inputs: {'; '.join(diff)}{hint}")
            peers.setdefault(pid if isinstance(pid, int) else -len(peers) - 1, (conn, hello))
        if not problems and len(peers) < num_processes - 1:
            missing = [str(i) for i in range(1, num_processes) if i not in peers]
            problems.append(
                f"process(es) {', '.join(missing)} of {num_processes} did not join at {address} within "
                f"{timeout:g} s (--init-timeout)"
            )
        answer = {"error": problems[0]} if problems else {"go": True}
        for conn, _ in peers.values():
            try:
                _send_line(conn, answer)
            except OSError:
                pass
        if not problems:  # let the peers close first, so the port is free for the runtime's service
            for conn, _ in peers.values():
                _recv_line(conn, time.monotonic() + 2.0)
    finally:
        for conn, _ in peers.values():
            conn.close()
        server.close()
    if problems:
        raise UsageError(problems[0])


def peer_rendezvous(address: str, process_id: int, num_processes: int, facts: dict, timeout: float) -> None:
    import socket

    host, port = split_address(address)
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            conn = socket.create_connection((host, port), timeout=min(2.0, max(0.1, deadline - time.monotonic())))
            break
        except OSError as e:
            last = e
            if time.monotonic() >= deadline:
                raise UsageError(
                    f"could not reach the coordinator at {address} within {timeout:g} s (--init-timeout; "
                    f"{last.strerror or last}); is process 0 running and the address right?"
                ) from None
            time.sleep(0.25)
    with conn:
        try:
            _send_line(conn, {"jaxsdnn": 1, "process_id": process_id, "num_processes": num_processes, "facts": facts})
        except OSError as e:
            raise UsageError(f"lost the coordinator at {address} ({e.strerror or e})") from None
        answer = _recv_line(conn, deadline + 2.0)
    if answer is None:
        raise UsageError(
            f"no answer from the coordinator at {address} within {timeout:g} s (--init-timeout): process 0 "
            "is not ready, or another program holds the port"
        )
    if "error" in answer:
        raise UsageError(f"the multi-host run was refused: {answer['error']}")


# A native log line of the distributed runtime (absl: "F1202 04:54:35.407157  10070 client.h:80] ..."),
# or the stack dump that follows a fatal one.
_NATIVE_LOG = re.compile(r"^([EFWI]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ \S+:\d+\]|\*\*\* Check failure|\s+@\s+0x)")


def wants_supervisor(argv: list[str] | None) -> bool:
    """Multi-host infer / train runs under a supervisor process, unless they already are."""
    if os.environ.get("JAXSDNN_SUPERVISED") == "1":
        return False
    words = sys.argv[1:] if argv is None else list(argv)
    if not words or words[0] not in ("infer", "train"):
        return False
    return any(w == "--coordinator" or w.startswith("--coordinator=") for w in words) or bool(
        os.environ.get("JAXSDNN_COORDINATOR"))


def supervise(argv: list[str] | None) -> int:
    """Runs this command in a child process and turns its native end into one line.

    The distributed runtime ends a process with a fatal native log line and a stack dump (SIGABRT)
    when a peer dies mid-run (missed heartbeats) or never registers; no Python code runs then.
    The child's stderr passes through until the first native log line; from then on it is held
    back, and if the child dies of a signal or exits with an error, one line says why.
    """
    import subprocess

    words = sys.argv[1:] if argv is None else [str(a) for a in argv]
    command = words[0]
    env = dict(os.environ, JAXSDNN_SUPERVISED="1")
    child = subprocess.Popen([sys.executable, "-m", "jaxsdnn.cli", *words], env=env, stderr=subprocess.PIPE)

    def forward(signum, frame):  # SIGTERM / SIGHUP reach the child; it ends, then so does this process
        if child.poll() is None:
            child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGHUP)}
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.SIG_IGN)  # the child gets Ctrl-C itself
    held: list[str] = []
    try:
        for raw in iter(child.stderr.readline, b""):
            line = raw.decode("utf-8", "replace")
            if held or _NATIVE_LOG.match(line):
                held.append(line.rstrip("\n"))
            else:
                sys.stderr.write(line)
                sys.stderr.flush()
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    ours = [x for x in held if x.startswith(f"jaxsdnn {command}:")]
    if code == 0 or (code > 0 and not held):  # done, or the child's own one-line error went through
        return code
    if ours:  # the child said it in its own line, before or among the runtime's
        print(ours[-1], file=sys.stderr)
        return code if code > 0 else 1
    fatal = next((x for x in held if x.startswith("F")), None) or next((x for x in held if x.startswith("E")), "")
    reason = fatal.split("] ", 1)[1] if "] " in fatal else fatal
    if held and not reason:
        reason = held[0]
    how = f"was killed by signal {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
    if code < 0 and -code in (signal.SIGTERM, signal.SIGHUP, signal.SIGKILL) and not held:
        return 128 - code
    if "another task died" in reason:
        reason = "another process of the multi-host run died or stopped responding"
    print(f"jaxsdnn {command}: error: the distributed runtime ended this process ({how})"
          + (f": {' '.join(reason.split())[:400]}" if reason else ""), file=sys.stderr)
    return 1
