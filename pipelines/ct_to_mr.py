"""CT -> synthetic MR (pix2pix; framework=cyclegan|unit also): ingest -> preprocess/register -> [tune] -> train -> evaluate.

    python pipelines/ct_to_mr.py --compile ct_to_mr.yaml
    python pipelines/ct_to_mr.py --host https://kfp.example.org --experiment ct_to_mr
    python pipelines/ct_to_mr.py --local --workdir medgan_ct_to_mr --param preset=tiny
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipelines.builder import build_pipeline, main  # noqa: E402

pipeline = build_pipeline("ct-to-mr", framework="pix2pix", task="ct2mr", register=False,
                          gpus=int(os.environ.get("MEDGAN_PIPELINE_GPUS", "1")),
                          description="CT -> synthetic MR (pix2pix; framework=cyclegan|unit also)")

if __name__ == "__main__":
    sys.exit(main(pipeline))
