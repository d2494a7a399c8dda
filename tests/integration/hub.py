"""tests/integration/hub.py: a loopback HTTP server playing the model hub (/{org}/{name}/resolve/{rev}/{file}).

Models come from SLIM_TEST_DATA/<name>/. The org picks a fault, for the model weights only:
  test      normal: X-Linked-Etag = sha256 for .safetensors, Range honoured
  truncate  first request sends half the body then closes (the next one resumes with Range)
  err500    first request answers 500
  badsha    X-Linked-Etag is wrong
  redirect  302 to another host (self.other, a second server on 127.0.0.2) over plain http
  samehost  302 to the same hub under /blobs/ (followed, with the token)
  stall     sends 1000 bytes then nothing until the client goes away
  huge      claims a 10 GB body and streams zeros
Datasets: /datasets/NAME.txt from self.datasets (the dataset mirror).
"""
import hashlib
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DATA = os.environ.get('SLIM_TEST_DATA', 'tests/data')


class Hub:
    def __init__(self, host='127.0.0.1'):
        self.log = []          # (host, path, range, authorization)
        self.count = {}
        self.stop_stall = threading.Event()
        hub = self

        class H(BaseHTTPRequestHandler):
            protocol_version = 'HTTP/1.1'

            def log_message(self, *a):
                pass

            def do_GET(self):
                hub.log.append((host, self.path, self.headers.get('Range'), self.headers.get('Authorization')))
                hub.handle(self)

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                pass  # clients hanging up on faults are expected

        self.srv = Server((host, 0), H)
        self.srv.daemon_threads = True
        self.port = self.srv.server_address[1]
        self.url = 'http://%s:%d' % (host, self.port)
        self.thread = threading.Thread(target=self.srv.serve_forever, daemon=True)
        self.thread.start()
        self.other = None
        self.datasets = {'tinytext.txt': b'Once upon a time there was a tiny model.\n' * 50}

    def close(self):
        self.stop_stall.set()
        self.srv.shutdown()
        self.srv.server_close()

    def handle(self, h):
        parts = h.path.split('/')
        if parts[1] == 'datasets' and len(parts) == 3:
            return self.plain(h, 200, self.datasets[parts[2]]) if parts[2] in self.datasets else self.plain(h, 404, b'no')
        if parts[1] == 'blobs':
            return self.send_file(h, os.path.join(DATA, parts[2], parts[3]), 'test')
        if len(parts) != 6 or parts[3] != 'resolve' or '..' in parts:
            return self.plain(h, 404, b'not found')
        org, name, fname = parts[1], parts[2], parts[5]
        path = os.path.join(DATA, name, fname)
        if not os.path.isfile(path):
            return self.plain(h, 404, b'Entry not found')
        return self.send_file(h, path, org)

    def plain(self, h, code, body, headers=()):
        h.send_response(code)
        for k, v in headers:
            h.send_header(k, v)
        h.send_header('Content-Length', str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def send_file(self, h, path, org):
        data = open(path, 'rb').read()
        weights = path.endswith('.safetensors')
        key = (org, path)
        self.count[key] = self.count.get(key, 0) + 1
        first = self.count[key] == 1
        sha = hashlib.sha256(data).hexdigest()
        if weights and org == 'err500' and first:
            return self.plain(h, 500, b'internal error')
        if weights and org == 'redirect':
            return self.plain(h, 302, b'', [('Location', self.other + '/blobs/' + os.path.basename(os.path.dirname(path)) + '/' + os.path.basename(path))])
        if weights and org == 'samehost':
            return self.plain(h, 302, b'', [('Location', '/blobs/%s/%s' % (os.path.basename(os.path.dirname(path)), os.path.basename(path)))])
        if weights and org == 'badsha':
            sha = '0' * 64
        headers = [('X-Linked-Etag', '"%s"' % sha)] if weights else [('ETag', '"%s"' % hashlib.sha1(data).hexdigest())]
        start = 0
        rng = h.headers.get('Range')
        if rng and rng.startswith('bytes=') and rng.endswith('-'):
            start = int(rng[6:-1])
            if start >= len(data):
                return self.plain(h, 416, b'', [('Content-Range', 'bytes */%d' % len(data))])
            h.send_response(206)
            h.send_header('Content-Range', 'bytes %d-%d/%d' % (start, len(data) - 1, len(data)))
        else:
            h.send_response(200)
        for k, v in headers:
            h.send_header(k, v)
        if weights and org == 'huge':
            h.send_header('Content-Length', str(10 << 30))
            h.end_headers()
            try:
                for _ in range(1 << 20):
                    h.wfile.write(b'\0' * 65536)
            except OSError:
                pass
            return
        body = data[start:]
        h.send_header('Content-Length', str(len(body)))
        h.end_headers()
        if weights and org == 'truncate' and first:
            h.wfile.write(body[:len(body) // 2])
            h.wfile.flush()
            h.close_connection = True
            return
        if weights and org == 'stall':
            h.wfile.write(body[:1000])
            h.wfile.flush()
            while not self.stop_stall.wait(0.1):
                pass
            return
        h.wfile.write(body)
