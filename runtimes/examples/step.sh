#!/bin/sh
# A step in plain POSIX shell (docker runtime): Input in $1 (or "@path" for large Inputs), Response on stdout.
case "$1" in @*) input=$(cat "${1#@}") ;; *) input=$1 ;; esac
bytes=$(printf '%s' "$input" | wc -c)
echo "{\"status\": 200, \"body\": {\"input_bytes\": $bytes}}"
