"""MR through-plane super-resolution (2x): ingest -> preprocess/register -> [tune] -> train -> evaluate.

    python pipelines/mr_superres.py --compile mr_superres.yaml
    python pipelines/mr_superres.py --host https://kfp.example.org --experiment mr_superres
    python pipelines/mr_superres.py --local --workdir medgan_mr_superres --param preset=tiny
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipelines.builder import build_pipeline, main  # noqa: E402

pipeline = build_pipeline("mr-superres", framework="pix2pix", task="superres", register=False,
                          gpus=int(os.environ.get("MEDGAN_PIPELINE_GPUS", "1")),
                          description="MR through-plane super-resolution (2x)")

if __name__ == "__main__":
    sys.exit(main(pipeline))
