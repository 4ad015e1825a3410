"""MR -> synthetic CT: ingest -> preprocess/register -> [tune] -> train -> evaluate -> register.

The documented entry point, the same as ``python -m pipelines cyclegan_mr_ct ...``:

    python pipelines/cyclegan_mr_ct.py --compile medgan_local/cyclegan_mr_ct.yaml
    python pipelines/cyclegan_mr_ct.py --host https://kfp.example.org --experiment sct
    python pipelines/cyclegan_mr_ct.py --local --workdir medgan_local

Run as a file, Python puts ``pipelines/`` (not the repo root) on ``sys.path``; ``pipelines`` is
then the installed package (``pip install -e .``).
"""

import sys

from pipelines.cli import main

if __name__ == "__main__":
    sys.exit(main(["cyclegan_mr_ct", *sys.argv[1:]]))
