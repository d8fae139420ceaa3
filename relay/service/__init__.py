"""How relay lives in a service manager: systemd's notifications, dropping root; and a
cheap timer from the kernel (timerfd)."""
