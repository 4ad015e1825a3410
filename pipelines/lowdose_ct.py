"""Low-dose CT denoising (Poisson noise on Radon projections): ingest -> preprocess/register -> [tune] -> train -> evaluate.

    python pipelines/lowdose_ct.py --compile lowdose_ct.yaml
    python pipelines/lowdose_ct.py --host https://kfp.example.org --experiment lowdose_ct
    python pipelines/lowdose_ct.py --local --workdir medgan_lowdose_ct --param preset=tiny --param framework=cyclegan
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipelines.builder import build_pipeline, main  # noqa: E402

pipeline = build_pipeline("lowdose-ct", framework="pix2pix", task="lowdose", register=False,
                          gpus=int(os.environ.get("MEDGAN_PIPELINE_GPUS", "1")),
                          description="Low-dose CT denoising (Poisson noise on Radon projections)")

if __name__ == "__main__":
    sys.exit(main(pipeline))
