#!/usr/bin/env python3
"""tests/integration/test_hostile.py: malformed and hostile requests get the right 4xx and leave the
store unchanged (same jobs, same events)."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import DATA, Slimd, local_spec, run_tests  # noqa: E402


def spec(**kw):
    s = {'model': {'source': 'hf://facebook/opt-125m'}, 'method': 'eval', 'eval': {'perplexity': []}}
    for k, v in kw.items():
        s[k] = v
    return s


def src(source, **model):
    return spec(model=dict({'source': source}, **model))


def raw_post(body, extra=b''):
    return (b'POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n' + extra +
            b'Content-Length: %d\r\n\r\n' % len(body) + body)


def test_integration_hostile__bad_requests_are_4xx_and_store_unchanged():
    d = Slimd().start()
    try:
        ok = d.submit(local_spec())[1]['id']
        assert d.wait_state(ok)['state'] == 'succeeded'
        db = d.db()
        before = db.execute('SELECT (SELECT COUNT(*) FROM jobs), (SELECT COUNT(*) FROM events)').fetchone()
        big = b'{"model":{"source":"hf://a/b"},"pad":"' + b'x' * (10 << 20) + b'"}'
        just_over = b'{"x":"' + b'y' * 65536 + b'"}'
        J = {'Content-Type': 'application/json'}
        cases = [
            # (name, method, path, body, headers, raw, expected statuses, expected pointer)
            ('not json', 'POST', '/v1/jobs', '{', J, None, {400}, ''),
            ('empty body', 'POST', '/v1/jobs', '', J, None, {400}, None),
            ('array', 'POST', '/v1/jobs', '[]', J, None, {400}, None),
            ('string', 'POST', '/v1/jobs', '"hi"', J, None, {400}, None),
            ('null', 'POST', '/v1/jobs', 'null', J, None, {400}, None),
            ('unknown top field', 'POST', '/v1/jobs', spec(colour='red'), None, None, {400}, '/colour'),
            ('unknown model field', 'POST', '/v1/jobs', src('hf://a/b', foo=1), None, None, {400}, '/model/foo'),
            ('missing model', 'POST', '/v1/jobs', {'method': 'eval'}, None, None, {400}, '/model'),
            ('source not string', 'POST', '/v1/jobs', src(7), None, None, {400}, '/model/source'),
            ('unknown method', 'POST', '/v1/jobs', spec(method='zip'), None, None, {400}, '/method'),
            ('sparsity 1.3', 'POST', '/v1/jobs', spec(method='slim', pruning={'method': 'wanda', 'sparsity': 1.3}), None, None, {400}, '/pruning/sparsity'),
            ('sparsity string', 'POST', '/v1/jobs', spec(method='slim', pruning={'method': 'wanda', 'sparsity': '0.5'}), None, None, {400}, '/pruning/sparsity'),
            ('bits 99', 'POST', '/v1/jobs', spec(method='slim', quantization={'method': 'absmax', 'bits': 99}), None, None, {400}, '/quantization/bits'),
            ('duplicate keys', 'POST', '/v1/jobs', '{"method":"eval","method":"eval","model":{"source":"hf://a/b"}}', J, None, {400}, None),
            ('nested 10000 deep', 'POST', '/v1/jobs', '[' * 10000 + ']' * 10000, J, None, {400}, None),
            ('10 MiB body', 'POST', '/v1/jobs', big, J, None, {413}, None),
            ('64 KiB + 1 body', 'POST', '/v1/jobs', just_over, J, None, {413}, None),
            ('chunked over cap', None, None, None, None,
             b'POST /v1/jobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n' +
             (b'8000\r\n' + b'a' * 0x8000 + b'\r\n') * 3 + b'0\r\n\r\n', {413}, None),
            ('duplicate Content-Length', None, None, None, None, raw_post(b'{}', b'Content-Length: 2\r\n'), {400}, None),
            ('Content-Length and chunked', None, None, None, None, raw_post(b'{}', b'Transfer-Encoding: chunked\r\n'), {400}, None),
            ('invalid utf-8', 'POST', '/v1/jobs', b'{"model":{"source":"hf://a/\xff\xfe"}}', J, None, {400}, None),
            ('NUL in body', 'POST', '/v1/jobs', b'{"model":{"source":"hf://a/b\x00"}}', J, None, {400}, None),
            ('hf traversal', 'POST', '/v1/jobs', src('hf://../../etc/passwd'), None, None, {400}, '/model/source'),
            ('hf dots in name', 'POST', '/v1/jobs', src('hf://org/na..me'), None, None, {400}, '/model/source'),
            ('hf three parts', 'POST', '/v1/jobs', src('hf://a/b/c'), None, None, {400}, '/model/source'),
            ('hf revision traversal', 'POST', '/v1/jobs', src('hf://org/name@../../x'), None, None, {400}, '/model/source'),
            ('revision traversal', 'POST', '/v1/jobs', src('hf://org/name', revision='../x'), None, None, {400}, '/model/revision'),
            ('https loopback', 'POST', '/v1/jobs', src('https://127.0.0.1/m'), None, None, {400}, '/model/source'),
            ('https private 10/8', 'POST', '/v1/jobs', src('https://10.0.0.1/m'), None, None, {400}, '/model/source'),
            ('https metadata', 'POST', '/v1/jobs', src('https://169.254.169.254/latest'), None, None, {400}, '/model/source'),
            ('https localhost', 'POST', '/v1/jobs', src('https://localhost/m'), None, None, {400}, '/model/source'),
            ('https ipv6 loopback', 'POST', '/v1/jobs', src('https://[::1]/m'), None, None, {400}, '/model/source'),
            ('https decimal ip', 'POST', '/v1/jobs', src('https://2130706433/m'), None, None, {400}, '/model/source'),
            ('https not allowed host', 'POST', '/v1/jobs', src('https://evil.example.com/m'), None, None, {400}, '/model/source'),
            ('plain http', 'POST', '/v1/jobs', src('http://huggingface.co/m'), None, None, {400}, '/model/source'),
            ('credentials in url', 'POST', '/v1/jobs', src('https://u:p@huggingface.co/m'), None, None, {400}, '/model/source'),
            ('file outside root', 'POST', '/v1/jobs', src('file:///etc'), None, None, {400}, '/model/source'),
            ('file dotdot', 'POST', '/v1/jobs', src('file://' + os.path.abspath(DATA) + '/../../../etc'), None, None, {400}, '/model/source'),
            ('absolute path', 'POST', '/v1/jobs', src('/etc/passwd'), None, None, {400}, '/model/source'),
            ('dataset traversal', 'POST', '/v1/jobs', spec(eval={'perplexity': ['../../etc/passwd']}), None, None, {400}, '/eval/perplexity/0'),
            ('long idempotency key', 'POST', '/v1/jobs', spec(), {'Idempotency-Key': 'k' * 200}, None, {400}, None),
            ('bad idempotency key', 'POST', '/v1/jobs', spec(), {'Idempotency-Key': 'a b\tc'}, None, {400}, None),
            ('text/plain', 'POST', '/v1/jobs', json.dumps(spec()), {'Content-Type': 'text/plain'}, None, {400}, None),
            ('id traversal', 'GET', '/v1/jobs/..%2f..%2fetc%2fpasswd', None, None, None, {404}, None),
            ('id dotdot', 'GET', '/v1/jobs/..', None, None, None, {404}, None),
            ('artifact traversal', 'GET', '/v1/jobs/%s/artifacts/..%%2f..%%2fslimd.db' % ok, None, None, None, {404}, None),
            ('artifact dotdot', 'GET', '/v1/jobs/%s/artifacts/..' % ok, None, None, None, {404}, None),
            ('artifact hidden', 'GET', '/v1/jobs/%s/artifacts/.metrics.json' % ok, None, None, None, {404}, None),
            ('artifact of unknown job', 'GET', '/v1/jobs/j_0123456789abcdef/artifacts/metrics.json', None, None, None, {404}, None),
            ('bad status filter', 'GET', '/v1/jobs?status=bogus', None, None, None, {400}, None),
            ('negative limit', 'GET', '/v1/jobs?limit=-1', None, None, None, {400}, None),
            ('cursor not a number', 'GET', '/v1/jobs?cursor=abc', None, None, None, {400}, None),
            ('PUT jobs', 'PUT', '/v1/jobs', '{}', J, None, {405}, None),
            ('cancel finished', 'POST', '/v1/jobs/%s/cancel' % ok, '', None, None, {409}, None),
            ('cancel unknown', 'POST', '/v1/jobs/j_0123456789abcdef/cancel', '', None, None, {404}, None),
            ('delete unknown', 'DELETE', '/v1/jobs/j_0123456789abcdef', None, None, None, {404}, None),
            ('unknown path', 'GET', '/v2/jobs', None, None, None, {404}, None),
            ('40 KiB header', None, None, None, None,
             b'GET /v1/jobs HTTP/1.1\r\nHost: x\r\nX-Big: ' + b'h' * 40960 + b'\r\n\r\n', {400, 413, 431}, None),
            ('space in url', None, None, None, None, b'GET /v1/jobs /x HTTP/1.1\r\nHost: x\r\n\r\n', {0, 400, 404}, None),  # 0: closed unanswered
            ('no Host header', None, None, None, None, b'GET /v1/jobs HTTP/1.1\r\n\r\n', {400}, None),
        ]
        assert len(cases) >= 40
        bad = []
        for name, method, path, body, headers, raw, want, ptr in cases:
            if isinstance(body, dict):
                body, headers = json.dumps(body), dict(J, **(headers or {}))
            st, h, data = d.request(method, path, body, headers, raw=raw)
            if st not in want:
                bad.append('%s: got %d, want %s: %s' % (name, st, want, data[:200]))
                continue
            if ptr is not None:
                p = json.loads(data)
                if p.get('pointer') != ptr or p.get('status') != st or not p.get('detail'):
                    bad.append('%s: problem %s, want pointer %r' % (name, p, ptr))
            if raw is None and st >= 400 and st != 405 and not h.get('content-type', '').startswith('application/problem+json'):
                bad.append('%s: content-type %s' % (name, h.get('content-type')))
        assert not bad, '\n'.join(bad)
        after = db.execute('SELECT (SELECT COUNT(*) FROM jobs), (SELECT COUNT(*) FROM events)').fetchone()
        assert before == after, (before, after)
        assert d.json('GET', '/healthz')[0] == 200
        assert d.proc.poll() is None
    finally:
        d.cleanup()


def test_integration_hostile__per_ip_connection_limit():
    import socket
    d = Slimd('--per-ip-connection-limit', '4').start()
    try:
        socks = [socket.create_connection(('127.0.0.1', d.port)) for _ in range(4)]
        extra = socket.create_connection(('127.0.0.1', d.port), timeout=5)
        extra.sendall(b'GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n')
        try:
            got = extra.recv(100)
        except (ConnectionResetError, socket.timeout):
            got = b''
        assert got == b'', got  # refused: closed without an answer
        for s in socks:
            s.close()
        from harness import wait_for
        def healthy():
            try:
                return d.request('GET', '/healthz', timeout=2)[0] == 200
            except OSError:
                return False
        wait_for(healthy, 10000, 'connections to free up')
    finally:
        d.cleanup()


if __name__ == '__main__':
    run_tests([v for k, v in sorted(globals().items()) if k.startswith('test_')])
