"""The daemon's loop: a small coordinator (``daemon.py``) over parts that each
own their state and deadlines: ``intake.py`` (everything before a claim),
``transit.py`` (claims and finishes in the mover's hands), ``scheduler.py``
(the files in flight and their stages), ``duties.py`` (timers: STATUS,
WATCHDOG, free space, requests) and ``watching.py`` (the inotify watch).
The parts import none of each other: the daemon hands results between them."""
