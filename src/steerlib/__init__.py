"""steerlib: the library behind the steering-strength book.

``STEERLIB_TORCH_THREADS=N`` in the environment runs PyTorch with ``N`` threads (the regression sets it with
``pytest --torch-threads N`` so that the notebook kernels it starts follow).
"""

import os as _os

if _os.environ.get("STEERLIB_TORCH_THREADS"):
    import torch as _torch

    _torch.set_num_threads(int(_os.environ["STEERLIB_TORCH_THREADS"]))
