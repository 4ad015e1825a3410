"""Tissue label map -> CT (label-conditioned DCGAN; pix2pix also): ingest -> preprocess/register -> [tune] -> train -> evaluate.

    python pipelines/label_synthesis.py --compile label_synthesis.yaml
    python pipelines/label_synthesis.py --host https://kfp.example.org --experiment label_synthesis
    python pipelines/label_synthesis.py --local --workdir medgan_label_synthesis --param preset=tiny
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipelines.builder import build_pipeline, main  # noqa: E402

pipeline = build_pipeline("label-synthesis", framework="dcgan", task="labels2ct", register=False,
                          gpus=int(os.environ.get("MEDGAN_PIPELINE_GPUS", "1")),
                          description="Tissue label map -> CT (label-conditioned DCGAN; pix2pix also)")

if __name__ == "__main__":
    sys.exit(main(pipeline))
