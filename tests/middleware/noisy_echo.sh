#!/bin/sh
# GoReplay middleware that echoes every message but also writes a line that is not hex, as a
# script printing debug output to stdout by mistake would.
while IFS= read -r line; do
  echo "debug: got a message"
  printf '%s\n' "$line"
done
