# WebSocket viewers of kvm-manager's web console, speaking RFB over /websockify the way noVNC
# does, from whatever network namespace this runs in. Prints one JSON object.
#
#   console_viewers.py probe HOST PORT ORIGIN|-
#     one viewer: the HTTP status of the upgrade and, when upgraded, the RFB banner and the
#     security types qemu offers.
#   console_viewers.py slots HOST PORT IDLE_SECONDS
#     8 viewers that finish the handshake (security None) and then send nothing; a 9th that
#     keeps moving the mouse; once the idle ones are closed and another IDLE_SECONDS passed, a
#     10th. Reports how and when each
#     viewer was closed (WebSocket close code) and whether the late ones were served.
import base64
import json
import os
import socket
import struct
import sys
import threading
import time

TIMEOUT = 30


def upgrade(host, port, origin):
    """Opens /websockify; returns (status, socket or None)."""
    sock = socket.create_connection((host, port), TIMEOUT)
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        'GET /websockify HTTP/1.1',
        f'Host: {host}:{port}',
        'Upgrade: websocket',
        'Connection: Upgrade',
        f'Sec-WebSocket-Key: {key}',
        'Sec-WebSocket-Version: 13',
        'Sec-WebSocket-Protocol: binary',
    ]
    if origin != '-':
        lines.append(f'Origin: {origin}')
    sock.sendall(('\r\n'.join(lines) + '\r\n\r\n').encode())
    head = b''
    while b'\r\n\r\n' not in head:
        more = sock.recv(1)
        if not more:
            break
        head += more
    try:
        status = int(head.split(b' ', 2)[1])
    except (IndexError, ValueError):
        status = 0
    if status != 101:
        sock.close()
        return status, None
    return status, sock


def recv_exact(sock, n):
    data = b''
    while len(data) < n:
        more = sock.recv(n - len(data))
        if not more:
            raise EOFError('closed')
        data += more
    return data


def send_frame(sock, payload, opcode=2):
    mask = os.urandom(4)
    header = bytes([0x80 | opcode])
    n = len(payload)
    if n < 126:
        header += bytes([0x80 | n])
    elif n < 65536:
        header += bytes([0x80 | 126]) + struct.pack('!H', n)
    else:
        header += bytes([0x80 | 127]) + struct.pack('!Q', n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    sock.sendall(header + mask + masked)


def recv_frame(sock):
    """(opcode, payload)."""
    b0, b1 = recv_exact(sock, 2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack('!H', recv_exact(sock, 2))[0]
    elif n == 127:
        n = struct.unpack('!Q', recv_exact(sock, 8))[0]
    return b0 & 0x0F, recv_exact(sock, n)


class Viewer:
    """The RFB stream inside the WebSocket, with a reader that records the close."""

    def __init__(self, sock):
        self.sock = sock
        self.buffer = b''
        self.close_code = None
        self.closed_at = None
        self.lock = threading.Condition()

    def read_rfb(self, n):
        deadline = time.monotonic() + TIMEOUT
        while len(self.buffer) < n:
            opcode, payload = recv_frame(self.sock)
            if opcode == 8:
                raise EOFError('closed during the handshake')
            if opcode in (1, 2):
                self.buffer += payload
            if time.monotonic() > deadline:
                raise TimeoutError('no RFB data')
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def handshake(self, finish):
        """Banner and security types; with `finish`, security None and ClientInit too."""
        banner = self.read_rfb(12).decode(errors='replace').strip()
        send_frame(self.sock, b'RFB 003.008\n')
        count = self.read_rfb(1)[0]
        types = list(self.read_rfb(count))
        if finish:
            send_frame(self.sock, b'\x01')
            result = struct.unpack('!I', self.read_rfb(4))[0]
            send_frame(self.sock, b'\x01')
            width, height = struct.unpack('!HH', self.read_rfb(4))
            self.read_rfb(16)
            name_len = struct.unpack('!I', self.read_rfb(4))[0]
            self.read_rfb(name_len)
            return banner, types, result, (width, height)
        return banner, types, None, None

    def watch(self, started):
        """Reads until the server closes; records the close code and when."""
        def run():
            code = None
            try:
                while True:
                    opcode, payload = recv_frame(self.sock)
                    if opcode == 8:
                        code = struct.unpack('!H', payload[:2])[0] if len(payload) >= 2 else 1005
                        break
            except (EOFError, OSError):
                pass
            with self.lock:
                self.close_code = code if code is not None else 'eof'
                self.closed_at = round(time.monotonic() - started, 2)
                self.lock.notify_all()
        threading.Thread(target=run, daemon=True).start()


def probe(host, port, origin):
    status, sock = upgrade(host, port, origin)
    report = {'status': status}
    if sock:
        viewer = Viewer(sock)
        try:
            banner, types, _, _ = viewer.handshake(False)
            report.update(banner=banner, security=types)
        except EOFError as e:
            # Upgraded, but the bridge found no VNC server (qemu still starting).
            report['error'] = str(e)
        sock.close()
    return report


def slots(host, port, idle):
    started = time.monotonic()
    origin = f'http://{host}:{port}'
    idle_ones = []
    for _ in range(8):
        status, sock = upgrade(host, port, origin)
        assert status == 101, f'viewer {len(idle_ones)} got {status}'
        viewer = Viewer(sock)
        viewer.handshake(True)
        viewer.watch(started)
        idle_ones.append(viewer)
    # The 9th gets in at once although every slot is taken, and keeps typing.
    status9, sock9 = upgrade(host, port, origin)
    report = {'ninth_status': status9}
    active = None
    if sock9:
        active = Viewer(sock9)
        report['ninth_handshake'] = list(active.handshake(True)[:3])
        active.watch(started)
        stop = threading.Event()

        def move():
            x = 0
            while not stop.wait(0.5):
                x = (x + 1) % 100
                try:
                    send_frame(sock9, struct.pack('!BBHH', 5, 0, x, x))
                except OSError:
                    return
        threading.Thread(target=move, daemon=True).start()
    deadline = time.monotonic() + idle + TIMEOUT
    while time.monotonic() < deadline and any(v.closed_at is None for v in idle_ones):
        time.sleep(0.2)
    report['idle'] = [{'code': v.close_code, 'after': v.closed_at} for v in idle_ones]
    # Another idle timeout later, the viewer that moves its mouse is still there.
    time.sleep(idle)
    # Past the timeout: the active viewer is still there, and a new one is served.
    status10, sock10 = upgrade(host, port, origin)
    report['tenth_status'] = status10
    if sock10:
        report['tenth_handshake'] = list(Viewer(sock10).handshake(False)[:2])
        sock10.close()
    if active:
        report['active'] = {'code': active.close_code, 'after': active.closed_at}
        stop.set()
    report['elapsed'] = round(time.monotonic() - started, 2)
    return report


def main():
    what, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if what == 'probe':
        report = probe(host, port, sys.argv[4])
    else:
        report = slots(host, port, float(sys.argv[4]))
    print(json.dumps(report))


main()
