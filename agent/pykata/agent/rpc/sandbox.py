"""AgentService RPCs about the sandbox as a whole and the guest it runs in."""

from __future__ import annotations

import asyncio
import os

from google.protobuf import empty_pb2

from pykata.agent import copyfile, guest, log, metrics
from pykata.agent.errors import FailedPrecondition, InvalidArgument, NotFound
from pykata.agent.mount import mount_points
from pykata.agent.rpc.storages import storage_specs
from pykata.agent.sandbox import KernelModule, Sandbox
from pykata.agent.storage import ephemeral
from pykata.agent.validation import validate_under
from pykata.agent.version import VERSION
from pykata.protocols import agent_pb2, csi_pb2

logger = log.get("rpc")

SHARED_DIR = copyfile.SHARED_DIR
ONLINE_RETRIES = 100
ONLINE_RETRY_DELAY = 0.05


def _empty() -> empty_pb2.Empty:
    return empty_pb2.Empty()


class SandboxHandlers:
    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox

    async def CreateSandbox(self, req: agent_pb2.CreateSandboxRequest) -> empty_pb2.Empty:
        await self.sandbox.create(
            sandbox_id=req.sandbox_id,
            hostname=req.hostname,
            dns=list(req.dns),
            storages=storage_specs(req.storages),
            sandbox_pidns=req.sandbox_pidns,
            kernel_modules=[KernelModule(m.name, list(m.parameters)) for m in req.kernel_modules],
            guest_hook_path=req.guest_hook_path,
        )
        return _empty()

    async def DestroySandbox(self, req: agent_pb2.DestroySandboxRequest) -> empty_pb2.Empty:
        await self.sandbox.destroy()
        # The agent stops (or powers off) after this reply has gone out.
        self.sandbox.destroyed.set()
        return _empty()

    async def GetGuestDetails(
        self, req: agent_pb2.GuestDetailsRequest
    ) -> agent_pb2.GuestDetailsResponse:
        # Must always succeed: the runtime calls it right after boot.
        block_size = 0
        if req.mem_block_size:
            try:
                block_size = guest.memory_block_size()
            except (OSError, ValueError) as exc:
                logger.warning("cannot read memory block size", extra={"error": str(exc)})
        return agent_pb2.GuestDetailsResponse(
            mem_block_size_bytes=block_size,
            support_mem_hotplug_probe=req.mem_hotplug_probe and guest.supports_memory_probe(),
            agent_details=agent_pb2.AgentDetails(
                version=VERSION,
                init_daemon=os.getpid() == 1,
                device_handlers=[],
                storage_handlers=self.sandbox.storages.driver_names,
                supports_seccomp=guest.seccomp_supported(),
            ),
        )

    async def SetGuestDateTime(self, req: agent_pb2.SetGuestDateTimeRequest) -> empty_pb2.Empty:
        try:
            guest.set_time(req.Sec, req.Usec)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from exc
        return _empty()

    async def OnlineCPUMem(self, req: agent_pb2.OnlineCPUMemRequest) -> empty_pb2.Empty:
        # As Kata: nb_cpus is the number of CPUs that must be online in the end; hotplugged
        # CPUs show up in sysfs a little after the runtime asked, hence the retries.
        if req.nb_cpus > 0:
            for _ in range(ONLINE_RETRIES):
                if guest.online_cpus(req.nb_cpus) >= req.nb_cpus:
                    break
                await asyncio.sleep(ONLINE_RETRY_DELAY)
            else:
                raise FailedPrecondition(
                    f"only {guest.online_cpu_count()} of {req.nb_cpus} CPUs could be onlined"
                )
        if not req.cpu_only:
            logger.info("onlined memory", extra={"memory_blocks": guest.online_memory()})
        return _empty()

    async def MemHotplugByProbe(self, req: agent_pb2.MemHotplugByProbeRequest) -> empty_pb2.Empty:
        if not guest.supports_memory_probe():
            raise FailedPrecondition("this guest has no memory probe interface")
        guest.probe_memory(list(req.memHotplugProbeAddr))
        return _empty()

    async def ReseedRandomDev(self, req: agent_pb2.ReseedRandomDevRequest) -> empty_pb2.Empty:
        try:
            guest.reseed_random(req.data)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from exc
        return _empty()

    async def GetMetrics(self, req: agent_pb2.GetMetricsRequest) -> agent_pb2.Metrics:
        return agent_pb2.Metrics(metrics=metrics.collect())

    async def CopyFile(self, req: agent_pb2.CopyFileRequest) -> empty_pb2.Empty:
        copyfile.copy_file(
            req.path,
            file_size=req.file_size,
            file_mode=req.file_mode,
            dir_mode=req.dir_mode,
            uid=req.uid,
            gid=req.gid,
            offset=req.offset,
            data=req.data,
        )
        return _empty()

    async def UpdateEphemeralMounts(
        self, req: agent_pb2.UpdateEphemeralMountsRequest
    ) -> empty_pb2.Empty:
        specs = storage_specs(req.storages)
        for spec in specs:
            if spec.driver != "ephemeral":
                raise InvalidArgument(
                    f"only ephemeral storages can be updated, not {spec.driver!r}"
                )
        # Mounted ones get their new options (the runtime sends remount,size=... after a
        # memory resize); others become new sandbox storages.
        manager = self.sandbox.storages
        new = []
        for spec in specs:
            driver = manager.driver_of(validate_under(spec.mount_point))
            if driver is None:
                new.append(spec)
            elif driver != "ephemeral":
                raise InvalidArgument(f"{spec.mount_point} is a {driver} storage")
            elif spec.options:
                try:
                    ephemeral.remount(spec)
                except OSError as exc:
                    raise FailedPrecondition(f"remount {spec.mount_point}: {exc}") from exc
        self.sandbox.mounts += await manager.add(new)
        return _empty()

    async def RemoveStaleVirtiofsShareMounts(
        self, req: agent_pb2.RemoveStaleVirtiofsShareMountsRequest
    ) -> empty_pb2.Empty:
        # stat() makes virtiofsd notice share mounts whose host side is gone.
        for point, _ in mount_points():
            if point.startswith(SHARED_DIR + "/"):
                try:
                    await asyncio.to_thread(os.stat, point)
                except OSError as exc:
                    logger.info("stale share mount", extra={"mount": point, "error": str(exc)})
        return _empty()

    async def GetVolumeStats(
        self, req: agent_pb2.VolumeStatsRequest
    ) -> csi_pb2.VolumeStatsResponse:
        path = validate_under(req.volume_guest_path)
        try:
            st = await asyncio.to_thread(os.statvfs, path)
        except FileNotFoundError:
            raise NotFound(f"volume {path} not found") from None
        Unit = csi_pb2.VolumeUsage
        total, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
        return csi_pb2.VolumeStatsResponse(
            usage=[
                csi_pb2.VolumeUsage(
                    available=free, total=total, used=total - free, unit=Unit.BYTES
                ),
                csi_pb2.VolumeUsage(
                    available=st.f_ffree,
                    total=st.f_files,
                    used=st.f_files - st.f_ffree,
                    unit=Unit.INODES,
                ),
            ],
            volume_condition=csi_pb2.VolumeCondition(abnormal=False, message="OK"),
        )
