"""The applications, one row each: name -> framework, task, register?, description, defaults.

Adding an application = one row in ``APPS``; ``python -m pipelines <name> --compile/--host/--local``
then runs it (``python -m pipelines --list`` lists them). Every application is the one DAG of
``pipelines.builder``; ``framework`` and ``task`` are only the defaults of the pipeline parameters
of the same name, so any framework or task ``gan_core`` knows can run in any of them.

>>> APPS["kspace_recon"].task
'kspace'
>>> build_app("kspace_recon", gpus=0).name
'kspace-recon'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

from pipelines.builder import build_pipeline, gpus_from_env, pod_requests_from_env


@dataclass(frozen=True)
class App:
    """One application: the defaults of its pipeline and whether it ends with the registry step.

    ``defaults``: other pipeline parameters' defaults (``{"subjects": 8}``), over the builder's.
    """

    framework: str
    task: str
    register: bool
    description: str
    defaults: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


APPS: Mapping[str, App] = MappingProxyType({
    "cyclegan_mr_ct": App("cyclegan", "mr2ct", True,
                          "MR -> synthetic CT (CycleGAN; pix2pix, unit also), ends with the MLflow registry"),
    "ct_to_mr": App("pix2pix", "ct2mr", False, "CT -> synthetic MR (pix2pix; framework=cyclegan|unit also)"),
    "kspace_recon": App("pix2pix", "kspace", False,
                        "Undersampled k-space MRI reconstruction (fastMRI masks, data consistency)"),
    "lowdose_ct": App("pix2pix", "lowdose", False, "Low-dose CT denoising (Poisson noise on Radon projections)"),
    "mr_superres": App("pix2pix", "superres", False, "MR through-plane super-resolution (2x)"),
    "label_synthesis": App("dcgan", "labels2ct", False,
                           "Tissue label map -> CT (label-conditioned DCGAN; pix2pix also)"),
    "slice_synthesis": App("dcgan", "synth", False,
                           "Unconditional CT slice synthesis (DCGAN or LAPGAN), in-domain Frechet distance"),
})


def get_app(name: str) -> App:
    """The row ``name`` of ``APPS``; a ``KeyError`` naming the known applications otherwise."""
    if name not in APPS:
        raise KeyError(f"unknown application {name!r}; known: {', '.join(sorted(APPS))}")
    return APPS[name]


def build_app(name: str, params: Mapping[str, Any] | None = None, gpus: float | None = None) -> Callable:
    """The KFP pipeline of application ``name`` (KFP name: ``name`` with ``-`` for ``_``).

    ``params``: pipeline parameter defaults over the app's own (``{"framework": "unit"}``).
    ``gpus``: default GPUs per Ray Train worker (``use_gpu`` defaults to ``gpus > 0``; no KFP pod
    requests one); ``None``: ``$MEDGAN_PIPELINE_GPUS``, default 1. Every KFP pod requests
    ``$MEDGAN_PIPELINE_CPU`` CPUs and ``$MEDGAN_PIPELINE_MEMORY`` memory (``pod_requests_from_env``).
    """
    app = get_app(name)
    cpu, memory = pod_requests_from_env()
    defaults = {"framework": app.framework, "task": app.task, **app.defaults, **(params or {})}
    framework, task = defaults.pop("framework"), defaults.pop("task")
    return build_pipeline(name.replace("_", "-"), framework=framework, task=task, register=app.register,
                          description=app.description, gpus=gpus_from_env() if gpus is None else gpus,
                          cpu_request=cpu, memory_request=memory,
                          defaults=defaults)
