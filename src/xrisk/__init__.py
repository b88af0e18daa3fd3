"""xrisk: X-risk, compositional and distributionally robust objectives for deep learning."""

from xrisk.checkpoint import load_checkpoint, save_checkpoint
from xrisk.checkpoint import CheckpointError, CheckpointMismatchError
from xrisk.state import SampleState

__version__ = "0.1.0"
__all__ = ["SampleState", "save_checkpoint", "load_checkpoint", "CheckpointError", "CheckpointMismatchError", "__version__"]
