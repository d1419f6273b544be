"""Size limits shared by the gateway and the entities, so that they agree."""
from __future__ import annotations

# The largest websocket frame the gateway accepts (GatewayConfig.max_frame_bytes' default), and so
# the largest Yjs update the playlist entity accepts (playlist_max_update_bytes' default): an update
# the gateway can't deliver must not be accepted from anywhere else either.
MAX_FRAME_BYTES = 1 << 20
