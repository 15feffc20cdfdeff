"""End-to-end tier: dropline installed with `make install` and run by a real systemd."""
