"""From a trained run to codes: device choice, batched encoding, the frozen-stage cache and the Encoder."""

from attnhash.inference.device import pick_device, prepare_network
from attnhash.inference.encode import codes_from_batches, encode_indices
from attnhash.inference.encoder import Encoder, load_state_into

__all__ = ["Encoder", "pick_device", "prepare_network", "codes_from_batches", "encode_indices", "load_state_into"]
