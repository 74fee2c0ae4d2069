"""Small helpers shared by the flow tests."""

from __future__ import annotations

import logging
from pathlib import Path

from operators.runtime.config import Settings
from operators.oracle.surveys import Survey


class LogLines(logging.Handler):
    """Every message logged at INFO or above, as text (what a console handler would print)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def run_flow(survey: Survey, settings: Settings, messages: list[bytes], workers: int = 1) -> None:
    """The survey's real flow over `messages` (as Kafka messages of one partition), `workers` threads."""
    from bytewax.connectors.kafka import KafkaSourceMessage
    from bytewax.testing import TestingSource, cluster_main, run_main

    from dataflows.oracle import build_flow

    source = TestingSource([KafkaSourceMessage(key=None, value=v, topic="t", partition=0, offset=i)
                            for i, v in enumerate(messages)])
    flow = build_flow(survey, settings, source=source)
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)


def settings_for(survey: Survey, tmp_path: Path, **env) -> Settings:
    """Settings as a user would get them, writing under `tmp_path`."""
    base = {"ALERTFLOW_RESULTS_DIR": str(tmp_path / "results"), "ALERTFLOW_LOGS_DIR": str(tmp_path / "logs")}
    return Settings.from_env(survey, {**base, **{k: str(v) for k, v in env.items()}})


# What the bundled samples hold, written out once by hand from `operators/samples/bundle.py`'s
# rules (every 4th ZTF alert, and Rubin Solar System alerts and every 4th from the
# second, fail the filter; three malformed messages each), not derived by the code
# under test: a decoder that dropped valid messages would change the flow's rows only.
SAMPLE_TRUTH = {
    "ZTF": {
        "passing": {
            1048092120315015012, 1048092120315015013, 1048092123615010007, 1048093033115015005,
            3367139732915010140, 3367148980115015000, 3367149443615015021, 3367295925915015014,
            3367300635415015049, 3367314375715010069, 3367317671315010038, 3367355605915010003,
            3367395771515010064, 3367436240415015057, 3367439063615010024, 3367451993915015011,
            3367463101415010117, 3367478721515010011, 3367503140815015035, 3367503143715015007,
            3367504081715010000, 3367504562015010075, 3367505021415010029, 3367505971315010200,
            3367507381315010104, 3367507383015010079, 3367522695115015008, 3367537290415015010,
        },
        "failing": {
            1048093030215015014, 3367156072415010037, 3367380354215015001, 3367395771515010053,
            3367418864115015002, 3367435302415015060, 3367502191515010145, 3367504562115010071,
            3380240722915015011,
        },
        "no_aux": {1048092120315015013},  # the orphan: passes, but its object has no documents
        "malformed_offsets": {2, 9, 14},
    },
    "LSST": {
        "passing": {170094456248729605, 170094456272322680, 170094456523456557, 313708286172463112},
        "failing": {170094456251351059, 170094456277565473, 170094456480989258, 170094456528175205},
        "no_aux": set(),
        "malformed_offsets": {2, 6, 9},
    },
}


def sample_truth(survey: Survey) -> tuple[set, set, int]:
    """Candids of a bundled sample's messages that pass the survey's filter, those
    that do not, and how many messages are malformed (literal, see SAMPLE_TRUTH)."""
    truth = SAMPLE_TRUTH[survey.name]
    return set(truth["passing"]), set(truth["failing"]), len(truth["malformed_offsets"])


def perturbed_weights(src: Path, dst: Path, scale: float = 0.05, seed: int = 0) -> Path:
    """Another checkpoint of the same network: `src` with seeded noise on its matrices
    (a stand-in for retrained weights; the outputs move, the architecture does not)."""
    import torch

    state = torch.load(src, map_location="cpu", weights_only=False)
    g = torch.Generator().manual_seed(seed)
    out = {k: v + scale * v.std() * torch.randn(v.shape, generator=g) if v.is_floating_point() and v.ndim > 1 else v
           for k, v in state.items()}
    torch.save(out, dst)
    return dst
