"""The run folder: what a training leaves behind, read and written only through `RunFolder`.

    runs/<name>/
      model.safetensors   weights + config + meta + network spec in one atomically written file (the checkpoint)
      config.yaml         the same config, for people
      meta.json           facts of the training (split, sizes, timings, code version), for people
      log.jsonl           one record per epoch
      codes.npz           query and database codes of the protocol split (the evaluation cache)
      metrics.json        the evaluation's figures
      plots/              PR, P@N, P@H<=2 figures
      encoded.npz         the default output of `attnhash encode`
"""

from attnhash.runs.folder import CHECKPOINT_FORMAT, Checkpoint, RunFolder

__all__ = ["RunFolder", "Checkpoint", "CHECKPOINT_FORMAT"]
