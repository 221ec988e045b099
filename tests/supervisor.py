#!/usr/bin/python3
"""A tiny service manager for tests where systemd is not PID 1 (the VM, CI).

It binds the listening sockets once and passes them to the service by
socket activation (sd_listen_fds(3): LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES,
descriptors from 3 on), the way a systemd .socket unit does; it also offers
a NOTIFY_SOCKET and prints what the service reports (READY=1, ...).

    supervisor.py --listen nvme-tcp=127.0.0.1:4420 [--listen iscsi=127.0.0.1:3260] -- CMD ARGS...

SIGHUP restarts the service: SIGTERM to it, wait for it to exit, start CMD
again (re-reading the file, so a binary replaced in between is the new
one). The sockets stay open the whole time, so a host connecting while the
service restarts waits in the kernel's backlog instead of being refused.
SIGTERM / SIGINT stop the service and the supervisor.

Output lines (stdout, flushed): "supervisor: started pid N",
"supervisor: notify READY=1 ...", "supervisor: exited pid N status S".
"""
import argparse
import fcntl
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading


def log(msg):
    print(f"supervisor: {msg}", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", action="append", default=[], help="NAME=ADDR:PORT")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    if not cmd:
        ap.error("no command")

    socks, names = [], []
    for spec in a.listen:
        name, _, addr = spec.partition("=")
        host, _, port = addr.rpartition(":")
        host = host.strip("[]")
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, int(port)))
        s.listen(1024)
        socks.append(s)
        names.append(name)
    log(f"listening on {', '.join(a.listen)}")

    ndir = tempfile.mkdtemp(prefix="supervisor-")
    npath = os.path.join(ndir, "notify")
    nsock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    nsock.bind(npath)

    def notify_reader():
        while True:
            try:
                m = nsock.recv(4096).decode(errors="replace")
            except OSError:
                return
            log("notify " + " ".join(m.split()))

    threading.Thread(target=notify_reader, daemon=True).start()

    def spawn():
        fds = [s.fileno() for s in socks]

        def child_setup():
            # in the child, before exec: the sockets become 3, 4, ... (via
            # copies above any target, so no dup2 overwrites a source), and
            # dup2 leaves the copies open across exec
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100) for fd in fds]
            for i, fd in enumerate(high):
                os.dup2(fd, 3 + i)
            for fd in high:
                os.close(fd)
            # exec uses the C environment, which os.environ writes through
            os.environ["LISTEN_PID"] = str(os.getpid())

        os.environ.update(LISTEN_FDS=str(len(fds)), LISTEN_FDNAMES=":".join(names), NOTIFY_SOCKET=npath)
        # close_fds=False: everything else this process holds is close-on-exec
        p = subprocess.Popen(cmd, preexec_fn=child_setup, close_fds=False)
        log(f"started pid {p.pid}")
        return p

    state = {"child": spawn(), "stop": False, "restart": False}
    cv = threading.Condition()

    def on_signal(sig, _frame):
        with cv:
            if sig == signal.SIGHUP:
                state["restart"] = True
            else:
                state["stop"] = True
            cv.notify()

    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)

    while True:
        with cv:
            cv.wait(timeout=0.2)
            restart, stop = state["restart"], state["stop"]
            state["restart"] = False
        child = state["child"]
        if restart or stop:
            child.send_signal(signal.SIGTERM)
            rc = child.wait()
            log(f"exited pid {child.pid} status {rc}")
            if stop:
                return 0
            state["child"] = spawn()
        elif child.poll() is not None:
            log(f"exited pid {child.pid} status {child.returncode}")
            return child.returncode or 1


if __name__ == "__main__":
    sys.exit(main())
