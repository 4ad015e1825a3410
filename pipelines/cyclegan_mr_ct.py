"""MR -> synthetic CT with CycleGAN: ingest -> preprocess/register -> [tune] -> train -> evaluate -> register.

    python pipelines/cyclegan_mr_ct.py --compile cyclegan_mr_ct.yaml
    python pipelines/cyclegan_mr_ct.py --host https://kfp.example.org --experiment sct
    python pipelines/cyclegan_mr_ct.py --local --workdir medgan_local
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipelines.builder import build_pipeline, main  # noqa: E402

pipeline = build_pipeline("cyclegan-mr-ct", framework="cyclegan",
                          gpus=int(os.environ.get("MEDGAN_PIPELINE_GPUS", "1")))

if __name__ == "__main__":
    sys.exit(main(pipeline))
