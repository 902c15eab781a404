"""Drives `kvm-manager console` through a real pseudo-terminal, like `kubectl exec -it`.

    console_attach.py TIMEOUT_S COMMAND... -- STEP...

Steps, in order: `expect:TEXT` (wait until TEXT has appeared in the output since the previous
expect), `send:TEXT` (type TEXT; `\\r` is Enter), `kill:PID` (SIGTERM to a host pid),
`detach` (type Ctrl-], 0x1d). Afterwards waits for the command to exit and prints one JSON
object: {"exit": CODE, "output": "...everything read...", "failed": "step or null"}.
"""

import json
import os
import pty
import select
import signal
import sys
import time

timeout = float(sys.argv[1])
split = sys.argv.index("--")
command, steps = sys.argv[2:split], sys.argv[split + 1 :]

pid, fd = pty.fork()
if pid == 0:
    os.execvp(command[0], command)

output = b""
seen_upto = 0
failed = None


def read_some(deadline):
    global output
    left = deadline - time.monotonic()
    if left <= 0:
        return False
    ready, _, _ = select.select([fd], [], [], min(left, 0.2))
    if ready:
        try:
            data = os.read(fd, 4096)
        except OSError:
            return False
        if not data:
            return False
        output += data
    return True


for step in steps:
    kind, _, arg = step.partition(":")
    if kind == "expect":
        deadline = time.monotonic() + timeout
        needle = arg.encode()
        while needle not in output[seen_upto:]:
            if not read_some(deadline):
                break
        if needle not in output[seen_upto:]:
            failed = step
            break
        seen_upto = output.index(needle, seen_upto) + len(needle)
    elif kind == "send":
        os.write(fd, arg.replace("\\r", "\r").encode())
    elif kind == "kill":
        os.kill(int(arg), signal.SIGTERM)
    elif kind == "detach":
        os.write(fd, b"\x1d")
    else:
        failed = step
        break

if failed:
    os.kill(pid, signal.SIGKILL)
deadline = time.monotonic() + timeout
while read_some(deadline):
    pass
_, status = os.waitpid(pid, 0)
code = os.waitstatus_to_exitcode(status)
print(json.dumps({"exit": code, "output": output.decode(errors="replace"), "failed": failed}))
