"""Lab definitions: the lab.toml format, its validation, per-student parameters and template rendering.

Pure and engine-independent: nothing here boots a machine, touches the database or reads global settings.
"""

from labkit.labs.loader import LabProblem, load_lab, validate_lab
from labkit.labs.model import CheckDef, ImageRef, Lab, MachineDef, NetworkDef, ParamDef
from labkit.labs.params import GENERATORS, student_params

__all__ = [
    "GENERATORS",
    "CheckDef",
    "ImageRef",
    "Lab",
    "LabProblem",
    "MachineDef",
    "NetworkDef",
    "ParamDef",
    "load_lab",
    "student_params",
    "validate_lab",
]
