"""Evaluation: one evaluator for every task, its metrics, baselines and reports.

Modules (import them directly; this package imports nothing on its own):

* ``evaluate``: :func:`gan_core.eval.evaluate.evaluate`, the one entry point (every task);
* ``report``: the strict-JSON report, figures and the results table, all written atomically;
* ``metrics``: SynthRAD2023 MAE/PSNR/SSIM in HU, fastMRI NMSE/PSNR/SSIM, the lesion audit
  (calibrated against the data's noise floor; its border margin learned from the baseline);
* ``tissue``: per-tissue HU error and the tissue-swap gate (MR -> CT against tissue labels);
* ``baseline``: the non-learned intensity-regression baseline (MR -> CT, CT -> MR);
* ``synthesis``: unconditional synthesis, scored by the in-domain Fréchet distance (``fid``);
* ``segment``: the tissue segmenter (Dice) behind ``fid`` and ``augmentation``;
* ``augmentation``: the downstream-segmentation experiment with synthetic training images.

>>> # from gan_core.eval.evaluate import evaluate
>>> # from gan_core.eval.report import results_table
"""
