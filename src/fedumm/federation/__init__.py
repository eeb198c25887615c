"""The run, written once for every engine.

- ``host.ModelHost``: one frozen base model with LoRA; clients' states are swapped in and out.
- ``client.ClientRuntime``: a client's side of a round (``fit``: train, evaluate, reply).
- ``server.Server``: sampling, broadcast, aggregation, restore from a checkpoint.
- ``transport.Transport``: how the loop reaches its clients (``LocalTransport``: in-process).
- ``loop.run_rounds``: THE round loop; ``job.run_job``: THE job (baselines, summary, plots).
- ``setup``: what a client tells the server about its data (counts, never rows).

No engine is imported here: engines build a transport and call ``run_job``.
"""

from fedumm.federation.client import ClientRuntime, FitReply, derive_seed
from fedumm.federation.host import ModelHost
from fedumm.federation.job import RunResult, run_job
from fedumm.federation.loop import PhaseResult, run_rounds
from fedumm.federation.server import Server
from fedumm.federation.transport import LocalTransport, SetupInfo, Transport

__all__ = [
    "ClientRuntime",
    "FitReply",
    "LocalTransport",
    "ModelHost",
    "PhaseResult",
    "RunResult",
    "Server",
    "SetupInfo",
    "Transport",
    "derive_seed",
    "run_job",
    "run_rounds",
]
