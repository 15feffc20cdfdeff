#!/bin/bash
# The classic shell drop-folder loop: inotifywait | while read; mv.
#
#   inotify_loop.sh DATA_DIR COUNT
#
# Moves each file that inotify reports as closed after writing or renamed
# into incoming/, first to working/ and then to archive/, with mv (two
# processes per file), until COUNT files have been moved; then stops
# inotifywait, reaps it and exits.  It sees only events: files already in
# incoming/ when it starts are never moved.  inotifywait prints
# "Watches established." on stderr once its watch is in place (its READY).
set -u
cd "$1" || exit 2
count=$2
moved=0
# A process substitution rather than a pipe, so that the loop can stop and reap
# inotifywait: its CPU time then counts in this shell's rusage.
while [ "$moved" -lt "$count" ] && IFS= read -r name; do
    mv -- "incoming/$name" "working/$name" && mv -- "working/$name" "archive/$name"
    moved=$((moved + 1))
done < <(exec inotifywait -m -e close_write -e moved_to --format '%f' incoming)
watcher=$!
kill "$watcher" 2>/dev/null
wait "$watcher" 2>/dev/null
exit 0
