"""Luigi tasks (``python -m luigi --module tasks ...``) and the ``hamuco`` command line."""
from .prepare import (BootstrapLabels, CaptureReport, Demo, DetectHands, LabelShard, OpenPoseLabeler, PrepareDataset,  # noqa: F401
                      SyntheticCapture, ValidateCapture)
from .train import DatasetIndex, PretrainBackbone, TrainModel  # noqa: F401,E402
from .evaluate import Checkpoint, EvaluateModel  # noqa: F401,E402
from .hanco import ReproduceHanCo  # noqa: F401,E402
from .science import BaselineFrameErrors, NetworkFrameErrors  # noqa: F401,E402
