"""Hot upgrade of the agent (docs/ops.md): the new code unpacked beside the running one and
self-checked, the state handed over through a memfd, ``execve`` in the same PID (PID 1 stays
PID 1, containers stay its children), rollback to the previous code if the new one is not
ready in time. Imported only through the ops channel or when an upgraded agent starts.
"""
