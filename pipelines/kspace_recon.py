"""Undersampled k-space MRI reconstruction (fastMRI masks, data consistency): ingest -> preprocess/register -> [tune] -> train -> evaluate.

    python pipelines/kspace_recon.py --compile kspace_recon.yaml
    python pipelines/kspace_recon.py --host https://kfp.example.org --experiment kspace_recon
    python pipelines/kspace_recon.py --local --workdir medgan_kspace_recon --param preset=tiny --param 'overrides={"task.acceleration": 8, "task.center_fraction": 0.04}'
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipelines.builder import build_pipeline, main  # noqa: E402

pipeline = build_pipeline("kspace-recon", framework="pix2pix", task="kspace", register=False,
                          gpus=int(os.environ.get("MEDGAN_PIPELINE_GPUS", "1")),
                          description="Undersampled k-space MRI reconstruction (fastMRI masks, data consistency)")

if __name__ == "__main__":
    sys.exit(main(pipeline))
