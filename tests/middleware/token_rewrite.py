#!/usr/bin/env python3
"""GoReplay middleware used by tapwire's tests, written as GoReplay's examples are.

- Adds `X-Middleware: tapwire-test` to every request it passes on.
- Drops requests whose path starts with /drop (does not write them back).
- Keeps state between responses and later requests: when production answered /login with a
  token (type 2) and staging answered the same request with another one (type 3), later
  requests carrying `Authorization: Bearer <production token>` are rewritten to carry
  staging's token instead.
Everything it notes goes to stderr, which tapwire logs.
"""
import sys

production_token = {}  # request id -> production's token
token_alias = {}  # production's token -> staging's token


def body_of(payload):
    return payload.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in payload else b""


for line in sys.stdin:
    raw = bytes.fromhex(line.strip())
    header, payload = raw.split(b"\n", 1)
    kind, message_id = header.split(b" ")[0:2]
    if kind == b"1":
        if payload.split(b" ")[1].startswith(b"/drop"):
            print("dropped", payload.split(b"\r\n")[0].decode(), file=sys.stderr, flush=True)
            continue
        head, _, body = payload.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        for i, field in enumerate(lines):
            if field.lower().startswith(b"authorization: bearer "):
                token = field.split(b" ", 2)[2]
                if token in token_alias:
                    lines[i] = b"Authorization: Bearer " + token_alias[token]
        lines.insert(1, b"X-Middleware: tapwire-test")
        payload = b"\r\n".join(lines) + b"\r\n\r\n" + body
        sys.stdout.write((header + b"\n" + payload).hex() + "\n")
        sys.stdout.flush()
    elif kind == b"2":
        production_token[message_id] = body_of(payload).strip()
    elif kind == b"3" and message_id in production_token:
        token_alias[production_token[message_id]] = body_of(payload).strip()
        print("token alias learned", file=sys.stderr, flush=True)
