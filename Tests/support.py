"""Helpers shared by the Python test suites (Tests/S3, Tests/FS, Tests/State)."""
import os
import random
import socket
import time


_given = set()


def free_port():
    """A loopback port free now, for a process the test starts later. Picked at random
    below the kernel's ephemeral range (net.ipv4.ip_local_port_range), as `tessera up`
    picks its own: the kernel never hands those to an outgoing connection or to a bind of
    port 0, so nothing on the machine takes the port before its process binds it. Never the
    same port twice in one run."""
    low = 32768
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    for _ in range(1000):
        port = random.randrange(20000, min(low, 32000))
        if port in _given:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _given.add(port)
        return port
    raise RuntimeError("no free loopback port below the ephemeral range")


def wait_until(condition, what, timeout=10.0):
    """Polls `condition` every 20 ms until it is true; raises AssertionError naming `what`
    after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout} s waiting for {what}")
        time.sleep(0.02)


def read_pid(path):
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def pid_alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def is_mounted(path):
    path = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split(" ")
            if len(fields) > 4 and fields[4].replace("\\040", " ") == path and right.startswith("fuse"):
                return True
    return False


def random_bytes(n, seed):
    return random.Random(seed).randbytes(n)
