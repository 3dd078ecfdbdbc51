#!/bin/sh
# GoReplay middleware that changes nothing: every hex line goes back as it came.
while IFS= read -r line; do
  printf '%s\n' "$line"
done
