"""How relay lives in a service manager: systemd's notifications, dropping root."""
