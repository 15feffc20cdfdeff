"""Reference loops for the benchmark: small standalone scripts, run by path.

Each takes a data directory (with incoming/, working/ and archive/ in it) and
``--count N``, moves files incoming -> working -> archive until N have
arrived in archive/, then exits.  Each tells the benchmark it is ready the way
dropline does (``READY=1`` on ``$NOTIFY_SOCKET``; the shell loop by the line
inotifywait prints once its watch is in place).
"""
