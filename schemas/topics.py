"""Topic names, one place. Keys are ``endpoint_id`` except on the policy topic (``tenant_id``)."""

from typing import Final

SNAPSHOTS: Final = "driftline.snapshots"
AUTH_EVENTS: Final = "driftline.auth-events"
POLICY: Final = "driftline.policy"
FLAGS: Final = "driftline.flags"
ACTIONS: Final = "driftline.actions"
# processors-internal, co-partitioned with the snapshots: "re-check this endpoint's state"
REEVALUATE: Final = "driftline.reevaluate"

ALL: Final = (SNAPSHOTS, AUTH_EVENTS, POLICY, FLAGS, ACTIONS, REEVALUATE)
COMPACTED: Final = frozenset({POLICY})
