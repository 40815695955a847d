"""kata-agent-ctl: drive a Kata agent by hand or from scripts (raw RPCs and high-level verbs)."""
