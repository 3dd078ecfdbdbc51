#!/usr/bin/env python3
"""GoReplay middleware that passes three messages on, then crashes (exit code 3)."""
import sys

for count, line in enumerate(sys.stdin, start=1):
    sys.stdout.write(line)
    sys.stdout.flush()
    if count == 3:
        print("crashing on purpose", file=sys.stderr, flush=True)
        sys.exit(3)
