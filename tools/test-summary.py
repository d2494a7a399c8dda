#!/usr/bin/env python3
"""Sum meson's testlog.json files into one line: 'N passed, N failed, N skipped'.
A test counts once per build it ran in (plain and sanitized). Exit 1 if anything failed."""
import json, sys
passed = failed = skipped = 0
for path in sys.argv[1:]:
    try:
        lines = open(path).read().splitlines()
    except OSError:
        print(f"test-summary: {path} missing: counting its build as one failure")
        failed += 1
        continue
    for line in lines:
        if not line.strip():
            continue
        r = json.loads(line).get("result", "")
        if r in ("OK", "EXPECTEDFAIL"):
            passed += 1
        elif r == "SKIP":
            skipped += 1
        else:
            failed += 1
print(f"{passed} passed, {failed} failed, {skipped} skipped")
sys.exit(1 if failed else 0)
