"""The conversion driver and the library calls behind the commands that start from a model or a .tflite.

- `options.py`: what `convert` can be asked (`ConvertOptions`) and the files it writes;
- `plan.py`: the parent process's checks, into a frozen `Plan`;
- `driver.py`: `convert()`, one line per stage, the work in a child process;
- `stages.py`: loading and the candidates (PTQ, QAT, the search);
- `outputs.py`: the files and the report, built once;
- `emulate_file.py`: `edgeq emulate` of a .tflite made elsewhere;
- `exports.py`: `edgeq export-c` (TFLM's C arrays, or plain C) and `edgeq firmware` of a .tflite.
"""

from edgeq.pipeline.driver import convert
from edgeq.pipeline.emulate_file import emulate_file
from edgeq.pipeline.options import (ConvertOptions, HarnessOptions, QatOptions, default_eval_set, default_split_of,
                                    output_names)
from edgeq.pipeline.results import ConvertResult, EmulateResult, GateError
from edgeq.quantize.search_driver import SearchOptions

__all__ = ["ConvertOptions", "ConvertResult", "EmulateResult", "GateError", "HarnessOptions", "QatOptions",
           "SearchOptions", "convert", "default_eval_set", "default_split_of", "emulate_file", "output_names"]
