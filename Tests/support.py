"""Helpers shared by the Python test suites (Tests/S3, Tests/FS, Tests/State)."""
import os
import random
import socket


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
