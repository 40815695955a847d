"""The ops channel's domain (docs/ops.md): what an operator asks the running agent, apart
from the shim's connection. Imported only when ``agent.ops_vport`` (or an ops address) is set.
"""
