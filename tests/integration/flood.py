"""Clients for tests/integration/flood.rs: what another pod in the cluster can do to HTTP_PORT.

  flood HOST PORT IDLE SLOW SECONDS   IDLE connections that send nothing (half of them after one
                                      keep-alive request) and SLOW slowloris ones, reopened
                                      when the server closes them (at most 4x as many opens in
                                      all), for SECONDS; meanwhile GET /healthz every second on
                                      a new connection. Prints JSON.
  linger HOST PORT                    one connection of each kind (quiet, kept, slow) and how
                                      long the server keeps each. Prints JSON.
  viewer PORT SECONDS                 a web-console viewer on 127.0.0.1: WebSocket, RFB
                                      handshake (security None), SECONDS with nothing sent, then
                                      a framebuffer update request; prints JSON.

Bounded in count and time; only the address it is given.
"""

import base64
import errno
import json
import os
import resource
import selectors
import socket
import struct
import sys
import threading
import time

HEAD = b"GET /healthz HTTP/1.1\r\nHost: flood\r\n"
KEPT_REQUEST = b"GET /readyz HTTP/1.1\r\nHost: flood\r\n\r\n"


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def probe(host, port, path, timeout):
    """One GET on a new connection, as the kubelet does: (status, seconds) or (error, seconds)."""
    start = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(max(0.01, timeout - (time.monotonic() - start)))
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        status = int(data.split(b" ", 2)[1])
        return {"status": status, "seconds": time.monotonic() - start}
    except Exception as e:  # noqa: BLE001 - every failure is a data point
        return {"error": repr(e), "seconds": time.monotonic() - start}


class Flood:
    def __init__(self, host, port, idle, slow):
        self.addr = (host, port)
        self.want = {"quiet": idle // 2, "kept": idle - idle // 2, "slow": slow}
        self.budget = 4 * (idle + slow)
        self.sel = selectors.DefaultSelector()
        self.socks = {}  # socket -> [kind, state]
        self.count = {k: 0 for k in self.want}
        self.opened = 0
        self.closed_by_server = {k: 0 for k in self.want}
        self.connect_failures = 0
        self.max_open = 0

    def top_up(self, limit):
        for kind, want in self.want.items():
            while self.count[kind] < want and self.opened < self.budget and limit > 0:
                limit -= 1
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setblocking(False)
                err = s.connect_ex(self.addr)
                if err not in (0, errno.EINPROGRESS):
                    s.close()
                    self.connect_failures += 1
                    continue
                self.opened += 1
                self.count[kind] += 1
                self.socks[s] = [kind, "connecting"]
                self.sel.register(s, selectors.EVENT_WRITE)
        self.max_open = max(self.max_open, len(self.socks))

    def drop(self, s, by_server):
        kind, _ = self.socks.pop(s)
        self.count[kind] -= 1
        if by_server:
            self.closed_by_server[kind] += 1
        self.sel.unregister(s)
        s.close()

    def on_event(self, s, mask):
        kind, state = self.socks[s]
        if state == "connecting":
            if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
                self.connect_failures += 1
                self.drop(s, False)
                return
            try:
                if kind == "kept":
                    s.send(KEPT_REQUEST)
                elif kind == "slow":
                    s.send(HEAD)
            except OSError:
                self.drop(s, True)
                return
            self.socks[s][1] = "open"
            self.sel.modify(s, selectors.EVENT_READ)
            return
        try:
            data = s.recv(65536)
        except OSError:
            data = b""
        if not data:
            self.drop(s, True)

    def trickle(self):
        for s, (kind, state) in list(self.socks.items()):
            if kind == "slow" and state == "open":
                try:
                    s.send(b"X")
                except OSError:
                    self.drop(s, True)

    def run(self, seconds):
        deadline = time.monotonic() + seconds
        next_trickle = time.monotonic() + 2
        while time.monotonic() < deadline:
            self.top_up(200)
            for key, mask in self.sel.select(timeout=0.05):
                if key.fileobj in self.socks:
                    self.on_event(key.fileobj, mask)
            if time.monotonic() >= next_trickle:
                self.trickle()
                next_trickle += 2
        for s in list(self.socks):
            self.drop(s, False)


def flood(host, port, idle, slow, seconds):
    raise_nofile()
    probes = []
    stop = threading.Event()
    start = time.monotonic()

    def prober():
        tick = start
        while not stop.is_set():
            result = probe(host, port, "/healthz", 5.0)
            result["at"] = round(time.monotonic() - start, 2)
            probes.append(result)
            tick += 1.0
            stop.wait(max(0.0, tick - time.monotonic()))

    thread = threading.Thread(target=prober)
    thread.start()
    f = Flood(host, port, idle, slow)
    f.run(seconds)
    stop.set()
    thread.join()
    json.dump(
        {
            "probes": probes,
            "opened": f.opened,
            "max_open": f.max_open,
            "closed_by_server": f.closed_by_server,
            "connect_failures": f.connect_failures,
        },
        sys.stdout,
    )


def linger(host, port):
    start = time.monotonic()
    quiet = socket.create_connection((host, port), timeout=5)
    kept = socket.create_connection((host, port), timeout=5)
    kept.sendall(KEPT_REQUEST)
    response = kept.recv(65536)
    assert response.startswith(b"HTTP/1.1 "), response
    kept_idle_from = time.monotonic()
    slow = socket.create_connection((host, port), timeout=5)
    slow.sendall(HEAD)
    slow_from = time.monotonic()
    socks = {"quiet": (quiet, start), "kept": (kept, kept_idle_from), "slow": (slow, slow_from)}
    lifetimes = {}
    sel = selectors.DefaultSelector()
    for name, (s, _) in socks.items():
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, name)
    deadline = start + 60
    next_trickle = time.monotonic() + 1
    while len(lifetimes) < len(socks) and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.1):
            name = key.data
            try:
                data = key.fileobj.recv(65536)
            except OSError:
                data = b""
            if not data:
                lifetimes[name] = round(time.monotonic() - socks[name][1], 2)
                sel.unregister(key.fileobj)
                key.fileobj.close()
        if time.monotonic() >= next_trickle and "slow" not in lifetimes:
            try:
                slow.send(b"X")
            except OSError:
                pass
            next_trickle += 1
    json.dump(lifetimes, sys.stdout)


