"""What the installed unit gives the daemon: the user it runs as and its PATH.

Constants only, so that the command line can show them as defaults without
importing what judges programs (``programs.py``): ``dropline run`` never needs it.
"""

from __future__ import annotations

__all__ = ["SERVICE_PATH", "SERVICE_USER"]

# units/dropline.service sets no Environment=PATH, so the service has systemd's
# default PATH for services, and runs as its User=.
SERVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SERVICE_USER = "automation"
