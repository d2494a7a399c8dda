#!/usr/bin/env python3
"""tests/integration/test_durability.py: SIGKILL slimd at random moments during a stream of
submissions and running jobs, 50 times. After every restart the database passes integrity_check and
every acknowledged job is present; at the end every job has succeeded exactly once (one
'succeeded' event, one published out/ folder whose metrics name a single attempt)."""
import json
import os
import random
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Slimd, local_spec, run_tests  # noqa: E402

KILLS = int(os.environ.get('SLIMD_TEST_KILLS', '50'))


def test_integration_durability__sigkill_loop_loses_nothing():
    rnd = random.Random(int(os.environ.get('SLIMD_TEST_SEED', '1')))
    d = Slimd('--workers', '2')
    acked = set()
    try:
        for it in range(KILLS):
            d.start()
            db = d.db()
            assert db.execute('PRAGMA integrity_check').fetchone()[0] == 'ok'
            present = {r[0] for r in db.execute('SELECT id FROM jobs')}
            missing = acked - present
            assert not missing, 'iteration %d: acknowledged jobs lost: %s' % (it, missing)
            db.close()
            stop = threading.Event()

            def submitter():
                n = 0
                while not stop.is_set() and n < 20:
                    try:
                        st, body = d.submit(local_spec(), key='it%d-%d' % (it, n))
                    except OSError:
                        return  # the daemon died mid-request: that submission was never acknowledged
                    if st in (200, 201):
                        acked.add(body['id'])
                    n += 1
            t = threading.Thread(target=submitter)
            t.start()
            time.sleep(rnd.uniform(0.0, 0.4))
            d.kill(signal.SIGKILL)
            stop.set()
            t.join()
        d.start()
        # Draining hundreds of jobs takes as long as the machine's load makes it take: fail only
        # when the queue stops moving, not after a fixed wall time.
        def pending():
            db = d.db()
            try:
                return db.execute("SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'running')").fetchone()[0]
            finally:
                db.close()
        last, last_change = pending(), time.monotonic()
        while last:
            time.sleep(0.2)
            now = pending()
            if now != last:
                last, last_change = now, time.monotonic()
            assert time.monotonic() - last_change < 90, 'the queue stopped draining at %d pending jobs' % last
        db = d.db()
        assert db.execute('PRAGMA integrity_check').fetchone()[0] == 'ok'
        rows = dict(db.execute('SELECT id, state FROM jobs'))
        assert acked <= set(rows), acked - set(rows)
        bad = {i: (s, db.execute('SELECT attempts, error_msg FROM jobs WHERE id = ?', (i,)).fetchone())
               for i, s in rows.items() if s != 'succeeded'}
        assert not bad, bad
        for jid in rows:
            n = db.execute("SELECT COUNT(*) FROM events e JOIN jobs j ON j.seq = e.job_seq "
                           "WHERE j.id = ? AND e.kind = 'state' AND e.message = 'succeeded'", (jid,)).fetchone()[0]
            assert n == 1, (jid, n)
            out = os.path.join(d.dir, 'jobs', jid, 'out', 'metrics.json')
            assert json.load(open(out))['attempt'] >= 1
            stray = [f for f in os.listdir(os.path.join(d.dir, 'jobs', jid)) if f != 'out']
            assert not stray, stray
        print('  %d kills, %d acknowledged jobs, all succeeded once' % (KILLS, len(acked)))
    finally:
        d.cleanup()


if __name__ == '__main__':
    run_tests([test_integration_durability__sigkill_loop_loses_nothing])
