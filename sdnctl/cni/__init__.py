"""sdnctl as a CNI plugin (issue 17): ``plugin`` is the per-call executable and the wire
vocabulary it shares with the agent's CNI service (``agent/cni.py``). Standard library only."""
