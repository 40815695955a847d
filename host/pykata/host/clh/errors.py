"""What can go wrong with an API call; api.STATUS maps each kind to its HTTP status."""

from __future__ import annotations


class ApiError(Exception):
    """A request that could not be carried out; the message goes back to the client."""


class BadRequest(ApiError):
    """The body is not JSON, or misses or mistypes a field."""


class UnknownEndpoint(ApiError):
    """No such path."""


class WrongMethod(ApiError):
    """The path exists but not with this method."""


class NotCreated(ApiError):
    """The call needs a VM and none was created yet."""


class NoSuchDevice(ApiError):
    """remove-device named an id the VM does not have."""


class WrongState(ApiError):
    """The VM exists but is not in a state that allows the call (boot twice, pause a
    created VM ...)."""


class AlreadyExists(ApiError):
    """vm.create twice, or a device id already in use."""


class Unsupported(ApiError):
    """A valid request for something this launcher does not do (see docs/clh-launcher.md)."""


class MachineFailure(ApiError):
    """QEMU or a helper process failed or refused (the QMP error is in the message)."""
