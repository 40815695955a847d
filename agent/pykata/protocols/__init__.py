"""Generated protobuf modules of the Kata agent API and of ttRPC's framing messages.

Regenerate with ``just proto`` after editing ``protocols/*.proto``; never edit the
``*_pb2.py`` files by hand. Importing them needs only the ``protobuf`` runtime.
"""
