"""The engine: the training loop, checkpoint/model files, inference and validation.

>>> # from gan_core.engine import train, load_model, translate_file
>>> # res = train(cfg, "shards", "runs/p2p"); fw = load_model(res.model_path)
>>> # translate_file(fw, "sub/mr.nii.gz", "sub/sct.nii.gz")

Modules (no import circle: ``checkpoint`` <- ``infer`` <- ``validate`` <- ``loop``):
``checkpoint`` (atomic, code-free ``checkpoint.pt`` / ``model.pt``), ``infer`` (slices, patches,
volumes and NIfTI files for every task), ``validate`` (the in-training metric), ``loop``
(``train``).
"""

from gan_core.engine.checkpoint import (CHECKPOINT, MODEL, load_checkpoint, load_model,
                                        read_model_file, save_checkpoint, save_model)
from gan_core.engine.infer import (predict_volume, translate_array, translate_file,
                                   translate_patches, translate_slices)
from gan_core.engine.loop import TrainResult, make_dataset, pick_device, train
from gan_core.engine.validate import synthesis_distance, validate

__all__ = ["CHECKPOINT", "MODEL", "save_checkpoint", "load_checkpoint", "save_model",
           "read_model_file", "load_model", "translate_slices", "translate_patches",
           "predict_volume", "translate_array", "translate_file", "TrainResult", "make_dataset",
           "pick_device", "train", "validate", "synthesis_distance"]
