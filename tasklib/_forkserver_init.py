"""Imported only by the worker's fork server (a preload module), never by the worker itself.

Service managers (systemd's default KillMode, `kill -TERM -PGID`, a terminal's Ctrl+C) signal the
whole process group. The worker alone decides when task code stops, so the fork server must outlive
such a signal: if it died, the kernel would kill every child (they die with their parent) and
running tasks would be cut short instead of finishing within the grace period. The fork server still
exits when the worker does (multiprocessing closes its lifeline pipe).
"""

import signal

signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGINT, signal.SIG_IGN)
