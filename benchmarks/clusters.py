"""The cluster systems: parlay and joblib on Dask and Ray (the ``clusters`` group).

Importing this module registers them in :data:`benchmarks.systems.SYSTEMS`.
They take seconds to start (a scheduler, worker processes, Ray's daemons),
so they are not in the default run: ``--systems default,clusters`` adds them.

Their ``import`` row imports the engine's library too (``distributed``,
``ray``): parlay imports it on the first call, joblib's users import it
themselves; their start-up, like every system's, leaves that import out.

Where their processes live, so that the cell's clean-up and memory sampler
see them: joblib-dask's ``LocalCluster`` spawns its worker processes from the
cell; parlay-dask starts a host process (in a session of its own) that runs
the ``LocalCluster``; Ray's ``gcs_server``, ``raylet`` and agents are children
of the process that calls ``ray.init``, and its workers children of the
raylet (each in a process group of its own, in the cell's session). All of
them are descendants of the cell; the cell's session and the token in the
environment catch any that would not be.
"""

from __future__ import annotations

import os
from typing import Any

from benchmarks.libraries import _Joblib, _Parlay
from benchmarks.systems import register


def _quiet_ray() -> None:
    """Keep Ray's usage-statistics notice out of the cell's output."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@register
class ParlayDask(_Parlay):
    """``parlay.Parallel(n_jobs=-1, backend="dask")`` with no client or address.

    parlay starts its embedded ``LocalCluster`` (in a host process) on the
    first call: that is the warm-up, timed as start-up. ``parlay.shutdown()``
    closes it.
    """

    name = "parlay-dask"
    backend = "dask"
    isolated = True
    group = "clusters"
    import_stmt = "import parlay, distributed"
    preload_modules = ("distributed",)


@register
class ParlayRay(_Parlay):
    """``parlay.Parallel(n_jobs=-1, backend="ray")``; parlay starts a local Ray itself."""

    name = "parlay-ray"
    backend = "ray"
    isolated = True
    group = "clusters"
    import_stmt = "import parlay, ray"
    preload_modules = ("ray",)

    def start(self, imports: tuple[str, ...] = ()) -> None:
        _quiet_ray()
        super().start(imports)


@register
class JoblibDask(_Joblib):
    """joblib's dask backend on a ``LocalCluster`` of one single-threaded process per core."""

    name = "joblib-dask"
    backend = "dask"
    via_config = True
    isolated = True
    group = "clusters"
    import_stmt = "import joblib, distributed"
    preload_modules = ("distributed",)

    def __init__(self, n_jobs: int) -> None:
        super().__init__(n_jobs)
        self.cluster: Any = None
        self.client: Any = None

    def start(self, imports: tuple[str, ...] = ()) -> None:
        from distributed import Client, LocalCluster

        self.cluster = LocalCluster(  # type: ignore[no-untyped-call]
            n_workers=self.n_jobs,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        )
        self.client = Client(self.cluster)  # type: ignore[no-untyped-call]
        super().start(imports)

    def close(self) -> None:
        for part in (self.client, self.cluster):
            if part is not None:
                part.close()


@register
class JoblibRay(_Joblib):
    """joblib's ray backend (``ray.util.joblib``) on a local Ray of one CPU per core.

    ``address="local"`` makes ``ray.init`` start a Ray of its own even if
    another one runs on the machine.
    """

    name = "joblib-ray"
    backend = "ray"
    via_config = True
    isolated = True
    group = "clusters"
    import_stmt = "import joblib, ray"
    preload_modules = ("ray", "ray.util.joblib")

    def start(self, imports: tuple[str, ...] = ()) -> None:
        import ray
        from ray.util.joblib import register_ray

        _quiet_ray()
        ray.init(address="local", num_cpus=self.n_jobs, include_dashboard=False)
        register_ray()  # type: ignore[no-untyped-call]
        super().start(imports)

    def close(self) -> None:
        import ray

        ray.shutdown()
