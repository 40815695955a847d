"""Our agent image (the image builder's initrd) booted by the VM runner, reached over
hybrid vsock exactly as a Kata shim reaches it: Health.Check on hvsock://…:1024."""

from __future__ import annotations

import pytest

from pykata.builder import build
from pykata.host.vm.runner import VM
from pykata.protocols import health_pb2
from pykata.ttrpc import Client

pytestmark = [
    pytest.mark.vm,
]


async def test_agent_health_check_over_hybrid_vsock(
    guest_artifacts: build.Result, tmp_path_factory: pytest.TempPathFactory
) -> None:
    shared = tmp_path_factory.mktemp("shared")
    async with VM(guest_artifacts.kernel, guest_artifacts.artifact, shared_dir=shared) as vm:
        await vm.wait_port(1024, within=240)
        assert vm.agent_address.startswith(("hvsock://", "vsock://"))
        async with await Client.connect(vm.agent_address, timeout=30) as client:
            reply = await client.call(
                "grpc.Health",
                "Check",
                health_pb2.CheckRequest(),
                health_pb2.HealthCheckResponse,
                timeout=30,
            )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
