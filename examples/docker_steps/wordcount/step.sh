#!/bin/sh
# An SDK-free step: the Input JSON is $1 (or "@/path" when it is large), the Response goes to stdout.
case "$1" in
  @*) input=$(cat "${1#@}") ;;
  *)  input=$1 ;;
esac
echo "counting words" >&2                       # stderr is kept with the step as its logs
words=$(printf '%s' "$input" | sed 's/.*"text":"\([^"]*\)".*/\1/' | wc -w)
echo "{\"status\": 200, \"body\": {\"words\": $words}}"
