"""The security tier: adversarial requests against the real agent as a root process.

It reuses the integration harness (one agent per module on an abstract unix socket, its log
attached to failing tests).
"""

from __future__ import annotations

from integration.conftest import (  # noqa: F401  (fixtures and the report hook, re-exported)
    _host_cgroups_left_as_found,
    agent,
    agent_address,
    agent_args,
    agent_client,
    agent_env,
    agent_log,
    agent_process,
    agent_wrapper,
    health,
    pytest_runtest_makereport,
)
