"""ZTF alerts that passed BOOM's filter, classified by ORACLE.

    python -m bytewax.run dataflows.ztf          # one worker
    python -m bytewax.run dataflows.ztf -w 4     # four worker threads

Without configuration it replays the bundled real alerts and exits; see
docs/operations.md for Kafka, MongoDB, Fritz and Slack settings.
"""

from dataflows.oracle import build_flow
from operators.oracle.surveys import ZTF

flow = build_flow(ZTF)
