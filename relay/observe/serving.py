"""Binding what lets an operator see in: the control socket and, when
configured, the metrics listener, as a relay and the workers' parent both
open them."""

from __future__ import annotations

from pathlib import Path

from relay import stats
from relay.config import Config
from relay.observe import clients, control, metrics
from relay.observe.control import Command


async def open_observers(
    config: Config, state_dir: Path, registry: stats.Registry, document: Command
) -> tuple[control.ControlServer, metrics.MetricsServer | None]:
    """The control socket in ``state_dir`` answering ``stats`` with ``document``,
    and the metrics listener if ``config.metrics`` names one, both bound
    (StartupError); if the second fails, the first is closed again."""
    counters = registry.counters("control", control.SOCKET_NAME, clients.COUNTERS)
    server = control.ControlServer(
        control.socket_path(state_dir),
        {"stats": document},
        counters,
        group=config.control_group,
    )
    await server.open()
    if config.metrics is None:
        return server, None
    host, port = config.metrics
    counters = registry.counters("metrics", f"{host}:{port}", clients.COUNTERS)
    listener = metrics.MetricsServer(host, port, document, counters)
    try:
        await listener.open()
    except BaseException:
        server.close()
        raise
    return server, listener
