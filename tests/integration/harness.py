"""tests/integration/harness.py: start the real slimd (and a fake model hub) on loopback for tests.

Env: SLIMD and SLIMCTL name the built binaries (meson sets them), SLIM_TEST_DATA the fixtures.
Waiting is done with wait_for(cond, ms), never with bare sleeps.
"""
import http.client
import json
import os
import re
import signal
import shutil
import sqlite3
import subprocess
import tempfile
import time

SLIMD = os.environ.get('SLIMD', 'build/daemon/slimd')
SLIMCTL = os.environ.get('SLIMCTL', 'build/cli/slimctl')
DATA = os.environ.get('SLIM_TEST_DATA', 'tests/data')


def wait_for(cond, ms=10000, what='condition'):
    end = time.monotonic() + ms / 1000
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > end:
            raise AssertionError('timed out waiting for ' + what)
        time.sleep(0.02)


class Slimd:
    """One slimd process with its own data dir; restartable on the same dir."""

    def __init__(self, *extra, data_dir=None, env=None):
        self.own_dir = data_dir is None
        self.dir = data_dir or tempfile.mkdtemp(prefix='slimd-it-')
        self.extra = list(extra)
        self.env = dict(os.environ, **(env or {}))
        self.proc = None
        self.port = None
        self.logs = []

    def start(self):
        log = os.path.join(self.dir, 'slimd.log.%d' % len(self.logs))
        self.logs.append(log)
        self.logf = open(log, 'w')
        args = [SLIMD, '--data-dir', self.dir, '--listen', '127.0.0.1:0', '--log-level', 'verbose',
                '--file-source-root', os.path.abspath(DATA)] + self.extra
        self.proc = subprocess.Popen(args, stdout=self.logf, stderr=subprocess.STDOUT, env=self.env)

        def bound():
            if self.proc.poll() is not None:
                raise AssertionError('slimd exited %s:\n%s' % (self.proc.returncode, open(log).read()))
            m = re.search(r'listening on http://[0-9.]+:(\d+)', open(log).read())
            return m and int(m.group(1))
        self.port = wait_for(bound, 15000, 'slimd to listen')
        return self

    def log_text(self):
        return ''.join(open(p).read() for p in self.logs)

    def kill(self, sig=signal.SIGKILL):
        self.proc.send_signal(sig)
        rc = self.proc.wait(60)
        self.logf.close()
        return rc

    def stop(self):
        if self.proc and self.proc.poll() is None:
            return self.kill(signal.SIGTERM)
        return self.proc.returncode if self.proc else 0

    def cleanup(self):
        rc = self.stop()
        text = self.log_text() if self.logs else ''
        if self.own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
        for bad in ('AddressSanitizer', 'LeakSanitizer', 'runtime error:'):
            if bad in text:
                raise AssertionError('sanitizer report in slimd log:\n' + text[text.index(bad) - 200:][:4000])
        if rc not in (0, None, -9):
            raise AssertionError('slimd exited with %s after SIGTERM:\n%s' % (rc, text[-3000:]))

    # ---- HTTP ----
    def request(self, method, path, body=None, headers=None, raw=None, timeout=30):
        """(status, headers dict lower-case, body bytes). raw: send these bytes as the whole request."""
        if raw is not None:
            import socket
            s = socket.create_connection(('127.0.0.1', self.port), timeout=timeout)
            s.sendall(raw)
            data = b''
            try:
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                    if b'\r\n\r\n' in data:
                        head, _, rest = data.partition(b'\r\n\r\n')
                        m = re.search(rb'content-length:\s*(\d+)', head, re.I)
                        if m and len(rest) >= int(m.group(1)):
                            break
            except (ConnectionResetError, TimeoutError, OSError):
                pass
            s.close()
            m = re.match(rb'HTTP/1\.[01] (\d+)', data)
            return (int(m.group(1)) if m else 0), {}, data.partition(b'\r\n\r\n')[2]
        c = http.client.HTTPConnection('127.0.0.1', self.port, timeout=timeout)
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
            headers = dict({'Content-Type': 'application/json'}, **(headers or {}))
        try:
            c.request(method, path, body=body, headers=headers or {})
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered early (413) and closed: the answer is still readable
        r = c.getresponse()
        data = r.read()
        hdrs = {k.lower(): v for k, v in r.getheaders()}
        c.close()
        return r.status, hdrs, data

    def json(self, method, path, body=None, headers=None):
        st, h, data = self.request(method, path, body, headers)
        return st, (json.loads(data) if data else None)

    def submit(self, spec, key=None):
        return self.json('POST', '/v1/jobs', spec, {'Idempotency-Key': key} if key else None)

    def job(self, jid):
        return self.json('GET', '/v1/jobs/' + jid)[1]

    def wait_state(self, jid, states=('succeeded', 'failed', 'cancelled'), ms=30000):
        return wait_for(lambda: (lambda j: j if j and j['state'] in states else None)(self.job(jid)), ms,
                        'job %s to reach %s' % (jid, states))

    def db(self):
        """Read-only connection to the store (tests only; slimd itself never shares its file)."""
        return sqlite3.connect('file:%s?mode=ro' % os.path.join(self.dir, 'slimd.db'), uri=True)

    def slimctl(self, *args, check=None, timeout=120):
        env = dict(os.environ, SLIMD_ADDR='http://127.0.0.1:%d' % self.port)
        r = subprocess.run([SLIMCTL] + list(args), capture_output=True, text=True, env=env, timeout=timeout)
        if check is not None and r.returncode != check:
            raise AssertionError('slimctl %s: rc %d\n%s\n%s' % (args, r.returncode, r.stdout, r.stderr))
        return r


def local_spec(name='tiny-opt', **kw):
    spec = {'model': {'source': 'file://' + os.path.abspath(os.path.join(DATA, name))}, 'method': 'eval',
            'eval': {'perplexity': []}}
    spec.update(kw)
    return spec


def run_tests(tests):
    """Minimal runner: each test gets a fresh slimd; prints TAP-ish lines; exit 1 on any failure."""
    import sys
    import traceback
    failed = 0
    only = sys.argv[1:]
    for t in tests:
        if only and t.__name__ not in only:
            continue
        t0 = time.monotonic()
        try:
            t()
            print('ok   %-60s %.2fs' % (t.__name__, time.monotonic() - t0), flush=True)
        except Exception:
            failed += 1
            print('FAIL %s' % t.__name__, flush=True)
            traceback.print_exc()
    sys.exit(1 if failed else 0)
