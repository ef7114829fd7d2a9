"""Running a batch on Ray: one processor per worker actor, a task per file, cooperative stop."""
from __future__ import annotations

import logging
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from livediff.app.video.job import emitter, process_file
from livediff.app.video.options import JobOptions
from livediff.app.video.processor import LazyProcessor, ProcessorFactory
from livediff.app.video.results import BatchResult, JobResult
from livediff.errors import ConfigError


def import_ray():
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(
            "workers > 1 or a Ray address needs Ray, which is not installed; install livediff[ray]"
        ) from exc
    return ray


class FileWorker:
    """Ray actor body: one processor per worker, many files.

    Runs as a threaded actor (two slots) so :meth:`stop` can arrive while :meth:`run` works:
    Ray does not interrupt a running task of a synchronous actor, and workers do not get the
    terminal's Ctrl-C, so stopping is cooperative (checked before every frame).
    """

    def __init__(self, factory: ProcessorFactory):
        import threading

        self.holder = LazyProcessor(factory)
        self._stop = threading.Event()

    def ready(self) -> bool:
        return True

    def stop(self) -> None:
        self._stop.set()

    def run(self, src: Path, dst: Path, options: JobOptions) -> JobResult:
        result, _ = process_file(src, dst, self.holder, replace(options, progress=False, quiet=True),
                                 emit=emitter(True), should_stop=self._stop.is_set)
        return result


def run_on_ray(pairs, factory, options: JobOptions, workers: int, address: str | None, emit) -> BatchResult:
    ray = import_ray()
    from tqdm import tqdm

    try:
        ray.cloudpickle.dumps(factory)
    except Exception as exc:
        raise ConfigError(
            f"processor factory {factory!r} cannot be sent to Ray workers ({exc}); "
            "use a top-level class instance or functools.partial of a top-level function"
        ) from exc
    started = False
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            # Local workers get the driver's import path, so factories defined in scripts or tests
            # (pickled by reference) import there too. A remote cluster needs livediff installed.
            path = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
            # Ray announces that the local cluster it starts uses token authentication: that is the
            # secure default for a cluster livediff starts and stops itself, nothing to act on.
            logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
            ray.init(
                num_cpus=workers,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
                runtime_env={"env_vars": {"PYTHONPATH": path}},
            )
        started = True
    results: list[JobResult | None] = [None] * len(pairs)
    pending: dict[Any, tuple[Any, int]] = {}
    overall = tqdm(total=len(pairs), desc="files", unit="file", disable=not options.progress, file=sys.stderr)
    try:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        n_actors = max(1, min(workers, len(pairs), gpus if gpus else workers))
        actor_cls = ray.remote(num_cpus=1, num_gpus=1 if gpus else 0, max_concurrency=2)(FileWorker)
        queue = list(enumerate(pairs))
        queue.reverse()

        def submit(actor) -> None:
            if queue:
                i, (src, dst) = queue.pop()
                pending[actor.run.remote(src, dst, options)] = (actor, i)

        actors = [actor_cls.remote(factory) for _ in range(n_actors)]
        try:  # surface a factory that cannot be unpickled in the workers once, not per file
            ray.get([a.ready.remote() for a in actors])
        except ray.exceptions.RayError as exc:
            raise ConfigError(f"Ray workers cannot load the processor factory {factory!r}: {exc}") from None
        for actor in actors:
            submit(actor)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            ref = ready[0]
            actor, i = pending.pop(ref)
            src, dst = pairs[i]
            try:
                result = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:
                # the processor could not be built (other errors come back as failed results):
                # re-raise the worker's own exception so the CLI shows its one-line message
                cause = getattr(exc, "cause", None)
                raise (cause if isinstance(cause, BaseException) else exc.as_instanceof_cause()) from None
            except ray.exceptions.RayActorError as exc:  # worker died (OOM, segfault): replace it
                result = JobResult(src, dst, "failed", error=f"{src}: worker died ({type(exc).__name__}: {exc})")
                actor = actor_cls.remote(factory)
            results[i] = result
            if not result.ok:
                emit(result.describe())
            overall.update(1)
            submit(actor)
    except KeyboardInterrupt:
        # Ask the busy workers to stop; each makes its partial output playable and returns.
        for actor, _ in pending.values():
            actor.stop.remote()
        if pending:
            ray.wait(list(pending), num_returns=len(pending), timeout=120)
        finished = sum(r is not None for r in results)
        emit(
            f"interrupted; {finished} of {len(pairs)} files finished, partial outputs (.NAME.livediff/partial.mp4) written "
            "for the running ones; run again with --resume to continue"
        )
        raise
    finally:
        overall.close()
        if started:
            ray.shutdown()
    return BatchResult(results)