class WebSocket:
    """Just enough of RFC 6455 for a client: binary frames out (masked), frames in."""

    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        origin = f"http://127.0.0.1:{port}"
        self.s.sendall(
            (
                "GET /websockify HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{port}\r\nOrigin: {origin}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                "Sec-WebSocket-Protocol: binary\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.s.recv(1)
            if not chunk:
                raise RuntimeError(f"closed during the upgrade: {head!r}")
            head += chunk
        self.status = int(head.split(b" ", 2)[1])
        self.buffer = b""

    def send(self, payload):
        mask = os.urandom(4)
        header = bytes([0x82])
        n = len(payload)
        if n < 126:
            header += bytes([0x80 | n])
        else:
            header += bytes([0x80 | 126]) + struct.pack(">H", n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.s.sendall(header + mask + masked)

    def _exact(self, n):
        data = b""
        while len(data) < n:
            chunk = self.s.recv(n - len(data))
            if not chunk:
                raise RuntimeError("the server closed the WebSocket")
            data += chunk
        return data

    def read(self, n):
        """n bytes of the binary stream carried by the frames."""
        while len(self.buffer) < n:
            b0, b1 = self._exact(2)
            length = b1 & 0x7F
            if length == 126:
                length = struct.unpack(">H", self._exact(2))[0]
            elif length == 127:
                length = struct.unpack(">Q", self._exact(8))[0]
            payload = self._exact(length)
            opcode = b0 & 0x0F
            if opcode == 8:
                raise RuntimeError("the server closed the WebSocket")
            if opcode in (1, 2, 0):
                self.buffer += payload
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data


def viewer(port, seconds):
    ws = WebSocket(port)
    report = {"status": ws.status}
    if ws.status != 101:
        json.dump(report, sys.stdout)
        return
    version = ws.read(12)
    report["rfb"] = version.decode().strip()
    ws.send(b"RFB 003.008\n")
    count = ws.read(1)[0]
    report["security"] = list(ws.read(count))
    ws.send(bytes([1]))
    report["security_result"] = struct.unpack(">I", ws.read(4))[0]
    ws.send(bytes([1]))  # ClientInit, shared
    width, height = struct.unpack(">HH", ws.read(4))
    ws.read(16)
    name_length = struct.unpack(">I", ws.read(4))[0]
    ws.read(name_length)
    report["screen"] = [width, height]
    start = time.monotonic()
    time.sleep(seconds)
    # A non-incremental FramebufferUpdateRequest of the whole screen: qemu must answer.
    ws.send(struct.pack(">BBHHHH", 3, 0, 0, 0, width, height))
    report["update_type"] = ws.read(1)[0]
    report["held"] = round(time.monotonic() - start, 2)
    json.dump(report, sys.stdout)


def main():
    mode = sys.argv[1]
    if mode == "flood":
        host, port, idle, slow, seconds = sys.argv[2:7]
        flood(host, int(port), int(idle), int(slow), float(seconds))
    elif mode == "linger":
        linger(sys.argv[2], int(sys.argv[3]))
    elif mode == "viewer":
        viewer(int(sys.argv[2]), float(sys.argv[3]))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
