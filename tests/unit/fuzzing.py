"""Shared machinery of the fuzz tests: hypothesis profiles and hostile values.

Budget: the ``ci`` profile (default) keeps the whole fuzz suite well under a minute on two
cores. A longer run:

    SDNCTL_FUZZ=long .venv/bin/pytest tests/unit -k fuzz      # or: make fuzz
    SDNCTL_FUZZ_EXAMPLES=20000 SDNCTL_FUZZ=long make fuzz     # longer still

``long`` also keeps hypothesis' example database (``.hypothesis/``), so a failure found once is
replayed first next time.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

settings.register_profile(
    # derandomize: CI explores the same examples every run, so a red build is a regression;
    # `make fuzz` (the "long" profile) explores new ones
    "ci", max_examples=int(os.environ.get("SDNCTL_FUZZ_EXAMPLES", "30")), deadline=None,
    database=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                          HealthCheck.too_slow])
settings.register_profile(
    "long", max_examples=int(os.environ.get("SDNCTL_FUZZ_EXAMPLES", "3000")), deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

PROFILE = "long" if os.environ.get("SDNCTL_FUZZ") == "long" else "ci"

#: Strings that mean something somewhere in sdnctl, and strings that mean trouble.
MEANINGFUL = [
    "", "h1", "h2", "front", "back", "web", "db", "bridge", "overlay", "none", "host",
    "container:web", "container:", "container:container:web", "eth0", "lo", "..", ".",
    "10.88.0.0/16", "10.88.0.0/24", "10.88.0.1", "10.88.0.0/32", "0.0.0.0/0", "10.0.0.0/8",
    "127.0.0.1", "169.254.1.1", "224.0.0.1", "255.255.255.255", "192.0.2.10", "::1",
    "fd00::/64", "02:00:00:00:00:01", "01:00:5e:00:00:01", "00:00:00:00:00:00",
    "8080:80", "0:80", "65536:80", "127.0.0.1:53:53/udp", "1.2.3.4:1:1/sctp", "80",
    "uts", "ipc", "net", "no", "always", "on-failure", "running", "exited", "error",
    "/run/netns/h1", "/proc/1/ns/net", "../../etc/passwd", "/a/../b", "/\0", "a\0b",
    "h1\n", "H1", "-h1", "h1-", "a" * 63, "a" * 64, "x" * 300, "\u202e", "ñ", "\ufeff",
    "sdnctl://agent/h1", "%s%n%x", "${jndi:ldap://x}", "'; DROP TABLE kv; --", "\\",
    "/", "/networks/front", "/hosts/h1",
]

texts = st.one_of(
    st.sampled_from(MEANINGFUL),
    st.text(max_size=24),
    st.from_regex(r"[a-z0-9][a-z0-9-]{0,14}", fullmatch=True),
    st.builds(lambda a, b, c, d, p: f"{a}.{b}.{c}.{d}/{p}",
              *[st.integers(0, 300)] * 4, st.integers(0, 40)),
    st.builds(lambda a, b, c, d: f"{a}.{b}.{c}.{d}", *[st.integers(0, 300)] * 4),
)
INT_EDGES = [0, 1, -1, 2, 8, 24, 31, 32, 576, 1500, 4789, 4096, 65535, 65536, 16777215,
             16777216, 4194304, 2**31 - 1, -(2**31)]
int32s = st.one_of(st.sampled_from(INT_EDGES), st.integers(-(2**31), 2**31 - 1))
int64s = st.one_of(st.sampled_from([*INT_EDGES, 2**63 - 1, -(2**63)]),
                   st.integers(-(2**63), 2**63 - 1))
uint32s = st.one_of(st.sampled_from([0, 1, 4096, 16777215, 16777216, 2**32 - 1]),
                    st.integers(0, 2**32 - 1))
