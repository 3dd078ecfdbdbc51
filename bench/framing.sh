#!/usr/bin/env bash
# What real nginx does with each request shape tapwire's cutter refuses or accepts: every shape
# is sent on its own connection followed by a pipelined `GET /after`, and the script prints
# nginx's status codes and whether it kept the connection open (so served /after) or closed
# it. The rules in shared/src/http1.rs were aligned with this table (nginx 1.22, defaults:
# client_header_buffer_size 1k, large_client_header_buffers 4 8k).
set -euo pipefail
cd "$(dirname "$0")"
. ./nginx.sh
port=${PORT:-18231}
start_nginx "$port"
python3 - "$port" <<'PY'
import re, socket, sys
port = int(sys.argv[1])
after = b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n"
post = b"POST /s HTTP/1.1\r\nHost: a\r\n"
shapes = [
    ("CL and TE", post + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ("HTTP/1.0 chunked", b"POST /s HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ("TE gzip, chunked", post + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"),
    ("TE chunked, chunked", post + b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n"),
    ("TE identity", post + b"Transfer-Encoding: identity\r\n\r\n"),
    ("TE CHUNKED (case)", post + b"Transfer-Encoding: CHUNKED\r\n\r\n0\r\n\r\n"),
    ("two TE headers", post + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ("two identical CL", post + b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc"),
    ("CL 3, 3", post + b"Content-Length: 3, 3\r\n\r\nabc"),
    ("CL +3", post + b"Content-Length: +3\r\n\r\nabc"),
    ("CL 1 2", post + b"Content-Length: 1 2\r\n\r\nabcdefghijkl"),
    ("CL 003", post + b"Content-Length: 003\r\n\r\nabc"),
    ("space before colon", post + b"Content-Length : 3\r\n\r\nabc"),
    ("obs-fold", post + b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n"),
    ("bare LF", b"POST /s HTTP/1.1\nHost: a\nContent-Length: 3\n\nabc"),
    ("bare CR", b"POST /s HTTP/1.1\rHost: a\r\nContent-Length: 3\r\n\r\nabc"),
    ("chunk size +3", post + b"Transfer-Encoding: chunked\r\n\r\n+3\r\nabc\r\n0\r\n\r\n"),
    ("chunk size ' 3'", post + b"Transfer-Encoding: chunked\r\n\r\n 3\r\nabc\r\n0\r\n\r\n"),
    ("chunk size '3 '", post + b"Transfer-Encoding: chunked\r\n\r\n3 \r\nabc\r\n0\r\n\r\n"),
    ("chunk data without CRLF", post + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcXX0\r\n\r\n"),
    ("request line 8192 B", b"GET /" + b"a" * 8176 + b" HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("request line 8193 B", b"GET /" + b"a" * 8177 + b" HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("header line 8193 B", b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"b" * 8184 + b"\r\n\r\n"),
    ("4 header lines of 8000 B", b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%d: " % i + b"c" * 7993 + b"\r\n" for i in range(4)) + b"\r\n"),
    ("5 header lines of 4100 B", b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%d: " % i + b"c" * 4093 + b"\r\n" for i in range(5)) + b"\r\n"),
    ("Upgrade, no 101", b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"),
    ("CONNECT", b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n"),
]
for name, shape in shapes:
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(1.0)
    s.sendall(shape + after)
    answer, closed = b"", True
    try:
        while chunk := s.recv(65536):
            answer += chunk
    except socket.timeout:
        closed = False
    s.close()
    statuses = [m.decode() for m in re.findall(rb"HTTP/1\.[01] (\d{3})", answer)]
    verdict = "closed, /after never served" if closed else "kept open, /after served"
    print(f"{name:28} {' '.join(statuses):10} {verdict}")
PY
