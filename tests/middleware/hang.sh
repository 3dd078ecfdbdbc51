#!/bin/sh
# GoReplay middleware that takes one message and then hangs: it never reads again.
IFS= read -r line
printf '%s\n' "$line"
exec sleep 3600
