"""Rubin/LSST alerts that passed BOOM's filter, classified by ORACLE (ELAsTiCCv2-lite).

    python -m bytewax.run dataflows.lsst          # one worker
    python -m bytewax.run dataflows.lsst -w 2     # two worker threads

The same flow as ZTF's (`dataflows/oracle.py`) with the `LSST` survey
configuration (`operators/oracle/surveys.py`) and its input builder
(`operators/oracle/lsst_inputs.py`). Without configuration it replays the bundled real
LSST alerts and exits; see docs/operations.md for Kafka, MongoDB, Slack settings and
`ORACLE_LSST_FORCED_PHOTOMETRY`.
"""

from dataflows.oracle import build_flow
from operators.oracle.surveys import LSST

flow = build_flow(LSST)
