"""The in-process engine: ONE frozen base model per process; each client is an adapter state
swapped in and out of it, so memory grows only by the adapters, not by model copies. It
loads the data, builds a ``LocalTransport`` over the clients and runs the shared job.
"""

from __future__ import annotations

from tqdm.auto import tqdm

from fedumm.config import FaultsConfig, RunConfig
from fedumm.data.federated import FederatedData, build_federated_data
from fedumm.federation import LocalTransport, ModelHost, RunResult, Server, run_job
from fedumm.federation.faults import SimulatedFaults
from fedumm.federation.job import check_local_states, open_run, read_resume


def simulate(
    config: RunConfig,
    *,
    federated: bool = True,
    centralized: bool | None = None,
    host: ModelHost | None = None,
    data: FederatedData | None = None,
) -> RunResult:
    """Run a job end to end and write its run folder (``fedumm run``; ``federated=False``:
    ``fedumm centralized``). ``host``/``data`` reuse an already built model or data set."""
    resume, in_place = read_resume(config) if federated else (None, False)
    # Data and model load next: a bad path or column fails before the run folder exists.
    data = data or build_federated_data(config.data, config.federation.num_clients, config.seed, task=config.eval.task)
    host = host or ModelHost(config)
    # A resumed checkpoint is checked against the model before the folder changes.
    server = Server.from_config(config, host.initial_state, len(data.clients), checkpoint=resume)
    if resume is not None:
        check_local_states(resume, host)
    run, prior = open_run(config, resume, in_place)
    data.load_report(run.path)  # skipped broken rows' messages: load_problems.txt
    progress = config.output.progress
    transport = LocalTransport(
        data.clients, host, config, server.strategy.client_algorithm(), data.partition, progress=progress
    )
    if config.federation.attack.kind != "none" or config.federation.faults != FaultsConfig():
        transport = SimulatedFaults(transport, config)
    if resume is not None:
        transport.restore(resume)
    with_baseline = centralized if centralized is not None else config.eval.centralized_baseline
    return run_job(
        config,
        transport,
        host,
        run,
        data.global_test,
        server,
        prior_records=prior,
        pooled_train=data.pooled_train if with_baseline else None,
        federated=federated,
        log=tqdm.write if progress else None,
    )
