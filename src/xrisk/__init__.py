"""xrisk: X-risk, compositional and distributionally robust objectives for deep learning."""

from xrisk.checkpoint import load_checkpoint, save_checkpoint
from xrisk.checkpoint import CheckpointError, CheckpointMismatchError
from xrisk.state import SampleState
from xrisk.sharded_checkpoint import load_sharded_checkpoint, save_sharded_checkpoint
from xrisk._validate import set_validation, validation, validation_enabled

__version__ = "0.1.0"
__all__ = ["SampleState", "save_checkpoint", "load_checkpoint", "CheckpointError", "CheckpointMismatchError", "save_sharded_checkpoint",
           "load_sharded_checkpoint", "set_validation", "validation", "validation_enabled", "__version__"]
