"""Unconditional CT slice synthesis (DCGAN or LAPGAN), in-domain Frechet distance: ingest -> preprocess/register -> [tune] -> train -> evaluate.

    python pipelines/slice_synthesis.py --compile slice_synthesis.yaml
    python pipelines/slice_synthesis.py --host https://kfp.example.org --experiment slice_synthesis
    python pipelines/slice_synthesis.py --local --workdir medgan_slice_synthesis --param preset=tiny --param framework=lapgan
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipelines.builder import build_pipeline, main  # noqa: E402

pipeline = build_pipeline("slice-synthesis", framework="dcgan", task="synth", register=False,
                          gpus=int(os.environ.get("MEDGAN_PIPELINE_GPUS", "1")),
                          description="Unconditional CT slice synthesis (DCGAN or LAPGAN), in-domain Frechet distance")

if __name__ == "__main__":
    sys.exit(main(pipeline))
