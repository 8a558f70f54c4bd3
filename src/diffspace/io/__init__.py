"""Reading and writing checkpoints: safetensors weights + JSON configuration, atomic writes, verified loads."""

from diffspace.io.checkpoint import (
    atomic_save_tensors,
    atomic_write,
    atomic_write_text,
    build_from_config,
    ensure_writable_dir,
    latest_training_state,
    list_checkpoints,
    load_network,
    load_training_state,
    network_config,
    read_tensors,
    save_network,
    save_training_state,
    snapshot_name,
    tensor_digest,
)
from diffspace.io.files import check_output_file

__all__ = [
    "atomic_save_tensors", "atomic_write", "atomic_write_text", "build_from_config", "ensure_writable_dir",
    "latest_training_state", "list_checkpoints", "load_network", "load_training_state", "network_config",
    "read_tensors", "save_network", "save_training_state", "snapshot_name", "tensor_digest",
]
__all__ += ["check_output_file"]
