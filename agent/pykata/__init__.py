"""pykata: a Python guest agent for Kata Containers, its ttRPC library and image builder.

Subpackages, with one-way dependencies:

- ``protocols``: generated protobuf modules of the Kata agent API (no code generator at run time);
- ``ttrpc``: an asyncio ttRPC server and client (depends on ``protocols`` for the framing messages);
- ``agent``: the guest agent daemon (depends on ``ttrpc`` and ``protocols``);
- ``host``: host-side tools, ``kata-agent-ctl`` and the VM runner (depends on the ``ttrpc`` client);
- ``builder``: ``kata-image``, the guest image and kernel builder.

The guest image carries ``protocols``, ``ttrpc`` and ``agent`` only.
"""

__version__ = "0.1.0"

# The Kata agent API version we speak (reported by Health.Version).
API_VERSION = "0.0.1"
